"""Partitioning trainable parameters into layers: module, block (network stages) and tensor."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import tta
from tta.layers import list_layers, partition
from tta.models import resnet20


def fake_params(names: list[str]) -> list[tuple[str, nn.Parameter]]:
    return [(name, nn.Parameter(torch.zeros(2))) for name in names]


def names_of(layers) -> list[str]:
    return [layer.name for layer in layers]


def test_module_granularity_groups_tensors_of_one_module():
    layers = list_layers(resnet20())
    assert names_of(layers)[:3] == ["conv1", "bn1", "layer1.0.conv1"]
    bn1 = layers[1]
    assert bn1.param_names == ["bn1.weight", "bn1.bias"] and bn1.size == 32
    assert sum(layer.size for layer in layers) == sum(p.numel() for p in resnet20().parameters())


def test_tensor_granularity_is_one_layer_per_parameter():
    model = resnet20()
    layers = list_layers(model, granularity="tensor")
    assert names_of(layers) == [name for name, _ in model.named_parameters()]


def test_blocks_of_our_resnet20():
    model = resnet20()
    layers = list_layers(model, granularity="block")
    assert names_of(layers) == ["stem", "layer1", "layer2", "layer3", "head"]
    assert layers[0].param_names == ["conv1.weight", "bn1.weight", "bn1.bias"]
    assert layers[-1].param_names == ["fc.weight", "fc.bias"]
    assert all(name.startswith("layer2.") for name in layers[2].param_names)
    assert sum(layer.size for layer in layers) == sum(p.numel() for p in model.parameters())


def test_blocks_of_norm_params_have_no_head():
    layers = list_layers(resnet20(), params="norm", granularity="block")
    assert names_of(layers) == ["stem", "layer1", "layer2", "layer3"]
    assert layers[0].param_names == ["bn1.weight", "bn1.bias"]


def test_blocks_of_torchvision_resnet18():
    layers = list_layers(torchvision.models.resnet18(weights=None), granularity="block")
    assert names_of(layers) == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert layers[-1].param_names == ["fc.weight", "fc.bias"]


def test_blocks_of_robustbench_wideresnet_names():
    names = [
        "conv1.weight",
        "block1.layer.0.bn1.weight",
        "block1.layer.0.conv1.weight",
        "block2.layer.0.convShortcut.weight",
        "block3.layer.3.conv2.weight",
        "bn1.weight",
        "bn1.bias",
        "fc.weight",
    ]
    layers = partition(fake_params(names), "block")
    assert names_of(layers) == ["stem", "block1", "block2", "block3", "head"]
    assert layers[-1].param_names == ["bn1.weight", "bn1.bias", "fc.weight"]


def test_blocks_of_resnext_and_wrapped_models():
    resnext = ["conv_1_3x3.weight", "bn_1.weight", "stage_1.0.conv_reduce.weight"]
    resnext += ["stage_2.0.conv_reduce.weight", "stage_3.2.bn.weight", "classifier.weight"]
    layers = partition(fake_params(resnext), "block")
    assert names_of(layers) == ["stem", "stage_1", "stage_2", "stage_3", "head"]
    # robustbench ImageNet models: Sequential(normalizer, model) -> "1.layer1..."
    wrapped = ["1.conv1.weight", "1.layer1.0.conv1.weight", "1.layer2.0.bn1.weight", "1.fc.bias"]
    layers = partition(fake_params(wrapped), "block")
    assert names_of(layers) == ["stem", "1.layer1", "1.layer2", "head"]


def test_block_patterns_override_discovery():
    model = resnet20()
    layers = list_layers(model, granularity="block", block_patterns=[r"layer[12]", "layer3.2"])
    assert names_of(layers) == ["stem", "layer1", "layer2", "layer3", "layer3.2", "head"]
    # the unmatched run between two blocks becomes its own block, named by its prefix
    assert all(n.startswith(("layer3.0.", "layer3.1.")) for n in layers[3].param_names)
    as_text = list_layers(model, granularity="block", block_patterns="layer1,layer2")
    assert names_of(as_text) == ["stem", "layer1", "layer2", "head"]
    assert as_text[-1].param_names[0].startswith("layer3.")


def test_block_granularity_without_stages_says_how_to_fix():
    with pytest.raises(ValueError, match="block_patterns"):
        partition(fake_params(["features.0.weight", "classifier.weight"]), "block")
    with pytest.raises(ValueError, match="not a valid regex"):
        partition(fake_params(["a.weight"]), "block", block_patterns=["a["])


def test_unknown_granularity_lists_the_known_ones():
    with pytest.raises(ValueError, match="module, block, tensor"):
        partition(fake_params(["a.weight"]), "stage")


def test_tta_layers_is_exported_and_shows_names_and_sizes():
    layers = tta.layers(resnet20(), "norm", granularity="block")
    assert repr(layers[1]) == "Layer('layer1', size=192, tensors=12)"
