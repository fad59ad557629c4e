"""What one run of `trainables.trial.train_loop.fit` is for: a search trial or a refit.

A search trial trains on `train`, is judged on `val` after every epoch, measures its model's
footprint first and may stop by its own patience. A refit of a chosen trial (the final model,
`analysis.refits`) trains on `train` + `val` with nothing held out: no footprint, no early
stop, the training loss as its objective, stopped at the epoch the search chose, its learning
rates replayed from the trial's. The two constructors say so in one place, instead of `fit`
guessing from `None` arguments.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrialPlan:
    train_splits: tuple[str, ...]
    val_split: str | None  # judged after every epoch; None: nothing held out (a refit)
    stop_after_epoch: int | None = None  # stop here; the LR schedule is still planned over all `epochs`
    lr_path: tuple[float | None, ...] | None = None  # the trial's learning rate per epoch, replayed (None: own)

    @classmethod
    def for_trial(cls) -> "TrialPlan":
        return cls(train_splits=("train",), val_split="val")

    @classmethod
    def for_refit(cls, stop_after_epoch: int | None = None, lr_path=None) -> "TrialPlan":
        return cls(train_splits=("train", "val"), val_split=None, stop_after_epoch=stop_after_epoch,
                   lr_path=tuple(lr_path) if lr_path is not None else None)

    @property
    def measure_footprint(self) -> bool:
        """A search trial measures its model (and stops there if over the limits); a refit trains
        what was chosen."""
        return self.val_split is not None

    @property
    def early_stop(self) -> bool:
        """The trial's `early_stop_patience` applies only where something is held out to judge."""
        return self.val_split is not None

    def splits(self) -> tuple[str, ...]:
        """Every split the run reads."""
        return self.train_splits + ((self.val_split,) if self.val_split else ())

    def objective(self, metric: str, mode: str) -> tuple[str, str]:
        """The figure the LR plateau schedule and early stopping follow: the search's metric on val,
        or, with nothing held out, the training loss."""
        return (metric, mode) if self.val_split else ("train_loss", "min")
