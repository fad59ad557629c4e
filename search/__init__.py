"""Builds and runs the search: YAML space → Optuna TPE + ASHA → trials in reused Tune actors
(a Ray Train run per trial for multi-worker trials)."""
