"""Optimiser groups, the LR of each epoch per schedule, unfreezing steps and autocast."""
from __future__ import annotations

import contextlib
import json
import math

import pytest
import torch
from torch import nn

from trainables.params import TrialParams
from trainables.trial.optim import make_optimizer
from trainables.trial.precision import autocast
from trainables.trial.schedule import EpochSchedule, trainable_blocks


def optimizer(p):
    backbone, head = nn.Linear(4, 4), nn.Linear(4, 2)
    return make_optimizer(p, backbone.parameters(), head.parameters())


def lrs(p, epochs, objective=None, mode="max"):
    """Head LR of each epoch in `epochs`, feeding objective[i] after epoch i when given."""
    sched = EpochSchedule(p, optimizer(p))
    out = []
    for i, epoch in enumerate(epochs):
        out.append(sched.set_epoch(epoch))
        if objective is not None:
            sched.after_epoch(epoch, objective[i], mode)
    return out


@pytest.mark.parametrize("name,cls",
                         [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)])
def test_optimizer_groups(name, cls):
    p = TrialParams(optimizer=name, lr=1e-3, backbone_lr_mult=0.1, weight_decay=1e-4)
    opt = optimizer(p)
    assert type(opt) is cls
    head, backbone = opt.param_groups
    assert (head["name"], head["lr"], head["initial_lr"]) == ("head", 1e-3, 1e-3)
    assert backbone["name"] == "backbone" and backbone["lr"] == pytest.approx(1e-4)
    assert head["weight_decay"] == backbone["weight_decay"] == 1e-4


def test_sgd_momentum_and_nesterov():
    opt = optimizer(TrialParams(optimizer="sgd", momentum=0.8, nesterov=True))
    assert opt.param_groups[0]["momentum"] == 0.8 and opt.param_groups[0]["nesterov"]
    with pytest.raises(ValueError, match="^nesterov: .*momentum > 0"):
        optimizer(TrialParams(optimizer="sgd", momentum=0.0, nesterov=True))


def test_empty_group_is_skipped():
    opt = make_optimizer(TrialParams(), [], nn.Linear(2, 2).parameters())
    assert [g["name"] for g in opt.param_groups] == ["head"]


def test_constant_and_warmup():
    assert lrs(TrialParams(lr=1e-3), [1, 2, 5]) == pytest.approx([1e-3] * 3)
    got = lrs(TrialParams(lr=1e-3, warmup_epochs=3), [1, 2, 3, 4, 5])
    assert got == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])


def test_cosine_with_warmup_and_floor():
    p = TrialParams(lr=1e-3, lr_schedule="cosine", warmup_epochs=1, epochs=5, min_lr=1e-5)
    f = 1e-5 / 1e-3
    expected = [5e-4, 1e-3] + [1e-3 * (f + (1 - f) * 0.5 * (1 + math.cos(math.pi * t / 3))) for t in (1, 2)] + [1e-5]
    assert lrs(p, [1, 2, 3, 4, 5]) == pytest.approx(expected)
    assert lrs(p, [5, 6]) == pytest.approx([1e-5, 1e-5])  # past the end: stays at the floor


def test_backbone_group_keeps_its_ratio():
    p = TrialParams(lr=1e-3, backbone_lr_mult=0.1, lr_schedule="cosine", epochs=3, min_lr=1e-5)
    opt = optimizer(p)
    sched = EpochSchedule(p, opt)
    sched.set_epoch(2)
    head, backbone = (g["lr"] for g in opt.param_groups)
    assert head == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5))
    assert backbone == pytest.approx(head * 0.1)
    sched.set_epoch(3)
    assert opt.param_groups[1]["lr"] == pytest.approx(1e-6)


def test_step():
    p = TrialParams(lr=1e-3, lr_schedule="step", step_size=2, gamma=0.5)
    assert lrs(p, [1, 2, 3, 4, 5]) == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4])


def test_plateau_drops_after_patience_with_floor():
    p = TrialParams(lr=1e-3, lr_schedule="plateau", plateau_patience=1, plateau_factor=0.5, min_lr=2e-4)
    acc = [0.5, 0.4, 0.4, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]
    # epoch 1 best; 2 and 3 stall (> patience 1) -> drop for epoch 4; 4 improves; 5, 6 stall -> drop;
    # 7, 8 stall -> drop to 1.25e-4, floored at 2e-4 from epoch 9
    expected = [1e-3, 1e-3, 1e-3, 5e-4, 5e-4, 5e-4, 2.5e-4, 2.5e-4, 2e-4, 2e-4]
    assert lrs(p, range(1, 11), acc, "max") == pytest.approx(expected)
    loss = [1.0, 0.9, 0.9, 0.9]
    assert lrs(p, range(1, 5), loss, "min") == pytest.approx([1e-3, 1e-3, 1e-3, 1e-3])
    assert lrs(p, range(1, 6), [1.0] * 5, "min") == pytest.approx([1e-3, 1e-3, 1e-3, 5e-4, 5e-4])


def test_plateau_ignores_warmup_and_bad_mode():
    p = TrialParams(lr=1e-3, lr_schedule="plateau", plateau_patience=0, warmup_epochs=2)
    assert lrs(p, [1, 2, 3], [0.5, 0.5, 0.5]) == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3])
    with pytest.raises(ValueError, match="mode must be 'max' or 'min'"):
        EpochSchedule(p, optimizer(p)).after_epoch(1, 0.5, "up")


def test_state_round_trip():
    p = TrialParams(lr=1e-3, lr_schedule="plateau", plateau_patience=1, plateau_factor=0.5)
    first = EpochSchedule(p, optimizer(p))
    for epoch, acc in enumerate([0.5, 0.4, 0.4, 0.45], 1):
        first.set_epoch(epoch)
        first.after_epoch(epoch, acc, "max")
    state = json.loads(json.dumps(first.state_dict()))  # plain numbers only
    second = EpochSchedule(p, optimizer(p))
    second.load_state_dict(state)
    assert second.state_dict() == first.state_dict()
    for sched in (first, second):
        sched.after_epoch(5, 0.45, "max")  # second stall in a row -> drop
    assert second.set_epoch(6) == first.set_epoch(6) == pytest.approx(2.5e-4)


def test_initial_lr_survives_optimizer_state():
    p = TrialParams(lr=1e-3, lr_schedule="step", step_size=1, gamma=0.5)
    opt = optimizer(p)
    EpochSchedule(p, opt).set_epoch(3)
    resumed = optimizer(p)
    resumed.load_state_dict(opt.state_dict())
    assert EpochSchedule(p, resumed).set_epoch(4) == pytest.approx(1.25e-4)


def test_trainable_blocks_table():
    p = TrialParams(head_epochs=2, unfreeze=3, unfreeze_every=2)
    assert [trainable_blocks(p, e, 7) for e in range(1, 11)] == [0, 0, 1, 1, 2, 2, 3, 3, 3, 3]
    p = TrialParams(head_epochs=1, unfreeze="all")
    assert [trainable_blocks(p, e, 7) for e in range(1, 4)] == [0, 7, 7]
    assert [trainable_blocks(TrialParams(unfreeze=2), e, 7) for e in (1, 2)] == [2, 2]
    assert trainable_blocks(TrialParams(unfreeze=9), 1, 4) == 4  # capped at the model's blocks
    assert trainable_blocks(TrialParams(unfreeze=0, head_epochs=1), 5, 4) == 0


@pytest.mark.filterwarnings("ignore:CUDA is not available")  # building the cuda context warns on a CPU box
def test_autocast_on_cpu_is_a_no_op():
    for enabled in (True, False):
        assert isinstance(autocast(torch.device("cpu"), enabled), contextlib.nullcontext)
    assert isinstance(autocast("cuda", False), contextlib.nullcontext)
    assert isinstance(autocast("cuda", True), torch.autocast)


def test_a_refit_replays_the_trials_lr_path_whatever_its_schedule():
    """A plateau schedule's signal (the val score) is gone in a refit on train+val: the refit
    takes the trial's recorded LRs instead, both groups scaled alike, and the schedule after them."""
    p = TrialParams(lr=0.01, lr_schedule="plateau", plateau_patience=0, epochs=5, backbone_lr_mult=0.1)
    opt = optimizer(p)
    sched = EpochSchedule(p, opt, replay=[0.01, 0.005, 0.0025])
    assert [sched.set_epoch(e) for e in (1, 2, 3)] == pytest.approx([0.01, 0.005, 0.0025])
    assert opt.param_groups[1]["lr"] == pytest.approx(0.00025)  # the backbone keeps its ratio
    assert sched.set_epoch(4) == pytest.approx(0.01)  # past the path: the schedule's own (no plateau seen)


def test_refit_config_stops_at_the_best_epoch_with_the_planned_schedule():
    import pandas as pd

    from analysis.retrain import refit_config

    config = {"lr": 0.01, "epochs": 6, "seed": 3}
    history = pd.DataFrame({"epoch": [1, 2, 3, 4], "lr": [0.01, 0.008, 0.005, 0.002]})
    c, lr_path = refit_config(config, history, epochs=3, seed_offset=1000)
    assert c == {"lr": 0.01, "epochs": 6, "seed": 1003} and lr_path == [0.01, 0.008, 0.005]
    assert config == {"lr": 0.01, "epochs": 6, "seed": 3}  # the trial's own config is left as it was
