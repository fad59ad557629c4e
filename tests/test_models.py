"""The model registry: names build, pretrained weights load offline, unfreezing freezes."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from tests.conftest import ROOT
from trainables.models import preprocess, registry

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
    m = registry.build(params, num_classes=7).eval()
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_unknown_name_lists_close_matches():
    with pytest.raises(registry.ModelError, match=r"unknown model 'resnet19'.*resnet18"):
        registry.build({"model": "resnet19"}, 3)


@pytest.mark.parametrize("name", sorted(registry.EMBEDDED_WEIGHTS))
def test_embedded_weights_see_the_cat(name):
    """Each embedded Lite's ImageNet weights, copied by position onto timm's model, name the cat."""
    m = registry.build({"model": name, "pretrained": True}, 1000).eval()
    norm = preprocess.resolve({"model": name, "pretrained": True})
    assert norm["mean"] == pytest.approx((0.485, 0.456, 0.406))  # timm's own data config, not a constant here
    img = Image.open(ROOT / "tests" / "data" / "chelsea.jpg").convert("RGB").resize((224, 224))
    x = torch.from_numpy(__import__("numpy").asarray(img).copy()).permute(2, 0, 1)[None].float() / 255
    x = (x - torch.tensor(norm["mean"]).view(1, 3, 1, 1)) / torch.tensor(norm["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert int(m(x).argmax()) in IMAGENET_CATS


def test_embedded_weights_are_there_or_say_which_package_is_missing(monkeypatch):
    """Before a search starts: each installed Lite's weights pass; a package not installed (an
    old install after a pull) is named, instead of every trial failing inside Ray."""
    assert all(registry.missing_pretrained_weights(name) is None for name in registry.EMBEDDED_WEIGHTS)
    monkeypatch.setitem(registry.EMBEDDED_WEIGHTS, "efficientnet_lite2", ("no_such_weights_package", "Holder"))
    assert "no_such_weights_package is not installed" in registry.missing_pretrained_weights("efficientnet_lite2")


def test_local_weights_file_loads_backbone_and_replaces_head(tmp_path):
    src = registry.build({"model": "resnet18"}, 1000)
    torch.save(src.state_dict(), tmp_path / "w.pth")
    m = registry.build({"model": "resnet18", "pretrained": str(tmp_path / "w.pth")}, 4)
    assert torch.equal(m.conv1.weight, src.conv1.weight) and m.fc.out_features == 4
    with pytest.raises(registry.ModelError, match="does not exist"):
        registry.build({"model": "resnet18", "pretrained": str(tmp_path / "missing.pth")}, 4)


def test_unreachable_hub_says_what_to_do(monkeypatch, tmp_path):
    from huggingface_hub import constants

    # huggingface_hub reads its env vars once, at import (an earlier test imported it): patch both ways
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # empty cache: nothing to fall back on
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(registry.ModelError, match="pretrained: false"):
        registry.build({"model": "resnet18", "pretrained": True}, 3)


def _step(model):
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    bn_before = {n: b.clone() for n, b in model.named_buffers() if n.endswith("running_mean")}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    registry.set_train_mode(model)
    torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0])).backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    bn_changed = {n for n, b in model.named_buffers() if n in bn_before and not torch.equal(b, bn_before[n])}
    return changed, bn_changed


@pytest.mark.parametrize("unfreeze", [0, 1, 2, "all"])
def test_unfreezing_trains_only_the_top_blocks(unfreeze):
    m = registry.build({"model": "efficientnet_lite0", "pretrained": True, "unfreeze": unfreeze}, 3)
    groups = registry.backbone_groups(m)
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
    m = registry.build({"model": "resnet18", "pretrained": False}, 3)
    registry.set_trainable(m, 1)
    assert all(p.requires_grad == (n.startswith("layer4") or n.startswith("fc")) for n, p in m.named_parameters())


# --- the configurable 'cnn' and the head knobs ---------------------------------------------

TINY = {"model": "cnn", "cnn_blocks": 2, "cnn_width": 4, "image_size": 16}


def _count(model, *types):
    return sum(isinstance(m, types) for m in model.modules())


def _trains_one_step(model, size=16):
    """One SGD step on a 2-image batch with a finite loss; returns the weight matrices that moved
    (biases are left out: one before a batch norm gets no gradient)."""
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad and p.ndim > 1}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    registry.set_train_mode(model)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(2, 3, size, size)), torch.tensor([0, 1]))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    return {n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])}, set(before)


def _first_linear(model):
    return next(m for m in model.modules() if isinstance(m, torch.nn.Linear))


CNN_VARIANTS = {  # knob -> (value, what shows it was used)
    "kernel 5": ({"cnn_kernel": 5}, lambda m: {c.kernel_size for c in m.features.modules()
                                             if isinstance(c, torch.nn.Conv2d)} == {(5, 5)}),
    "2 convs per block": ({"cnn_convs_per_block": 2}, lambda m: _count(m, torch.nn.Conv2d) == 4),
    "no batchnorm": ({"cnn_batchnorm": False}, lambda m: _count(m, torch.nn.BatchNorm2d) == 0
                     and all(c.bias is not None for c in m.modules() if isinstance(c, torch.nn.Conv2d))),
    "avg pool": ({"cnn_pool": "avg"}, lambda m: _count(m, torch.nn.AvgPool2d) == 2
                 and _count(m, torch.nn.MaxPool2d) == 0),
    "valid padding": ({"cnn_padding": "valid"}, lambda m: m.features(torch.randn(1, 3, 16, 16)).shape[-1] == 3),
    "flatten": ({"cnn_global_pool": "flatten"}, lambda m: _first_linear(m).in_features == 8 * 4 * 4),
    "width mult 1.5": ({"cnn_width_mult": 1.5}, lambda m: _first_linear(m).in_features == 6),
    "hidden head": ({"head_hidden": [5, 3], "head_batchnorm": True, "head_dropout": 0.2},
                    lambda m: [lin.out_features for lin in m.head if isinstance(lin, torch.nn.Linear)] == [5, 3, 3]
                    and _count(m.head, torch.nn.BatchNorm1d) == 2 and _count(m.head, torch.nn.Dropout) == 3),
    **{f"activation {a}": ({"activation": a}, lambda m, t=t: _count(m, t) == 2) for a, t in [
        ("swish", torch.nn.SiLU), ("silu", torch.nn.SiLU), ("gelu", torch.nn.GELU),
        ("leaky_relu", torch.nn.LeakyReLU), ("sigmoid", torch.nn.Sigmoid)]},
}


def test_default_cnn_is_the_old_small_cnn_shape():
    m = registry.build(TINY, 3)
    assert [c.out_channels for c in m.modules() if isinstance(c, torch.nn.Conv2d)] == [4, 8]
    assert _count(m, torch.nn.BatchNorm2d) == 2 and _count(m, torch.nn.ReLU) == 2
    assert _count(m, torch.nn.MaxPool2d) == 2 and all(c.bias is None for c in m.modules()
                                                      if isinstance(c, torch.nn.Conv2d))
    assert m.features(torch.randn(1, 3, 16, 16)).shape[-1] == 4 and _first_linear(m).in_features == 8


@pytest.mark.parametrize("knobs, used", CNN_VARIANTS.values(), ids=CNN_VARIANTS.keys())
def test_each_cnn_knob_shapes_the_net_and_it_trains(knobs, used):
    m = registry.build({**TINY, **knobs}, 3)
    assert used(m)
    moved, weights = _trains_one_step(m)
    assert moved == weights
    assert m.eval()(torch.randn(2, 3, 16, 16)).shape == (2, 3)


def test_cnn_tiny_images_never_pool_to_nothing():
    m = registry.build({**TINY, "cnn_blocks": 6, "image_size": 8}, 3).eval()
    assert m.features(torch.randn(1, 3, 8, 8)).shape[-2:] == (1, 1)


def test_valid_padding_too_deep_for_the_image_is_a_one_line_error():
    with pytest.raises(registry.ModelError) as e:
        registry.build({**TINY, "cnn_blocks": 3, "cnn_padding": "valid", "cnn_kernel": 5, "image_size": 16}, 3)
    msg = str(e.value)
    assert "\n" not in msg
    assert all(s in msg for s in ("image_size 16", "cnn_blocks=3", "cnn_padding='valid'", "cnn_kernel=5"))


def test_hidden_head_on_a_timm_model():
    m = registry.build({"model": "resnet18", "head_hidden": [512, 256], "head_batchnorm": True,
                      "head_dropout": 0.3, "dropout": 0.1, "activation": "gelu"}, 4)
    assert isinstance(m.backbone, __import__("timm").models.ResNet) and m.backbone.drop_rate == 0  # dropout once
    assert [lin.out_features for lin in m.head if isinstance(lin, torch.nn.Linear)] == [512, 256, 4]
    assert _first_linear(m.head).in_features == 512
    assert _count(m.head, torch.nn.BatchNorm1d) == 2 and _count(m, torch.nn.BatchNorm1d) == 2
    assert _count(m.head, torch.nn.GELU) == 2
    assert [d.p for d in m.head if isinstance(d, torch.nn.Dropout)] == [0.1, 0.3, 0.3]
    moved, weights = _trains_one_step(m, size=32)  # timm zero-inits each residual's last BN: not all move
    assert {n for n in weights if n.startswith("head.")} | {"backbone.conv1.weight"} <= moved


def test_no_hidden_head_keeps_timms_own_classifier():
    m = registry.build({"model": "resnet18", "dropout": 0.2, "head_batchnorm": True}, 4)
    assert type(m).__name__ == "ResNet" and m.drop_rate == 0.2 and m.fc.out_features == 4
    assert "fc.weight" in m.state_dict()


def test_hidden_head_width_is_the_pooled_feature_width():
    m = registry.build({"model": "mobilenetv3_small_050", "head_hidden": [16]}, 3).eval()
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_embedded_lite0_weights_stay_under_a_hidden_head():
    plain = registry.build({"model": "efficientnet_lite0", "pretrained": True}, 3)
    m = registry.build({"model": "efficientnet_lite0", "pretrained": True, "head_hidden": [32]}, 3)
    assert torch.equal(m.backbone.conv_stem.weight, plain.conv_stem.weight)
    assert torch.equal(m.backbone.blocks[6][0].conv_pw.weight, plain.blocks[6][0].conv_pw.weight)
    assert m.backbone.num_classes == 0 and m.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_local_weights_file_loads_under_a_hidden_head_without_its_classifier(tmp_path):
    src = registry.build({"model": "resnet18"}, 1000)
    torch.save(src.state_dict(), tmp_path / "w.pth")
    m = registry.build({"model": "resnet18", "pretrained": str(tmp_path / "w.pth"), "head_hidden": [8]}, 4)
    assert torch.equal(m.backbone.layer4[1].conv2.weight, src.layer4[1].conv2.weight)
    assert "backbone.fc.weight" not in m.state_dict()


def test_unfreeze_zero_on_a_hidden_head_trains_only_the_head():
    m = registry.build({"model": "efficientnet_lite0", "pretrained": True, "unfreeze": 0, "head_hidden": [16]}, 3)
    head = {f"head.{n}" for n, _ in m.head.named_parameters()}
    assert {n for n, p in m.named_parameters() if p.requires_grad} == head
    groups = registry.backbone_groups(m)
    assert all(n.startswith("backbone.") for g in groups for n in g)
    registry.set_trainable(m, 1)
    assert {n for n, p in m.named_parameters() if p.requires_grad} == set(groups[-1]) | head


@pytest.mark.parametrize("params, head", [
    ({"model": "efficientnet_lite0", "pretrained": True, "unfreeze": 1}, "classifier."),
    ({"model": "resnet18", "head_hidden": [8]}, "head."),
    ({**TINY, "head_hidden": [8]}, "head."),
])
def test_param_groups_hold_every_parameter_once(params, head):
    m = registry.build(params, 3)
    backbone, head_params = registry.param_groups(m)
    ids = [id(q) for q in backbone + head_params]
    assert len(ids) == len(set(ids)) == len(list(m.parameters()))
    assert any(not q.requires_grad for q in backbone) == (params.get("unfreeze") == 1)  # frozen ones included
    names = {id(q): n for n, q in m.named_parameters()}
    assert {names[id(q)] for q in head_params} == {n for n in names.values() if n.startswith(head)}


def test_cnn_blocks_are_its_backbone_blocks():
    m = registry.build({**TINY, "cnn_blocks": 3}, 3)
    groups = registry.backbone_groups(m)
    assert [{n.split(".")[1] for n in g} for g in groups] == [{"0"}, {"1"}, {"2"}]
    registry.set_trainable(m, 1)
    assert {n for n, p in m.named_parameters() if p.requires_grad} == set(groups[2]) | {
        n for n, _ in m.named_parameters() if n.startswith("head.")}
