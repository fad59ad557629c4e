"""A saved model written out once more, for use without this project.

`export` writes a `torch.export` program and `export_onnx` an ONNX file (when the optional
packages are there), both next to the model's weights (`trainables.trial.checkpoint`), both taking
normalised float input (`trainables.models.preprocess`) at any batch size. Each reloads what it wrote
and compares its logits with the eager model's, so a file that disagrees is never handed back.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from trainables.models.preprocess import normalize

EXPORTED = "model.pt2"  # the torch.export program, next to the weights


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
