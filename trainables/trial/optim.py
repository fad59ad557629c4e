"""The optimiser a trial's `TrialParams` ask for, over the model's backbone and head.

Two parameter groups, so the backbone can learn at its own rate (`backbone_lr_mult`); the
learning rate of each epoch is then set by `trainables.trial.schedule.EpochSchedule`, which scales
each group's base rate.
"""
from __future__ import annotations

import torch

from trainables.params import TrialParams, nesterov_problem


def make_optimizer(p: TrialParams, backbone_params, head_params) -> torch.optim.Optimizer:
    """Two param groups, 'head' at lr and 'backbone' at lr × backbone_lr_mult (an empty one is left out).

    Pass every backbone parameter, frozen ones included: a frozen parameter has no gradient
    and the optimiser skips it, so gradual unfreezing needs no new optimiser. Each group keeps
    its base LR in 'initial_lr' (saved with the optimiser state) for `EpochSchedule` to scale.
    """
    groups = []
    for name, params, lr in (("head", head_params, p.lr), ("backbone", backbone_params, p.lr * p.backbone_lr_mult)):
        params = list(params)
        if params:
            groups.append({"params": params, "lr": lr, "initial_lr": lr, "name": name})
    if p.optimizer == "adam":
        return torch.optim.Adam(groups, weight_decay=p.weight_decay)
    if p.optimizer == "adamw":
        return torch.optim.AdamW(groups, weight_decay=p.weight_decay)
    problem = nesterov_problem([p.momentum], [p.nesterov])
    if problem:
        raise ValueError(f"nesterov: {problem}, got momentum=0")
    return torch.optim.SGD(groups, momentum=p.momentum, nesterov=p.nesterov, weight_decay=p.weight_decay)
