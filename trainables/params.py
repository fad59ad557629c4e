"""The knobs a trial understands, with their defaults.

This is the single list of searchable knobs: the YAML `space:` section may name any field
here, and a knob the space leaves out takes the default below. Adding a knob is one field
here plus the code that uses it; where the knob acts (which optimiser, schedule or model
family; pretrained models only) is said next to it, in its metadata, which the space checks
read. Every default leaves the behaviour of a plain fine-tune unchanged (no augmentation,
constant LR, unweighted loss), so a knob only acts when asked.
"""
from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

ACTIVATIONS = ("relu", "swish", "silu", "gelu", "leaky_relu", "sigmoid")
NESTEROV_NEEDS_MOMENTUM = "Nesterov momentum needs momentum > 0"


def applies_when(**where: list) -> dict:
    """A knob's metadata: it acts only where the named knob takes one of these values.

    The space checks read it (`search.space`): a knob set where it can never act is an error,
    and one searched where it sometimes does not act needs a `when:`."""
    ((knob, values),) = where.items()
    return {"applies_when": {knob: list(values)}}


CNN_ONLY = applies_when(model=["cnn"])  # the project's own CNN (trainables.models.registry.OWN_MODELS)
SGD_ONLY = applies_when(optimizer=["sgd"])
STEP_ONLY = applies_when(lr_schedule=["step"])
PLATEAU_ONLY = applies_when(lr_schedule=["plateau"])
PRETRAINED_ONLY = {"pretrained_only": True}  # a net trained from scratch trains every layer from the start


class TrialParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # --- architecture -------------------------------------------------------------------
    model: str = Field("cnn", description="'cnn' or any timm model name")
    pretrained: Union[bool, str] = Field(
        False, description="true (hub, or the embedded weights for efficientnet_lite0/1/2), false, or a weights file"
    )
    cnn_blocks: int = Field(3, ge=1, le=8, description="conv blocks of the 'cnn' model, each ending in a pooling",
                            json_schema_extra=CNN_ONLY)
    cnn_width: int = Field(32, ge=4, le=512, description="filters in the first 'cnn' block", json_schema_extra=CNN_ONLY)
    cnn_width_mult: float = Field(2.0, ge=1.0, le=4.0, description="filters grow by this factor per 'cnn' block",
                                  json_schema_extra=CNN_ONLY)
    cnn_kernel: Literal[3, 5] = Field(3, description="conv kernel size of 'cnn'", json_schema_extra=CNN_ONLY)
    cnn_convs_per_block: int = Field(1, ge=1, le=4, description="stacked convs per 'cnn' block (small kernels)",
                                     json_schema_extra=CNN_ONLY)
    cnn_batchnorm: bool = Field(True, description="batch norm after each 'cnn' conv", json_schema_extra=CNN_ONLY)
    cnn_pool: Literal["max", "avg"] = Field("max", description="pooling at the end of each 'cnn' block",
                                            json_schema_extra=CNN_ONLY)
    cnn_padding: Literal["same", "valid"] = Field("same", description="conv padding of 'cnn'",
                                                  json_schema_extra=CNN_ONLY)
    cnn_global_pool: Literal["avg", "flatten"] = Field(
        "avg", description="'cnn' features to the head: GAP or flatten", json_schema_extra=CNN_ONLY)
    activation: Literal[ACTIVATIONS] = Field(  # type: ignore[valid-type]
        "relu", description="activation of the 'cnn' convs and of the head's hidden layers")
    head_hidden: list[int] = Field(
        [], description="hidden dense layers of the head, e.g. [256] or [512, 256]; [] = one linear layer")
    head_batchnorm: bool = Field(False, description="batch norm after each hidden head layer")
    head_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout after each hidden head layer")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the pooled features, before the head")

    # --- unfreezing (pretrained models) -----------------------------------------------------
    unfreeze: Union[int, Literal["all"]] = Field(
        "all", description="backbone blocks trained, counted from the top; 0 = head only",
        json_schema_extra=PRETRAINED_ONLY)
    head_epochs: int = Field(0, ge=0, description="first epochs that train the head only, before `unfreeze` applies",
                             json_schema_extra=PRETRAINED_ONLY)
    unfreeze_every: int = Field(
        0, ge=0, description="gradual unfreezing: one more block every this many epochs (after head_epochs), "
                             "up to `unfreeze`; 0 = all at once", json_schema_extra=PRETRAINED_ONLY)
    backbone_lr_mult: float = Field(1.0, gt=0, le=10.0, description="backbone LR = lr × this (head: lr)")

    # --- optimisation ---------------------------------------------------------------------
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0, description="learning rate of the head (and of the backbone, × backbone_lr_mult)")
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="sgd momentum", json_schema_extra=SGD_ONLY)
    nesterov: bool = Field(False, description="sgd Nesterov momentum", json_schema_extra=SGD_ONLY)
    lr_schedule: Literal["constant", "cosine", "step", "plateau"] = "constant"
    warmup_epochs: int = Field(0, ge=0, description="linear LR warm-up epochs (any schedule)")
    step_size: int = Field(5, ge=1, description="'step' schedule: epochs between LR drops", json_schema_extra=STEP_ONLY)
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="'step' schedule: LR factor at each drop",
                         json_schema_extra=STEP_ONLY)
    plateau_factor: float = Field(0.5, gt=0.0, lt=1.0, description="'plateau': LR factor when the objective stalls",
                                  json_schema_extra=PLATEAU_ONLY)
    plateau_patience: int = Field(2, ge=0, description="'plateau': epochs without improvement before a drop",
                                  json_schema_extra=PLATEAU_ONLY)
    min_lr: float = Field(0.0, ge=0.0, description="floor of the 'cosine' and 'plateau' schedules",
                          json_schema_extra=applies_when(lr_schedule=["cosine", "plateau"]))
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    grad_clip: float = Field(0.0, ge=0.0, description="clip the gradient norm to this; 0 = off")
    mixed_precision: bool = Field(True, description="bf16 autocast on a GPU (no effect on CPU)")
    batch_size: int = Field(64, ge=1)
    image_size: int = Field(32, ge=8, le=1024, description="square input side in pixels")
    epochs: int = Field(3, ge=1, description="epochs this trial trains at most (ASHA may stop it sooner)")
    early_stop_patience: int = Field(0, ge=0, description="stop the trial after this many epochs without a new "
                                                          "best objective; 0 = off")

    # --- augmentation (training images only) -------------------------------------------------
    hflip: float = Field(0.0, ge=0.0, le=1.0, description="probability of a horizontal flip")
    vflip: float = Field(0.0, ge=0.0, le=1.0, description="probability of a vertical flip")
    rotation: float = Field(0.0, ge=0.0, le=180.0, description="random rotation up to ± this many degrees")
    translate: float = Field(0.0, ge=0.0, le=0.5, description="random shift up to this fraction of the side")
    crop_scale: float = Field(1.0, gt=0.0, le=1.0, description="random resized crop of this minimum area "
                                                               "fraction; 1 = off")
    color_jitter: float = Field(0.0, ge=0.0, le=1.0, description="brightness/contrast/saturation jitter strength")
    contrast: float = Field(0.0, ge=0.0, le=1.0, description="contrast jitter strength")
    auto_augment: Literal["none", "randaugment", "trivialaugment"] = "none"
    random_erasing: float = Field(0.0, ge=0.0, le=1.0, description="probability of erasing a random rectangle")
    mixup: float = Field(0.0, ge=0.0, description="mixup alpha; 0 = off")
    cutmix: float = Field(0.0, ge=0.0, description="cutmix alpha; 0 = off (with mixup: one of the two per batch)")

    # --- class imbalance ------------------------------------------------------------------
    class_weight: Literal["none", "balanced", "max_ratio", "sampler"] = Field(
        "none", description="loss weights n/(K·n_c) ('balanced') or max n/n_c ('max_ratio'), or a "
                            "class-balanced sampler instead of weights")
    class_multipliers: dict[str, float] = Field(
        {}, description="extra loss weight per class name, e.g. {cat: 2.0} or 'cat=2.0,dog=1.5'")

    seed: int = Field(0, description="seed for weight init, batch order and augmentation")

    @field_validator("head_hidden", mode="before")
    @classmethod
    def _hidden_list(cls, v):
        """Accept 256, '512,256' or [512, 256]: a scalar form lets `choice:` search it."""
        if isinstance(v, bool):
            raise ValueError("head_hidden must be layer widths, e.g. [256] or '512,256'")
        if isinstance(v, int):
            return [v] if v else []
        if isinstance(v, str):
            parts = [p.strip() for p in v.replace("-", ",").split(",") if p.strip() and p.strip() != "none"]
            try:
                return [int(p) for p in parts]
            except ValueError:
                raise ValueError("head_hidden must be layer widths such as 256, '512,256' or [512, 256]") from None
        return v

    @field_validator("head_hidden")
    @classmethod
    def _positive(cls, v):
        if any(u < 1 for u in v):
            raise ValueError(f"head_hidden widths must be >= 1, got {v}")
        return v

    @field_validator("class_multipliers", mode="before")
    @classmethod
    def _multiplier_map(cls, v):
        """Accept {cat: 2.0} or 'cat=2.0,dog=1.5' (the string form can be a `choice:` value)."""
        if isinstance(v, str):
            out = {}
            for part in (p.strip() for p in v.split(",")):
                if not part or part == "none":
                    continue
                name, sep, num = part.partition("=")
                try:
                    out[name.strip()] = float(num)
                except ValueError:
                    sep = ""
                if not sep:
                    raise ValueError("class_multipliers must look like {cat: 2.0} or 'cat=2.0,dog=1.5'")
            return out
        return v

    @field_validator("class_multipliers")
    @classmethod
    def _positive_multipliers(cls, v):
        bad = {k: m for k, m in v.items() if not m > 0}
        if bad:
            raise ValueError(f"class_multipliers must be > 0, got {bad}")
        return v


KNOBS = tuple(TrialParams.model_fields)


def knob_metadata(key: str) -> dict:
    """{knob: its metadata under `key`} for the knobs that carry it (see `applies_when`)."""
    return {name: f.json_schema_extra[key] for name, f in TrialParams.model_fields.items()
            if isinstance(f.json_schema_extra, dict) and key in f.json_schema_extra}


def nesterov_problem(momenta, nesterovs) -> str | None:
    """The one statement of the rule: Nesterov momentum with every momentum 0 is an error.

    Given the values each knob can take (a trial's one value, or a space's choices)."""
    if True in list(nesterovs) and all(m == 0 for m in momenta):
        return NESTEROV_NEEDS_MOMENTUM
    return None
