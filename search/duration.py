"""Durations as users write them: `--time 10m`, `search.time: 1h30m`; and as progress lines say them."""
from __future__ import annotations

import re

_UNITS = {"s": 1, "m": 60, "h": 3600}
_PART = re.compile(r"(\d+(?:\.\d*)?)\s*([smh])")


def parse_duration(value) -> float:
    """Seconds from '10m', '90s', '1h30m', '2.5m' or a number of seconds; ValueError says what is allowed
    (the caller names the value)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 10m, 90s, 1h30m or a number of seconds")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        parts = _PART.findall(text)
        if re.fullmatch(r"\d+(?:\.\d*)?", text):
            seconds = float(text)
        elif parts and "".join(n + u for n, u in parts) == text:
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
        else:
            raise ValueError("expected a duration such as 10m, 90s, 1h30m or a number of seconds")
    if not seconds > 0:
        raise ValueError("a time budget must be more than 0 seconds")
    return seconds


def say(seconds: float) -> str:
    """12m30s, 45s, 1h05m: a duration as the progress lines print it."""
    s = max(0, round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
