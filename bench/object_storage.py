"""What keeping images and results in a bucket costs a search, against a folder, side by side.

A real S3-compatible server on loopback (moto, as in the tests) holds 100 embedded images per
class. Each round runs the same small search (spaces/smoke.yaml, 3 trials, 1,000 images at
16 px) three ways, one after the other, each as `python -m search.run` in its own process:
- `folder`: `--data` a local folder, `--storage` a local folder;
- `bucket, cold`: `--data s3://.../images/`, `--storage s3://.../results`, with an empty cache
  (every image copied down, then decoded);
- `bucket, warm`: the same with the cache the cold run left (a listing, no copy).
It prints each run's wall time and, per round, the ratios to the folder run, then the cold
median, and last `ratio=<warm median> goal<=1.5`: a search whose images were copied once costs at
most half again a folder's (at this size, Ray's start and the trials' fixed costs dominate).

    python bench/object_storage.py              # 3 rounds
    python bench/object_storage.py --rounds 1
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

PER_CLASS = 100
SEARCH = ["--set", "data.limit_per_class=null", "--set", "search.num_samples=3"]


def images(dest: Path) -> Path:
    from trainables.data import resolve_source

    src = resolve_source("animal-mnist")
    for cls in sorted(p.name for p in src.iterdir() if p.is_dir()):
        (dest / cls).mkdir(parents=True)
        for f in sorted((src / cls).glob("*.png"))[:PER_CLASS]:
            shutil.copy(f, dest / cls / f.name)
    return dest


def timed(args: list[str], env: dict) -> float:
    started = time.time()
    out = subprocess.run([sys.executable, "-m", "search.run", str(REPO / "spaces" / "smoke.yaml"), *args, *SEARCH],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return time.time() - started


def main(argv=None) -> int:
    from tests.s3_server import s3_server, upload_folder

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-s3-") as tmp, s3_server("bench") as s3:
        tmp = Path(tmp)
        folder = images(tmp / "images")
        upload_folder(s3["client"], folder, "bench", "images")
        cold, warm = [], []
        for r in range(args.rounds):
            env = dict(s3["env"], HPO_CACHE_DIR=str(tmp / f"cache-folder-{r}"))
            t_folder = timed(["--data", str(folder), "--storage", str(tmp / "results"), "--name", f"f{r}"], env)
            env = dict(s3["env"], HPO_CACHE_DIR=str(tmp / f"cache-bucket-{r}"))
            bucket = ["--data", "s3://bench/images/", "--storage", "s3://bench/results"]
            t_cold = timed([*bucket, "--name", f"c{r}"], env)
            t_warm = timed([*bucket, "--name", f"w{r}"], env)
            cold.append(t_cold / t_folder)
            warm.append(t_warm / t_folder)
            print(f"round {r + 1}: folder {t_folder:.1f}s, bucket cold {t_cold:.1f}s ({cold[-1]:.2f}x), "
                  f"bucket warm {t_warm:.1f}s ({warm[-1]:.2f}x)", flush=True)
    print(f"bucket, cold: median {statistics.median(cold):.2f}x the folder's wall time")
    print(f"ratio={statistics.median(warm):.2f} goal<=1.5")
    return 0


if __name__ == "__main__":
    sys.exit(main())
