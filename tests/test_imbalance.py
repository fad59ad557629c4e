"""Loss weights and sampler weights on a known 80/20 split, checked against hand-computed values."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import WeightedRandomSampler

from trainables.params import TrialParams
from trainables.trial.imbalance import class_counts, loss_weights, sample_weights

NAMES = ["a", "b"]
LABELS = torch.tensor([0] * 80 + [1] * 20)
COUNTS = torch.tensor([80, 20])


def weights(**knobs):
    return loss_weights(TrialParams(**knobs), COUNTS, NAMES)


def test_class_counts():
    assert class_counts(LABELS, 2).tolist() == [80, 20]
    assert class_counts(torch.tensor([0, 0, 2]), 4).tolist() == [2, 0, 1, 0]
    with pytest.raises(ValueError, match="only 2 classes"):
        class_counts(torch.tensor([0, 2]), 2)


def test_formulas():
    assert weights() is None
    torch.testing.assert_close(weights(class_weight="balanced"), torch.tensor([0.625, 2.5]))
    torch.testing.assert_close(weights(class_weight="max_ratio"), torch.tensor([1.0, 4.0]))
    torch.testing.assert_close(weights(class_weight="balanced", class_multipliers={"b": 2}), torch.tensor([0.625, 5.0]))
    torch.testing.assert_close(weights(class_multipliers="a=3"), torch.tensor([3.0, 1.0]))
    assert weights(class_weight="sampler", class_multipliers={"b": 2}) is None


def test_empty_class_does_not_divide_by_zero():
    w = loss_weights(TrialParams(class_weight="max_ratio"), torch.tensor([10, 0]), NAMES)
    assert torch.isfinite(w).all()
    torch.testing.assert_close(w, torch.tensor([1.0, 10.0]))


def test_weighted_cross_entropy_is_the_weighted_mean():
    torch.manual_seed(0)
    w = weights(class_weight="balanced")
    y = torch.tensor([0, 0, 0, 0, 0, 1])
    logits = torch.randn(6, 2)
    per_sample = F.cross_entropy(logits, y, reduction="none")
    expected = (w[y] * per_sample).sum() / w[y].sum()
    torch.testing.assert_close(F.cross_entropy(logits, y, weight=w), expected)
    assert not torch.isclose(expected, per_sample.mean())


def test_unknown_class_name():
    with pytest.raises(ValueError) as err:
        loss_weights(TrialParams(class_multipliers={"kat": 2}), torch.tensor([5, 5]), ["cat", "dog"])
    msg = str(err.value)
    assert "\n" not in msg
    assert msg == "class_multipliers: unknown class 'kat' (did you mean 'cat'?); classes: ['cat', 'dog']"
    with pytest.raises(ValueError, match="unknown class 'zzz'; classes"):
        sample_weights(TrialParams(class_weight="sampler", class_multipliers={"zzz": 2}), LABELS, NAMES)


def _draw_fraction_b(p):
    w = sample_weights(p, LABELS, NAMES)
    sampler = WeightedRandomSampler(w, 2000, replacement=True, generator=torch.Generator().manual_seed(0))
    return (LABELS[list(sampler)] == 1).float().mean().item()


def test_sampler_balances_classes():
    assert sample_weights(TrialParams(class_weight="balanced"), LABELS, NAMES) is None
    assert _draw_fraction_b(TrialParams(class_weight="sampler")) == pytest.approx(0.5, rel=0.1)
    assert _draw_fraction_b(TrialParams(class_weight="sampler", class_multipliers={"b": 2})) == pytest.approx(
        2 / 3, rel=0.1)
