"""The knobs a trial understands, with their defaults.

This is the single list of searchable knobs: the YAML `space:` section may name any field
here, and a knob the space leaves out takes the default below. Adding a knob is one field
here plus the code that uses it.
"""
from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class TrialParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field("cnn", description="'cnn' or any timm model name")
    pretrained: Union[bool, str] = Field(
        False, description="true (hub, or the embedded weights for efficientnet_lite0), false, or a weights file"
    )
    lr: float = Field(1e-3, gt=0, description="learning rate (Adam)")
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(64, ge=1)
    image_size: int = Field(32, ge=8, le=1024, description="square input side in pixels")
    epochs: int = Field(3, ge=1, description="epochs this trial trains at most (ASHA may stop it sooner)")
    unfreeze: Union[int, Literal["all"]] = Field(
        "all", description="backbone blocks trained, counted from the top; 0 = head only"
    )
    cnn_blocks: int = Field(3, ge=1, le=6, description="conv blocks of the 'cnn' model")
    cnn_width: int = Field(32, ge=4, le=512, description="filters in the first 'cnn' block (doubles per block)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before the classifier")
    seed: int = Field(0, description="seed for weight init and batch order")


KNOBS = tuple(TrialParams.model_fields)
