"""Each augmentation knob must change the image when set strongly, and none may be ignored."""
from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2

from trainables.models.augment import batch_mix, train_transform
from trainables.params import TrialParams

STRONG = {
    "hflip": 1.0,
    "vflip": 1.0,
    "rotation": 45.0,
    "translate": 0.3,
    "crop_scale": 0.3,
    "color_jitter": 0.8,
    "contrast": 0.8,
    "auto_augment": "randaugment",
    "random_erasing": 1.0,
}


@pytest.fixture
def img():
    """A gradient with a bright square off-centre: no flip, rotation or shift leaves it unchanged."""
    ramp = torch.arange(32, dtype=torch.uint8) * 4
    out = torch.stack([ramp.expand(32, 32), ramp.expand(32, 32).T, torch.full((32, 32), 60, dtype=torch.uint8)])
    out[:, 4:12, 18:28] = 250
    return out.clone()


def test_all_off_is_none():
    assert train_transform(TrialParams()) is None
    assert batch_mix(TrialParams(), 3) is None


@pytest.mark.parametrize("knob,value", list(STRONG.items()) + [("auto_augment", "trivialaugment")])
def test_each_knob_changes_the_image(knob, value, img):
    tf = train_transform(TrialParams(**{knob: value}))
    assert tf is not None
    before = img.clone()
    torch.manual_seed(0)
    outs = [tf(img) for _ in range(4)]  # random ops may draw a no-op once, not four times
    assert torch.equal(img, before), "the input must not be modified in place"
    for out in outs:
        assert out.dtype == torch.uint8 and out.shape == img.shape
    assert any(not torch.equal(out, img) for out in outs), f"{knob}={value!r} left the image unchanged"


def test_hflip_is_an_exact_flip(img):
    assert torch.equal(train_transform(TrialParams(hflip=1.0))(img), img.flip(-1))
    assert torch.equal(train_transform(TrialParams(vflip=1.0))(img), img.flip(-2))


def test_order_geometric_colour_auto_erasing(img):
    tf = train_transform(TrialParams(**STRONG))
    kinds = [type(t) for t in tf.transforms]
    assert kinds == [v2.RandomHorizontalFlip, v2.RandomVerticalFlip, v2.RandomAffine, v2.RandomResizedCrop,
                     v2.ColorJitter, v2.ColorJitter, v2.RandAugment, v2.RandomErasing]
    torch.manual_seed(0)
    out = tf(img)
    assert out.dtype == torch.uint8 and out.shape == img.shape


def test_crop_keeps_image_size():
    big = torch.randint(0, 256, (3, 48, 48), dtype=torch.uint8)
    torch.manual_seed(0)
    assert train_transform(TrialParams(crop_scale=0.5, image_size=48))(big).shape == (3, 48, 48)


@pytest.mark.parametrize("knobs", [{"mixup": 1.0}, {"cutmix": 1.0}, {"mixup": 0.4, "cutmix": 1.0}])
def test_batch_mix_gives_soft_labels(knobs):
    mix = batch_mix(TrialParams(**knobs), 3)
    assert mix is not None
    torch.manual_seed(0)
    x = torch.randn(8, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    xm, ym = mix(x, y)
    assert xm.shape == x.shape and xm.dtype == torch.float32
    assert not torch.equal(xm, x)
    assert ym.shape == (8, 3)
    torch.testing.assert_close(ym.sum(1), torch.ones(8))
    assert (ym.max(1).values < 1).any(), "no row was mixed"


def test_batch_mix_choice_uses_both():
    mix = batch_mix(TrialParams(mixup=1.0, cutmix=1.0), 2)
    assert isinstance(mix, v2.RandomChoice)
    assert {type(t) for t in mix.transforms} == {v2.MixUp, v2.CutMix}
