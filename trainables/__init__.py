"""Everything one trial needs: data loading, the model registry, and the train loop.

Nothing here knows about Tune's search: a trial is a plain function of a config dict.
"""
