"""Training images/s of a search trial (the reused Tune actor) against a bare PyTorch loop, side by side.

Both arms train the same model, from the same builders, with the same batch size, optimizer,
memory format (`trainables.models.registry.prefers_channels_last`: channels_last on a GPU, and on a CPU
for EfficientNet, MobileNet and our `cnn`), the same data path (a sorted gather from the
memory-mapped image cache, normalised on the device) and the same number of torch threads:

- `bare`: a plain loop in this process (gather, normalise, forward, backward, step);
- `actor`: the search's own trial, `search.tuner.trainable(context)`, in a real Tune actor on
  a local Ray cluster, as every single-worker trial runs (`trainables.trial.driver.fit_in_actor`); it
  reports `train_images_per_s` each epoch, timed around the training steps (start-up is
  bench/overhead.py's subject). The cluster has exactly the trial's CPUs, so the trial's
  torch threads (`TuneSession.epoch_started` adds idle CPUs) equal the bare loop's.

The last epoch of each arm counts (the first pays for warm-up). The arms alternate (bare first
in odd rounds, the actor first in even ones), ROUNDS times; printed: each round, each arm's
median and spread, and last `ratio=<actor median / bare median> goal>=0.9`.

The goal (set before the full run): ratio >= 0.9. Why: a user who runs a search instead of
their own loop pays for the search's machinery in every epoch of every trial; at 10 % slower
epochs a search costs a tenth more than the same trials written by hand, about the noise
between two runs of a search on a shared machine, and more would be a reason to write the loop
oneself.

    python bench/throughput.py                                   # efficientnet_lite0, 64 px, CPU
    python bench/throughput.py --model resnet50 --image-size 224 # on a GPU machine
    python bench/throughput.py --quick                           # a tiny cnn: that it works
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GOAL = 0.9


def prepare_context(tmp: Path, per_class: int, cpus: int, gpus: int):
    """The TrialContext of a search of the embedded images with these resources per trial, its
    train and val images decoded into the cache first (as `search.run` does before any trial)."""
    from search import inputs, space
    from trainables.data import dataset

    index = dataset.prepare("animal-mnist", {"train": 0.7, "val": 0.15, "test": 0.15}, 0, per_class)
    dataset.save_split(index, tmp / "split.csv")
    spec = space.SpaceFile.model_validate({"resources": {"cpus_per_worker": cpus, "gpus_per_worker": gpus}})
    return inputs.trial_context(spec, index.root, index.classes, tmp / "split.csv", tmp)


def warm_cache(context, image_size: int) -> None:
    from trainables.data import dataset

    for split in ("train", "val"):
        items = dataset.read_split(context.split_file, (split,))
        dataset.load_images(context.data_root, items, list(context.class_names), image_size, context.cache_dir)


def bare_loop(config: dict, context, device) -> float:
    """The same work with nothing around it: images/s of the last epoch."""
    import torch
    import torch.nn.functional as F

    from trainables.data import dataset
    from trainables.models import preprocess, registry
    from trainables.params import TrialParams
    from trainables.trial import optim, precision

    p = TrialParams.model_validate(config)
    torch.manual_seed(p.seed)
    items = dataset.read_split(context.split_file, ("train",))
    x, y = dataset.load_images(context.data_root, items, list(context.class_names), p.image_size, context.cache_dir)
    array = x.numpy()
    meta = preprocess.resolve(p.model_dump())
    scale = (1 / (255 * torch.tensor(meta["std"]).view(1, 3, 1, 1))).to(device)
    shift = (torch.tensor(meta["mean"]) / torch.tensor(meta["std"])).view(1, 3, 1, 1).to(device)
    model = registry.build(p.model_dump(), len(context.class_names)).to(device)
    nhwc = registry.prefers_channels_last(p.model, device)
    if nhwc:
        model = model.to(memory_format=torch.channels_last)
    opt = optim.make_optimizer(p, *registry.param_groups(model))
    amp = p.mixed_precision and device.type == "cuda"
    registry.set_train_mode(model)
    rate = 0.0
    for _ in range(p.epochs):
        started, seen = time.perf_counter(), 0
        for idx in torch.randperm(len(y)).split(p.batch_size):
            idx = idx.sort().values
            xb = torch.from_numpy(array[idx.numpy()]).to(device, non_blocking=True).float().mul_(scale).sub_(shift)
            if nhwc:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with precision.autocast(device, amp):
                logits = model(xb)
            loss = F.cross_entropy(logits.float(), y[idx].to(device, non_blocking=True))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(idx)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rate = seen / (time.perf_counter() - started)
    return rate


def actor_trial(config: dict, context, storage: Path, name: str) -> float:
    """One search trial in its Tune actor (the search's own trainable): its reported images/s
    of the last epoch."""
    from ray import tune

    from search import tuner

    rates: list[float] = []

    class Rates(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            rates.append(float(result["train_images_per_s"]))

    grid = tune.Tuner(
        tuner.trainable(context), param_space=config,
        tune_config=tune.TuneConfig(num_samples=1, reuse_actors=True),
        run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0, callbacks=[Rates()]),
    ).fit()
    if grid.errors:
        raise grid.errors[0]
    return rates[-1]


def start_ray(cpus: int, gpus: int) -> None:
    """A local cluster of exactly one trial's CPUs (and GPUs), set up as `search.launch.start_ray` does."""
    import ray

    from trainables import ray_internals

    ray_internals.quiet_env()
    ray_internals.apply_env(local=True)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=cpus, num_gpus=gpus, dashboard_host="127.0.0.1", log_to_driver=False,
             configure_logging=True, logging_level="WARNING",
             **ray_internals.init_kwargs(local=True, dashboard_host="127.0.0.1"))


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):,.1f} (spread {min(values):,.1f}-{max(values):,.1f})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a tiny cnn on 30 images per class, 2 epochs, 3 rounds")
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--pretrained", action="store_true", help="start from pretrained weights (hub or embedded)")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of both arms, alternating which goes first")
    ap.add_argument("--per-class", type=int, default=200, help="training images per class (default 200 → 1400 train)")
    ap.add_argument("--cpus", type=int, default=None, help="CPUs (= torch threads) of each arm; default 1 on a "
                    "CPU machine, as a search's `cpus_per_worker: 1`, and 8 with a GPU")
    args = ap.parse_args(argv)
    import torch

    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    cpus = args.cpus or (min(8, os.cpu_count() or 1) if gpu else 1)
    knobs = {"model": args.model, "pretrained": args.pretrained, "image_size": args.image_size,
             "batch_size": args.batch_size, "epochs": args.epochs, "lr": 1e-3}
    if args.quick:
        knobs.update(model="cnn", pretrained=False, image_size=32, epochs=2)
    from trainables.models import registry

    nhwc = registry.prefers_channels_last(knobs["model"], device)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("HPO_CACHE_DIR", str(Path(tmp) / "cache"))
        context = prepare_context(Path(tmp), 30 if args.quick else args.per_class, cpus, 1 if gpu else 0)
        warm_cache(context, knobs["image_size"])
        torch.set_num_threads(cpus)
        print(f"{knobs['model']} at {knobs['image_size']} px, batch {knobs['batch_size']}, "
              f"{'channels_last' if nhwc else 'contiguous (NCHW)'}, on "
              f"{torch.cuda.get_device_name() if gpu else f'CPU with {cpus} torch thread(s)'}"
              f"{' (bf16 autocast)' if gpu else ''}; images/s of epoch {knobs['epochs']}, {args.rounds} rounds",
              flush=True)
        start_ray(cpus, 1 if gpu else 0)
        rates: dict[str, list[float]] = {"bare": [], "actor": []}
        try:
            for r in range(args.rounds):
                for arm in (("bare", "actor") if r % 2 == 0 else ("actor", "bare")):
                    if arm == "bare":
                        rates[arm].append(bare_loop(knobs, context, device))
                        if gpu:
                            torch.cuda.empty_cache()
                    else:
                        rates[arm].append(actor_trial(knobs, context, Path(tmp) / "ray", f"round{r}"))
                print(f"round {r + 1}: bare loop {rates['bare'][-1]:,.1f}, search trial (Tune actor) "
                      f"{rates['actor'][-1]:,.1f} images/s", flush=True)
        finally:
            import ray

            ray.shutdown()
    for arm, label in (("bare", "bare PyTorch loop, this process"), ("actor", "search trial, reused Tune actor")):
        print(f"{label}: {spread(rates[arm])} images/s")
    ratio = statistics.median(rates["actor"]) / statistics.median(rates["bare"])
    print(f"ratio={ratio:.2f} goal>={GOAL:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
