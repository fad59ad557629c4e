"""Training images/s of a trial's loop inside a Ray Train worker vs. a bare PyTorch loop, side by side.

Both sides train the same model with the same batch size on the same decoded images and the
same number of torch threads:

- bare: a plain loop in this process (shuffled gather, normalise, forward, backward, step);
- Ray: `trainables.train_loop.train_loop_per_worker`, the function every search trial runs,
  inside a real `TorchTrainer` worker on a local Ray cluster, which reports
  `train_images_per_s` each epoch (timed inside the worker, start-up excluded: that is
  bench/overhead.py's subject).

The last epoch of each side is compared (the first one pays for warm-up). On a GPU both sides
use bf16 autocast and channels_last, as the train loop does. Last line: `ratio=<Ray/bare> goal>=0.9`.

    python bench/throughput.py                                   # efficientnet_lite0, 64 px, CPU
    python bench/throughput.py --model resnet50 --image-size 224 # on a GPU machine
    python bench/throughput.py --quick                           # a tiny cnn, under a minute
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GOAL = 0.9


def prepare_context(tmp: Path, per_class: int | None, cpus: float, gpus: float):
    """The TrialContext of a search of the embedded images with these resources per trial."""
    from search import run, space
    from trainables import data

    index = data.prepare("animal-mnist", {"train": 0.7, "val": 0.15, "test": 0.15}, 0, per_class)
    data.save_split(index, tmp / "split.csv")
    spec = space.SpaceFile.model_validate({"resources": {"cpus_per_worker": cpus, "gpus_per_worker": gpus}})
    return run.trial_context(spec, index.root, index.classes, tmp / "split.csv", tmp)


def bare_loop(config: dict, context, device) -> float:
    """The same work with nothing around it: images/s of the last epoch."""
    import torch
    import torch.nn.functional as F

    from trainables import data, models, precision, preprocess
    from trainables.params import TrialParams

    p = TrialParams.model_validate(config)
    items = data.read_split(context.split_file, ("train",))
    x, y = data.load_images(context.data_root, items, list(context.class_names), p.image_size, context.cache_dir)
    meta = preprocess.resolve(p.model_dump())
    model = models.build(p.model_dump(), len(context.class_names)).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=p.lr)
    model.train()
    rate = 0.0
    for _ in range(p.epochs):
        started, seen = time.perf_counter(), 0
        for idx in torch.randperm(len(y)).split(p.batch_size):
            xb = preprocess.normalize(x[idx].to(device, non_blocking=True), meta)
            if device.type == "cuda":
                xb = xb.contiguous(memory_format=torch.channels_last)
            with precision.autocast(device, True):
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


def ray_loop(config: dict, context, storage: Path) -> float:
    """The search's own trial loop in one Ray Train worker: its reported images/s of the last epoch."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from trainables.train_loop import train_loop_per_worker

    r = context.resources
    result = TorchTrainer(
        train_loop_per_worker, train_loop_config={"config": config, "context": context},
        scaling_config=ray.train.ScalingConfig(num_workers=1, use_gpu=bool(r.gpus_per_worker),
                                               resources_per_worker=r.per_worker),
        run_config=ray.train.RunConfig(name="throughput", storage_path=str(storage),
                                       logging_config=ray.train.LoggingConfig(log_level="WARNING")),
    ).fit()
    if result.error:
        raise result.error
    return float(result.metrics["train_images_per_s"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a tiny cnn on 30 images per class, 2 epochs")
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--pretrained", action="store_true", help="start from pretrained weights (hub or embedded)")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--per-class", type=int, default=200, help="training images per class (default 200 → 1400 train)")
    ap.add_argument("--cpus", type=float, default=None, help="CPUs (= torch threads) of each side; default 1 on a "
                    "CPU machine, as a search's `cpus_per_worker: 1`, and 8 with a GPU")
    args = ap.parse_args(argv)
    import torch

    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    cpus = args.cpus or (float(min(8, os.cpu_count() or 1)) if gpu else 1.0)
    knobs = {"model": args.model, "pretrained": args.pretrained, "image_size": args.image_size,
             "batch_size": args.batch_size, "epochs": args.epochs, "lr": 1e-3}
    if args.quick:
        knobs.update(model="cnn", pretrained=False, image_size=32, epochs=2)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("HPO_CACHE_DIR", str(Path(tmp) / "cache"))
        context = prepare_context(Path(tmp), 30 if args.quick else args.per_class, cpus, 1 if gpu else 0)
        torch.set_num_threads(int(cpus))
        print(f"{knobs['model']} at {knobs['image_size']} px, batch {knobs['batch_size']}, on "
              f"{torch.cuda.get_device_name() if gpu else f'CPU with {int(cpus)} torch threads'}"
              f"{' (bf16 autocast, channels_last)' if gpu else ''}; images/s of epoch {knobs['epochs']}", flush=True)
        bare = bare_loop(knobs, context, device)
        print(f"bare PyTorch loop, this process: {bare:,.1f} images/s", flush=True)
        if gpu:
            torch.cuda.empty_cache()
        from search.run import start_ray

        os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
        start_ray(None, verbose=False)
        try:
            inside = ray_loop(knobs, context, Path(tmp) / "ray")
        finally:
            import ray

            ray.shutdown()
        print(f"search trial loop, Ray Train worker: {inside:,.1f} images/s")
    print(f"ratio={inside / bare:.2f} goal>={GOAL:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
