"""Bad input gets a clear error that says what was wrong and how to fix it."""

from __future__ import annotations

import pytest
import torch
from conftest import NoNormNet, make_tiny_net
from torch import nn

import tta
from tta.checks import input_kind


def test_tent_on_a_model_without_batchnorm_says_so():
    with pytest.raises(ValueError, match="loss 'tent' runs with its default norm='batch' needs"):
        tta.adapt(NoNormNet(), loss="tent")
    with pytest.raises(ValueError, match="use norm='source'"):
        tta.adapt(NoNormNet(), loss="entropy", params="all", norm="ema")
    tta.adapt(NoNormNet(), loss="tent", params="all", norm="source")(torch.rand(2, 3, 5, 5))


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


class MLP(nn.Module):
    """A tabular classifier: (batch, 6 features) -> 3 classes, with BatchNorm1d."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.bn = nn.BatchNorm1d(8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


class SignalNet(nn.Module):
    """A 1-D signal classifier: (batch, 2 channels, length) -> 4 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 5, 3, padding=1)
        self.bn = nn.BatchNorm1d(5)
        self.fc = nn.Linear(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(2))


def tabular(n: int = 8) -> torch.Tensor:
    return torch.randn(n, 6, generator=torch.Generator().manual_seed(0)) * 3  # not in [0, 1]


def signals(n: int = 8) -> torch.Tensor:
    return torch.randn(n, 2, 16, generator=torch.Generator().manual_seed(0)) * 3


@pytest.mark.parametrize("loss, params", [("entropy", "all"), ("tent", None)])
@pytest.mark.parametrize("make, data", [(MLP, tabular), (SignalNet, signals)])
def test_non_image_classifiers_adapt(make, data, loss, params):
    torch.manual_seed(0)
    model = make()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    adapted = tta.adapt(model, loss=loss, params=params)  # the default input_range too
    logits = adapted(data())
    assert logits.shape == (8, 3 if make is MLP else 4)
    assert adapted.counters.n_steps == 1
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == ({"bn.weight", "bn.bias"} if loss == "tent" else set(before))
    assert adapted.predict(data(2)).shape[0] == 2


def nan_at(x: torch.Tensor, count: int) -> torch.Tensor:
    x = x.clone()
    x.view(-1)[:count] = float("nan")
    return x


@pytest.mark.parametrize(
    "make, x, error, message",
    [
        (MLP, tabular()[0], ValueError, r"takes features.*add a batch dimension"),
        (MLP, tabular().long(), TypeError, r"floating-point features.*x.to\(torch.float32\)"),
        (MLP, tabular().double(), TypeError, r"dtype torch.float64 but the model's .*x.float\(\)"),
        (MLP, nan_at(tabular(), 7), ValueError, r"holds 7 NaN/inf value\(s\) in 2 of 8 samples"),
        (MLP, tabular()[:0], ValueError, r"empty batch \(0 samples"),
        (SignalNet, signals()[0], ValueError, r"takes signals.*add a batch dimension"),
        (SignalNet, signals()[:, :1], ValueError, r"Conv1d 'conv'\) expects 2 input channels"),
        (SignalNet, signals().unsqueeze(1), ValueError, r"\(batch, channels, length\)"),
    ],
)
@pytest.mark.parametrize("call", ["adapt", "predict"])
def test_bad_input_to_non_image_models_is_named(make, x, error, message, call):
    adapted = tta.adapt(make(), loss="entropy", params="all")
    with pytest.raises(error, match=message):
        adapted(x) if call == "adapt" else adapted.predict(x)
    assert adapted.counters.n_forward == 0


@pytest.mark.parametrize(
    "x, error, message",
    [
        (torch.rand(2, 3, 8, 8).double(), TypeError, r"float64 but .*float32.*x.float\(\)"),
        (nan_at(torch.rand(2, 3, 8, 8), 1), ValueError, r"holds 1 NaN/inf value\(s\) in 1 of 2"),
        (torch.full((2, 3, 8, 8), float("inf")), ValueError, r"holds 384 NaN/inf"),
        (torch.rand(0, 3, 8, 8), ValueError, r"empty batch \(0 samples, shape \(0, 3, 8, 8\)\)"),
    ],
)
@pytest.mark.parametrize("call", ["adapt", "predict"])
def test_odd_images_are_named_before_any_range_check(tiny_net, x, error, message, call):
    adapted = tta.adapt(tiny_net, loss="tent")
    with pytest.raises(error, match=message):
        adapted(x) if call == "adapt" else adapted.predict(x)
    assert adapted.counters.n_forward == 0 and adapted.counters.n_nonfinite == 0


def test_predict_checks_images_as_the_forward_does(tiny_net):
    adapted = tta.adapt(tiny_net, loss="tent")
    with pytest.raises(ValueError, match="normalize inside the model"):
        adapted.predict(torch.rand(2, 3, 8, 8) - 0.5)
    with pytest.raises(ValueError, match="add a batch dimension"):
        adapted.predict(torch.rand(3, 8, 8))


class PatchEmbed(nn.Module):
    """A ViT-style patch embedding without a convolution: 2x2 patches through a linear map."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = x.unfold(2, 2, 2).unfold(3, 2, 2).permute(0, 2, 3, 1, 4, 5).flatten(3)
        return self.proj(patches.flatten(1, 2))


class TinyViT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.patch_embed = PatchEmbed()
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.patch_embed(x)).mean(1))


def test_input_kind_follows_the_first_layer():
    assert input_kind(make_tiny_net()).images and input_kind(make_tiny_net()).channels == 3
    assert input_kind(TinyViT()).name == "images"
    assert input_kind(SignalNet()).name == "signals" and input_kind(SignalNet()).channels == 2
    assert input_kind(MLP()).name == "features"
    flat = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))  # images into an MLP: no image checks
    assert input_kind(flat).name == "features"
    assert input_kind(nn.Sequential(nn.Embedding(10, 4), nn.Flatten())).integer
    assert input_kind(nn.Sequential(nn.Flatten())).name == "inputs"


def test_a_patch_embedding_model_gets_the_image_checks():
    adapted = tta.adapt(TinyViT(), loss="entropy", params="norm")
    adapted(torch.rand(4, 3, 4, 4))
    assert adapted.counters.n_steps == 1
    with pytest.raises(ValueError, match=r"expects \[0, 1\]"):
        adapted(torch.rand(4, 3, 4, 4) * 255)
    with pytest.raises(ValueError, match=r"images \(batch, channels, height, width\)"):
        adapted(torch.rand(4, 12, 4))


def test_an_mlp_on_flattened_images_and_a_token_model():
    flat = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
    adapted = tta.adapt(flat, loss="entropy", params="all")
    adapted(torch.randn(4, 3, 4, 4))  # any range: only image models get the range check
    assert adapted.counters.n_steps == 1
    tokens = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(8, 3))
    adapted = tta.adapt(tokens, loss="entropy", params="all")
    adapted(torch.randint(0, 10, (4, 2)))
    with pytest.raises(TypeError, match=r"takes integer ids.*x.long\(\)"):
        adapted(torch.rand(4, 2))


@pytest.mark.parametrize("loss", ["cotta", "deyo"])
def test_image_only_losses_refuse_other_models_by_name(loss):
    with pytest.raises(ValueError, match=rf"loss '{loss}' .*needs an image model.*takes features"):
        tta.adapt(MLP(), loss=loss, params="all")
