"""A trained model in use: class probabilities for images, and the averaged model of several.

`predict` feeds uint8 images through the model's own normalisation (`trainables.models.preprocess`)
in batches. `Ensemble` is the model the final model may be: members of one architecture whose
probabilities are averaged, saved, loaded (`trainables.trial.checkpoint`) and exported
(`trainables.models.export`) like any single model.
"""
from __future__ import annotations

import torch
from torch import nn

from trainables.models.preprocess import normalize


class Ensemble(nn.Module):
    """Models of one architecture whose class probabilities are averaged. Its output is the log of
    that average: softmax of it gives the average back, and argmax, cross-entropy and the exports
    treat it as logits."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logp = torch.stack([m(x).float().log_softmax(-1) for m in self.members])
        return torch.logsumexp(logp, 0) - torch.log(torch.tensor(float(len(self.members)), device=x.device))


@torch.no_grad()
def predict(model: nn.Module, meta: dict, x_uint8: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Class probabilities for uint8 images already resized to meta['image_size']."""
    model.eval()
    out = [model(normalize(x_uint8[i:i + batch_size], meta)).softmax(-1) for i in range(0, len(x_uint8), batch_size)]
    return torch.cat(out)
