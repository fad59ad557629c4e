"""The search's Optuna study: where it lives, how to open it, and seeding it from an earlier search.

The searcher writes the study while the search runs: by default to `optuna.journal` in the
results folder (Optuna's JournalStorage on a plain file: JSON lines, appended under a file
lock, so `optuna-dashboard RESULTS/optuna.journal` and `optuna.load_study` can read it from
other processes mid-search), or to an RDB given with `--study-storage` (e.g. PostgreSQL, for
a dashboard on another machine). `--resume` goes on writing the same study.
"""
from __future__ import annotations

from pathlib import Path

JOURNAL_FILE = "optuna.journal"


def storage(exp_dir: str | Path, url: str | None = None):
    """An Optuna storage object: the RDB at URL, else the journal file in the results folder."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if url:
        return optuna.storages.RDBStorage(url)
    return JournalStorage(JournalFileBackend(str(Path(exp_dir) / JOURNAL_FILE)))


def storage_label(exp_dir: str | Path, url: str | None = None) -> str:
    """What to give `optuna-dashboard` (and what search.json records)."""
    return url or str(Path(exp_dir) / JOURNAL_FILE)


def load(exp_dir: str | Path, info: dict):
    """The study of a search's results folder (read only: JSON lines or the RDB)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = info.get("study_storage")
    url = url if url and "://" in url else None
    return optuna.load_study(study_name=info["name"], storage=storage(exp_dir, url))


def distributions(spec) -> dict:
    """Each searched knob of a space as the Optuna distribution its define-by-run code samples."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    dists = {}
    for name, k in spec.knobs.items():
        if k.kind == "choice":
            dists[name] = CategoricalDistribution(k.choices)
        elif k.kind == "int":
            dists[name] = IntDistribution(int(k.low), int(k.high), log=k.log, step=int(k.step or 1))
        elif k.kind == "float":
            dists[name] = FloatDistribution(k.low, k.high, log=k.log, step=k.step)
    return dists


def fits(dist, value) -> bool:
    """Whether VALUE is one the new space's distribution can sample."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return value in dist.choices
    if isinstance(dist, IntDistribution):
        return isinstance(value, int) and dist.low <= value <= dist.high
    if isinstance(dist, FloatDistribution):
        return isinstance(value, (int, float)) and dist.low <= value <= dist.high
    return False


def warm_start(study, previous, dists: dict) -> tuple[int, list[str]]:
    """Add PREVIOUS study's completed and pruned trials to STUDY, each with its knobs that the new
    space has with a compatible range (the others are dropped). Returns (trials added, knobs
    dropped). TPE then starts from what the earlier search learned."""
    import optuna
    from optuna.trial import TrialState

    added, dropped = 0, set()
    for t in previous.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        params = {}
        for name, value in t.params.items():
            if name in dists and fits(dists[name], value):
                params[name] = value
            else:
                dropped.add(name)
        if not params:
            continue
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={n: dists[n] for n in params}, value=t.value, state=t.state,
            intermediate_values=t.intermediate_values,
            user_attrs={**t.user_attrs, "warm_start_from": f"{previous.study_name} #{t.number}"}))
        added += 1
    return added, sorted(dropped)
