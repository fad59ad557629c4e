"""Everything one trial needs: data loading, the model registry, the train loop, and what runs it.

`train_loop.fit(config, context, session)` trains one configuration; only `driver` (the Tune
trial, and the TorchTrainer of a multi-worker trial) and `sessions` know about Ray. Nothing here
imports `search` or `analysis`. `ray_internals` is the one room for what the project relies on
in Ray beyond its documented API, trials and search alike: it sits here, at the bottom, so that
every layer can reach it.
"""
