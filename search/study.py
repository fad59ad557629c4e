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


def absolute_url(url: str) -> str:
    """A relative SQLite path made absolute: a resumed search may start from another folder."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        return prefix + str(Path(url[len(prefix):]).resolve())
    return url


def storage(exp_dir: str | Path, url: str | None = None):
    """An Optuna storage object: the RDB at URL, else the journal file in the results folder."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if url:
        return optuna.storages.RDBStorage(absolute_url(url))
    return JournalStorage(JournalFileBackend(str(Path(exp_dir) / JOURNAL_FILE)))


def storage_label(exp_dir: str | Path, url: str | None = None) -> str:
    """What to give `optuna-dashboard`, and what search.json records: never a password."""
    if not url:
        return str(Path(exp_dir) / JOURNAL_FILE)
    from sqlalchemy.engine import make_url

    return make_url(absolute_url(url)).render_as_string(hide_password=True)


def uses_rdb(label: str) -> bool:
    """Whether a study's storage LABEL (`storage_label`, as search.json records it) names an RDB."""
    return "://" in label


def load(exp_dir: str | Path, name: str, url: str | None = None):
    """The study NAME (the search's) of a results folder: its journal, or the RDB at URL. (The URL
    recorded in search.json has no password, and a folder received from someone else could name
    any database: callers pass the URL they trust.)"""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=storage(exp_dir, url))


def distributions(spec) -> dict:
    """Each searched knob of a space as the Optuna distribution its define-by-run code samples."""
    from search.optuna_space import distribution

    dists = {name: distribution(k.model_dump()) for name, k in spec.knobs.items()}
    return {name: d for name, d in dists.items() if d is not None}


def fits(dist, value) -> bool:
    """Whether VALUE is one the new space's distribution can sample (its range, choices and step)."""
    try:
        return bool(dist._contains(dist.to_internal_repr(value)))
    except (ValueError, TypeError):  # a value of another type than the new space's knob
        return False


def warm_start(study, previous, dists: dict, limits: dict | None = None) -> tuple[int, list[str]]:
    """Add PREVIOUS study's completed and pruned trials to STUDY, each with its knobs that the new
    space has with a compatible range (the others are dropped), and with its model's figures
    judged against the new search's LIMITS (its constraints). Returns (trials added, knobs
    dropped). TPE then starts from what the earlier search learned (see also rerun_best)."""
    import optuna
    from optuna.trial import TrialState

    from trainables.models.limits import over_limits, violation

    added, dropped = 0, set()
    for t in previous.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if t.user_attrs.get("infeasible") and not over_limits(t.user_attrs, limits or {}):
            continue  # never trained (over the earlier limits), and within these: nothing is known of it
        params = {}
        for name, value in t.params.items():
            if name in dists and fits(dists[name], value):
                params[name] = value
            else:
                dropped.add(name)
        if not params:
            continue
        trial = optuna.trial.create_trial(
            params=params, distributions={n: dists[n] for n in params}, values=t.values, state=t.state,
            intermediate_values=t.intermediate_values,
            user_attrs={**t.user_attrs, "warm_start_from": f"{previous.study_name} #{t.number}"})
        for name, limit in (limits or {}).items():
            if t.user_attrs.get(name) is not None:
                trial.set_constraint(name, violation(t.user_attrs[name], limit))
        study.add_trial(trial)
        added += 1
    return added, sorted(dropped)


def rerun_best(study, previous, dists: dict, limits: dict | None = None) -> dict | None:
    """Queue PREVIOUS study's best completed configuration as STUDY's next trial, when every one of
    its knobs fits the new space: a warm-started search tries the best known configuration
    first, so it has the earlier search's best in hand from its first trial on, and TPE
    searches on from there. Returns the queued parameters (None: nothing fit, or its model is
    over LIMITS)."""
    from trainables.models.limits import over_limits

    if len(previous.directions) > 1:  # a multi-objective study has a front, not one best
        return None
    try:
        best = previous.best_trial  # the best feasible one, under the earlier search's constraints
    except ValueError:  # no completed (feasible) trial
        return None
    if not best.params or not all(n in dists and fits(dists[n], v) for n, v in best.params.items()):
        return None
    if over_limits(best.user_attrs, limits or {}):  # not under this search's constraints
        return None
    study.enqueue_trial(best.params, user_attrs={"warm_start_rerun": f"{previous.study_name} #{best.number}"})
    return dict(best.params)


def close_unfinished(study) -> int:
    """End the study's trials still RUNNING once a search has ended (not interrupted): trials the
    time budget stopped (Tune tells the searcher nothing of them) and trials asked for just
    before a kill, whose resume asked anew. PRUNED if they reported an epoch, else FAIL."""
    from optuna.trial import TrialState

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in running:
        study.tell(t.number, state=TrialState.PRUNED if t.intermediate_values else TrialState.FAIL)
    return len(running)
