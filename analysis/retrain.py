"""`python -m analysis.retrain RESULTS_DIR`: make the final model from the best trial, test it once.

The search chose the configuration on the validation split. By default the final model averages
the best trial's own best checkpoint with four refits of its configuration on train+val (other
seeds, the trial's LR path replayed up to its best epoch): one refit alone is a lottery on
small data, and averaging with the checkpoint keeps the final model from being worse than
what the search already had; four refits, because with two it can still fall below the
checkpoint (bench/final_model.py; figures in bench/README.md). The refits train side by side as
Ray tasks on a cluster, or on a machine with a GPU share for each of two or more at once; on CPUs
alone, one after another in this process, where each already trains on every core
(analysis.refits). `--final checkpoint` or
`--final refit` picks one of them instead. A search with constraints or with costs among its
objectives hands back the checkpoint alone by default: an ensemble of five costs five times the
latency the search measured and judged. The trial is the best feasible one, or with `--pick N`
the N-th point of the Pareto front (`python -m analysis.rank` lists it). The final model's
latency is measured again, eager and as the exported program. The policy is fixed before the
test split, which no trial ever loaded, is evaluated exactly once. A second call prints the stored result instead of
testing again (`--again` overrides, knowingly).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

# refit and refit_config: also here, where tests and benches have always imported them from
from analysis.refits import Plan, estimate_line, plan, refit, refit_config, release, run_refits  # noqa: F401
from search import remote_results, results_folder
from search.record import SearchRecord
from trainables.storage import remote

TEST_FILE = "test_metrics.json"


RESEED = 1000  # --top k reruns each candidate with seed + RESEED: a second, independent draw


def pick_best(board: pd.DataFrame, record: SearchRecord, context) -> pd.Series:
    """The best of the leaderboard's trials `board`, judged on two draws: the search's own score and
    a rerun on train with another seed, both on val, so that one lucky run does not decide alone."""
    import dataclasses

    from trainables.trial.sessions import LocalSession
    from trainables.trial.train_loop import fit

    col, metric = record.best_column, record.metric
    if len(board) <= 1:
        return board.iloc[0]
    context = dataclasses.replace(context, limits={})  # judged in the search; this machine may be slower
    scores = []
    for _, t in board.iterrows():
        config = json.loads((Path(t["trial_dir"]) / "params.json").read_text())
        config.update(epochs=int(t["best_epoch"]), seed=int(config.get("seed", 0)) + RESEED)
        session = LocalSession()
        fit(config, context, session)
        rerun = session.history[-1][metric]
        scores.append((t[col] + rerun) / 2)
        print(f"candidate {t['trial_id']}: {metric} {t[col]:.4f} in the search, {rerun:.4f} rerun, "
              f"mean {scores[-1]:.4f}", flush=True)
    pick = max(range(len(scores)), key=lambda i: scores[i] if record.maximize else -scores[i])
    return board.iloc[pick]


FINAL = ("ensemble", "checkpoint", "refit")


def trial_history(trial_dir: str | Path) -> pd.DataFrame:
    """The trial's reports, one row per epoch (the last report of an epoch a retry redid)."""
    from search import tune_files

    h = tune_files.read_reports(Path(trial_dir))
    return h.drop_duplicates("epoch", keep="last").sort_values("epoch") if "epoch" in h else h


def final_model(best: pd.Series, config: dict, context, history: pd.DataFrame, policy: str, refits: int, epochs: int,
                out: Path, chosen: Plan | None = None):
    """The model analysis.retrain hands back, made by POLICY (fixed before the test split is read):
    - checkpoint: the best trial's own best checkpoint (trained on train, chosen on val);
    - refit: the configuration retrained on train+val, its LR path replayed, to the best epoch;
    - ensemble (default): the checkpoint and REFITS refits (other seeds), probabilities averaged.
    HISTORY is the trial's reports (trial_history); CHOSEN how the refits run (analysis.refits.plan;
    default: one after another in this process). Returns (model, meta, recipe, refit histories)."""
    from trainables.models import inference
    from trainables.trial import checkpoint

    members, recipe, curves = [], [], {}
    if policy in ("checkpoint", "ensemble"):
        if not isinstance(best.get("checkpoint"), str) or not (Path(best["checkpoint"]) / checkpoint.META).is_file():
            raise results_folder.ResultsError(f"trial {best['trial_id']}: its best checkpoint "
                                              f"({best.get('checkpoint')}) is not there; use --final refit")
        model, meta = checkpoint.load(best["checkpoint"])
        members.append(model)
        recipe.append({"made_by": "the search", "trial_id": best["trial_id"], "epoch": int(meta.get("epoch", 0)),
                       "trained_on": "train", "checkpoint": str(best["checkpoint"])})
    offsets = [RESEED + k for k in range(refits_made(policy, refits))]
    done = run_refits(chosen or Plan(), config, context, history, epochs, offsets, out)
    for k, (offset, result) in enumerate(zip(offsets, done)):
        curves[f"refit seed+{offset}"] = result["reports"]
        model, meta = checkpoint.load(out / "refits" / str(k))
        members.append(model)
        recipe.append({"made_by": "refit", "seed_offset": offset, "epochs": epochs, "trained_on": "train+val",
                       **{key: value for key, value in result.items() if key != "reports"}})  # where, when
    if len(members) > 1:
        model, meta = inference.Ensemble(members).eval(), {**meta, "ensemble": len(members)}
    meta = {**meta, "final": {"policy": policy, "members": recipe}}
    return model, meta, recipe, curves


def refits_made(policy: str, refits: int) -> int:
    """How many refits POLICY trains: one for refit, REFITS for the ensemble, none for the checkpoint."""
    return 1 if policy == "refit" else refits if policy == "ensemble" else 0


def default_policy(record: SearchRecord) -> str:
    """The checkpoint alone where the search judged what a model costs (constraints, or costs among
    its objectives): that is the model it measured; else the ensemble."""
    return "checkpoint" if record.limits or record.multi_objective else "ensemble"


def picked(results_dir: Path, record: SearchRecord, pick: int | None, top: int, context) -> pd.Series:
    """The trial the final model comes from: the best feasible one (of the TOP rerun, see
    pick_best), or the PICK-th point of the Pareto front."""
    board = results_folder.ranked_with_results(results_dir, record)
    if pick is None:
        return pick_best(board.head(top), record, context)
    on_front = results_folder.front(board, record)
    if not 1 <= pick <= len(on_front):
        raise results_folder.ResultsError(f"--pick {pick}: the Pareto front of {results_dir} has {len(on_front)} "
                                          "point(s), numbered from 1 best first on the first objective; "
                                          "python -m analysis.rank lists them (column pareto)")
    return on_front.iloc[pick - 1]


def retrain(results_dir: str | Path, epochs: int | None = None, out: str | Path | None = None,
            top: int = 1, policy: str | None = None, refits: int = 4, pick: int | None = None,
            address: str | None = None, serial: bool = False) -> dict:
    """Make the final model of the search in RESULTS_DIR (see the module's docstring), test it once,
    write OUT/test_metrics.json and return it. The refits run as Ray tasks on the cluster at ADDRESS,
    or on a local Ray started here and shut down after where each has a GPU share and two or
    more fit at once; otherwise, or with SERIAL, in this process, one after another
    (analysis.refits)."""
    import torch

    from trainables.data import dataset
    from trainables.models import export
    from trainables.trial import checkpoint, metrics
    from trainables.trial.train_loop import evaluate

    results_dir = Path(results_dir).resolve()
    record = results_folder.read_record(results_dir)
    policy = policy or default_policy(record)
    context = results_folder.read_context(results_dir).on_this_machine()
    best = picked(results_dir, record, pick, top, context)
    config = json.loads((Path(best["trial_dir"]) / "params.json").read_text())
    epochs = int(epochs or best["best_epoch"])
    out = Path(out) if out else results_dir / "retrained"
    model_dir = out / "model"
    started = time.time()
    print(f"final model for trial {best['trial_id']} ({policy}): "
          + " ".join(f"{k}={v}" for k, v in config.items()), flush=True)
    history = trial_history(best["trial_dir"])
    n_refits = refits_made(policy, refits)
    chosen = plan(context, n_refits, address, serial) if n_refits else Plan()
    try:
        if n_refits:
            print(estimate_line(history, context, epochs, n_refits, chosen), flush=True)
        model, meta, recipe, curves = final_model(best, config, context, history, policy, refits, epochs, out, chosen)
    finally:
        release(chosen)
    checkpoint.save(model_dir, model, meta)

    # the test split: read here, once, after the model is fixed
    test_items = dataset.read_split(context.split_file, ("test",))
    x, y = dataset.load_images(context.data_root, test_items, meta["class_names"], meta["image_size"],
                            cache_dir=context.cache_dir, cache_max_gb=context.cache_max_gb)
    test = evaluate(model, meta, x, y, prefix="test_", with_confusion=True)
    confusion = torch.tensor(test["confusion"])
    low, high = metrics.wilson_interval(int(confusion.diag().sum()), len(test_items))
    report = {
        "trial_id": best["trial_id"], "config": config,
        "final_policy": policy, "final_members": recipe,
        record.search_best_key: float(best[record.best_column]),
        "test_images": len(test_items), **test, "test_acc_ci95": [low, high],
        "test_per_class": metrics.per_class(confusion, meta["class_names"]),
        "model_dir": str(model_dir),
        "exported": str(model_dir / export.EXPORTED),
        "export_max_logit_diff": export.export(model, meta, model_dir, x[:32]),
        "onnx_max_logit_diff": export.export_onnx(model, meta, model_dir, x[:32]),
        **final_footprint(model, meta, model_dir, record.limits),  # after export: it times the file
        "refit_curves": curves, "trial_curve": history.to_dict("records"),
        "retrain_seconds": round(time.time() - started, 1),
    }
    (out / TEST_FILE).write_text(json.dumps(report, indent=2, default=float))
    return report


def final_footprint(model, meta: dict, model_dir: Path, limits: dict) -> dict:
    """The final model's cost, as each trial measured its own (trainables.models.footprint), and its
    batch-1 CPU latency again as the exported program, which is what a user deploys."""
    import torch

    from trainables.models import export, footprint
    from trainables.models.limits import describe_over

    size = meta["image_size"]
    eager = footprint.measure(model, size, torch.device("cpu"), 1)
    figures = {"latency_ms": eager["latency_ms"], "params_m": eager["params_m"], "model_mb": eager["model_mb"]}
    exported = footprint.cpu_latency_ms(torch.export.load(model_dir / export.EXPORTED).module(), size)
    return {"final_latency_ms": figures["latency_ms"], "exported_latency_ms": exported,
            "final_params_m": figures["params_m"], "final_model_mb": figures["model_mb"], "limits": limits,
            "final_over_limits": describe_over({**figures, "latency_ms": max(figures["latency_ms"], exported)},
                                               limits)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.retrain", description=__doc__.splitlines()[0])
    p.add_argument("results_dir", help="a search's results folder, e.g. results/finetune, or its URI "
                   "(s3://bucket/results/finetune)")
    p.add_argument("--final", choices=FINAL,
                   help="the model handed back: the best trial's checkpoint and refits on train+val with other "
                        "seeds, averaged (ensemble, the default); the checkpoint alone (the default where the "
                        "search has constraints or costs among its objectives); or one refit")
    p.add_argument("--pick", type=int, metavar="N", help="take the N-th point of the Pareto front (1 = best on the "
                   "first objective; python -m analysis.rank lists the front) instead of the best trial")
    p.add_argument("--refits", type=int, default=4, help="refits in the ensemble (default 4; each costs about "
                   "one trial of the best configuration)")
    p.add_argument("--epochs", type=int, help="epochs to refit (default: the best trial's best epoch)")
    p.add_argument("--out", help="where the model and test result go (default: RESULTS_DIR/retrained, uploaded "
                   "to the bucket when RESULTS_DIR is a URI)")
    p.add_argument("--address", help="run the refits on this Ray cluster (e.g. auto: the one `ray start` made here) "
                   "side by side (without it: a local Ray only where this machine has a GPU for each of two refits)")
    p.add_argument("--serial", action="store_true", help="train the refits one after another in this process, "
                   "without Ray (what a machine with CPUs alone, or room for one refit's GPU share, does anyway)")
    p.add_argument("--again", action="store_true", help="retrain and test again even if a test result exists")
    p.add_argument("--top", type=int, default=1, help="rerun the K best trials with another seed and retrain the "
                   "one best on both runs (default 1: the best trial)")
    args = p.parse_args(argv)
    try:
        results_dir, uri = remote_results.open_results(args.results_dir, sys.stdout)
        out = Path(args.out) if args.out else results_dir / "retrained"
        results_folder.read_record(results_dir)  # a folder of another layout is refused here, in one line
        if (out / TEST_FILE).exists() and not args.again:
            report = json.loads((out / TEST_FILE).read_text())
            print(f"already tested (the test split is used once): {out / TEST_FILE}; --again to redo")
        else:
            if args.pick is not None and args.top != 1:
                raise results_folder.ResultsError("--pick and --top choose the trial two ways; give one")
            if args.address and args.serial:
                raise results_folder.ResultsError("--address and --serial: the refits run on the cluster or here; "
                                                  "give one")
            report = retrain(results_dir, args.epochs, out, args.top, args.final, args.refits, args.pick,
                             args.address, args.serial)
        if uri and not args.out:
            remote_results.push(results_dir, uri, [out.name])
    except (results_folder.ResultsError, remote.StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    low, high = report["test_acc_ci95"]
    print(f"test accuracy {report['test_acc']:.4f} (95% CI {low:.3f}-{high:.3f}) "
          f"on {report['test_images']} held-out images "
          f"(macro F1 {report['test_macro_f1']:.4f}, worst-class recall {report['test_min_recall']:.4f})")
    made = "; ".join(f"{m['made_by']} on {m['trained_on']}" for m in report["final_members"])
    print(f"model: {report['model_dir']} ({report['final_policy']}: {made})")
    print(f"cost: {report['final_params_m']:.3g} M parameters, {report['final_model_mb']:.3g} MB; batch-1 latency "
          f"on one CPU thread {report['final_latency_ms']:.3g} ms eager, {report['exported_latency_ms']:.3g} ms "
          "exported (torch.export)"
          + (f"; limit {results_folder.describe_limits(report['limits'])}" if report["limits"] else ""))
    if report["final_over_limits"]:
        hint = ("--final checkpoint hands back the one model the search measured"
                if report["final_policy"] != "checkpoint" else
                "measured on this machine, or as the exported program, it is slower than the search measured it")
        print(f"warning: the final model is over the search's constraints ({report['final_over_limits']}); " + hint)
    print(f"result: {out / TEST_FILE}" + (f" (uploaded to {uri}/{out.name}/)" if uri and not args.out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
