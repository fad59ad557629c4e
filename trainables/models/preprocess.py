"""What a model's input must look like, and the tensor op that makes it so.

One room for preprocessing, as timm resolves a model's data config in one place: `resolve`
says which mean, std and interpolation a model was trained with (a pretrained timm model's own,
else a plain default), and `Normalizer` / `normalize` apply that mean and std to uint8 images.
The train loop, evaluation, prediction and the exports all normalise through here, so a saved
model is fed exactly as it was trained.
"""
from __future__ import annotations

import torch

from trainables.models import registry
from trainables.params import TrialParams

DEFAULT_NORM = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bilinear"}


def resolve(params: dict) -> dict:
    """Mean, std and interpolation the model's inputs need: the pretrained model's own, from timm."""
    name = params.get("model", TrialParams.model_fields["model"].default)
    if not params.get("pretrained", False) or not registry.can_be_pretrained(name):
        return dict(DEFAULT_NORM)
    import timm

    cfg = timm.get_pretrained_cfg(name)
    cfg = cfg.to_dict() if cfg is not None else {}
    return {
        "mean": tuple(cfg.get("mean", DEFAULT_NORM["mean"])),
        "std": tuple(cfg.get("std", DEFAULT_NORM["std"])),
        "interpolation": cfg.get("interpolation", "bilinear"),
    }


class Normalizer:
    """uint8 N×3×S×S → float input normalised the way the model was trained.

    (x/255 − mean)/std as one multiply and one subtract, both in place on the new float
    tensor: three out-of-place ops cost more than the rest of a cached data pipeline. The two
    constants are made on the device once, here, not at every batch (no host-to-device copy
    per step)."""

    def __init__(self, meta: dict, device):
        mean = torch.tensor(meta["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(meta["std"], dtype=torch.float32).view(1, 3, 1, 1)
        self.scale = (1.0 / (255.0 * std)).to(device)
        self.shift = (mean / std).to(device)

    def __call__(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return x_uint8.float().mul_(self.scale).sub_(self.shift)


def normalize(x_uint8: torch.Tensor, meta: dict) -> torch.Tensor:
    """One batch normalised (see Normalizer; build one Normalizer for many batches)."""
    return Normalizer(meta, x_uint8.device)(x_uint8)
