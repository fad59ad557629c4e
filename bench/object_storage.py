"""What keeping images and results in a bucket costs a search, against a folder: cold against
cold, warm against warm, side by side.

A real S3-compatible server on loopback (moto, as in the tests) holds 100 embedded images per
class. Each round runs the same small search (spaces/smoke.yaml, 3 trials, 1,000 images at
16 px), each as `python -m search.run` in its own process, four ways:
- `folder, cold`: `--data` a local folder, `--storage` a local folder, an empty image cache
  (every image decoded);
- `bucket, cold`: `--data s3://.../images/`, `--storage s3://.../results`, an empty image cache
  (every image copied down, then decoded);
- `folder, warm` and `bucket, warm`: the same again, each with the cache its cold run left.
Each round has its own two caches. The folder and the bucket alternate which goes first from
round to round (odd rounds: folder cold, bucket cold, folder warm, bucket warm; even rounds the
bucket first). Printed: each run's wall time, each round's bucket/folder ratios, cold and
warm, and their medians and spreads. (A search with its results in a bucket shares its
models' footprints in the node's cache, so the warm bucket run reads what its cold run
measured, a few hundredths of a second here; a folder search measures into its own results.)

The goal (set before the full run): the larger of the two medians (cold/cold, warm/warm) at
most 1.5. Why: a user moves images and results into a bucket to search on a cluster, and needs
that not to make the search much slower than on a folder, neither the first search on a node
(cold) nor the next ones (warm). At this size Ray's start and the trials' fixed costs dominate,
so this is where the copy weighs most; half again is the most a user would take for not having
to copy data onto each node by hand. The last line is `ratio=<the larger median> goal<=1.5`.

    python bench/object_storage.py              # 3 rounds
    python bench/object_storage.py --quick      # 1 round, 30 images a class, 2 trials: that it works
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GOAL = 1.5


def images(dest: Path, per_class: int) -> Path:
    from trainables.data.dataset import resolve_source

    src = resolve_source("animal-mnist")
    for cls in sorted(p.name for p in src.iterdir() if p.is_dir()):
        (dest / cls).mkdir(parents=True)
        for f in sorted((src / cls).glob("*.png"))[:per_class]:
            shutil.copy(f, dest / cls / f.name)
    return dest


def timed(args: list[str], env: dict, trials: int) -> float:
    started = time.time()
    out = subprocess.run([sys.executable, "-m", "search.run", str(REPO / "spaces" / "smoke.yaml"), *args,
                          "--set", "data.limit_per_class=null", "--set", f"search.num_samples={trials}"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return time.time() - started


def one_round(r: int, tmp: Path, folder: Path, s3_env: dict, trials: int) -> dict[str, float]:
    """The four runs of round R, in its order; wall seconds by arm."""
    where = {"folder": ["--data", str(folder), "--storage", str(tmp / "results")],
             "bucket": ["--data", "s3://bench/images/", "--storage", "s3://bench/results"]}
    order = ("folder", "bucket") if r % 2 == 0 else ("bucket", "folder")
    seconds = {}
    for temp in ("cold", "warm"):
        for store in order:
            env = dict(s3_env, HPO_CACHE_DIR=str(tmp / f"cache-{store}-{r}"))
            seconds[f"{store}, {temp}"] = timed([*where[store], "--name", f"{store}-{temp}-{r}"], env, trials)
    return seconds


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f}x (spread {min(values):.2f}-{max(values):.2f})"


def main(argv=None) -> int:
    from tests.s3_server import s3_server, upload_folder

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="1 round, 30 images a class, 2 trials: that it works")
    args = p.parse_args(argv)
    rounds, per_class, trials = (1, 30, 2) if args.quick else (args.rounds, 100, 3)
    ratios: dict[str, list[float]] = {"cold": [], "warm": []}
    print(f"spaces/smoke.yaml, {trials} trials, {per_class} images a class; {rounds} round(s)", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-s3-") as tmp, s3_server("bench") as s3:
        tmp = Path(tmp)
        folder = images(tmp / "images", per_class)
        upload_folder(s3["client"], folder, "bench", "images")
        for r in range(rounds):
            s = one_round(r, tmp, folder, s3["env"], trials)
            for temp in ratios:
                ratios[temp].append(s[f"bucket, {temp}"] / s[f"folder, {temp}"])
            print(f"round {r + 1}: " + ", ".join(f"{arm} {t:.1f}s" for arm, t in s.items())
                  + f"; bucket/folder cold {ratios['cold'][-1]:.2f}x, warm {ratios['warm'][-1]:.2f}x", flush=True)
    for temp, v in ratios.items():
        print(f"bucket/folder, both {temp}: {spread(v)}")
    print(f"ratio={max(statistics.median(v) for v in ratios.values()):.2f} goal<={GOAL:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
