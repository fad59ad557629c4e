"""Learning-rate schedule and gradual unfreezing, from `TrialParams`.

Everything here changes once per epoch, not per step: ASHA compares trials and checkpoints are
written at epoch boundaries, so a per-epoch LR makes a resumed trial continue exactly where it
stopped, whatever its batch size, with no step counter to save.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from trainables.params import TrialParams


class EpochSchedule:
    """LR of each 1-based epoch: every group's lr = its 'initial_lr' × factor(epoch).

    One factor for all groups keeps the backbone/head ratio fixed; `min_lr` is therefore the
    head's floor and the backbone's floor is min_lr × backbone_lr_mult.

    * warm-up (w = warmup_epochs > 0): epoch e <= w uses factor e / (w + 1), a linear ramp that
      never reaches 0 and arrives at 1 on epoch w + 1. The schedule proper starts there: its
      epochs are counted from w + 1.
    * constant: 1.
    * cosine: from 1 on epoch w + 1 down to the floor on epoch `epochs`.
    * step: × gamma every step_size epochs (no floor, as in torch's StepLR).
    * plateau: × plateau_factor when the objective has not improved (strictly) for more than
      plateau_patience epochs, as torch's ReduceLROnPlateau counts; floored at min_lr. Epochs
      of the warm-up only set the best value: a rising LR is no plateau.
    """

    def __init__(self, p: TrialParams, optimizer: torch.optim.Optimizer, replay: Sequence[float | None] | None = None):
        """REPLAY: head LRs of epochs 1, 2, ... as a trial reported them (None: an epoch it has no
        report of); a refit follows them exactly (plateau included, whose signal, the val score, a
        refit on train+val does not have). The head's group is the optimiser's first."""
        self.p, self.optimizer, self.replay = p, optimizer, replay
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
        self.floor = min(1.0, p.min_lr / p.lr)
        self.plateau_scale, self.best, self.bad_epochs = 1.0, None, 0

    def factor(self, epoch: int) -> float:
        if self.replay and epoch <= len(self.replay) and self.replay[epoch - 1] is not None:
            return self.replay[epoch - 1] / self.p.lr
        p, w = self.p, self.p.warmup_epochs
        if epoch <= w:
            return epoch / (w + 1)
        t = epoch - w - 1  # 0 on the first epoch after the warm-up
        if p.lr_schedule == "cosine":
            span = p.epochs - w - 1
            if span <= 0:
                return 1.0
            return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * min(t, span) / span))
        if p.lr_schedule == "step":
            return p.gamma ** (t // p.step_size)
        if p.lr_schedule == "plateau":
            return self.plateau_scale
        return 1.0

    def set_epoch(self, epoch: int) -> float:
        """Set every group's LR for `epoch`, before it trains; return the head's LR, to report."""
        f = self.factor(epoch)
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * f
        return self.optimizer.param_groups[0]["lr"]

    def after_epoch(self, epoch: int, objective_value: float, mode: str) -> None:
        """Feed the epoch's objective ('max' or 'min' is better) to the plateau schedule."""
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        if self.p.lr_schedule != "plateau":
            return
        value = float(objective_value)
        improved = self.best is None or (value > self.best if mode == "max" else value < self.best)
        if improved:
            self.best, self.bad_epochs = value, 0
            return
        if epoch <= self.p.warmup_epochs:
            return
        self.bad_epochs += 1
        if self.bad_epochs > self.p.plateau_patience:
            self.plateau_scale = max(self.plateau_scale * self.p.plateau_factor, self.floor)
            self.bad_epochs = 0

    def state_dict(self) -> dict:
        return {"plateau_scale": self.plateau_scale, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.plateau_scale, self.best, self.bad_epochs = state["plateau_scale"], state["best"], state["bad_epochs"]


def trainable_blocks(p: TrialParams, epoch: int, n_blocks: int) -> int:
    """How many top backbone blocks train during 1-based `epoch` (of n_blocks in the model).

    Epochs 1..head_epochs train the head only (0 blocks); then `unfreeze` blocks (capped at
    n_blocks), either at once (unfreeze_every = 0) or one more every unfreeze_every epochs.
    The caller applies a change with `models.set_trainable(model, count)`; it calls this for
    pretrained models only, since a model trained from scratch must train every layer.
    """
    target = n_blocks if p.unfreeze == "all" else min(int(p.unfreeze), n_blocks)
    if epoch <= p.head_epochs:
        return 0
    if p.unfreeze_every == 0:
        return target
    return min(target, (epoch - p.head_epochs - 1) // p.unfreeze_every + 1)
