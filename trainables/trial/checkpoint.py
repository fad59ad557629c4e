"""A model on disk: a plain `state_dict` plus a JSON of what rebuilds it.

No pickled objects: weights load with `torch.load(..., weights_only=True)` and everything
else (architecture, classes, image size, normalisation) is readable JSON. This module saves and
loads that folder and names its files; using the model is `trainables.models.inference`, writing it
out for other runtimes `trainables.models.export`, feeding it images `trainables.models.preprocess`.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from trainables.models import registry
from trainables.models.inference import Ensemble

WEIGHTS, META, TRAIN_STATE = "model.pt", "meta.json", "train_state.pt"


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def save(directory: str | Path, model: nn.Module, meta: dict, train_state: dict | None = None) -> None:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    torch.save(unwrap(model).state_dict(), d / WEIGHTS)
    (d / META).write_text(json.dumps(meta, indent=2, default=str))
    if train_state is not None:
        torch.save(train_state, d / TRAIN_STATE)


def read_meta(directory: str | Path) -> dict:
    return json.loads((Path(directory) / META).read_text())


def load(directory: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the model from its JSON (no pretrained download) and load its weights, in eval mode.
    A meta with `ensemble: N` holds N members of the same architecture in one state_dict."""
    d = Path(directory)
    meta = read_meta(d)
    params = dict(meta["params"], pretrained=False)
    n = int(meta.get("ensemble", 0))
    model = Ensemble([registry.build(params, meta["num_classes"]) for _ in range(n)]) if n else \
        registry.build(params, meta["num_classes"])
    model.load_state_dict(torch.load(d / WEIGHTS, map_location="cpu", weights_only=True))
    return model.eval(), meta


def load_train_state(directory: str | Path) -> dict | None:
    p = Path(directory) / TRAIN_STATE
    return torch.load(p, map_location="cpu", weights_only=True) if p.exists() else None
