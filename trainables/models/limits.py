"""A model's footprint against a search's limits (`search.constraints`, `TrialContext.limits`).

LIMITS map a figure of `trainables.models.footprint` (`latency_ms`, `params_m`, `model_mb`) to its
largest allowed value. The trial (not training a configuration over them), the searcher
(Optuna's constraints) and the results folder (which trials are feasible) judge with these.
No torch here: the results folder is read without it.
"""
from __future__ import annotations

# what trainables.models.footprint measures; COSTS are the figures every trial has, which limits and
# objectives may name (the GPU ones exist only on a GPU)
COSTS = ("latency_ms", "params_m", "model_mb")
FIGURES = (*COSTS, "gpu_latency_ms", "gpu_images_per_s")


def over_limits(figures: dict, limits: dict[str, float]) -> dict[str, float]:
    """Each figure of FIGURES over its limit, with how far over it is (in the figure's unit; Optuna
    is told `violation`). A figure not measured (a GPU figure on a CPU) is not judged."""
    return {name: float(figures[name]) - limit for name, limit in limits.items()
            if _known(figures.get(name)) and float(figures[name]) > limit}


def violation(value: float, limit: float) -> float:
    """How far over LIMIT a figure is, relative to it (0.2: 20 % over; <= 0: within), as Optuna's
    constraints take it. Relative, because TPE ranks infeasible trials by the sum of their
    violations, and milliseconds, millions of parameters and MB do not add up."""
    return float(value) / limit - 1.0


def describe_over(figures: dict, limits: dict[str, float]) -> str:
    """'latency_ms 4.1 > 2' for each figure over its limit, '; '-joined ('' when within them all)."""
    return "; ".join(f"{name} {float(figures[name]):.4g} > {limits[name]:g}" for name in over_limits(figures, limits))


def within(figures: dict, limits: dict[str, float]) -> bool:
    """Whether every limited figure was measured and is within its limit."""
    return all(_known(figures.get(name)) for name in limits) and not over_limits(figures, limits)


def _known(value) -> bool:
    return value is not None and value == value  # NaN: a trial table's missing figure
