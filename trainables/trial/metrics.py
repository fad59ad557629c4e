"""Classification metrics from a confusion matrix, the same for a trial's val split and the test split."""
from __future__ import annotations

import torch


def confusion(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    idx = y_true.to(torch.long) * num_classes + y_pred.to(torch.long)
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _scores(cm: torch.Tensor):
    """Per-class precision, recall, F1 and support (a class never predicted or absent scores 0)."""
    cm = cm.double()
    tp, support, predicted = cm.diag(), cm.sum(1), cm.sum(0)
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12),
                     torch.zeros_like(tp))
    return precision, recall, f1, support


def from_confusion(cm: torch.Tensor, class_names: list[str], prefix: str = "val_") -> dict:
    """Accuracy, macro F1, each class's recall and the worst class's recall."""
    _, recall, f1, support = _scores(cm)
    present = support > 0
    out = {
        f"{prefix}acc": float(cm.diag().sum() / cm.sum().clamp(min=1)),
        f"{prefix}macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        f"{prefix}min_recall": float(recall[present].min()) if present.any() else 0.0,
    }
    out.update({f"{prefix}recall/{c}": float(r) for c, r in zip(class_names, recall)})
    return out


def per_class(cm: torch.Tensor, class_names: list[str]) -> list[dict]:
    """Precision, recall, F1 and support of each class: rows of the report's per-class table."""
    precision, recall, f1, support = _scores(cm)
    return [{"class": c, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(n)}
            for c, p, r, f, n in zip(class_names, precision, recall, f1, support)]


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion: honest even near 0 or 1 and for small n."""
    if n == 0:
        return 0.0, 1.0
    phat = successes / n
    centre = (phat + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((phat * (1 - phat) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
