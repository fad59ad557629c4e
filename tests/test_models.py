"""The model registry: names build, pretrained weights load offline, unfreezing freezes."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from trainables import models
from tests.conftest import ROOT

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.mark.parametrize("params", [
    {"model": "cnn"},
    {"model": "cnn", "cnn_blocks": 1, "cnn_width": 4, "dropout": 0.5},
    {"model": "resnet18"},
    {"model": "efficientnet_b0"},
    {"model": "efficientnet_lite0", "pretrained": True, "unfreeze": 0},
    {"model": "mobilenetv3_small_050"},
])
def test_each_name_builds_and_outputs_k_logits(params):
    m = models.build(params, num_classes=7).eval()
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_unknown_name_lists_close_matches():
    with pytest.raises(models.ModelError, match=r"unknown model 'resnet19'.*resnet18"):
        models.build({"model": "resnet19"}, 3)


def test_embedded_lite0_weights_see_the_cat():
    m = models.build({"model": "efficientnet_lite0", "pretrained": True}, 1000).eval()
    norm = models.preprocessing({"model": "efficientnet_lite0", "pretrained": True})
    assert norm["mean"] == pytest.approx((0.485, 0.456, 0.406))  # timm's own data config, not a constant here
    img = Image.open(ROOT / "tests" / "data" / "chelsea.jpg").convert("RGB").resize((224, 224))
    x = torch.from_numpy(__import__("numpy").asarray(img).copy()).permute(2, 0, 1)[None].float() / 255
    x = (x - torch.tensor(norm["mean"]).view(1, 3, 1, 1)) / torch.tensor(norm["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert int(m(x).argmax()) in IMAGENET_CATS


def test_local_weights_file_loads_backbone_and_replaces_head(tmp_path):
    src = models.build({"model": "resnet18"}, 1000)
    torch.save(src.state_dict(), tmp_path / "w.pth")
    m = models.build({"model": "resnet18", "pretrained": str(tmp_path / "w.pth")}, 4)
    assert torch.equal(m.conv1.weight, src.conv1.weight) and m.fc.out_features == 4
    with pytest.raises(models.ModelError, match="does not exist"):
        models.build({"model": "resnet18", "pretrained": str(tmp_path / "missing.pth")}, 4)


def test_unreachable_hub_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # empty cache: nothing to fall back on
    with pytest.raises(models.ModelError, match="pretrained: false"):
        models.build({"model": "resnet18", "pretrained": True}, 3)


def _step(model):
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    bn_before = {n: b.clone() for n, b in model.named_buffers() if n.endswith("running_mean")}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    models.set_train_mode(model)
    torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0])).backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    bn_changed = {n for n, b in model.named_buffers() if n in bn_before and not torch.equal(b, bn_before[n])}
    return changed, bn_changed


@pytest.mark.parametrize("unfreeze", [0, 1, 2, "all"])
def test_unfreezing_trains_only_the_top_blocks(unfreeze):
    m = models.build({"model": "efficientnet_lite0", "pretrained": True, "unfreeze": unfreeze}, 3)
    groups = models.backbone_groups(m)
    n = len(groups) if unfreeze == "all" else unfreeze
    changed, bn_changed = _step(m)
    trainable = {p for g in groups[len(groups) - n:] for p in g} | {"classifier.weight", "classifier.bias"}
    assert {"classifier.weight", "classifier.bias"} <= changed
    frozen = {p for g in groups[:len(groups) - n] for p in g}
    assert not (changed & frozen)  # frozen weights did not move
    assert all(p in changed for p in trainable if p.endswith("conv_pw.weight"))  # unfrozen ones did
    frozen_bn = {b.replace("weight", "running_mean") for b in frozen if ".bn" in b and b.endswith("weight")}
    assert not (bn_changed & frozen_bn)  # frozen batch norm kept its running statistics


def test_unfreeze_counts_timm_stages_for_resnet():
    m = models.build({"model": "resnet18", "pretrained": False}, 3)
    models.set_trainable(m, 1)
    assert all(p.requires_grad == (n.startswith("layer4") or n.startswith("fc")) for n, p in m.named_parameters())
