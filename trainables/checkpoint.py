"""A model on disk: a plain `state_dict` plus a JSON of what rebuilds it.

No pickled objects: weights load with `torch.load(..., weights_only=True)` and everything
else (architecture, classes, image size, normalisation) is readable JSON.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from trainables import models

WEIGHTS, META, TRAIN_STATE, EXPORTED = "model.pt", "meta.json", "train_state.pt", "model.pt2"


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


def load(directory: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the model from its JSON (no pretrained download) and load its weights, in eval mode.
    A meta with `ensemble: N` holds N members of the same architecture in one state_dict."""
    d = Path(directory)
    meta = read_meta(d)
    params = dict(meta["params"], pretrained=False)
    n = int(meta.get("ensemble", 0))
    model = Ensemble([models.build(params, meta["num_classes"]) for _ in range(n)]) if n else \
        models.build(params, meta["num_classes"])
    model.load_state_dict(torch.load(d / WEIGHTS, map_location="cpu", weights_only=True))
    return model.eval(), meta


def load_train_state(directory: str | Path) -> dict | None:
    p = Path(directory) / TRAIN_STATE
    return torch.load(p, map_location="cpu", weights_only=True) if p.exists() else None


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


@torch.no_grad()
def predict(model: nn.Module, meta: dict, x_uint8: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Class probabilities for uint8 images already resized to meta['image_size']."""
    model.eval()
    out = [model(normalize(x_uint8[i:i + batch_size], meta)).softmax(-1) for i in range(0, len(x_uint8), batch_size)]
    return torch.cat(out)


def _any_batch():
    return ({0: torch.export.Dim("batch", min=1, max=65536)},)


def _check_same_logits(exported: torch.Tensor, model: nn.Module, x: torch.Tensor, path: Path, tol: float) -> float:
    diff = float((exported - model(x)).abs().max())
    if diff > tol:
        raise RuntimeError(f"exported model {path} differs from the model by {diff:g} in its logits")
    return diff


@torch.no_grad()
def export(model: nn.Module, meta: dict, directory: str | Path, x_uint8: torch.Tensor) -> float:
    """Save the model as a `torch.export` program (any batch size) next to its weights, loadable
    without this project: `torch.export.load(path).module()(x)`. Returns the largest logit
    difference between the export and the eager model on `x_uint8`, raising if they disagree.

    torch.export, not TorchScript: `torch.jit` is deprecated in the PyTorch this project uses."""
    model.eval()
    x = normalize(x_uint8, meta)
    path = Path(directory) / EXPORTED
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes=_any_batch()), path)
    return _check_same_logits(torch.export.load(path).module()(x), model, x, path, 1e-4)


@torch.no_grad()
def export_onnx(model: nn.Module, meta: dict, directory: str | Path, x_uint8: torch.Tensor) -> float | None:
    """Also save `model.onnx` when the optional `onnx`, `onnxscript` and `onnxruntime` packages are
    installed; return the largest logit difference onnxruntime gives against the eager model
    (raising if they disagree), or None when the packages are absent."""
    import importlib.util

    if not all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime")):
        return None
    import onnxruntime

    model.eval()
    x = normalize(x_uint8, meta)
    path = Path(directory) / "model.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=True, input_names=["images"], output_names=["logits"],
                      dynamic_shapes=_any_batch())
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    return _check_same_logits(got, model, x, path, 1e-3)
