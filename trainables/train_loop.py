"""The per-trial train loop: a plain function of a config dict.

`fit(config, session)` trains one model and reports validation metrics and a checkpoint each
epoch. The session decides where reports go: `RayTrainSession` (inside a Ray Train worker of
a search trial) or `LocalSession` (the retrain of the best config, in-process). Everything a
trial needs is in `config`: the knobs (see `trainables.params.TrialParams`) plus `config['run']`,
the search-wide context (data, split file, metric, storage) that the search puts there.
"""
from __future__ import annotations

import math
import random
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trainables import checkpoint, data, metrics, models
from trainables.params import TrialParams


DIVERGENCE_CHECK_STEPS = 20


class TrialDiverged(FloatingPointError):
    """The training loss became NaN or infinite: this configuration is unusable."""


def _check_finite(value: float, epoch: int, step: int, params) -> None:
    if not math.isfinite(value):
        raise TrialDiverged(f"training loss became {value} at epoch {epoch}, step {step} (lr={params.lr:g}, "
                            f"batch_size={params.batch_size})")


class LocalSession:
    """Runs `fit` in this process: one worker, reports collected in `history`."""

    rank, world_size = 0, 1

    def __init__(self, checkpoint_dir: str | Path | None = None, device: str | None = None):
        self.history: list[dict] = []
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def prepare_model(self, model):
        return model.to(self.device)

    def restored_dir(self):
        return None

    def report(self, row: dict, save) -> None:
        self.history.append(row)
        if self.checkpoint_dir is not None:
            save(self.checkpoint_dir)


class RayTrainSession:
    """Runs `fit` inside a Ray Train worker: `ray.train.report` with a checkpoint every epoch."""

    def __init__(self):
        import ray
        import ray.train
        import ray.train.torch

        self._train = ray.train
        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self._prepare = ray.train.torch.prepare_model
        self.node_id = ray.get_runtime_context().get_node_id()

    def prepare_model(self, model):
        return self._prepare(model)

    def restored_dir(self):
        ck = self._train.get_checkpoint()
        if ck is None:
            return None
        return ck.to_directory()

    def report(self, row: dict, save) -> None:
        row = {**row, "node_id": self.node_id}  # which node trained it: trials move when a node dies
        with tempfile.TemporaryDirectory() as tmp:
            ck = None
            if self.rank == 0:
                save(tmp)
                ck = self._train.Checkpoint.from_directory(tmp)
            self._train.report(row, checkpoint=ck)  # every rank reports; Tune takes rank 0's


def train_loop_per_worker(config: dict) -> None:
    """Entry point of each Ray Train worker of a search trial."""
    cpus = config["run"].get("cpus_per_worker", 1)
    torch.set_num_threads(max(1, int(cpus)))
    fit(config, RayTrainSession())


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def fit(config: dict, session, train_splits=("train",), val_split: str | None = "val") -> dict:
    """Train for params.epochs epochs, reporting after each; return the last report.

    Epochs are 1-based and continue from a restored checkpoint, so that ASHA (which counts
    `epoch`) and the curves stay right when Ray retries or resumes a trial.
    """
    run = config["run"]
    params = TrialParams.model_validate({k: v for k, v in config.items() if k != "run"})
    p = params.model_dump()
    classes = run["class_names"]
    _seed_everything(params.seed + session.rank)

    rows = data.read_split(run["split_file"], tuple(train_splits) + ((val_split,) if val_split else ()))
    train_items = [r for r in rows if r.split in train_splits]
    x_train, y_train = data.load_images(run["data_root"], train_items, classes, params.image_size)
    if session.world_size > 1:  # each worker trains on its own shard
        x_train, y_train = x_train[session.rank::session.world_size], y_train[session.rank::session.world_size]
    val = None
    if val_split:
        val = data.load_images(run["data_root"], [r for r in rows if r.split == val_split], classes, params.image_size)

    norm = models.preprocessing(p)
    meta = {
        "arch": params.model, "params": p, "num_classes": len(classes), "class_names": classes,
        "image_size": params.image_size, **norm, "objective": run.get("metric", "val_acc"),
    }
    model = models.build(p, len(classes))
    trainable = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.Adam(trainable, lr=params.lr, weight_decay=params.weight_decay)
    start = 1
    restored = session.restored_dir()
    if restored:
        model.load_state_dict(torch.load(Path(restored) / checkpoint.WEIGHTS, map_location="cpu", weights_only=True))
        state = checkpoint.load_train_state(restored)
        if state:
            opt.load_state_dict(state["optimizer"])
            start = state["epoch"] + 1
    model = session.prepare_model(model)
    device = session.device

    last: dict = {}
    gen = torch.Generator().manual_seed(params.seed + session.rank)
    for epoch in range(start, params.epochs + 1):
        models.set_train_mode(model)
        total, seen = torch.zeros((), device=device), 0
        for step, idx in enumerate(torch.randperm(len(x_train), generator=gen).split(params.batch_size), 1):
            xb = checkpoint.normalize(x_train[idx].to(device, non_blocking=True), meta)
            yb = y_train[idx].to(device, non_blocking=True)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
            seen += len(idx)
            if step % DIVERGENCE_CHECK_STEPS == 0:  # a sync every N steps, not every step
                _check_finite(float(total), epoch, step, params)
        train_loss = float(total) / max(1, seen)
        _check_finite(train_loss, epoch, step, params)
        row = {"epoch": epoch, "train_loss": train_loss}
        if val is not None:
            row.update(evaluate(model, meta, *val, device=device))
        row["epoch_of"] = params.epochs

        def save(d, epoch=epoch, row=row):
            checkpoint.save(d, model, {**meta, "epoch": epoch, "metrics": row},
                            {"optimizer": opt.state_dict(), "epoch": epoch})

        session.report(row, save)
        last = row
    return last


@torch.no_grad()
def evaluate(model, meta: dict, x, y, device="cpu", batch_size: int = 256, prefix: str = "val_",
             with_confusion: bool = False, with_probs: bool = False) -> dict:
    """Loss and classification metrics of `model` on uint8 images x with labels y; if asked, also
    the confusion matrix as nested lists ('confusion') and the class probabilities ('probs')."""
    model.eval()
    k = meta["num_classes"]
    cm = torch.zeros((k, k), dtype=torch.long, device=device)
    loss = torch.zeros((), device=device)
    probs = []
    for i in range(0, len(x), batch_size):
        xb = checkpoint.normalize(x[i:i + batch_size].to(device), meta)
        yb = y[i:i + batch_size].to(device)
        logits = model(xb)
        loss += F.cross_entropy(logits, yb, reduction="sum")
        cm += metrics.confusion(yb, logits.argmax(1), k)
        if with_probs:
            probs.append(logits.softmax(-1).cpu())
    out = {f"{prefix}loss": float(loss) / max(1, len(x))}
    out.update(metrics.from_confusion(cm.cpu(), meta["class_names"], prefix))
    if with_confusion:
        out["confusion"] = cm.cpu().tolist()
    if with_probs:
        out["probs"] = torch.cat(probs) if probs else torch.zeros((0, k))
    return out
