"""The YAML space as an Optuna define-by-run function.

Define-by-run lets a knob be sampled only when it applies (`when:`), so TPE never learns
from a value that had no effect. It is a module-level class holding the knobs and their Optuna
distributions, not a closure, because Tune pickles the searcher (and with it this object) in
every experiment checkpoint.
"""
from __future__ import annotations

from typing import Any


def distribution(knob: dict):
    """The Optuna distribution a searched knob (Knob.model_dump()) samples; None for a constant.
    The one place a knob's range becomes a distribution: the sampler, the warm start and
    search.json (what analysis reads) all use it."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    kind = knob["kind"]
    if kind == "choice":
        return CategoricalDistribution(knob["choices"])
    if kind == "int":
        return IntDistribution(int(knob["low"]), int(knob["high"]), log=knob["log"], step=int(knob["step"] or 1))
    if kind == "float":
        return FloatDistribution(knob["low"], knob["high"], log=knob["log"], step=knob["step"])
    return None


def suggest(trial, name: str, dist) -> Any:
    """Ask TRIAL for NAME from DIST through Optuna's public suggest_* calls."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


class YamlSpace:
    def __init__(self, knobs: dict[str, dict]):
        """`knobs`: name → Knob.model_dump(), in file order."""
        self.knobs = knobs
        self.dists = {name: distribution(k) for name, k in knobs.items()}

    def applies(self, knob: dict, values: dict) -> bool:
        return all(values.get(dep) in allowed for dep, allowed in knob["when"].items())

    def __call__(self, trial) -> dict:
        values: dict[str, Any] = {}
        constants: dict[str, Any] = {}
        for name, k in self.knobs.items():
            if not self.applies(k, values):
                continue
            if self.dists[name] is None:
                values[name] = constants[name] = k["value"]
            else:
                values[name] = suggest(trial, name, self.dists[name])
        return constants  # Tune's config holds the sampled values, Optuna's own, and these
