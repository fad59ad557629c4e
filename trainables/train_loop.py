"""The per-trial train loop: a plain function of a config dict.

`fit(config, session)` trains one model and reports validation metrics and a checkpoint each
epoch. The session decides where reports go: `RayTrainSession` (inside a Ray Train worker of
a search trial) or `LocalSession` (the retrain of the best config, in-process). Everything a
trial needs is in `config`: the knobs (see `trainables.params.TrialParams`) plus `config['run']`,
the search-wide context (data, split file, metric, storage) that the search puts there.
"""
from __future__ import annotations

import functools
import math
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trainables import augment, checkpoint, data, imbalance, metrics, models, schedule
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
    load = functools.partial(data.load_images, run["data_root"], classes=classes, image_size=params.image_size,
                             cache_dir=run.get("cache_dir"))
    x_train, y_train = load([r for r in rows if r.split in train_splits])
    if session.world_size > 1:  # each worker trains on its own shard
        x_train, y_train = x_train[session.rank::session.world_size], y_train[session.rank::session.world_size]
    val = load([r for r in rows if r.split == val_split]) if val_split else None

    meta = {
        "arch": params.model, "params": p, "num_classes": len(classes), "class_names": classes,
        "image_size": params.image_size, **models.preprocessing(p), "objective": run.get("metric", "val_acc"),
    }
    model = models.build(p, len(classes))
    backbone_params, head_params = models.param_groups(model)
    opt = schedule.make_optimizer(params, backbone_params, head_params)
    lr_schedule = schedule.EpochSchedule(params, opt)
    stopper = EarlyStop(params.early_stop_patience if val_split else 0)  # a retrain runs its chosen epochs
    start = 1
    restored = session.restored_dir()
    if restored:
        model.load_state_dict(torch.load(Path(restored) / checkpoint.WEIGHTS, map_location="cpu", weights_only=True))
        state = checkpoint.load_train_state(restored)
        if state:
            opt.load_state_dict(state["optimizer"])
            if "schedule" in state:  # checkpoints from before the schedules have none
                lr_schedule.load_state_dict(state["schedule"])
                stopper.load_state_dict(state["early_stop"])
            start = state["epoch"] + 1
    device = session.device
    if device.type == "cuda":  # convolutions run fastest on NHWC tensor cores
        model = model.to(memory_format=torch.channels_last)
    model = session.prepare_model(model)
    step_fn = _compiled(model) if run.get("compile") else model
    amp = params.mixed_precision and device.type == "cuda"

    objective, mode = (run.get("metric", "val_acc"), run.get("mode", "max")) if val is not None else ("train_loss", "min")
    batches = Batches(x_train, y_train, params, classes, device, run.get("loader_workers", 0))
    loss_weight = imbalance.loss_weights(params, imbalance.class_counts(y_train, len(classes)), classes)
    loss_weight = loss_weight.to(device) if loss_weight is not None else None
    mix = augment.batch_mix(params, len(classes))
    grow = params.unfreeze != "all" or params.head_epochs or params.unfreeze_every
    n_blocks = len(models.backbone_groups(checkpoint.unwrap(model))) if _is_pretrained(params) and grow else 0
    blocks = None

    last: dict = {}
    for epoch in range(start, params.epochs + 1):
        if n_blocks:
            want = schedule.trainable_blocks(params, epoch, n_blocks)
            if want != blocks:
                models.set_trainable(checkpoint.unwrap(model), want)
                if blocks is not None and session.world_size > 1:  # DDP fixes its gradient set when wrapping
                    model = step_fn = session.prepare_model(checkpoint.unwrap(model))
                blocks = want
        lr_schedule.set_epoch(epoch)
        models.set_train_mode(model)
        total, seen, started = torch.zeros((), device=device), 0, time.perf_counter()
        trainable = [q for q in model.parameters() if q.requires_grad]
        for step, (xb, yb) in enumerate(batches.epoch(), 1):
            x = checkpoint.normalize(xb, meta)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            target = yb
            if mix is not None and len(yb) > 1:
                x, target = mix(x, yb)
            with schedule.autocast(device, amp):
                logits = step_fn(x)
            loss = F.cross_entropy(logits.float(), target, weight=loss_weight, label_smoothing=params.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if params.grad_clip:
                torch.nn.utils.clip_grad_norm_(trainable, params.grad_clip)
            opt.step()
            total += loss.detach() * len(yb)
            seen += len(yb)
            if step % DIVERGENCE_CHECK_STEPS == 0:  # a sync every N steps, not every step
                _check_finite(float(total), epoch, step, params)
        train_loss = float(total) / max(1, seen)
        _check_finite(train_loss, epoch, step, params)
        row = {"epoch": epoch, "train_loss": train_loss,
               "train_images_per_s": seen / max(1e-9, time.perf_counter() - started),
               "lr": opt.param_groups[0]["lr"]}
        if n_blocks:
            row["trainable_blocks"] = blocks
        if val is not None:
            row.update(evaluate(model, meta, *val, device=device, amp=amp))
        row["epoch_of"] = params.epochs
        lr_schedule.after_epoch(epoch, row[objective], mode)
        stop = stopper.update(row[objective], mode)

        def save(d, epoch=epoch, row=row):
            checkpoint.save(d, model, {**meta, "epoch": epoch, "metrics": row},
                            {"optimizer": opt.state_dict(), "epoch": epoch, "schedule": lr_schedule.state_dict(),
                             "early_stop": stopper.state_dict()})

        session.report(row, save)
        last = row
        if stop:  # the trial ends here as completed; Tune and ASHA see its last report
            break
    return last


def _is_pretrained(params: TrialParams) -> bool:
    return params.model != "cnn" and params.pretrained is not False


def _compiled(model):
    """torch.compile for long GPU trials (`resources.compile: true`); the first epoch pays the compile."""
    return torch.compile(model)


class EarlyStop:
    """Stop after `patience` epochs without a new best objective (0 = never)."""

    def __init__(self, patience: int):
        self.patience, self.best, self.stale = patience, None, 0

    def update(self, value: float, mode: str) -> bool:
        better = self.best is None or (value > self.best if mode == "max" else value < self.best)
        self.best, self.stale = (value, 0) if better else (self.best, self.stale + 1)
        return bool(self.patience) and self.stale >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "stale": self.stale}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.stale = state.get("best"), state.get("stale", 0)


class Batches:
    """One epoch's shuffled (augmented) batches, on the device.

    Without augmentation a batch is a gather from the memory-mapped cache: no per-image Python.
    With augmentation each image is transformed on its own (torchvision v2 on uint8 tensors),
    in `loader_workers` DataLoader processes when asked. `class_weight: sampler` draws a
    class-balanced epoch with replacement instead of a permutation.
    """

    def __init__(self, x, y, params: TrialParams, classes: list[str], device, workers: int = 0):
        self.x, self.y, self.device, self.workers = x, y, device, int(workers)
        self.array = x.numpy()  # numpy's gather from a memory map is several times faster than torch indexing
        self.batch_size = params.batch_size
        self.transform = augment.train_transform(params)
        self.weights = imbalance.sample_weights(params, y, classes)
        self.gen = torch.Generator().manual_seed(params.seed)
        self.pin = device.type == "cuda"
        self.loader = None

    def order(self) -> torch.Tensor:
        if self.weights is not None:
            return torch.multinomial(self.weights, len(self.y), replacement=True, generator=self.gen)
        return torch.randperm(len(self.y), generator=self.gen)

    def chunks(self) -> list[torch.Tensor]:
        """The epoch's index batches; a last batch of one image is dropped (batch norm cannot train on it)."""
        out = list(self.order().split(self.batch_size))
        return out[:-1] if len(out) > 1 and len(out[-1]) == 1 else out

    def index_batches(self) -> list[list[int]]:
        return [c.tolist() for c in self.chunks()]

    def __len__(self) -> int:  # DataLoader's batch_sampler protocol: iter() gives a new epoch's order
        return math.ceil(len(self.y) / self.batch_size)

    def __iter__(self):
        return iter(self.index_batches())

    def epoch(self):
        if self.transform is None:
            for idx in self.chunks():  # sorted: a batch is a set, and the memory map reads forward
                idx = idx.sort().values
                xb, yb = torch.from_numpy(self.array[idx.numpy()]), self.y[idx]
                if self.pin:
                    xb, yb = xb.pin_memory(), yb.pin_memory()
                yield xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True)
            return
        if self.loader is None:  # built once: worker processes persist across epochs
            self.loader = torch.utils.data.DataLoader(
                _Augmented(self.x, self.y, self.transform), batch_sampler=self, num_workers=self.workers,
                pin_memory=self.pin, persistent_workers=self.workers > 0)
        for xb, yb in self.loader:
            yield xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True)


class _Augmented(torch.utils.data.Dataset):
    def __init__(self, x, y, transform):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.transform(self.x[i]), self.y[i]


@torch.no_grad()
def evaluate(model, meta: dict, x, y, device="cpu", batch_size: int = 256, prefix: str = "val_",
             with_confusion: bool = False, with_probs: bool = False, amp: bool = False) -> dict:
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
        with schedule.autocast(torch.device(device), amp):
            logits = model(xb).float()
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
