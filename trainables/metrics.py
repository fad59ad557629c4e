"""Classification metrics from a confusion matrix, the same for a trial's val split and the test split."""
from __future__ import annotations

import torch


def confusion(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    idx = y_true.to(torch.long) * num_classes + y_pred.to(torch.long)
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def from_confusion(cm: torch.Tensor, class_names: list[str], prefix: str = "val_") -> dict:
    """Accuracy, macro F1, each class's recall and the worst class's recall."""
    cm = cm.double()
    tp = cm.diag()
    support, predicted = cm.sum(1), cm.sum(0)
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12),
                     torch.zeros_like(tp))
    present = support > 0
    out = {
        f"{prefix}acc": float(tp.sum() / cm.sum().clamp(min=1)),
        f"{prefix}macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        f"{prefix}min_recall": float(recall[present].min()) if present.any() else 0.0,
    }
    out.update({f"{prefix}recall/{c}": float(r) for c, r in zip(class_names, recall)})
    return out
