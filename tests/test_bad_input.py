"""Bad input gets a clear error that says what was wrong and how to fix it."""

from __future__ import annotations

import pytest
import torch
from conftest import NoNormNet

import tta


def test_tent_on_a_model_without_batchnorm_says_so():
    with pytest.raises(ValueError, match="needs BatchNorm layers"):
        tta.adapt(NoNormNet(), loss="tent")


def test_norm_params_on_a_model_without_norm_layers():
    with pytest.raises(ValueError, match="no affine norm parameters"):
        tta.adapt(NoNormNet(), loss="entropy", params="norm")


def test_entropy_with_all_params_works_without_batchnorm():
    adapted = tta.adapt(NoNormNet(), loss="entropy", params="all")
    adapted(torch.rand(4, 3, 8, 8))
    assert adapted.counters.n_steps == 1


@pytest.mark.parametrize(
    "x, error, message",
    [
        (torch.rand(3, 8, 8), ValueError, "add a batch dimension"),
        (torch.rand(2, 1, 8, 8), ValueError, "expects 3 input channels"),
        ((torch.rand(2, 3, 8, 8) * 255).to(torch.uint8), TypeError, "x.float\\(\\) / 255"),
        (torch.rand(2, 3, 8, 8) * 255, ValueError, "expects \\[0, 1\\]"),
        (torch.rand(2, 3, 8, 8) - 0.5, ValueError, "normalize inside the model"),
        ([[0.0]], TypeError, "expected a torch.Tensor"),
    ],
)
def test_bad_images_are_refused_before_touching_the_model(tiny_net, x, error, message):
    adapted = tta.adapt(tiny_net, loss="tent")
    with pytest.raises(error, match=message):
        adapted(x)
    assert adapted.counters.n_forward == 0


def test_input_range_none_accepts_other_ranges(tiny_net):
    adapted = tta.adapt(tiny_net, loss="tent", input_range=None)
    adapted(torch.randn(4, 3, 8, 8))
    assert adapted.counters.n_steps == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"loss": "nope"}, "unknown loss 'nope'; known: .*tent"),
        ({"selector": "nope"}, "unknown selector 'nope'; known: .*all"),
        ({"optimizer": "nope"}, "unknown optimizer 'nope'; known: adam, sgd"),
        ({"params": ["missing.weight"]}, "match no parameter"),
        ({"lr": -1.0}, "lr must be positive"),
        ({"steps": 0}, "steps >= 1"),
        ({"sample_filter": "nope"}, "unknown sample filter 'nope'"),
    ],
)
def test_bad_arguments_name_the_problem(tiny_net, kwargs, message):
    running_mean = tiny_net.bn1.running_mean.clone()
    with pytest.raises(ValueError, match=message):
        tta.adapt(tiny_net, **kwargs)
    assert torch.equal(tiny_net.bn1.running_mean, running_mean), "model left untouched"


def test_adapt_refuses_a_non_module():
    with pytest.raises(TypeError, match="expects a torch.nn.Module"):
        tta.adapt(lambda x: x)
