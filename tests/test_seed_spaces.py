"""The seed spaces (spaces/seeds/): each loads, keeps the setup its comment promises, passes the
CLI's --dry-run, and its seed config, drawn through the real define-by-run space, trains one
short epoch in-process on the embedded data.

Pretrained timm models would download their weights from the hub (offline here), so each test
gives `pretrained` a weights file written from a randomly initialised timm model of the same
name: the weights-file path, `unfreeze` and `head_epochs` then run for real.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch

from search import run as run_cli
from search import space
from search.tuner import yaml_space
from tests.conftest import ROOT, trial_context
from trainables.data import dataset
from trainables.params import TrialParams
from trainables.trial import sessions, train_loop

SEEDS = Path(__file__).resolve().parents[1] / "spaces" / "seeds"
LIMIT = 3  # images per class: 1 train, 1 val, 1 test; enough to run every code path

# per file: what its comment promises (the seed's config: constants plus the first
# points_to_evaluate entry), the knobs shrunk for the test, the model whose weights file
# `pretrained` gets (None: no pretrained model), and the trainable blocks per epoch it must report
CASES = {
    "1-efficientnet-b0-224.yaml": dict(
        promises={"model": "tf_efficientnet_b0.aa_in1k", "pretrained": True, "image_size": 224, "dropout": 0.5,
                  "head_hidden": [256], "activation": "relu", "head_dropout": 0.5, "unfreeze": 1,
                  "optimizer": "adam", "lr": 1e-5, "batch_size": 32, "rotation": 20.0, "translate": 0.2,
                  "hflip": 0.5, "lr_schedule": "plateau", "plateau_factor": 0.5, "plateau_patience": 9,
                  "min_lr": 1e-6, "early_stop_patience": 30},
        split=(0.8, 0.1, 0.1),
        shrink={"image_size": 32, "epochs": 1, "batch_size": 8},
        weights="tf_efficientnet_b0.aa_in1k", blocks=[1]),
    "2-efficientnetv2-b0-two-stage.yaml": dict(
        promises={"model": "tf_efficientnetv2_b0.in1k", "pretrained": True, "dropout": 0.5,
                  "head_hidden": [512, 256], "activation": "swish", "head_batchnorm": True, "head_dropout": 0.3,
                  "head_epochs": 10, "epochs": 20, "unfreeze": 1, "optimizer": "adam", "lr": 1e-4,
                  "class_weight": "balanced", "class_multipliers": {"cat": 2.0}, "lr_schedule": "plateau"},
        metric="val_min_recall",
        shrink={"image_size": 32, "epochs": 2, "head_epochs": 1, "batch_size": 8},
        weights="tf_efficientnetv2_b0.in1k", blocks=[0, 1]),
    "3-resnet-gradual-unfreeze.yaml": dict(
        promises={"model": "resnet101.tv_in1k", "pretrained": True, "unfreeze": "all", "unfreeze_every": 5,
                  "lr": 1e-4, "lr_schedule": "step", "step_size": 5, "gamma": 0.1, "batch_size": 180},
        second_point={"model": "resnet152.tv_in1k"},
        shrink={"model": "resnet101.tv_in1k", "image_size": 32, "epochs": 2, "unfreeze_every": 1, "batch_size": 8},
        weights="resnet101.tv_in1k", blocks=[1, 2]),
    "4-efficientnet-b0-dog-emotions.yaml": dict(
        promises={"model": "tf_efficientnet_b0.aa_in1k", "pretrained": True, "head_epochs": 10, "unfreeze": 1,
                  "rotation": 15.0, "hflip": 0.5, "vflip": 0.5, "contrast": 0.2},
        shrink={"image_size": 32, "epochs": 2, "head_epochs": 1, "batch_size": 8},
        weights="tf_efficientnet_b0.aa_in1k", blocks=[0, 1]),
    "5-custom-cnn.yaml": dict(
        promises={"model": "cnn", "cnn_blocks": 2, "cnn_convs_per_block": 1, "cnn_kernel": 3, "cnn_batchnorm": False,
                  "cnn_pool": "max", "cnn_padding": "valid", "activation": "relu", "image_size": 28,
                  "class_weight": "balanced", "batch_size": 32, "lr": 1e-3, "lr_schedule": "constant",
                  "hflip": 0.0, "rotation": 0.0},
        searched={"image_size", "class_weight", "batch_size", "lr", "lr_schedule", "cnn_convs_per_block",
                  "cnn_batchnorm", "cnn_pool", "cnn_padding", "activation", "hflip", "rotation"},
        shrink={"epochs": 1, "batch_size": 8},
        weights=None, blocks=None),
}


def test_every_seed_file_has_a_case():
    assert sorted(p.name for p in SEEDS.glob("*.yaml")) == sorted(CASES)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """`name` -> a state_dict file of timm's `name` (1000 classes), written once per model."""
    import timm

    made: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in made:
            path = tmp_path_factory.mktemp("weights") / f"{name}.pth"
            torch.save(timm.create_model(name, pretrained=False, num_classes=1000).state_dict(), path)
            made[name] = str(path)
        return made[name]

    return get


@pytest.fixture(scope="module")
def split_file(tmp_path_factory):
    """(train, val, test) fractions -> (index, split file) of a LIMIT-images-per-class split, made once each."""
    made: dict[tuple, tuple] = {}

    def get(fractions: tuple) -> tuple:
        if fractions not in made:
            idx = dataset.prepare("animal-mnist", dict(zip(("train", "val", "test"), fractions)), 0, LIMIT)
            path = tmp_path_factory.mktemp("split") / "split.csv"
            dataset.save_split(idx, path)
            made[fractions] = idx, path
        return made[fractions]

    return get


def seed_config(spec: space.SpaceFile) -> dict:
    """The seed's own config as the comment states it: the constants plus the first point."""
    consts = {n: k.value for n, k in spec.knobs.items() if k.kind == "const"}
    return {**consts, **(spec.search.points_to_evaluate[0] if spec.search.points_to_evaluate else {})}


def shrink_overrides(path: Path, shrink: dict, extra: list[str]) -> list[str]:
    """--set overrides making the knobs in `shrink` constants, with those knobs dropped from the
    points (a point may only name searched knobs) and only the first point kept."""
    raw = space.read_yaml(path)
    points = raw.get("search", {}).get("points_to_evaluate", [])[:1]
    points = [{k: v for k, v in p.items() if k not in shrink} for p in points]
    return ([f"space.{k}={json.dumps(v)}" for k, v in shrink.items()]
            + [f"search.points_to_evaluate={json.dumps(points)}", f"data.limit_per_class={LIMIT}",
               "search.scheduler.grace_period=1"] + extra)


def _parsed(config: dict, keys) -> dict:
    """Knob values as the trial reads them: '512,256' is [512, 256], 'cat=2.0' is {'cat': 2.0}."""
    return {k: getattr(TrialParams.model_validate({k: config[k]} if k in config else {}), k) for k in keys}


@pytest.mark.filterwarnings("error:Choices for a categorical distribution:UserWarning")  # plain choices only
@pytest.mark.parametrize("name", sorted(CASES))
def test_seed_space_loads_and_its_seed_config_trains_one_epoch(name, weights_file, split_file, capsys):
    case = CASES[name]
    path = SEEDS / name
    assert path.read_text().startswith("# Seed "), "the file must open with the comment citing what it reproduces"

    # as written: it validates, keeps the seed's setup, and is a search around it
    spec = space.load(path)
    cfg = seed_config(spec)
    assert _parsed(cfg, case["promises"]) == case["promises"]
    TrialParams.model_validate(cfg)
    searched = {n for n, k in spec.knobs.items() if k.kind != "const"}
    assert len(searched) >= 4 and set(spec.search.points_to_evaluate[0]) <= searched
    assert case.get("searched", set()) <= searched
    for point in spec.search.points_to_evaluate:  # the loader checks types only, not the entry's values
        for k, v in point.items():
            knob = spec.knobs[k]
            assert v in knob.choices if knob.kind == "choice" else knob.low <= v <= knob.high, (k, v)
    if "second_point" in case:
        assert {**spec.search.points_to_evaluate[0], **case["second_point"]} == spec.search.points_to_evaluate[1]
    assert spec.search.metric == case.get("metric", "val_acc")
    split = spec.data.split
    assert (split.train, split.val, split.test) == case.get("split", (0.7, 0.15, 0.15))
    assert spec.data.source == "animal-mnist"

    # the real CLI validates it (including class_multipliers against the data's classes), given
    # a local weights file where the seed's pretrained weights would come from the hub
    extra = [f"space.pretrained={json.dumps(weights_file(case['weights']))}"] if case["weights"] else []
    assert run_cli.main([str(path), "--dry-run", *(a for e in extra for a in ("--set", e))]) == 0
    assert "resolved space:" in capsys.readouterr().out

    # shrunk, with that weights file, and its seed config drawn through the define-by-run space
    small = space.load(path, shrink_overrides(path, case["shrink"], extra))
    context = trial_context(*split_file(case.get("split", (0.7, 0.15, 0.15))), spec=small)
    fn = yaml_space(small)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    point = small.search.points_to_evaluate[0]
    study.enqueue_trial(point)
    trial = study.ask()
    consts = fn(trial)
    assert {k: trial.params[k] for k in point} == point
    config = {**trial.params, **consts}
    expected = {**case["promises"], **case["shrink"]}
    if case["weights"]:
        expected["pretrained"] = weights_file(case["weights"])
    assert _parsed(config, expected) == expected

    session = sessions.LocalSession(device="cpu")
    last = train_loop.fit(config, context, session)
    epochs = config["epochs"]
    assert [r["epoch"] for r in session.history] == list(range(1, epochs + 1))
    for row in session.history:
        assert math.isfinite(row["train_loss"]) and 0.0 <= row["val_acc"] <= 1.0
        assert 0.0 <= row["val_min_recall"] <= 1.0
    assert last["epoch_of"] == epochs
    if case["blocks"] is not None:
        assert [r["trainable_blocks"] for r in session.history] == case["blocks"]
    else:
        assert "trainable_blocks" not in last


@pytest.mark.timeout(120)
def test_weights_that_cannot_be_had_stop_the_search_before_ray(tmp_path):
    """Offline, with empty hub caches: one line naming the model and what to do, exit 2, no Ray."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), TORCH_HOME=str(tmp_path / "torch"))
    r = subprocess.run([sys.executable, "-m", "search.run", str(SEEDS / "2-efficientnetv2-b0-two-stage.yaml"),
                        "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=100, env=env)
    assert r.returncode == 2, r.stdout + r.stderr
    line = r.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "space.model: pretrained weights for 'tf_efficientnetv2_b0.in1k' cannot be had" in line
    assert "pretrained: /path/to/weights.pth, or pretrained: false" in line
