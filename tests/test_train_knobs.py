"""The knobs act inside the real train loop (`fit`), not only in their own modules."""
from __future__ import annotations

import torch

from tests.conftest import make_folder
from tests.test_train_loop import config_for
from trainables.models import registry
from trainables.trial import checkpoint, sessions, train_loop


class Snapshots(sessions.LocalSession):
    """A LocalSession that keeps the model's weights after every epoch."""

    def __init__(self, tmp_path):
        super().__init__()
        self.tmp, self.weights = tmp_path, []

    def report(self, row, save):
        super().report(row, save)
        d = self.tmp / f"epoch{row['epoch']}"
        save(d)
        self.weights.append(torch.load(d / checkpoint.WEIGHTS, weights_only=True))


def _changed(a: dict, b: dict, names) -> set[str]:
    return {n for n in names if not torch.equal(a[n], b[n])}


def test_head_stage_then_scheduled_unfreezing_of_the_top_block(folder, tmp_path):
    """Epoch 1 trains the head only; from epoch 2 the top block trains too; lower blocks never do."""
    session = Snapshots(tmp_path)
    cfg, ctx = config_for(folder, tmp_path, model="efficientnet_lite0", pretrained=True, unfreeze=1, head_epochs=1,
                          epochs=2, image_size=32, lr=0.01, cnn_width=None)
    cfg.pop("cnn_width")
    train_loop.fit(cfg, ctx, session)
    start = registry.build({"model": "efficientnet_lite0", "pretrained": True}, 3).state_dict()
    groups = registry.backbone_groups(registry.build({"model": "efficientnet_lite0"}, 3))
    top, lower = set(groups[-1]), {n for g in groups[:-1] for n in g}
    e1, e2 = session.weights
    assert not _changed(start, e1, top | lower)  # head stage: the backbone is untouched
    assert _changed(e1, e2, top) and not _changed(e1, e2, lower)
    assert [r["trainable_blocks"] for r in session.history] == [0, 1]
    assert _changed(start, e1, ["classifier.weight"])


def test_step_schedule_and_warmup_reach_the_optimizer(folder, tmp_path):
    session = sessions.LocalSession()
    train_loop.fit(*config_for(folder, tmp_path, lr=0.01, epochs=4, lr_schedule="step", step_size=2, gamma=0.5),
                   session)
    assert [round(r["lr"], 6) for r in session.history] == [0.01, 0.01, 0.005, 0.005]
    session = sessions.LocalSession()
    train_loop.fit(*config_for(folder, tmp_path, lr=0.01, epochs=2, warmup_epochs=1), session)
    assert [round(r["lr"], 6) for r in session.history] == [0.005, 0.01]


def test_class_weights_change_the_training_loss(tmp_path):
    folder = make_folder(tmp_path / "imb", {"a": 40, "b": 8, "c": 8})
    losses = {}
    for weight in ("none", "balanced", "sampler"):
        session = sessions.LocalSession()
        train_loop.fit(*config_for(folder, tmp_path, lr=0.01, epochs=1, class_weight=weight), session)
        losses[weight] = session.history[0]["train_loss"]
    assert len({round(v, 6) for v in losses.values()}) == 3, losses


def test_augmentation_and_mixup_change_what_is_trained_on(folder, tmp_path):
    def loss(**knobs):
        session = sessions.LocalSession()
        train_loop.fit(*config_for(folder, tmp_path, lr=0.01, epochs=1, **knobs), session)
        return session.history[0]["train_loss"]

    plain = loss()
    assert loss() == plain  # seeded: the same run gives the same loss
    for knobs in ({"hflip": 1.0}, {"rotation": 30}, {"mixup": 0.4}, {"label_smoothing": 0.2},
                  {"optimizer": "sgd", "nesterov": True}, {"grad_clip": 0.01}):
        assert loss(**knobs) != plain, knobs


def test_early_stopping_ends_a_stalled_trial(folder, tmp_path):
    session = sessions.LocalSession()
    train_loop.fit(*config_for(folder, tmp_path, lr=1e-12, epochs=6, early_stop_patience=2), session)
    assert [r["epoch"] for r in session.history] == [1, 2, 3]  # val_acc never improves after epoch 1


def test_plateau_state_survives_a_resume(folder, tmp_path):
    """A resumed trial continues the schedule where the checkpoint left it."""
    cfg, ctx = config_for(folder, tmp_path, lr=1e-12, epochs=3, lr_schedule="plateau", plateau_patience=0,
                          plateau_factor=0.5)
    full = sessions.LocalSession(tmp_path / "ck_full")
    train_loop.fit(cfg, ctx, full)
    first = sessions.LocalSession(tmp_path / "ck")
    train_loop.fit({**cfg, "epochs": 2}, ctx, first)

    class Resumed(sessions.LocalSession):
        def restored_dir(self):
            return tmp_path / "ck"

    resumed = Resumed()
    train_loop.fit(cfg, ctx, resumed)
    assert [r["epoch"] for r in resumed.history] == [3]
    assert resumed.history[0]["lr"] == full.history[2]["lr"] < full.history[0]["lr"]
