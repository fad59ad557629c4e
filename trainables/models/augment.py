"""Training-time augmentation built from the knobs of `TrialParams`.

Two stages, because they act at different places in the train loop:

* `train_transform` works on ONE uint8 CHW image, before normalisation, so that the geometric
  and colour ops see pixels as they are stored, and the loop keeps feeding uint8 to
  `preprocess.normalize` unchanged.
* `batch_mix` (mixup / cutmix) needs pairs of images and their labels, so it acts on a whole
  normalised float batch and turns the integer labels into soft labels (N×K). The loss then
  takes probability targets: `F.cross_entropy(logits, soft, label_smoothing=...)` accepts both.

Every op draws from torch's global RNG: the train loop seeds it (`torch.manual_seed(seed + rank)`)
so a trial's augmentations are reproducible from its `seed` knob.
"""
from __future__ import annotations

from typing import Callable

from torchvision.transforms import v2

from trainables.params import TrialParams


def train_transform(p: TrialParams) -> Callable | None:
    """A v2.Compose mapping a uint8 CHW image to a uint8 CHW image of the same size, or None when
    every augmentation knob is off, so the loop can skip per-sample work entirely.

    Order: geometric, colour, auto-augment, erasing. Erasing goes last so that it cuts a hole
    the other ops cannot move or recolour, as in the usual ImageNet recipes.
    """
    ops: list = []
    if p.hflip > 0:
        ops.append(v2.RandomHorizontalFlip(p=p.hflip))
    if p.vflip > 0:
        ops.append(v2.RandomVerticalFlip(p=p.vflip))
    if p.rotation > 0 or p.translate > 0:
        ops.append(v2.RandomAffine(degrees=p.rotation, translate=(p.translate, p.translate) if p.translate else None))
    if p.crop_scale < 1:
        ops.append(v2.RandomResizedCrop(size=p.image_size, scale=(p.crop_scale, 1.0), antialias=True))
    if p.color_jitter > 0:
        s = p.color_jitter
        ops.append(v2.ColorJitter(brightness=s, contrast=s, saturation=s))
    if p.contrast > 0:
        ops.append(v2.ColorJitter(contrast=p.contrast))
    if p.auto_augment == "randaugment":
        ops.append(v2.RandAugment())
    elif p.auto_augment == "trivialaugment":
        ops.append(v2.TrivialAugmentWide())
    if p.random_erasing > 0:
        ops.append(v2.RandomErasing(p=p.random_erasing))  # v2 erases uint8 images directly (value 0)
    return v2.Compose(ops) if ops else None


def batch_mix(p: TrialParams, num_classes: int) -> Callable | None:
    """Mixup and/or cutmix on a float batch: `mix(images, int_labels) -> (images, soft_labels)`.

    With both alphas > 0 each batch gets one of the two at random (the timm/torchvision recipe),
    rather than both, which would blur the labels twice. None when both are off.
    """
    mixes = []
    if p.mixup > 0:
        mixes.append(v2.MixUp(alpha=p.mixup, num_classes=num_classes))
    if p.cutmix > 0:
        mixes.append(v2.CutMix(alpha=p.cutmix, num_classes=num_classes))
    if not mixes:
        return None
    return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)
