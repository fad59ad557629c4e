"""Bad spaces through the real CLI: exit code 2, exactly one line naming file, key, value and what
is allowed, and no Ray started (its temp dir is never created)."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from tests.conftest import search_cli
from trainables.params import KNOBS

ROWS = [  # (space file text, the exact message after "error: {file}: ")
    ("search: {num_sample: 3}\n",
     "search.num_sample: unknown key; did you mean 'num_samples'? allowed: metric, mode, constraints, num_samples, "
     "max_concurrent_trials, time, seed, startup_trials, max_failures, scheduler, points_to_evaluate"),
    ("space: {learning_rate: 0.1}\n",
     f"space.learning_rate: unknown knob; did you mean 'lr'? knobs: {', '.join(KNOBS)}"),
    ("search: {num_samples: many}\n",
     "search.num_samples: Input should be a valid integer, unable to parse string as an integer (got 'many')"),
    ("search: {metric: val_accuracy}\n",
     "search.metric: unknown objective 'val_accuracy'; did you mean 'val_acc'? allowed: val_acc, val_macro_f1, "
     "val_min_recall, val_loss; a list adds costs: [val_acc, latency_ms] (got 'val_accuracy')"),
    ("search: {constraints: {max_latency: 20}}\n",
     "search.constraints.max_latency: unknown key; did you mean 'max_latency_ms'? allowed: max_latency_ms, "
     "max_params_m, max_model_mb"),
    ("search: {metric: [latency_ms, val_acc]}\n",
     "search.metric: the first objective is the one ASHA stops trials on, so it must be a validation metric "
     "(val_acc, val_macro_f1, val_min_recall, val_loss), got 'latency_ms'; e.g. metric: [val_acc, latency_ms] "
     "(got ['latency_ms', 'val_acc'])"),
    ("space: {lr: {float: [0.1, 0.1]}}\n",
     "space.lr.float: range [0.1, 0.1] is empty: need low < high (write a constant for a single value)"),
    ("space: {lr: {float: [0.1, 0.001]}}\n",
     "space.lr.float: range [0.1, 0.001] is inverted: need low < high (write a constant for a single value)"),
    ("space: {lr: {float: [0, 0.1], log: true}}\n", "space.lr.float: log scale needs low > 0, got 0"),
    ("space: {batch_size: {choice: []}}\n", "space.batch_size.choice: must be a non-empty list of values, got []"),
    ("space: {model: {choice: [cnn, efficientnet_b9]}}\n",
     "space.model: unknown model 'efficientnet_b9': use 'cnn' or a timm model name; did you mean efficientnet_b8, "
     "efficientnet_b7, efficientnet_b6, efficientnet_b5, efficientnet_b4?"),
    ("space: {model: resnet18, cnn_width: 16}\n",
     "space.cnn_width: applies to model 'cnn' only, but model can only be ['resnet18']"),
    ("space:\n  model: {choice: [cnn, resnet18]}\n  cnn_blocks: {int: [1, 4]}\n",
     "space.cnn_blocks: is searched but applies to model 'cnn' only: add when: {model: cnn}"),
    ("space: {model: resnet18, unfreeze: 2}\n",
     "space.unfreeze: applies to pretrained models only (with pretrained: false every layer trains from the "
     "start); set pretrained or drop unfreeze"),
    ("space: {momentum: 0.5}\n", "space.momentum: applies to optimizer 'sgd' only, but optimizer can only be ['adam']"),
    ("space:\n  lr_schedule: {choice: [constant, step]}\n  step_size: {int: [2, 5]}\n",
     "space.step_size: is searched but applies to lr_schedule 'step' only: add when: {lr_schedule: step}"),
    ("space: {head_hidden: '512,abc'}\n",
     "space.head_hidden: head_hidden must be layer widths such as 256, '512,256' or [512, 256] "
     "(got '512,abc')"),
    ("space: {activation: tanh}\n", "space.activation: Input should be 'relu', 'swish', 'silu', 'gelu', 'leaky_relu' "
     "or 'sigmoid' (got 'tanh')"),
    ("space: {class_multipliers: {kat: 2.0}}\n",
     "space.class_multipliers: unknown class 'kat' (did you mean 'cat'?); classes: ['bear', 'bird', 'cat', 'cow', "
     "'dog', 'elephant', 'giraffe', 'horse', 'sheep', 'zebra']"),
    ("space: {model: resnet18, pretrained: /no/such.pth}\n",
     "space.pretrained: weights file '/no/such.pth' does not exist; pretrained is true, false or a weights file"),
    ("search: {num_samples: 0}\n", "search.num_samples: Input should be greater than or equal to 1 (got 0)"),
    ("search: {time: -5}\n", "search.time: a time budget must be more than 0 seconds (got -5)"),
    ("search: {time: 10 minutes}\n",
     "search.time: expected a duration such as 10m, 90s, 1h30m or a number of seconds (got '10 minutes')"),
    ("space:\n  lr: [0.1\n",
     "YAML syntax error at line 2, column 7: while parsing a flow sequence expected ',' or ']', "
     "but got '<stream end>'"),
    ("- a\n- b\n", "a space file must be a mapping of sections (data, search, resources, checkpoint, space), got list"),
]


def test_each_bad_space_gets_its_one_line_message(tmp_path):
    env = dict(os.environ, RAY_TMPDIR=str(tmp_path / "ray"))

    def run(i_row):
        i, (text, _) = i_row
        f = tmp_path / f"bad{i:02d}.yaml"
        f.write_text(text)
        return search_cli([str(f), "--storage", str(tmp_path / "res")], timeout=120, env=env)

    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(run, enumerate(ROWS)))
    for i, ((_, expected), r) in enumerate(zip(ROWS, done)):
        assert r.returncode == 2, (i, r.stderr)
        assert r.stderr == f"error: {tmp_path / f'bad{i:02d}.yaml'}: {expected}\n"
        assert r.stdout == ""
    assert not (tmp_path / "ray").exists() and not (tmp_path / "res").exists()  # no Ray, nothing written
