"""`SearchRecord`: what a search writes as `search.json`, and what everything after it reads.

The search writes it once, before its first trial (`search.run.write_inputs`); `--resume`,
`--warm-start` and `analysis` read it back (`search.results_folder.read_record`) and never the
space file again. It holds, resolved: the objectives (the first is the validation metric ASHA
stops trials on) and the limits on what a model may cost, the searched knobs with the Optuna
distribution each was sampled from, ASHA's settings, what each trial ran on, the bounds on
trials and time, where the Optuna study is, and the data. The names derived from it (the
trials.csv column of the first objective's best value, ...) are its properties: nothing else
builds them from strings.

`schema_version` names the file's layout. A search.json of another layout, or of none (an
older hpo-finetune's), is refused whole (`RecordVersionError`), never read in part: there is
one layout to read. No torch, no Ray: analysis reads it offline.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from trainables.context import Resources

SCHEMA_VERSION = 1  # raise it with every change of the layout below


class RecordVersionError(ValueError):
    """search.json has another layout than this version's; str() says which (completes 'written by ...')."""


@dataclass(frozen=True)
class Objective:
    """One objective of the search: a metric of trials.csv's or a cost of the model, and its direction."""

    name: str
    mode: str  # "max" or "min"


@dataclass(frozen=True)
class AshaSettings:
    """ASHA's settings, in epochs."""

    max_t: int
    grace_period: int
    reduction_factor: float

    @property
    def rungs(self) -> list[int]:
        """The epochs where ASHA decides which trials go on."""
        rungs, r = [], self.grace_period
        while r < self.max_t:
            rungs.append(int(r))
            r *= self.reduction_factor
        return rungs


def best_column(metric: str) -> str:
    """trials.csv's column of a trial's best value of METRIC."""
    return f"best_{metric}"


@dataclass(frozen=True)
class SearchRecord:
    name: str  # the experiment's, and its Optuna study's
    objectives: tuple[Objective, ...]  # the first: the validation metric ASHA stops trials on
    limits: dict[str, float]  # figure (trainables.models.limits) -> largest allowed value; empty: no constraints
    knobs: tuple[str, ...]  # the searched knobs, in the space's order
    distributions: dict[str, dict]  # knob -> its Optuna distribution, as optuna's distribution_to_json writes it
    scheduler: AshaSettings
    resources: Resources  # what each trial ran on
    max_epochs: int
    num_samples: int | None  # trials at most; None: as many as the time budget allowed
    time_s: float | None  # the time budget; None: none
    study_storage: str  # the Optuna study, as optuna-dashboard takes it (never a password)
    data_root: str
    split_file: str
    class_names: tuple[str, ...]
    results: str  # the results folder, or its URI
    schema_version: int = SCHEMA_VERSION

    @property
    def metric(self) -> str:
        """The first objective: the validation metric ASHA stopped trials on and checkpoints follow."""
        return self.objectives[0].name

    @property
    def mode(self) -> str:
        return self.objectives[0].mode

    @property
    def maximize(self) -> bool:
        return self.mode == "max"

    @property
    def best_column(self) -> str:
        """trials.csv's column of each trial's best value of the first objective."""
        return best_column(self.metric)

    @property
    def search_best_key(self) -> str:
        """analysis.retrain's test_metrics.json key of the picked trial's score in the search."""
        return f"search_best_{self.metric}"

    @property
    def objective_columns(self) -> list[tuple[str, str]]:
        """Each objective's column in trials.csv, and its mode: `best_column` for the first, the
        model's cost (its own footprint column) for the others."""
        first, *costs = self.objectives
        return [(self.best_column, first.mode), *((o.name, o.mode) for o in costs)]

    @property
    def objective_pairs(self) -> list[tuple[str, str]]:
        """(name, mode) of each objective, as the space's `search.objectives` gives them."""
        return [(o.name, o.mode) for o in self.objectives]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def gpus_per_trial(self) -> float:
        return self.resources.workers_per_trial * self.resources.gpus_per_worker

    def against(self, cost: str) -> SearchRecord:
        """This record with the first objective against COST alone (a 2-D front of a search that did
        not have COST among its objectives)."""
        return dataclasses.replace(self, objectives=(self.objectives[0], Objective(cost, "min")))

    def searched(self) -> dict:
        """Each searched knob's Optuna distribution object."""
        from optuna.distributions import json_to_distribution

        return {k: json_to_distribution(json.dumps(d)) for k, d in self.distributions.items()}

    def to_json(self) -> str:
        """search.json's text: schema_version first, objectives as [name, mode] pairs."""
        body = dataclasses.asdict(self)
        body["objectives"] = [[o.name, o.mode] for o in self.objectives]
        version = body.pop("schema_version")
        return json.dumps({"schema_version": version, **body}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> SearchRecord:
        """The record in search.json's TEXT. Raises RecordVersionError for another layout's (or
        none's), ValueError for a file that is not one (not JSON, keys missing or unknown)."""
        raw = json.loads(text)
        if not isinstance(raw, dict) or "schema_version" not in raw:
            raise RecordVersionError("an older hpo-finetune (no schema_version in search.json)")
        if raw["schema_version"] != SCHEMA_VERSION:
            raise RecordVersionError(f"another hpo-finetune (schema_version {raw['schema_version']!r} in "
                                     f"search.json; this one reads {SCHEMA_VERSION})")
        try:
            return cls(**{
                **raw, "objectives": tuple(Objective(*o) for o in raw["objectives"]), "knobs": tuple(raw["knobs"]),
                "scheduler": AshaSettings(**raw["scheduler"]), "resources": Resources(**raw["resources"]),
                "class_names": tuple(raw["class_names"])})
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a search record ({type(e).__name__}: {e})") from None
