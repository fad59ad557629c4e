"""`python -m analysis.report RESULTS_DIR`: one self-contained HTML page about a finished search.

What hand-tuners write up after weeks of single runs, from the search's own results: the data
and budget, the leaderboard, accuracy against what each model costs to run (latency, size: the
fronts a deployment chooses from, under the search's constraints), learning curves and ASHA's
decisions, which knobs mattered (Optuna's PED-ANOVA importances on a study rebuilt from the
results, plus each knob's effect), the best trial's confusion matrix and per-class scores, and
the test result once `analysis.retrain` ran.
Plots are matplotlib PNGs embedded as base64: the page opens from disk with no server.
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import sys
from pathlib import Path

import pandas as pd

from search import remote_results, results_folder
from search.duration import say
from search.record import SearchRecord
from trainables.models.limits import COSTS
from trainables.storage import remote

MAX_CURVES = 5  # top trials drawn in the learning-curve plot
WRONG_SHOWN = 12  # misclassified validation images shown


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _table(df: pd.DataFrame, floats: str = "{:.4g}") -> str:
    return df.to_html(index=False, na_rep="-", float_format=floats.format, border=0, classes="t")


def histories(results_dir: Path) -> dict[str, pd.DataFrame]:
    """Per-trial, per-epoch results keyed by trial id (Tune's own records, read as plain JSON)."""
    from search import tune_files

    return {t.trial_id: t.reports.sort_values("epoch", kind="stable")
            for t in tune_files.read_trials(results_dir) if "epoch" in t.reports}


def _fmt(v) -> str:
    """A knob value as the space wrote it: 32, not the 32.0 a column with gaps turns it into."""
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else f"{v:.4g}"
    return str(v)


def importances(table: pd.DataFrame, record: SearchRecord, searched: dict) -> dict[str, float]:
    """PED-ANOVA importances (no scikit-learn needed) on an Optuna study rebuilt from the trials,
    each knob with the distribution the search sampled it from (SEARCHED, from search.json).

    A knob a `when:` left out of some trials gets an explicit 'n/a' value there (as a category),
    so conditional knobs (pretrained, unfreeze, ...) are ranked too instead of silently dropped."""
    import optuna
    from optuna.distributions import CategoricalDistribution, IntDistribution

    from search.study import fits

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    col = record.best_column
    done = table[table[col].notna()] if col in table else table.iloc[0:0]
    knobs = [k for k in record.knobs if k in done and done[k].nunique(dropna=True) > 0]
    if len(done) < 3 or not knobs:
        return {}
    dists, values = {}, {}
    for k in knobs:
        col_values, d = done[k], searched.get(k)
        if d is not None and not isinstance(d, CategoricalDistribution) and col_values.notna().all():
            cast = int if isinstance(d, IntDistribution) else float
            numbers = [cast(v) for v in col_values]
            if all(fits(d, v) for v in numbers):
                dists[k], values[k] = d, numbers
                continue
        shown = [("n/a" if (isinstance(v, float) and math.isnan(v)) else _fmt(v)) for v in col_values]
        choices = [_fmt(c) for c in d.choices] if isinstance(d, CategoricalDistribution) else []
        dists[k] = CategoricalDistribution(list(dict.fromkeys(choices + sorted(set(shown)))))
        values[k] = shown
    study = optuna.create_study(direction="maximize" if record.maximize else "minimize")
    for i, value in enumerate(done[col].tolist()):
        study.add_trial(optuna.trial.create_trial(params={k: values[k][i] for k in knobs}, distributions=dists,
                                                  value=float(value)))
    evaluator = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=max(0.1, 2 / len(done)))
    return optuna.importance.get_param_importances(study, evaluator=evaluator)


def effects(table: pd.DataFrame, record: SearchRecord, importance: dict[str, float]) -> pd.DataFrame:
    """knob | importance | effect on the objective | best value: the table hand-tuners write."""
    col, better_high = record.best_column, record.maximize
    done = table[table[col].notna()] if col in table else table.iloc[0:0]
    if done.empty:
        return pd.DataFrame()
    best = done.sort_values(col, ascending=not better_high).iloc[0]
    rows = []
    for k in record.knobs:
        if k not in done:
            continue
        sub = done[done[k].notna()]
        if sub.empty:
            continue
        if pd.api.types.is_numeric_dtype(sub[k]) and sub[k].nunique() > 4:
            rho = sub[k].rank().corr(sub[col].rank())
            rho = rho if better_high else -rho
            effect = ("higher is better" if rho > 0.3 else "lower is better" if rho < -0.3 else "flat or unclear")
            effect += f" (rank correlation {rho:+.2f}, {len(sub)} trials)"
        else:
            means = sub.groupby(sub[k].map(_fmt))[col].agg(["mean", "count"])
            means = means.sort_values("mean", ascending=not better_high)
            top, rest = means.index[0], means.iloc[1:]
            if rest.empty:  # nothing to compare: an importance would only echo the knobs it depends on
                effect = f"only {top} was tried"
                importance = {**importance, k: None}
            else:
                gap = abs(means["mean"].iloc[0] - rest["mean"].iloc[-1])
                others = ", ".join(f"{v}: {m:.3f} (n={int(n)})" for v, (m, n) in rest.iterrows())
                effect = (f"{'flat' if gap < 0.01 else f'best at {top}, up to {gap:.3f} worse elsewhere'}; "
                          f"mean {top}: {means['mean'].iloc[0]:.3f} (n={int(means['count'].iloc[0])}), {others}")
        rows.append({"knob": k, "importance": importance.get(k), f"effect on {record.metric}": effect,
                     "best value": _fmt(best[k]) if pd.notna(best[k]) else "n/a (not used by the best trial)"})
    out = pd.DataFrame(rows)
    return out.sort_values("importance", ascending=False, na_position="last") if not out.empty else out


def _curves_plot(board: pd.DataFrame, hist: dict) -> str:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for _, t in board.head(MAX_CURVES).iterrows():
        h = hist.get(t["trial_id"])
        if h is None:
            continue
        for ax, key in zip(axes, ("val_acc", "val_loss", "train_loss")):
            if key in h:
                ax.plot(h["epoch"], h[key], marker="o", label=t["trial_id"])
    for ax, key in zip(axes, ("val accuracy", "val loss", "train loss")):
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].legend(fontsize=7)
    return _png(fig)


def _refit_plot(t: dict) -> str:
    """The refits' training loss per epoch beside the trial's own: a refit that trained very
    differently from the trial it copies shows here."""
    import matplotlib.pyplot as plt

    trial = pd.DataFrame(t["trial_curve"])
    if trial.empty or "train_loss" not in trial:
        return ""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(trial["epoch"], trial["train_loss"], marker="o", color="black", label=f"trial {t['trial_id']} (train)")
    for name, rows in t["refit_curves"].items():
        h = pd.DataFrame(rows)
        ax.plot(h["epoch"], h["train_loss"], marker="o", linestyle="--", label=f"{name} (train+val)")
    ax.set_title("training loss: the trial and its refits")
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=7)
    return _png(fig)


def _asha_plot(table: pd.DataFrame, hist: dict, record: SearchRecord, rungs: list[int]) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    colors = {"completed": "tab:green", "stopped": "tab:orange"}
    for _, t in table.iterrows():
        h = hist.get(t["trial_id"])
        if h is None or record.metric not in h:
            continue
        c = colors.get(t["status"], "tab:red")
        ax.plot(h["epoch"], h[record.metric], color=c, alpha=0.7)
        if t["status"] == "stopped":
            ax.plot(h["epoch"].iloc[-1], h[record.metric].iloc[-1], "x", color=c, markersize=9)
    for r in rungs:
        ax.axvline(r, color="grey", linestyle=":", linewidth=1)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel(f"epoch ({'dotted: ASHA rungs; ' if rungs else ''}x: stopped there)")
    ax.set_ylabel(record.metric)
    ax.set_title("every trial; green completed, orange stopped by ASHA, red failed")
    return _png(fig)


def _log_knobs(searched: dict) -> set[str]:
    """The knobs the search sampled on a log scale."""
    return {k for k, d in searched.items() if getattr(d, "log", False)}


def _scatter_plots(table: pd.DataFrame, record: SearchRecord, searched: dict, knobs: list[str]) -> str:
    import matplotlib.pyplot as plt

    col, log_knobs = record.best_column, _log_knobs(searched)
    knobs = [k for k in knobs if k in table][:4]
    if not knobs or col not in table:
        return ""
    fig, axes = plt.subplots(1, len(knobs), figsize=(3.4 * len(knobs), 3), squeeze=False)
    for ax, k in zip(axes[0], knobs):
        sub = table[table[k].notna() & table[col].notna()]
        x = sub[k] if pd.api.types.is_numeric_dtype(sub[k]) else sub[k].astype(str)
        ax.scatter(x, sub[col], alpha=0.8)
        if k in log_knobs:
            ax.set_xscale("log")
        ax.set_xlabel(k)
        ax.set_ylabel(record.metric)
    fig.tight_layout()
    return _png(fig)


def _parallel_plot(table: pd.DataFrame, record: SearchRecord, searched: dict, knobs: list[str]) -> str:
    """One line per trial across every knob (categorical values at evenly spaced levels),
    coloured by the objective: where good trials pass, the knob matters."""
    import matplotlib.pyplot as plt

    col, log_knobs = record.best_column, _log_knobs(searched)
    done = table[table[col].notna()] if col in table else table.iloc[0:0]
    knobs = [k for k in knobs if k in done]
    if len(knobs) < 2 or done.empty:
        return ""
    levels: dict[str, dict] = {}
    axes_values = []
    for k in knobs:
        v = done[k]
        if pd.api.types.is_numeric_dtype(v) and v.nunique() > 4:
            lo, hi = v.min(), v.max()
            logv = k in log_knobs and lo > 0

            def f(x, lo=lo, hi=hi, logv=logv):
                if pd.isna(x):
                    return float("nan")
                if logv:
                    return (math.log(x) - math.log(lo)) / (math.log(hi) - math.log(lo) or 1)
                return (x - lo) / ((hi - lo) or 1)
            axes_values.append(v.map(f))
        else:
            names = sorted({_fmt(x) for x in v if pd.notna(x)})
            levels[k] = {n: i / max(1, len(names) - 1) for i, n in enumerate(names)}
            axes_values.append(v.map(lambda x, k=k: float("nan") if pd.isna(x) else levels[k][_fmt(x)]))
    frame = pd.concat(axes_values, axis=1)
    score = done[col]
    norm = (score - score.min()) / ((score.max() - score.min()) or 1)
    fig, ax = plt.subplots(figsize=(1.6 * len(knobs) + 2, 3.6))
    cmap = plt.get_cmap("viridis")
    for i in score.sort_values(ascending=not record.maximize).index[::-1]:
        ax.plot(range(len(knobs)), frame.loc[i].values, color=cmap(norm[i] if record.maximize else 1 - norm[i]),
                alpha=0.8, marker="o", markersize=3)
    for j, k in enumerate(knobs):
        for name, y in levels.get(k, {}).items():
            ax.annotate(name, (j, y), fontsize=7, xytext=(3, 2), textcoords="offset points")
    ax.set_xticks(range(len(knobs)), knobs)
    ax.set_yticks([])
    ax.set_title(f"parallel coordinates: yellow = best {record.metric}, purple = worst")
    return _png(fig)


def _confusion_plot(cm, classes: list[str], title: str) -> str:
    import matplotlib.pyplot as plt
    import numpy as np

    cm = np.asarray(cm, dtype=float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    side = 1.2 + 0.5 * len(classes)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1, side))
    for ax, m, fmt, name in ((axes[0], cm, "{:.0f}", "counts"), (axes[1], norm, "{:.2f}", "row-normalised")):
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, fmt.format(m[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.6 else "black")
        ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title}: {name}")
    fig.tight_layout()
    return _png(fig)


def best_on_val(context, best: pd.Series) -> dict:
    """The best trial's checkpoint on the validation split: confusion matrix, per-class scores,
    and its most confidently wrong images (path, true, predicted, confidence)."""
    import torch

    from trainables.data import dataset
    from trainables.trial import checkpoint, metrics
    from trainables.trial.train_loop import evaluate

    model, meta = checkpoint.load(best["checkpoint"])
    items = dataset.read_split(context.split_file, ("val",))
    x, y = dataset.load_images(context.data_root, items, meta["class_names"], meta["image_size"],
                            cache_dir=context.cache_dir, cache_max_gb=context.cache_max_gb)
    out = evaluate(model, meta, x, y, with_confusion=True, with_probs=True)
    out["per_class"] = metrics.per_class(torch.tensor(out["confusion"]), meta["class_names"])
    conf, pred = out.pop("probs").max(1)
    wrong = [i for i in conf.argsort(descending=True).tolist() if pred[i] != y[i]][:WRONG_SHOWN]
    folder = dataset.image_folder(context.data_root, context.cache_dir)  # load_images put them there
    out["wrong"] = [(folder / items[i].path, items[i].label, meta["class_names"][int(pred[i])],
                     float(conf[i])) for i in wrong]
    return out


def _wrong_grid(wrong: list) -> str:
    import matplotlib.pyplot as plt
    from PIL import Image

    if not wrong:
        return "<p>No validation image was misclassified.</p>"
    cols = min(6, len(wrong))
    rows = (len(wrong) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (path, true, pred, conf) in zip(axes.flat, wrong):
        with Image.open(path) as im:
            ax.imshow(im.convert("RGB"))
        ax.set_title(f"true {true}\npred {pred} {conf:.0%}", fontsize=8)
    fig.suptitle("most confidently wrong validation images")
    return _png(fig)


def _gpu_hours(record: SearchRecord, trial_seconds: float) -> str:
    gpus = record.gpus_per_trial
    return f", {gpus * trial_seconds / 3600:.2f} GPU-hours" if gpus else ""


SECTIONS = ("summary", "leaderboard", "deployment", "curves", "knobs", "best", "test")
STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
         "table.t{border-collapse:collapse;font-size:13px;margin:.5em 0}"
         "table.t td,table.t th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}")


def _section(sid: str, title: str, *body: str) -> str:
    return f"<section id='{sid}'><h2>{SECTIONS.index(sid) + 1}. {title}</h2>{''.join(body)}</section>"


def _planned(record: SearchRecord, started: int) -> str:
    """'5 trials of 8 planned', or with a time budget '23 trials in a 5-minute budget'."""
    if record.time_s:
        cap = f" (at most {record.num_samples})" if record.num_samples else ""
        return f"{started} trials in a {say(record.time_s)} time budget{cap}"
    return f"{started} trials of {record.num_samples} planned"


def _summary_section(r: dict) -> str:
    record, table, data_summary = r["record"], r["table"], r["data"]
    counts, classes = data_summary["counts"], data_summary["classes"]
    epochs_run = int(table["epochs_run"].sum()) if "epochs_run" in table else 0
    full = len(table) * record.max_epochs
    wall = sum(float(h["time_total_s"].max()) for h in r["hist"].values() if "time_total_s" in h)
    return _section(
        "summary", "Data, space and budget",
        f"<p>Data: {html.escape(data_summary['root'])}: {data_summary['images']} images, {len(classes)} classes, "
        f"imbalance ratio {data_summary['imbalance_ratio']}. Objective: {record.metric} ({record.mode}).</p>",
        _table(pd.DataFrame({"class": classes, **{s: [counts[s][c] for c in classes] for s in counts}})),
        f"<p>Budget: {_planned(record, len(table))}; {epochs_run} trial-epochs run, "
        f"against {full} if every trial had run to {record.max_epochs} epochs: ASHA saved "
        f"{full - epochs_run} epochs ({(full - epochs_run) / max(1, full):.0%}). Trial time, summed: "
        f"{wall / 60:.1f} min{_gpu_hours(record, wall)}. Trials ASHA stopped were told to Optuna as pruned, "
        "with every epoch they ran.</p>",
        f"<details><summary>the space searched (space.yaml)</summary>"
        f"<pre>{html.escape(r['space_text'])}</pre></details>")


def _leaderboard_section(r: dict) -> str:
    board, record = r["board"], r["record"]
    cols = ["trial_id", "status", "epochs_run", r["col"], "best_epoch", *record.knobs, "error"]
    return _section("leaderboard", "Leaderboard", _table(board[[c for c in cols if c in board]]))


COST_AXES = ("latency_ms", "params_m")  # the costs the deployment section plots the first objective against


def _feasible(table: pd.DataFrame) -> pd.Series:
    """Whether each trial is within the search's limits (every trial when there are none)."""
    if "feasible" not in table:
        return pd.Series(True, index=table.index)
    return table["feasible"].fillna(False).astype(bool)


def deployment_settings(table: pd.DataFrame, record: SearchRecord) -> str:
    """The objectives (and which one ASHA stopped trials on) and the constraints with how many
    trials met them, as one paragraph: what the plots and the front below were judged by."""
    said = results_folder.describe_objectives(record.objective_pairs)
    text = (f"Objectives: {said}, searched together by Optuna's multi-objective TPE; ASHA stopped trials on "
            f"the first, {record.metric}, alone." if record.multi_objective else
            f"Objective: {said}; ASHA stopped trials on it.")
    lim = record.limits
    if not lim:
        return f"<p>{html.escape(text)} No constraints: every trained trial is a candidate.</p>"
    ok = _feasible(table)
    rejected = int((table["status"] == "rejected").sum()) if "status" in table else 0
    text += (f" Constraints: {results_folder.describe_limits(lim)}"
             + f": {int(ok.sum())} trial(s) feasible, {int((~ok).sum())} infeasible, {rejected} of them "
             "rejected (over a limit before training, so not trained).")
    return f"<p>{html.escape(text)}</p>"


def front_against(table: pd.DataFrame, record: SearchRecord, cost: str) -> pd.DataFrame:
    """`results_folder.front` of the first objective against one COST: the same trials (completed,
    feasible) and order as the front `--pick` numbers, for a search that did not have COST among its
    objectives too. Empty when no trial is a candidate."""
    if results_folder.candidates(table, record).empty:  # front() needs the objective's column
        return pd.DataFrame()
    return results_folder.front(table, record.against(cost))


def deployment_front(table: pd.DataFrame, record: SearchRecord) -> pd.DataFrame:
    """The trials worth deploying, best first on the first objective: for a multi-objective search
    its Pareto front (`results_folder.front`), numbered as `analysis.retrain --pick N` takes them;
    for a single objective, the front of it against latency_ms."""
    columns = record.objective_columns
    if record.multi_objective:
        on = (results_folder.front(table, record) if not results_folder.candidates(table, record).empty
              else pd.DataFrame())
        on.insert(0, "pick", range(1, len(on) + 1))
    else:
        on = front_against(table, record, "latency_ms")
    shown = ["pick", "trial_id", *(c for c, _ in columns), *COSTS, *record.knobs]
    return on[[c for c in dict.fromkeys(shown) if c in on]].reset_index(drop=True)


def _front_note(record: SearchRecord, shown: pd.DataFrame) -> str:
    """What the front table is, and which of its rows `analysis.retrain` takes."""
    among = "among the completed, feasible trials (one ASHA stopped early is fast and inaccurate, not a trade-off)"
    if record.multi_objective:
        what = (f"The Pareto front of the objectives {among}, best first on {record.metric}: "
                "<code>python -m analysis.retrain RESULTS_DIR --pick N</code> retrains row N.")
    else:
        what = (f"The front of {record.metric} against latency_ms {among}, best first. "
                f"<code>analysis.retrain</code> takes the feasible trial with the best {record.metric}, usually "
                "the first row; to deploy a faster one, search with latency_ms among the objectives "
                "(<code>--pick</code>) or under search.constraints.")
    return f"<p>{what}{' No completed trial is feasible: nothing to list.' if shown.empty else ''}</p>"


def _cost_axes(ax, table: pd.DataFrame, record: SearchRecord, cost: str) -> None:
    """One plot of the first objective against COST: trained trials (infeasible ones hollow grey) and
    the 2-D front of the candidates (`front_against`) as a step line, its points emphasised; then the
    search's limits."""
    col = record.best_column
    trained = table[table[col].notna() & table[cost].notna()]
    ok = _feasible(trained)
    ax.scatter(trained.loc[ok, cost], trained.loc[ok, col], color="tab:blue", alpha=0.6, label="trained")
    if (~ok).any():
        ax.scatter(trained.loc[~ok, cost], trained.loc[~ok, col], facecolors="none", edgecolors="grey",
                   label="infeasible")
    on = front_against(trained, record, cost)
    if not on.empty:
        on = on.sort_values(cost)
        ax.step(on[cost], on[col], where="post", color="tab:red", linewidth=1)
        ax.scatter(on[cost], on[col], color="tab:red", s=45, zorder=3, label=f"front against {cost} (completed)")
    shown = _limits_on_axes(ax, table, record, cost)
    if shown.min() > 0 and shown.max() > 10 * shown.min():
        _log_x(ax)
    ax.set_xlabel(cost)
    ax.set_ylabel(record.metric)
    ax.legend(fontsize=7)


def _limits_on_axes(ax, table: pd.DataFrame, record: SearchRecord, cost: str) -> pd.Series:
    """The search's limits on one cost plot: the limit on COST dashed, the configurations the limits
    kept from training as grey x's along the bottom (they have no score), and the best feasible trial,
    the one `analysis.retrain` takes, starred. Returns the COST figures now on the plot."""
    col, lim = record.best_column, record.limits
    rejected = table[(table["status"] == "rejected") & table[cost].notna()] if "status" in table else table.iloc[0:0]
    shown = pd.concat([table.loc[table[col].notna(), cost], rejected[cost]]).dropna()
    if cost in lim:
        ax.axvline(lim[cost], color="black", linestyle="--", linewidth=1)
        ax.annotate(f"{cost} <= {lim[cost]:g}", (lim[cost], 0.02), xycoords=("data", "axes fraction"),
                    xytext=(-2, 0), textcoords="offset points", rotation=90, ha="right", va="bottom", fontsize=8)
    if not rejected.empty:
        ax.scatter(rejected[cost], [0.03] * len(rejected), marker="x", color="grey",
                   transform=ax.get_xaxis_transform(), label="rejected (not trained)")
        ax.update_datalim([(x, 0) for x in rejected[cost]], updatey=False)  # x's out there widen the axis too
    board = results_folder.candidates(results_folder.leaderboard(table, record), record)
    if lim and not board.empty and pd.notna(board[cost].iloc[0]):
        best = board.iloc[0]  # what analysis.retrain takes by default: ranked_with_results' first
        ax.scatter([best[cost]], [best[col]], marker="*", s=220, color="gold", edgecolors="black", zorder=4,
                   label="best feasible (retrain's)")
        ax.annotate(str(best["trial_id"]), (best[cost], best[col]), xytext=(6, 4), textcoords="offset points",
                    fontsize=8)
    return shown


def _log_x(ax) -> None:
    """A log x axis labelled in plain numbers at 1, 2 and 5 times powers of ten: costs spread over
    decades (a small CNN against a ViT) without the 2x10^0 labels that run into each other."""
    from matplotlib import ticker

    ax.set_xscale("log")
    plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(ticker.FuncFormatter(
        lambda v, _: f"{v:g}" if v > 0 and round(v / 10 ** math.floor(math.log10(v))) in (2, 5) else ""))


def _cost_plots(table: pd.DataFrame, record: SearchRecord) -> str:
    """The first objective against each cost in COST_AXES that some trained trial measured."""
    import matplotlib.pyplot as plt

    col = record.best_column
    costs = [c for c in COST_AXES if col in table and c in table and (table[col].notna() & table[c].notna()).any()]
    if not costs:
        return "<p>No trained trial has a footprint figure to plot.</p>"
    fig, axes = plt.subplots(1, len(costs), figsize=(5.5 * len(costs), 3.8), squeeze=False)
    for ax, cost in zip(axes[0], costs):
        _cost_axes(ax, table, record, cost)
    fig.tight_layout()
    return _png(fig)


def _final_latency(results_dir: Path) -> str:
    """The final model's batch-1 CPU latency, eager and exported, once `analysis.retrain` measured
    them, and which limits it is over, if any."""
    test_file = results_dir / "retrained" / "test_metrics.json"
    if not test_file.is_file():
        return ""
    t = json.loads(test_file.read_text())
    over = f" Over the search's limits: {t['final_over_limits']}." if t["final_over_limits"] else ""
    return (f"<p>Final model, batch-1 CPU latency: eager {t['final_latency_ms']:.3g} ms, exported "
            f"{t['exported_latency_ms']:.3g} ms.{html.escape(over)}</p>")


def _deployment_section(r: dict) -> str:
    """Accuracy against what the model costs to run (what a deployment chooses on): the settings it
    was searched under, the fronts as plots and a table, the final model's latency once measured."""
    record, table = r["record"], r["table"]
    body = [deployment_settings(table, record)]
    if not any(c in table and table[c].notna().any() for c in COSTS):
        body.append("<p>These trials have no footprint figures (latency, size): none got as far as measuring "
                    "its model, so there is nothing to plot against cost.</p>")
    else:
        shown = deployment_front(table, record)
        body += [_cost_plots(table, record), _front_note(record, shown), _table(shown) if not shown.empty else ""]
    return _section("deployment", "Deployment: accuracy against cost", *body, _final_latency(r["dir"]))


def _curves_section(r: dict) -> str:
    return _section("curves", "Learning curves and ASHA", _curves_plot(r["board"], r["hist"]),
                    _asha_plot(r["table"], r["hist"], r["record"], r["record"].scheduler.rungs))


def _knobs_section(r: dict) -> str:
    table, record, col = r["table"], r["record"], r["col"]
    importance = importances(table, record, r["searched"])
    eff = effects(table, record, importance)
    how = (f"Importance: Optuna's PED-ANOVA on the {int(table[col].notna().sum()) if col in table else 0} "
           "trials with a result (rough with few trials)")
    return _section(
        "knobs", "Which knobs mattered",
        f"<p>{how}; effect: how the objective moves with the knob.</p>",
        _table(eff) if not eff.empty else "<p>Too few finished trials to say.</p>",
        _parallel_plot(table, record, r["searched"], list(record.knobs)),
        _scatter_plots(table, record, r["searched"], list(eff["knob"]) if not eff.empty else []))


def _best_section(r: dict) -> str:
    board, col = r["board"], r["col"]
    if col not in board or not board[col].notna().any():
        return ""
    best = board.iloc[0]
    val = best_on_val(r["context"], best)
    return _section(
        "best", f"The best trial: {best['trial_id']}",
        f"<p>Validation accuracy {val['val_acc']:.4f}, macro F1 {val['val_macro_f1']:.4f}, "
        f"worst-class recall {val['val_min_recall']:.4f}.</p>",
        _confusion_plot(val["confusion"], r["data"]["classes"], "validation"),
        _table(pd.DataFrame(val["per_class"])), _wrong_grid(val["wrong"]))


def _test_section(r: dict) -> str:
    test_file = r["dir"] / "retrained" / "test_metrics.json"
    if not test_file.is_file():
        return _section("test", "Held-out test split",
                        f"<p>Not tested yet: run <code>python -m analysis.retrain {html.escape(r['shown'])}</code>"
                        " and build this report again.</p>")
    t = json.loads(test_file.read_text())
    n = t["test_images"]
    low, high = t["test_acc_ci95"]
    made = ", ".join(f"{m['made_by']} on {m['trained_on']}" for m in t["final_members"])
    body = [f"<p>Final model ({html.escape(t['final_policy'])}: {html.escape(made)}), "
            f"tested once on {n} images: accuracy <b>{t['test_acc']:.4f}</b> "
            f"(95% Wilson interval {low:.3f} to {high:.3f}), macro F1 {t['test_macro_f1']:.4f}.</p>",
            _refit_plot(t), _confusion_plot(t["confusion"], r["data"]["classes"], "test"),
            _table(pd.DataFrame(t["test_per_class"]))]
    return _section("test", "Held-out test split", *body)


def _read(results_dir: Path) -> dict:
    """Everything the sections draw from, read once from the results folder's plain files."""
    record = results_folder.read_record(results_dir)
    context = results_folder.read_context(results_dir).on_this_machine()
    table = results_folder.trials_table(results_dir)
    return {"dir": results_dir, "record": record, "context": context, "searched": record.searched(),
            "table": table, "board": results_folder.leaderboard(table, record), "hist": histories(results_dir),
            "data": json.loads((results_dir / "data.json").read_text()),
            "space_text": (results_dir / "space.yaml").read_text(), "col": record.best_column}


def build(results_dir: str | Path, shown: str | None = None) -> Path:
    """Write RESULTS_DIR/report.html: one <section> per entry of SECTIONS, plots inlined. SHOWN is
    how the page names the results (their URI, when RESULTS_DIR is this machine's copy)."""
    r = _read(Path(results_dir).resolve())
    r["shown"] = shown or str(r["dir"])
    sections = [_summary_section, _leaderboard_section, _deployment_section, _curves_section, _knobs_section,
                _best_section, _test_section]
    body = "".join(f(r) for f in sections)
    name = html.escape(r["record"].name)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{name}</title><style>{STYLE}</style>"
            f"</head><body><h1>Search report: {name}</h1>{body}</body></html>")
    out = r["dir"] / "report.html"
    out.write_text(page)
    return out


def main(argv=None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    p = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.splitlines()[0])
    p.add_argument("results_dir", help="a search's results folder, e.g. results/finetune, or its URI "
                   "(s3://bucket/results/finetune)")
    args = p.parse_args(argv)
    try:
        results_dir, uri = remote_results.open_results(args.results_dir, sys.stdout)
        out = build(results_dir, uri)
        if uri:
            remote_results.push(results_dir, uri, [out.name])
    except (results_folder.ResultsError, remote.StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report: {out}" + (f" (uploaded to {uri}/{out.name})" if uri else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
