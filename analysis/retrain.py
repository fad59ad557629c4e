"""`python -m analysis.retrain RESULTS_DIR`: retrain the best configuration on train+val, test it once.

The search chose the configuration on the validation split; the retrain adds the validation
images to training, for as many epochs as the best trial needed to reach its best score, and
then the held-out test split, which no trial ever loaded, is evaluated exactly once. A second
call prints the stored result instead of testing again (`--again` overrides, knowingly).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

from analysis import results

TEST_FILE = "test_metrics.json"


RESEED = 1000  # --top k reruns each candidate with seed + RESEED: a second, independent draw


def pick_best(board: pd.DataFrame, info: dict) -> pd.Series:
    """The best of the leaderboard's trials `board`, judged on two draws: the search's own score and
    a rerun on train with another seed, both on val. One lucky run no longer decides alone."""
    from trainables.sessions import LocalSession
    from trainables.train_loop import fit

    col = f"best_{info['metric']}"
    if len(board) <= 1:
        return board.iloc[0]
    scores = []
    for _, t in board.iterrows():
        config = json.loads((Path(t["trial_dir"]) / "params.json").read_text())
        config.update(epochs=int(t["best_epoch"]), seed=int(config.get("seed", 0)) + RESEED)
        session = LocalSession()
        fit(config, session)
        rerun = session.history[-1][info["metric"]]
        scores.append((t[col] + rerun) / 2)
        print(f"candidate {t['trial_id']}: {info['metric']} {t[col]:.4f} in the search, {rerun:.4f} rerun, "
              f"mean {scores[-1]:.4f}", flush=True)
    pick = max(range(len(scores)), key=lambda i: scores[i] if info["mode"] == "max" else -scores[i])
    return board.iloc[pick]


def retrain(results_dir: str | Path, epochs: int | None = None, out: str | Path | None = None,
            top: int = 1) -> dict:
    import torch

    from trainables import checkpoint, data, metrics
    from trainables.sessions import LocalSession
    from trainables.train_loop import evaluate, fit

    results_dir = Path(results_dir).resolve()
    info = results.read_search_info(results_dir)
    metric = info["metric"]
    best = pick_best(results.ranked_with_results(results_dir, info).head(top), info)
    config = json.loads((Path(best["trial_dir"]) / "params.json").read_text())
    config["epochs"] = int(epochs or best["best_epoch"])
    out = Path(out) if out else results_dir / "retrained"
    model_dir = out / "model"
    started = time.time()
    print(f"retraining trial {best['trial_id']} on train+val for {config['epochs']} epoch(s): "
          + " ".join(f"{k}={v}" for k, v in config.items() if k != "run"), flush=True)
    fit(config, LocalSession(checkpoint_dir=model_dir), train_splits=("train", "val"), val_split=None)

    (model_dir / checkpoint.TRAIN_STATE).unlink(missing_ok=True)  # optimizer state: not part of the model
    model, meta = checkpoint.load(model_dir)
    run = config["run"]
    test_items = data.read_split(run["split_file"], ("test",))
    x, y = data.load_images(run["data_root"], test_items, meta["class_names"], meta["image_size"])
    test = evaluate(model, meta, x, y, prefix="test_", with_confusion=True)
    confusion = torch.tensor(test["confusion"])
    low, high = metrics.wilson_interval(int(confusion.diag().sum()), len(test_items))
    export_diff = checkpoint.export(model, meta, model_dir, x[:32])
    onnx_diff = checkpoint.export_onnx(model, meta, model_dir, x[:32])
    report = {
        "trial_id": best["trial_id"], "config": {k: v for k, v in config.items() if k != "run"},
        f"search_best_{metric}": float(best[f"best_{metric}"]),
        "test_images": len(test_items), **test, "test_acc_ci95": [low, high],
        "test_per_class": metrics.per_class(confusion, meta["class_names"]),
        "model_dir": str(model_dir),
        "exported": str(model_dir / checkpoint.EXPORTED), "export_max_logit_diff": export_diff,
        "onnx_max_logit_diff": onnx_diff,
        "retrain_seconds": round(time.time() - started, 1),
    }
    (out / TEST_FILE).write_text(json.dumps(report, indent=2))
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.retrain", description=__doc__.splitlines()[0])
    p.add_argument("results_dir", help="a search's results folder, e.g. results/finetune")
    p.add_argument("--epochs", type=int, help="epochs to retrain (default: the best trial's best epoch)")
    p.add_argument("--out", help="where the model and test result go (default: RESULTS_DIR/retrained)")
    p.add_argument("--again", action="store_true", help="retrain and test again even if a test result exists")
    p.add_argument("--top", type=int, default=1, help="rerun the K best trials with another seed and retrain the "
                   "one best on both runs (default 1: the best trial)")
    args = p.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.results_dir) / "retrained"
    try:
        results.read_search_info(args.results_dir)
        if (out / TEST_FILE).exists() and not args.again:
            report = json.loads((out / TEST_FILE).read_text())
            print(f"already tested (the test split is used once): {out / TEST_FILE}; --again to redo")
        else:
            report = retrain(args.results_dir, args.epochs, out, args.top)
    except results.ResultsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    low, high = report["test_acc_ci95"]
    print(f"test accuracy {report['test_acc']:.4f} (95% CI {low:.3f}-{high:.3f}) on {report['test_images']} held-out images "
          f"(macro F1 {report['test_macro_f1']:.4f}, worst-class recall {report['test_min_recall']:.4f})")
    print(f"model: {report['model_dir']}\nresult: {out / TEST_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
