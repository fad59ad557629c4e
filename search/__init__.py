"""Builds and runs the search: YAML space → Optuna TPE + ASHA → one Ray Train run per trial."""
