"""The per-trial train loop: a plain function of a config dict.

`fit(config, session)` trains one model and reports validation metrics and a checkpoint each
epoch. The session (`trainables.sessions`) decides where reports go: a reused Tune trial actor,
a Ray Train worker (DDP), or this process (the retrain of the best config). Everything a
trial needs is in `config`: the knobs (see `trainables.params.TrialParams`) plus `config['run']`,
the search-wide context (data, split file, metric, storage) that the search puts there.
"""
from __future__ import annotations

import functools
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trainables import augment, checkpoint, data, imbalance, metrics, models, schedule
from trainables.params import TrialParams
from trainables.sessions import RayTrainSession


DIVERGENCE_CHECK_STEPS = 20


class TrialDiverged(FloatingPointError):
    """The training loss became NaN or infinite: this configuration is unusable."""


def _check_finite(value: float, epoch: int, step: int, params) -> None:
    if not math.isfinite(value):
        raise TrialDiverged(f"training loss became {value} at epoch {epoch}, step {step} (lr={params.lr:g}, "
                            f"batch_size={params.batch_size})")


class WorkerError(RuntimeError):
    """A Ray Train worker's exception, raised again with its own first line as the message.

    Ray Train shortens a worker's error to its first and last few hundred characters, which
    can cut out the line that names the cause (DDP's errors run to thousands of characters).
    This one-line exception comes last, so its line, e.g. `WorkerError: RuntimeError: Expected
    to have finished reduction...`, survives into error.txt, trials.csv and the console."""


def train_loop_per_worker(config: dict) -> None:
    """Entry point of each Ray Train worker of a multi-worker (or `use_ray_train`) trial."""
    cpus = config["run"].get("cpus_per_worker", 1)
    torch.set_num_threads(max(1, int(cpus)))
    try:
        fit(config, RayTrainSession())
    except Exception as e:
        lines = str(e).strip().splitlines()
        raise WorkerError(f"{type(e).__name__}: {lines[0][:300] if lines else ''}") from e


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def fit(config: dict, session, train_splits=("train",), val_split: str | None = "val") -> dict:
    """Train for params.epochs epochs, reporting after each; return the last report.

    A refit sets `run.stop_after_epoch` (stop there, the LR schedule still planned over all
    params.epochs) and `run.lr_path` (the trial's LRs, replayed epoch by epoch).

    Epochs are 1-based and continue from a restored checkpoint, so that ASHA (which counts
    `epoch`) and the curves stay right when Ray retries or resumes a trial. With several
    workers each trains on an equal share of every epoch's batches (DDP), and the reported
    losses and metrics are sums over all workers: every rank reports the same row.
    """
    run = config["run"]
    params = TrialParams.model_validate({k: v for k, v in config.items() if k != "run"})
    p = params.model_dump()
    classes = run["class_names"]
    _seed_everything(params.seed + session.rank)

    rows = data.read_split(run["split_file"], tuple(train_splits) + ((val_split,) if val_split else ()))
    load = functools.partial(data.load_images, run["data_root"], classes=classes, image_size=params.image_size,
                             cache_dir=run.get("cache_dir"), cache_max_gb=run.get("cache_max_gb"))
    x_train, y_train = load([r for r in rows if r.split in train_splits])
    val = load([r for r in rows if r.split == val_split]) if val_split else None

    meta = {
        "arch": params.model, "params": p, "num_classes": len(classes), "class_names": classes,
        "image_size": params.image_size, **models.preprocessing(p), "objective": run.get("metric", "val_acc"),
    }
    model = models.build(p, len(classes))
    backbone_params, head_params = models.param_groups(model)
    opt = schedule.make_optimizer(params, backbone_params, head_params)
    lr_schedule = schedule.EpochSchedule(params, opt, replay=run.get("lr_path"))
    stopper = EarlyStop(params.early_stop_patience if val_split else 0)  # a retrain runs its chosen epochs
    start = _restore(session, model, opt, lr_schedule, stopper)
    device = session.device
    nhwc = models.prefers_channels_last(params.model, device)
    if nhwc:
        model = model.to(memory_format=torch.channels_last)
    freezing = Freezing(params, model)
    freezing.apply(model, start)  # before DDP wraps the model: it fixes the set of trained parameters
    model = session.prepare_model(model)
    step_fn = _compiled(model) if run.get("compile") else model
    amp = params.mixed_precision and device.type == "cuda"
    normalize = checkpoint.Normalizer(meta, device)

    objective, mode = (run.get("metric", "val_acc"), run.get("mode", "max")) if val is not None else ("train_loss", "min")
    batches = Batches(x_train, y_train, params, classes, device, run.get("loader_workers", 0),
                      shard=(session.rank, session.world_size))
    loss_weight = imbalance.loss_weights(params, imbalance.class_counts(y_train, len(classes)), classes)
    loss_weight = loss_weight.to(device) if loss_weight is not None else None
    mix = augment.batch_mix(params, len(classes))

    last: dict = {}
    try:
        for epoch in range(start, min(params.epochs, run.get("stop_after_epoch") or params.epochs) + 1):
            if freezing.apply(checkpoint.unwrap(model), epoch) and session.world_size > 1:
                model = session.prepare_model(checkpoint.unwrap(model))  # DDP again, for the new trained set
                step_fn = _compiled(model) if run.get("compile") else model
            session.epoch_started()
            lr_schedule.set_epoch(epoch)
            models.set_train_mode(model)
            total, seen, started = torch.zeros((), device=device), 0, time.perf_counter()
            trainable = [q for q in model.parameters() if q.requires_grad]
            step = 0
            for step, (xb, yb) in enumerate(batches.epoch(), 1):
                x = normalize(xb)
                if nhwc:
                    x = x.contiguous(memory_format=torch.channels_last)
                target = yb
                if mix is not None and len(yb) > 1:
                    x, target = mix(x, yb)
                with schedule.autocast(device, amp):
                    logits = step_fn(x)
                loss = F.cross_entropy(logits.float(), target, weight=loss_weight,
                                       label_smoothing=params.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if params.grad_clip:
                    torch.nn.utils.clip_grad_norm_(trainable, params.grad_clip)
                opt.step()
                total += loss.detach() * len(yb)
                seen += len(yb)
                if step % DIVERGENCE_CHECK_STEPS == 0:  # a sync every N steps, not every step
                    # summed over the ranks, so that all of them stop at the same step
                    _check_finite(float(session.all_sum(total.detach().clone())), epoch, step, params)
            elapsed = time.perf_counter() - started
            sums = session.all_sum(torch.stack([total.float(), torch.tensor(float(seen), device=device)]))
            train_loss = float(sums[0]) / max(1.0, float(sums[1]))
            _check_finite(train_loss, epoch, step, params)
            row = {"epoch": epoch, "train_loss": train_loss,
                   "train_images_per_s": float(sums[1]) / max(1e-9, elapsed), "lr": opt.param_groups[0]["lr"]}
            if freezing.n_blocks:
                row["trainable_blocks"] = freezing.blocks
            if val is not None:
                # the bare model, with rank 0's buffers: a DDP forward would sync them itself, in a
                # collective that a rank with no val images would never join
                session.sync_buffers(checkpoint.unwrap(model))
                row.update(evaluate(checkpoint.unwrap(model), meta, *val, device=device, amp=amp, session=session))
            row["epoch_of"] = params.epochs
            lr_schedule.after_epoch(epoch, row[objective], mode)
            stop = stopper.update(row[objective], mode)
            if stop:
                row["early_stopped"] = True  # ended by its own patience, not by ASHA: a completed trial

            def save(d, epoch=epoch, row=row):
                checkpoint.save(d, model, {**meta, "epoch": epoch, "metrics": row},
                                {"optimizer": opt.state_dict(), "epoch": epoch, "schedule": lr_schedule.state_dict(),
                                 "early_stop": stopper.state_dict()})

            session.report(row, save)
            last = row
            if stop:  # the trial ends here as completed; Tune and ASHA see its last report
                break
    finally:
        batches.close()  # DataLoader worker processes must not outlive the trial in a reused actor
    return last


def _restore(session, model, opt, lr_schedule, stopper) -> int:
    """Load the session's checkpoint, if any, into the model and training state; the first epoch to run."""
    with session.restored() as restored:
        if not restored:
            return 1
        model.load_state_dict(torch.load(Path(restored) / checkpoint.WEIGHTS, map_location="cpu", weights_only=True))
        state = checkpoint.load_train_state(restored)
    if not state:
        return 1
    opt.load_state_dict(state["optimizer"])
    if "schedule" in state:  # checkpoints from before the schedules have none
        lr_schedule.load_state_dict(state["schedule"])
        stopper.load_state_dict(state["early_stop"])
    return state["epoch"] + 1


class Freezing:
    """Which top backbone blocks train in each epoch (`head_epochs`, `unfreeze`, `unfreeze_every`).

    Only pretrained backbones are frozen; a model trained from scratch trains every layer."""

    def __init__(self, params: TrialParams, model):
        grow = params.unfreeze != "all" or params.head_epochs or params.unfreeze_every
        self.params = params
        self.n_blocks = len(models.backbone_groups(checkpoint.unwrap(model))) if _is_pretrained(params) and grow else 0
        self.blocks = None

    def apply(self, model, epoch: int) -> bool:
        """Set `requires_grad` for `epoch` on the unwrapped model; True when the trained set changed."""
        if not self.n_blocks:
            return False
        want = schedule.trainable_blocks(self.params, epoch, self.n_blocks)
        if want == self.blocks:
            return False
        models.set_trainable(model, want)
        self.blocks = want
        return True


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

    `shard=(rank, world_size)`: as `DistributedSampler` does, every rank draws the same epoch
    order (one seed), padded by its first images to a multiple of world_size, and takes every
    world_size-th image of it: equal shares, so every rank runs the same number of steps (a
    rank with one step more would wait forever in DDP's gradient all-reduce).
    """

    def __init__(self, x, y, params: TrialParams, classes: list[str], device, workers: int = 0,
                 shard: tuple[int, int] = (0, 1)):
        self.x, self.y, self.device, self.workers = x, y, device, int(workers)
        self.array = x.numpy()  # numpy's gather from a memory map is several times faster than torch indexing
        self.batch_size = params.batch_size
        self.transform = augment.train_transform(params)
        self.weights = imbalance.sample_weights(params, y, classes)
        self.gen = torch.Generator().manual_seed(params.seed)
        self.rank, self.world_size = shard
        self.pin = device.type == "cuda"
        self.loader = None

    def order(self) -> torch.Tensor:
        n = len(self.y)
        if self.weights is not None:
            order = torch.multinomial(self.weights, n, replacement=True, generator=self.gen)
        else:
            order = torch.randperm(n, generator=self.gen)
        return even_shard(order, self.rank, self.world_size)

    def chunks(self) -> list[torch.Tensor]:
        """The epoch's index batches; a last batch of one image is dropped (batch norm cannot train on it)."""
        out = list(self.order().split(self.batch_size))
        return out[:-1] if len(out) > 1 and len(out[-1]) == 1 else out

    def index_batches(self) -> list[list[int]]:
        return [c.tolist() for c in self.chunks()]

    def __len__(self) -> int:  # DataLoader's batch_sampler protocol: iter() gives a new epoch's order
        return math.ceil(math.ceil(len(self.y) / self.world_size) / self.batch_size)

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

    def close(self) -> None:
        """Stop the DataLoader's worker processes, if any."""
        it = getattr(self.loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self.loader = None


def even_shard(order: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank `rank`'s equal share of `order`, padded with its first items to a multiple of world_size."""
    if world_size == 1:
        return order
    per = math.ceil(len(order) / world_size)
    padded = torch.cat([order, order[: per * world_size - len(order)]])
    return padded[rank::world_size]


class _Augmented(torch.utils.data.Dataset):
    def __init__(self, x, y, transform):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.transform(self.x[i]), self.y[i]


@torch.no_grad()
def evaluate(model, meta: dict, x, y, device="cpu", batch_size: int = 256, prefix: str = "val_",
             with_confusion: bool = False, with_probs: bool = False, amp: bool = False, session=None) -> dict:
    """Loss and classification metrics of `model` on uint8 images x with labels y; if asked, also
    the confusion matrix as nested lists ('confusion') and the class probabilities ('probs').

    With a multi-worker `session`, each rank evaluates every world_size-th image and the
    confusion matrix and loss are summed over the ranks: the metrics cover the whole set, once.
    `{prefix}images` says how many images they cover."""
    model.eval()
    rank, world = (session.rank, session.world_size) if session is not None else (0, 1)
    x, y = x[rank::world], y[rank::world]
    k = meta["num_classes"]
    normalize = checkpoint.Normalizer(meta, device)
    cm = torch.zeros((k, k), dtype=torch.long, device=device)
    loss = torch.zeros((), device=device)
    probs = []
    for i in range(0, len(x), batch_size):
        xb = normalize(x[i:i + batch_size].to(device))
        yb = y[i:i + batch_size].to(device)
        with schedule.autocast(torch.device(device), amp):
            logits = model(xb).float()
        loss += F.cross_entropy(logits, yb, reduction="sum")
        cm += metrics.confusion(yb, logits.argmax(1), k)
        if with_probs:
            probs.append(logits.softmax(-1).cpu())
    if world > 1:
        cm = session.all_sum(cm)
        loss = session.all_sum(loss)
    n = int(cm.sum())
    out = {f"{prefix}loss": float(loss) / max(1, n), f"{prefix}images": n}
    out.update(metrics.from_confusion(cm.cpu(), meta["class_names"], prefix))
    if with_confusion:
        out["confusion"] = cm.cpu().tolist()
    if with_probs:
        out["probs"] = torch.cat(probs) if probs else torch.zeros((0, k))
    return out
