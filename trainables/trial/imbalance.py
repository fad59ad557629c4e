"""Class-imbalance handling: loss weights or a class-balanced sampler, plus per-class multipliers.

Two mutually exclusive remedies, chosen by `class_weight`:

* 'balanced' / 'max_ratio' reweight the loss; `loss_weights` gives the `weight=` of
  `F.cross_entropy`. 'balanced' is scikit-learn's n / (K · n_c), whose weighted class totals are
  all n / K; 'max_ratio' is max_c n_c / n_c, so the largest class keeps weight 1.
* 'sampler' rebalances the batches instead (`sample_weights` feeds a WeightedRandomSampler);
  the loss stays unweighted, since weighting it too would correct the imbalance twice.

`class_multipliers` ({name: factor}) always scale whichever remedy is active: the loss weights,
or, with 'sampler', the sampling weights (a class with factor 2 is drawn twice as often).
With 'none' they alone make the loss weights.
"""
from __future__ import annotations

import difflib

import torch

from trainables.params import TrialParams


def class_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Images per class (int64, length num_classes), classes absent from `labels` counted 0."""
    counts = torch.bincount(labels.flatten().long().cpu(), minlength=num_classes)
    if len(counts) > num_classes:
        raise ValueError(f"labels go up to {len(counts) - 1} but there are only {num_classes} classes")
    return counts


def unknown_multiplier_class(multipliers: dict[str, float], class_names: list[str]) -> str | None:
    """What is wrong when `class_multipliers` names a class the data lacks, else None. The space
    loader asks too, once the data is scanned, so a typo stops the search before any trial."""
    for name in multipliers:
        if name not in class_names:
            close = difflib.get_close_matches(name, class_names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return f"unknown class {name!r}{hint}; classes: {list(class_names)}"
    return None


def _multipliers(p: TrialParams, class_names: list[str]) -> torch.Tensor:
    """The per-class factors of `class_multipliers`, 1 for classes it does not name."""
    problem = unknown_multiplier_class(p.class_multipliers, class_names)
    if problem:
        raise ValueError(f"class_multipliers: {problem}")
    out = torch.ones(len(class_names))
    for name, factor in p.class_multipliers.items():
        out[class_names.index(name)] = factor
    return out


def loss_weights(p: TrialParams, counts: torch.Tensor, class_names: list[str]) -> torch.Tensor | None:
    """The `weight=` of the cross-entropy (float32, one per class), or None for an unweighted loss.

    A class absent from the training data is counted as 1 image, so nothing divides by zero
    (our stratified split never leaves a class empty; a hand-made split file might).
    """
    mult = _multipliers(p, class_names)  # validated even when unused, so a typo never passes silently
    n_c = counts.double().clamp(min=1)
    if p.class_weight == "balanced":
        base = counts.sum() / (len(class_names) * n_c)
    elif p.class_weight == "max_ratio":
        base = n_c.max() / n_c
    elif p.class_weight == "none" and p.class_multipliers:
        base = torch.ones(len(class_names), dtype=torch.float64)
    else:  # 'none' without multipliers, or 'sampler' (the sampler, not the loss, rebalances)
        return None
    return (base * mult.to(base.device)).float()


def sample_weights(p: TrialParams, labels: torch.Tensor, class_names: list[str]) -> torch.Tensor | None:
    """Per-image weights 1/n_c × multiplier for a WeightedRandomSampler when class_weight is
    'sampler' (every class then totals the same weight), else None."""
    mult = _multipliers(p, class_names)
    if p.class_weight != "sampler":
        return None
    per_class = mult.double() / class_counts(labels, len(class_names)).double().clamp(min=1)
    return per_class[labels.long().cpu()]
