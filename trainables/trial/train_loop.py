"""The per-trial train loop: `fit(config, context, session)`.

`fit` trains one model and reports validation metrics and a checkpoint each epoch. CONFIG is
the trial's hyperparameters (`trainables.params.TrialParams`), CONTEXT what the whole search
shares (`trainables.context.TrialContext`: data, objective, resources). The session
(`trainables.trial.sessions`) decides where reports go: a reused Tune trial actor, a Ray Train
worker (DDP), or this process (the final model's refits). `fit` is three steps: `_setup`
(data, model, optimiser), `_restore` (a checkpoint, the device, DDP) and `_epoch`, repeated.
"""
from __future__ import annotations

import functools
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from trainables.context import TrialContext
from trainables.data import dataset
from trainables.models import augment, footprint, limits, preprocess, registry
from trainables.params import TrialParams
from trainables.trial import checkpoint, imbalance, metrics, optim, precision, schedule
from trainables.trial.plan import TrialPlan
from trainables.trial.sessions import RayTrainSession

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


def train_loop_per_worker(loop_config: dict) -> None:
    """Entry point of each Ray Train worker of a multi-worker (or `use_ray_train`) trial:
    LOOP_CONFIG is `{"config": hyperparameters, "context": TrialContext}`."""
    context = loop_config["context"]
    torch.set_num_threads(max(1, int(context.resources.cpus_per_worker)))
    try:
        fit(loop_config["config"], context, RayTrainSession())
    except Exception as e:
        lines = str(e).strip().splitlines()
        raise WorkerError(f"{type(e).__name__}: {lines[0][:300] if lines else ''}") from e


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def fit(config: dict, context: TrialContext, session, plan: TrialPlan | None = None) -> dict:
    """Train for params.epochs epochs, reporting after each; return the last report.

    CONFIG holds the hyperparameters (`trainables.params.TrialParams`), CONTEXT the search-wide
    rest (data, objective, resources), PLAN what the run is for (`TrialPlan.for_trial()`, the
    default, or `TrialPlan.for_refit(...)`).

    Epochs are 1-based and continue from a restored checkpoint, so that ASHA (which counts
    `epoch`) and the curves stay right when Ray retries or resumes a trial. With several
    workers each trains on an equal share of every epoch's batches (DDP), and the reported
    losses and metrics are sums over all workers: every rank reports the same row.

    A search trial first measures its model (`trainables.models.footprint`); one over CONTEXT.limits
    reports that once, at epoch 0 with its objective NaN and `infeasible` saying why, and ends.
    """
    plan = plan or TrialPlan.for_trial()
    params = TrialParams.model_validate(config)
    _seed_everything(params.seed + session.rank)  # before the model's initial weights are drawn
    model = registry.build(params.model_dump(), len(context.class_names))
    figures = _measure(model, params, context, session) if plan.measure_footprint else {}
    over = limits.describe_over(figures, context.limits)
    # over the search's limits: never deployable, so not trained; the sampler learns why. (Not a
    # trial that already trained, retried or resumed from its checkpoint: it was judged then.)
    if _agreed(session, bool(over)) and not _has_checkpoint(session):
        row = {"epoch": 0, "epoch_of": params.epochs, context.metric: math.nan, **figures, "infeasible": over}
        session.report(row, None)
        return row
    t = _setup(params, model, figures, context, session, plan)
    last: dict = {}
    try:
        for epoch in range(_restore(session, t), min(t.params.epochs, plan.stop_after_epoch or t.params.epochs) + 1):
            _test_hold(epoch)
            row = _epoch(t, session, epoch)

            def save(d, epoch=epoch, row=row):
                checkpoint.save(d, t.model, {**t.meta, "epoch": epoch, "metrics": row},
                                {"optimizer": t.opt.state_dict(), "epoch": epoch,
                                 "schedule": t.lr_schedule.state_dict(), "early_stop": t.stopper.state_dict()})

            session.report(row, save)
            last = row
            if row.get("early_stopped"):  # the trial ends here as completed; Tune and ASHA see its last report
                break
    finally:
        t.batches.close()  # DataLoader worker processes must not outlive the trial in a reused actor
    return last


TEST_HOLD_DIR = "HPO_TEST_HOLD_DIR"  # a test seam (see _test_hold); never set in a real run


def _test_hold(epoch: int) -> None:
    """A test seam, inert unless HPO_TEST_HOLD_DIR is set: before training EPOCH, wait while the
    file $HPO_TEST_HOLD_DIR/epoch-EPOCH exists. The tests hold trials at a known point with it (a
    search that cannot end yet, a trial about to write a checkpoint) by construction, instead of
    hoping the machine is slow enough (tests/test_multinode.py, tests/test_resume_checkpoint_kill.py)."""
    folder = os.environ.get(TEST_HOLD_DIR)
    if not folder:
        return
    gate = Path(folder) / f"epoch-{epoch}"
    while gate.exists():
        time.sleep(0.05)


@dataclass
class _Trial:
    """One trial's model, optimiser and data, as `_setup` made them and its epochs change them."""

    params: TrialParams
    meta: dict
    model: torch.nn.Module
    step_fn: Callable[..., torch.Tensor]  # the model, or its torch.compile'd forward
    opt: torch.optim.Optimizer
    lr_schedule: schedule.EpochSchedule
    stopper: "EarlyStop"
    freezing: "Freezing"
    batches: "Batches"
    val: tuple | None
    objective: tuple[str, str]
    loss_weight: torch.Tensor | None
    mix: Callable | None  # mixup/cutmix on a batch (trainables.models.augment.batch_mix); None: off
    normalize: preprocess.Normalizer
    nhwc: bool
    amp: bool
    compile: bool
    footprint: dict  # trainables.models.footprint's figures, measured before the first epoch (none for a refit)


def _measure(model: torch.nn.Module, params: TrialParams, context: TrialContext, session) -> dict:
    """The model's footprint, measured by rank 0 (once per architecture and machine in a search)."""
    if session.rank != 0:
        return {}
    return footprint.measure_once(model, params.image_size, session.device, params.batch_size, context.footprints)


def _agreed(session, yes: bool) -> bool:
    """Rank 0's YES, on every rank: all of them decide alike whether the trial trains."""
    if session.world_size == 1:
        return yes
    return bool(session.all_sum(torch.tensor([float(yes and session.rank == 0)], device=session.device)).item())


def _has_checkpoint(session) -> bool:
    with session.restored() as folder:
        return folder is not None


def _setup(params: TrialParams, model: torch.nn.Module, figures: dict, context: TrialContext, session,
           plan: TrialPlan) -> _Trial:
    """Load the trial's images (from the decoded cache); build the MODEL's optimiser and schedule."""
    p = params.model_dump()
    classes = list(context.class_names)
    rows = dataset.read_split(context.split_file, plan.splits())
    load = functools.partial(dataset.load_images, context.data_root, classes=classes, image_size=params.image_size,
                             cache_dir=context.cache_dir, cache_max_gb=context.cache_max_gb)
    x_train, y_train = load([r for r in rows if r.split in plan.train_splits])
    meta = {"arch": params.model, "params": p, "num_classes": len(classes), "class_names": classes,
            "image_size": params.image_size, **preprocess.resolve(p), "objective": context.metric}
    backbone_params, head_params = registry.param_groups(model)
    opt = optim.make_optimizer(params, backbone_params, head_params)
    loss_weight = imbalance.loss_weights(params, imbalance.class_counts(y_train, len(classes)), classes)
    return _Trial(
        params=params, meta=meta, model=model, step_fn=model, opt=opt,
        lr_schedule=schedule.EpochSchedule(params, opt, replay=plan.lr_path),
        stopper=EarlyStop(params.early_stop_patience if plan.early_stop else 0),
        freezing=Freezing(params, model),
        batches=Batches(x_train, y_train, params, classes, session.device, context.resources.loader_workers,
                        shard=(session.rank, session.world_size)),
        val=load([r for r in rows if r.split == plan.val_split]) if plan.val_split else None,
        objective=plan.objective(context.metric, context.mode),
        loss_weight=loss_weight.to(session.device) if loss_weight is not None else None,
        mix=augment.batch_mix(params, len(classes)), normalize=preprocess.Normalizer(meta, session.device),
        nhwc=registry.prefers_channels_last(params.model, session.device),
        amp=params.mixed_precision and session.device.type == "cuda", compile=context.resources.compile,
        footprint=figures)


def _restore(session, t: _Trial) -> int:
    """Restore the session's checkpoint, if any, then put the model on the device and wrap it
    for the session; the first epoch to run."""
    start = _load_checkpoint(session, t.model, t.opt, t.lr_schedule, t.stopper)
    if t.nhwc:
        t.model = t.model.to(memory_format=torch.channels_last)
    t.freezing.apply(t.model, start)  # before DDP wraps the model: it fixes the set of trained parameters
    _wrap(session, t, t.model)
    return start


def _wrap(session, t: _Trial, bare) -> None:
    t.model = session.prepare_model(bare)
    t.step_fn = _compiled(t.model) if t.compile else t.model


def _epoch(t: _Trial, session, epoch: int) -> dict:
    """Train one epoch, evaluate, step the LR schedule and early stopping; the epoch's report."""
    if t.freezing.apply(checkpoint.unwrap(t.model), epoch) and session.world_size > 1:
        _wrap(session, t, checkpoint.unwrap(t.model))  # DDP again, for the new trained set
    session.epoch_started()
    t.lr_schedule.set_epoch(epoch)
    registry.set_train_mode(t.model)
    row = {"epoch": epoch, **_train_steps(t, session, epoch), "lr": t.opt.param_groups[0]["lr"]}
    if t.freezing.n_blocks:
        row["trainable_blocks"] = t.freezing.blocks
    if t.val is not None:
        # the bare model, with rank 0's buffers: a DDP forward would sync them itself, in a
        # collective that a rank with no val images would never join
        session.sync_buffers(checkpoint.unwrap(t.model))
        row.update(evaluate(checkpoint.unwrap(t.model), t.meta, *t.val, device=session.device, amp=t.amp,
                            session=session))
    row.update(t.footprint)  # the model's size and latency, measured once, in every report
    row["epoch_of"] = t.params.epochs
    objective, mode = t.objective
    t.lr_schedule.after_epoch(epoch, row[objective], mode)
    if t.stopper.update(row[objective], mode):
        row["early_stopped"] = True  # ended by its own patience, not by ASHA: a completed trial
    return row


def _train_steps(t: _Trial, session, epoch: int) -> dict:
    """One pass over the epoch's batches; the training loss and images/s summed over the workers."""
    device, params = session.device, t.params
    total, seen, started = torch.zeros((), device=device), 0, time.perf_counter()
    trainable = [q for q in t.model.parameters() if q.requires_grad]
    step = 0
    for step, (xb, yb) in enumerate(t.batches.epoch(), 1):
        x = t.normalize(xb)
        if t.nhwc:
            x = x.contiguous(memory_format=torch.channels_last)
        target = yb
        if t.mix is not None and len(yb) > 1:
            x, target = t.mix(x, yb)
        with precision.autocast(device, t.amp):
            logits = t.step_fn(x)
        loss = F.cross_entropy(logits.float(), target, weight=t.loss_weight, label_smoothing=params.label_smoothing)
        t.opt.zero_grad(set_to_none=True)
        loss.backward()
        if params.grad_clip:
            torch.nn.utils.clip_grad_norm_(trainable, params.grad_clip)
        t.opt.step()
        total += loss.detach() * len(yb)
        seen += len(yb)
        if step % DIVERGENCE_CHECK_STEPS == 0:  # a sync every N steps, not every step
            # summed over the ranks, so that all of them stop at the same step
            _check_finite(float(session.all_sum(total.detach().clone())), epoch, step, params)
    elapsed = time.perf_counter() - started
    sums = session.all_sum(torch.stack([total.float(), torch.tensor(float(seen), device=device)]))
    train_loss = float(sums[0]) / max(1.0, float(sums[1]))
    _check_finite(train_loss, epoch, step, params)
    return {"train_loss": train_loss, "train_images_per_s": float(sums[1]) / max(1e-9, elapsed)}


def _load_checkpoint(session, model, opt, lr_schedule, stopper) -> int:
    """Load the session's checkpoint, if any, into the model and training state; the first epoch to run."""
    with session.restored() as restored:
        if not restored:
            return 1
        model.load_state_dict(torch.load(Path(restored) / checkpoint.WEIGHTS, map_location="cpu", weights_only=True))
        state = checkpoint.load_train_state(restored)
    if not state:
        return 1
    opt.load_state_dict(state["optimizer"])
    if "schedule" in state:  # absent from an older checkpoint: its schedules start afresh
        lr_schedule.load_state_dict(state["schedule"])
        stopper.load_state_dict(state["early_stop"])
    return state["epoch"] + 1


class Freezing:
    """Which top backbone blocks train in each epoch (`head_epochs`, `unfreeze`, `unfreeze_every`).

    Only pretrained backbones are frozen; a model trained from scratch trains every layer."""

    def __init__(self, params: TrialParams, model):
        grow = params.unfreeze != "all" or params.head_epochs or params.unfreeze_every
        self.params = params
        frozen = _is_pretrained(params) and grow  # else nothing is frozen: no need to walk the backbone
        self.n_blocks = len(registry.backbone_groups(checkpoint.unwrap(model))) if frozen else 0
        self.blocks = None

    def apply(self, model, epoch: int) -> bool:
        """Set `requires_grad` for `epoch` on the unwrapped model; True when the trained set changed."""
        if not self.n_blocks:
            return False
        want = schedule.trainable_blocks(self.params, epoch, self.n_blocks)
        if want == self.blocks:
            return False
        registry.set_trainable(model, want)
        self.blocks = want
        return True


def _is_pretrained(params: TrialParams) -> bool:
    return registry.can_be_pretrained(params.model) and params.pretrained is not False


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
    normalize = preprocess.Normalizer(meta, device)
    cm = torch.zeros((k, k), dtype=torch.long, device=device)
    loss = torch.zeros((), device=device)
    probs = []
    for i in range(0, len(x), batch_size):
        xb = normalize(x[i:i + batch_size].to(device))
        yb = y[i:i + batch_size].to(device)
        with precision.autocast(torch.device(device), amp):
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
