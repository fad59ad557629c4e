"""The numeric precision of a forward pass: bf16 autocast where it pays, full float elsewhere.

Kept apart from the optimiser and the schedule because it is a property of the device a step
runs on, asked by training and evaluation alike, not a hyperparameter schedule.
"""
from __future__ import annotations

import contextlib

import torch


def autocast(device: torch.device | str, enabled: bool):
    """bf16 autocast on a GPU when enabled; a no-op elsewhere (CPU bf16 is slow and changes results)."""
    if enabled and torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
