"""The YAML → Optuna define-by-run conversion: conditional knobs, inclusive bounds, picklable."""
from __future__ import annotations

import pickle

import optuna
import pytest

from search import space
from search.optuna_space import YamlSpace
from tests.conftest import write_space

CONDITIONAL = """
space:
  model: {choice: [cnn, efficientnet_lite0]}
  pretrained: {choice: [true, false], when: {model: efficientnet_lite0}}
  unfreeze: {choice: [0, 2, all], when: {pretrained: true}}
  cnn_blocks: {int: [1, 3], when: {model: cnn}}
  lr: {float: [1.0e-4, 1.0e-2], log: true}
  image_size: 16
"""


def sample(tmp_path, text, n=80):
    spec = space.load(write_space(tmp_path / "s.yaml", text))
    fn = YamlSpace({k: v.model_dump() for k, v in spec.knobs.items()})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out = []
    for _ in range(n):
        t = study.ask()
        consts = fn(t)
        out.append((dict(t.params), consts))
        study.tell(t, 0.0)
    return out


def test_conditional_knobs_are_sampled_only_when_they_apply(tmp_path):
    seen = sample(tmp_path, CONDITIONAL)
    for params, consts in seen:
        lite = params["model"] == "efficientnet_lite0"
        assert ("pretrained" in params) == lite
        assert ("cnn_blocks" in params) == (not lite)
        assert ("unfreeze" in params) == (params.get("pretrained") is True)
        assert consts == {"image_size": 16}  # constants go to the config, not to Optuna; nothing else does
        assert 1e-4 <= params["lr"] <= 1e-2
    assert {p.get("unfreeze") for p, _ in seen} >= {0, 2, "all"}


def test_integer_bounds_are_inclusive(tmp_path):
    seen = sample(tmp_path, "space: {cnn_blocks: {int: [1, 3]}, batch_size: {int: [8, 32], step: 8}}\n", n=60)
    assert {p["cnn_blocks"] for p, _ in seen} == {1, 2, 3}
    assert {p["batch_size"] for p, _ in seen} == {8, 16, 24, 32}


def test_space_survives_pickle_as_tune_checkpoints_it(tmp_path):
    spec = space.load(write_space(tmp_path / "s.yaml", CONDITIONAL))
    fn = YamlSpace({k: v.model_dump() for k, v in spec.knobs.items()})
    again = pickle.loads(pickle.dumps(fn))
    t = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    assert again(t) == {"image_size": 16} and set(t.params) >= {"model", "lr"}


def test_yaml_floats_written_like_1e_4_become_numbers(tmp_path):
    spec = space.load(write_space(tmp_path / "s.yaml", "space: {lr: {choice: [1e-4, 1e-3]}}\n"))
    assert spec.knobs["lr"].choices == [pytest.approx(1e-4), pytest.approx(1e-3)]
