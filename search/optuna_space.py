"""The YAML space as an Optuna define-by-run function.

Define-by-run lets a knob be sampled only when it applies (`when:`), so TPE never learns
from a value that had no effect. It is a module-level class holding plain data, not a
closure, because Tune pickles the searcher (and with it this object) in every experiment
checkpoint.
"""
from __future__ import annotations

from typing import Any


class YamlSpace:
    def __init__(self, knobs: dict[str, dict], context: dict[str, Any]):
        """`knobs`: name → Knob.model_dump(), in file order; `context`: returned as config['run']."""
        self.knobs = knobs
        self.context = context

    def applies(self, knob: dict, values: dict) -> bool:
        return all(values.get(dep) in allowed for dep, allowed in knob["when"].items())

    def __call__(self, trial) -> dict:
        values: dict[str, Any] = {}
        constants: dict[str, Any] = {}
        for name, k in self.knobs.items():
            if not self.applies(k, values):
                continue
            kind = k["kind"]
            if kind == "const":
                values[name] = constants[name] = k["value"]
            elif kind == "choice":
                values[name] = trial.suggest_categorical(name, k["choices"])
            elif kind == "int":
                values[name] = trial.suggest_int(name, int(k["low"]), int(k["high"]), step=int(k["step"] or 1),
                                                 log=k["log"])
            else:
                values[name] = trial.suggest_float(name, k["low"], k["high"], step=k["step"], log=k["log"])
        return {**constants, "run": self.context}
