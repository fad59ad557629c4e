"""`python -m search.cache`: list the decoded-image cache (what, how big, last used) and clean it.

    python -m search.cache                   # list, least recently used first, with the cap
    python -m search.cache clean             # remove every decoded file
    python -m search.cache clean --unused-days 30
    python -m search.cache clean --to-gb 5   # least recently used first, until 5 GB are left

The cache folder is HPO_CACHE_DIR, else ~/.cache/hpo-finetune (`--cache-dir` or a space's
`data.cache_dir` may name another). A running search rebuilds whatever it still needs.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from trainables.data import cache_budget, image_cache
from trainables.data.dataset import default_cache_dir

GB = cache_budget.GB
human = cache_budget.human


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return "just now"


def list_cache(decoded: Path) -> None:
    found = cache_budget.entries(decoded)
    total = sum(e.bytes for e in found)
    cap = cache_budget.cap_bytes()
    print(f"{decoded}: {len(found)} file(s), {human(total)} of a {human(cap)} cap "
          f"({cache_budget.CACHE_MAX_ENV} or a space's data.cache_max_gb sets it)")
    now = time.time()
    for e in found:
        print(f"  {human(e.bytes):>9}  {e.images:>7} images at {e.image_size:>4} px  "
              f"last used {_age(now - e.last_used):>12}  {e.source}  ({e.path.name})")


def clean(decoded: Path, unused_days: float | None, to_gb: float | None) -> None:
    found = cache_budget.entries(decoded)  # least recently used first
    now = time.time()
    removed, total = cache_budget.evict_lru(
        found, sum(e.bytes for e in found), int(to_gb * GB) if to_gb is not None else -1,
        spare=lambda e: unused_days is not None and now - e.last_used < unused_days * 86400)
    swept = cache_budget.sweep_partials(decoded)
    print(f"removed {len(removed)} file(s), {human(sum(e.bytes for e in removed))}"
          f"{f' and {len(swept)} unfinished build(s)' if swept else ''}; {human(total)} left in {decoded}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m search.cache", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    p.add_argument("action", nargs="?", choices=("list", "clean"), default="list")
    p.add_argument("--cache-dir", help="the cache folder (default: HPO_CACHE_DIR, else ~/.cache/hpo-finetune)")
    p.add_argument("--unused-days", type=float, help="clean: only files not used for this many days")
    p.add_argument("--to-gb", type=float, help="clean: least recently used first, until this many GB are left")
    args = p.parse_args(argv)
    decoded = image_cache.decoded_dir(args.cache_dir or default_cache_dir())
    try:
        if args.action == "list":
            list_cache(decoded)
        else:
            clean(decoded, args.unused_days, args.to_gb)
    except cache_budget.CacheFull as e:  # a bad HPO_CACHE_MAX_GB
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
