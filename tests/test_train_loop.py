"""The train loop in-process (LocalSession): metric keys, checkpoints that load, divergence."""
from __future__ import annotations

import pytest
import torch

from tests.conftest import trial_context
from trainables.data import dataset
from trainables.models import inference
from trainables.trial import checkpoint, sessions, train_loop


def config_for(folder, tmp_path, **knobs):
    """(hyperparameters, TrialContext) of a small cnn trial on FOLDER, split 70/15/15."""
    idx = dataset.prepare(str(folder), {"train": 0.7, "val": 0.15, "test": 0.15}, 0)
    dataset.save_split(idx, tmp_path / "split.csv")
    config = {"model": "cnn", "cnn_width": 8, "image_size": 12, "batch_size": 8, "epochs": 2, **knobs}
    return config, trial_context(idx, tmp_path / "split.csv")


def test_fit_reports_fixed_keys_each_epoch_and_saves_a_loadable_model(folder, tmp_path):
    session = sessions.LocalSession(checkpoint_dir=tmp_path / "ck")
    train_loop.fit(*config_for(folder, tmp_path, lr=0.01), session)
    assert [r["epoch"] for r in session.history] == [1, 2]
    keys = {"epoch", "train_loss", "val_loss", "val_acc", "val_macro_f1", "val_min_recall",
            "val_recall/a", "val_recall/b", "val_recall/c"}
    assert keys <= set(session.history[-1])
    model, meta = checkpoint.load(tmp_path / "ck")
    assert meta["class_names"] == ["a", "b", "c"] and meta["image_size"] == 12 and meta["epoch"] == 2
    x = torch.zeros((5, 3, 12, 12), dtype=torch.uint8)
    probs = inference.predict(model, meta, x)
    assert probs.shape == (5, 3) and torch.allclose(probs.sum(1), torch.ones(5))


def test_learning_happens_on_separable_classes(folder, tmp_path):
    session = sessions.LocalSession()
    train_loop.fit(*config_for(folder, tmp_path, lr=0.01, epochs=6), session)
    assert session.history[-1]["val_acc"] > 0.6  # 3 classes by brightness: chance is 1/3


def test_diverging_loss_stops_the_trial(folder, tmp_path):
    with pytest.raises(train_loop.TrialDiverged, match="epoch 1"):
        train_loop.fit(*config_for(folder, tmp_path, lr=1e35, epochs=1), sessions.LocalSession())


@pytest.mark.timeout(60)
def test_a_context_from_another_machine_decodes_into_this_machines_cache(folder, tmp_path):
    """analysis.retrain and report of a folder made elsewhere: its cache path is not writable here."""
    import dataclasses

    _, context = config_for(folder, tmp_path)
    assert context.on_this_machine() is context  # the search's own cache, writable here
    foreign = dataclasses.replace(context, cache_dir="/proc/1/hpo-cache")
    assert foreign.on_this_machine().cache_dir == str(dataset.default_cache_dir())
    assert foreign.on_this_machine().data_root == context.data_root
