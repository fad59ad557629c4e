"""YAML validation: each bad input gives one line naming the file, the key and what is allowed."""
from __future__ import annotations

import pytest

from search import space
from tests.conftest import ROOT, search_cli, write_space

GOOD = """
data: {source: animal-mnist}
search: {num_samples: 4, scheduler: {max_t: 3}}
space:
  model: {choice: [cnn, resnet18]}
  pretrained: {choice: [true, false], when: {model: resnet18}}
  lr: {float: [1.0e-4, 1.0e-1], log: true}
  batch_size: {choice: [16, 32]}
  epochs: {int: [1, 3]}
"""


def load_text(tmp_path, text, overrides=()):
    return space.load(write_space(tmp_path / "s.yaml", text), overrides)


def error_of(tmp_path, text, overrides=()) -> str:
    with pytest.raises(space.SpaceError) as e:
        load_text(tmp_path, text, overrides)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "s.yaml") in msg
    return msg


def test_good_space_loads_with_typed_values(tmp_path):
    spec = load_text(tmp_path, GOOD)
    assert spec.search.mode == "max"  # derived from the metric
    assert spec.knobs["lr"].low == pytest.approx(1e-4) and spec.knobs["lr"].log
    assert spec.knobs["pretrained"].when == {"model": ["resnet18"]}
    assert spec.max_epochs() == 3


def test_shipped_spaces_validate():
    for path in (ROOT / "spaces").glob("*.yaml"):
        space.load(path)


@pytest.mark.parametrize("text, expected", [
    ("serch: {}\n", ["serch: unknown key", "did you mean 'search'"]),
    ("search: {num_sample: 3}\n", ["search.num_sample: unknown key", "did you mean 'num_samples'", "allowed:"]),
    ("space: {lrr: 0.1}\n", ["space.lrr: unknown knob", "did you mean 'lr'"]),
    ("space: {lr: {flaot: [0.1, 1]}}\n", ["space.lr.flaot: unknown key", "did you mean 'float'"]),
])
def test_unknown_keys_suggest_the_right_one(tmp_path, text, expected):
    msg = error_of(tmp_path, text)
    for part in expected:
        assert part in msg


@pytest.mark.parametrize("text, expected", [
    ("search: {num_samples: many}\n", ["search.num_samples", "integer", "'many'"]),
    ("search: {num_samples: 0}\n", ["search.num_samples", "greater than or equal to 1"]),
    ("space: {batch_size: {choice: [32, big]}}\n", ["space.batch_size", "'big'"]),
    ("space: {lr: {float: [0.1, 0.1]}}\n", ["space.lr.float", "empty"]),
    ("space: {lr: {float: [0.1, 0.001]}}\n", ["space.lr.float", "inverted"]),
    ("space: {epochs: {int: [3, 1]}}\n", ["space.epochs.int", "inverted"]),
    ("space: {lr: {float: [0, 0.1], log: true}}\n", ["space.lr.float", "log scale needs low > 0"]),
    ("space: {batch_size: {choice: []}}\n", ["space.batch_size.choice", "non-empty list"]),
    ("search: {metric: val_loss, mode: max}\n", ["search", "mode 'min'"]),
    ("[1, 2]\n", ["must be a mapping"]),
    ("space: {lr: [1\n", ["YAML syntax error at line"]),
])
def test_wrong_types_and_ranges(tmp_path, text, expected):
    msg = error_of(tmp_path, text)
    for part in expected:
        assert part in msg, msg


def test_unknown_model_lists_close_matches(tmp_path):
    msg = error_of(tmp_path, "space: {model: {choice: [cnn, resnet19]}}\n")
    assert "space.model: unknown model 'resnet19'" in msg and "resnet18" in msg


def test_when_must_name_an_earlier_knob(tmp_path):
    msg = error_of(tmp_path, "space:\n  unfreeze: {choice: [0, all], when: {pretrained: true}}\n  pretrained: true\n")
    assert "space.unfreeze.when.pretrained" in msg and "listed above" in msg


def test_pretrained_cnn_is_refused(tmp_path):
    msg = error_of(tmp_path, "space: {model: {choice: [cnn, resnet18]}, pretrained: true}\n")
    assert "space.pretrained" in msg and "cnn" in msg


def test_overrides_replace_values_and_are_validated(tmp_path):
    spec = load_text(tmp_path, GOOD, ["search.num_samples=2", "data.limit_per_class=5", "space.lr=0.01"])
    assert spec.search.num_samples == 2 and spec.data.limit_per_class == 5
    assert spec.knobs["lr"].kind == "const" and spec.knobs["lr"].value == 0.01
    assert "search.num_samples" in error_of(tmp_path, GOOD, ["search.num_samples=-1"])


def run_cli(*args):
    return search_cli(list(args), timeout=120)


def test_cli_bad_space_exits_2_with_one_line_before_ray(tmp_path):
    bad = write_space(tmp_path / "bad.yaml", "search: {num_sample: 3}\n")
    r = run_cli(str(bad), "--storage", str(tmp_path / "res"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "did you mean 'num_samples'" in r.stderr
    assert "Ray" not in r.stdout and not (tmp_path / "res").exists()


def test_cli_missing_data_folder_and_too_few_classes(tmp_path):
    r = run_cli(str(ROOT / "spaces" / "finetune.yaml"), "--data", str(tmp_path / "nope"), "--dry-run")
    assert r.returncode == 2 and "does not exist" in r.stderr and str(tmp_path / "nope") in r.stderr
    (tmp_path / "one" / "only").mkdir(parents=True)
    r = run_cli(str(ROOT / "spaces" / "finetune.yaml"), "--data", str(tmp_path / "one"), "--dry-run")
    assert r.returncode == 2 and "need at least 2" in r.stderr


def test_cli_dry_run_prints_space_and_data(tmp_path, folder):
    r = run_cli(str(ROOT / "spaces" / "finetune.yaml"), "--data", str(folder), "--dry-run", "--storage",
                str(tmp_path / "res"))
    assert r.returncode == 0, r.stderr
    assert "60 images, 3 classes" in r.stdout and "resolved space:" in r.stdout and "efficientnet_lite0" in r.stdout


@pytest.mark.parametrize("text, message", [
    ("space: {head_hidden: {choice: [[512, 256], [256]]}}\n",
     "space.head_hidden: choice values must be plain values; write [512, 256] as a string, e.g. '512,256' "
     "for head_hidden or 'cat=2.0' for class_multipliers"),
    ("space: {head_batchnorm: true}\n", "space.head_batchnorm: acts on the head's hidden layers, but head_hidden "
                                        "gives none; set head_hidden (e.g. [256]) or drop head_batchnorm"),
    ("space: {optimizer: sgd, momentum: 0.0, nesterov: true}\n",
     "space.nesterov: Nesterov momentum needs momentum > 0, but momentum is 0"),
    ("search: {points_to_evaluate: [{batch_size: 48}]}\nspace: {batch_size: {choice: [16, 32]}}\n",
     "search.points_to_evaluate[0].batch_size: 48 is not one of the knob's choices [16, 32]"),
    ("search: {points_to_evaluate: [{lr: 0.5}]}\nspace: {lr: {float: [1.0e-4, 1.0e-1]}}\n",
     "search.points_to_evaluate[0].lr: 0.5 is outside the knob's range [0.0001, 0.1]"),
])
def test_knob_value_rules(tmp_path, text, message):
    assert error_of(tmp_path, text).endswith(message)


def test_list_and_mapping_knobs_search_in_string_form(tmp_path):
    spec = load_text(tmp_path, "space:\n  head_hidden: {choice: ['512,256', 256, none]}\n"
                               "  class_multipliers: {choice: ['cat=2.0', 'none']}\n  model: cnn\n")
    assert spec.knobs["head_hidden"].choices == ["512,256", 256, "none"]  # as written: Optuna wants plain values
    const = load_text(tmp_path, "space: {head_hidden: [512, 256], class_multipliers: {cat: 2.0}}\n")
    assert const.knobs["head_hidden"].value == [512, 256] and const.knobs["class_multipliers"].value == {"cat": 2.0}
