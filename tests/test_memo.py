"""MEMO and TTAug: marginal entropy by hand, the episodic per-point step against a
re-statement of the official `adapt_single` + `test_single` (zhangmarvin/memo), the averaged
prediction, and the AugMix operations against PIL's (what the official code calls)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from conftest import make_tiny_net
from PIL import Image, ImageOps

import tta
from tta.losses.augmix import augmix, autocontrast, equalize, posterize, solarize
from tta.losses.memo import marginal_entropy, memo_bn_alpha
from tta.losses.ttaug import average_prediction


def test_marginal_entropy_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    p = logits.softmax(1)
    mean = p.mean(0)  # (e^2 + 1, 2, e^2 + 1) / (2 (e^2 + 2)) per class
    e2 = math.exp(2)
    assert torch.allclose(mean, torch.tensor([e2 + 1, 2, e2 + 1]) / (2 * (e2 + 2)))
    expected = -(mean * mean.log()).sum()
    loss, log_mean = marginal_entropy(logits)
    assert torch.allclose(loss, expected) and torch.allclose(log_mean, mean.log())
    mean_entropy = -(p * p.log()).sum(1).mean()
    assert loss > mean_entropy + 0.25  # the entropy of the mean, not the mean entropy


def official_memo(x: torch.Tensor, n: int, lr: float) -> torch.Tensor:
    """Per point: reload the source, SGD on the marginal entropy of n AugMix copies, predict."""
    predictions, source = [], make_tiny_net()  # (make_tiny_net seeds torch: built first)
    torch.manual_seed(7)
    for i in range(len(x)):
        net = copy.deepcopy(source).eval()  # the official net.load_state_dict(ckpt) per image
        optimizer = torch.optim.SGD(net.parameters(), lr=lr)
        copies = augmix(x[i : i + 1].expand(n, *x.shape[1:]))
        optimizer.zero_grad()
        loss, _ = marginal_entropy(net(copies))
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            predictions.append(net(x[i : i + 1]))
    return torch.cat(predictions), net


def test_memo_step_for_step_against_the_official_loop(images):
    x = images[:3]
    adapted = tta.adapt(
        make_tiny_net(), loss="memo", optimizer="sgd", lr=0.5, momentum=0.0, n_augmentations=6
    )
    torch.manual_seed(7)
    got = adapted(x)
    expected, last = official_memo(x, 6, 0.5)  # seeds 7 too
    assert torch.allclose(got, expected, atol=1e-5)
    # episodic: the weights left are the last point's, adapted from the source alone
    for name, value in adapted.model.state_dict().items():
        assert torch.allclose(value, last.state_dict()[name], atol=1e-6), name
    source = make_tiny_net()
    assert not torch.allclose(adapted.model.fc.weight, source.fc.weight)
    assert not torch.allclose(got, source(x), atol=1e-4)  # the update changed the predictions
    counters = adapted.counters
    assert (counters.n_steps, counters.n_backward, counters.n_forward) == (3, 3, 9)


def test_memo_points_do_not_see_each_other(images):
    """A point's prediction does not depend on the points before it (reset per point)."""
    adapted = tta.adapt(make_tiny_net(), loss="memo", lr=1e-2, n_augmentations=4)
    torch.manual_seed(3)
    together = adapted(images[:2])
    adapted.reset()
    torch.manual_seed(3)
    adapted(images[:1])  # the same random draws for point 0
    alone = adapted(images[1:2])  # point 1 after point 0, called separately
    assert torch.allclose(together[1], alone[0], atol=1e-6)


def test_memo_under_float16_uses_the_scaler(images):
    x = images[:2]
    reference = tta.adapt(make_tiny_net(), loss="memo", optimizer="sgd", lr=0.5, momentum=0.0)
    adapted = tta.adapt(
        make_tiny_net(), loss="memo", optimizer="sgd", lr=0.5, momentum=0.0, amp="fp16"
    )
    adapted.grad_scaler._init_scale = 2.0**8  # no overflow on this tiny net
    torch.manual_seed(1)
    expected = reference(x)
    torch.manual_seed(1)
    got = adapted(x)
    assert adapted.grad_scaler.get_scale() == 2.0**8 and adapted.counters.n_steps == 2
    assert all(p.dtype == torch.float32 for p in adapted.model.parameters())
    assert torch.allclose(got, expected, atol=0.02)


def test_memo_composes_with_gala_within_a_point(images):
    """GALA restarts at each point (all layers at its first step) and selects at the second;
    layers it leaves out keep the weights of the first step."""
    x = images[:1]
    options = {"selector_options": {"threshold": 0.999}, "n_augmentations": 4, "lr": 1e-2}
    one = tta.adapt(make_tiny_net(), loss="memo", selector="gala", steps=1, **options)
    two = tta.adapt(make_tiny_net(), loss="memo", selector="gala", steps=2, **options)
    torch.manual_seed(2)
    one(x)
    torch.manual_seed(2)
    two(x)
    trace = two.selector.trace()
    assert trace["selected"][0] == list(range(len(two.layers)))  # first step: every layer
    left_out = [i for i in range(len(two.layers)) if i not in trace["selected"][1]]
    assert left_out, "the test needs a layer GALA leaves out at the second step"
    for i in left_out:
        for a, b in zip(one.layers[i].params, two.layers[i].params, strict=True):
            assert torch.equal(a, b), two.layers[i].name


def test_memo_bn_prior_option_is_the_alpha_norm(images):
    """prior_strength=N: BatchNorm on source statistics with weight 1/(N+1) on the batch's."""
    assert memo_bn_alpha(16) == pytest.approx(1 / 17)
    x, options = images[:2], {"n_augmentations": 4, "lr": 1e-2}
    explicit = tta.adapt(
        make_tiny_net(), loss="memo", norm="alpha", norm_options={"alpha": 1 / 17}, **options
    )
    prior = tta.adapt(make_tiny_net(), loss="memo", prior_strength=16, **options)
    plain = tta.adapt(make_tiny_net(), loss="memo", **options)
    card = prior.describe()
    assert card["norm"] == "alpha" and card["norm_options"]["alpha"] == pytest.approx(1 / 17)
    outputs = []
    for adapted in (explicit, prior, plain):
        torch.manual_seed(0)
        outputs.append(adapted(x))
    assert torch.equal(outputs[0], outputs[1])
    assert not torch.allclose(outputs[1], outputs[2], atol=1e-4)  # the batch statistics count
    chosen = tta.adapt(make_tiny_net(), loss="memo", prior_strength=16, norm="source")
    assert chosen.describe()["norm"] == "source"  # an explicit norm wins
    with pytest.raises(ValueError, match="prior_strength must be a number >= 0"):
        tta.adapt(make_tiny_net(), loss="memo", prior_strength=-1)


def test_memo_refusals():
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 3))
    with pytest.raises(ValueError, match="needs an image model"):
        tta.adapt(mlp, loss="memo")
    with pytest.raises(ValueError, match="n_augmentations must be an integer >= 1"):
        tta.adapt(make_tiny_net(), loss="memo", n_augmentations=0)
    with pytest.raises(ValueError, match="crop must be one of pad, resized"):
        tta.adapt(make_tiny_net(), loss="memo", crop="center")


# --- TTAug ---------------------------------------------------------------------------------


def test_average_prediction_by_hand():
    a, b = torch.tensor([[0.0, math.log(3)]]), torch.tensor([[math.log(3), 0.0]])
    # softmaxes (1/4, 3/4) and (3/4, 1/4): the mean is (1/2, 1/2)
    assert torch.allclose(average_prediction([a, b]).exp(), torch.tensor([[0.5, 0.5]]))


@pytest.mark.parametrize("include_original", [False, True])
def test_ttaug_averages_softmax_over_augmix_copies(images, include_original):
    model = make_tiny_net()
    reference = copy.deepcopy(model)
    adapted = tta.adapt(model, loss="ttaug", n_augmentations=3, include_original=include_original)
    torch.manual_seed(4)
    got = adapted(images)
    torch.manual_seed(4)
    with torch.no_grad():
        probabilities = [reference(augmix(images)).softmax(1) for _ in range(3)]
        if include_original:
            probabilities.append(reference(images).softmax(1))
    expected = torch.stack(probabilities).mean(0)
    assert torch.allclose(got.exp(), expected, atol=1e-6)
    assert adapted.counters.n_forward == 4 and adapted.counters.n_backward == 0
    assert all(
        torch.equal(p, q) for p, q in zip(model.parameters(), reference.parameters(), strict=True)
    )
    with pytest.raises(ValueError, match="trains no parameter"):
        tta.adapt(make_tiny_net(), loss="ttaug", selector="gala")


# --- AugMix against PIL (the official implementation's operations) -------------------------


def pil_op(images: np.ndarray, op) -> np.ndarray:
    return np.stack([np.asarray(op(Image.fromarray(image))) for image in images])


def as_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).float().div(255)[:, None]


@pytest.fixture
def gray_images() -> np.ndarray:
    rng = np.random.default_rng(0)
    images = rng.integers(20, 200, (6, 12, 12)).astype(np.uint8)
    images[1] = 77  # constant: autocontrast and equalize leave it alone
    images[2, :6] = 10  # few levels
    return images


def test_autocontrast_and_equalize_match_pil(gray_images):
    x = as_tensor(gray_images)
    for ours, theirs in ((autocontrast, ImageOps.autocontrast), (equalize, ImageOps.equalize)):
        expected = as_tensor(pil_op(gray_images, theirs))
        got = ours(x)
        if ours is autocontrast:  # PIL truncates its lookup table to integers
            assert torch.allclose(got, expected, atol=1.01 / 255)
        else:
            assert torch.equal(got, expected)


def test_solarize_and_posterize_match_pil(gray_images):
    x = as_tensor(gray_images)
    threshold = 150
    got = solarize(x, torch.full((len(x),), float(threshold)))
    expected = as_tensor(pil_op(gray_images, lambda image: ImageOps.solarize(image, threshold)))
    assert torch.allclose(got, expected, atol=1e-6)
    expected = as_tensor(pil_op(gray_images, lambda image: ImageOps.posterize(image, 4)))
    assert torch.allclose(posterize(x, 4), expected, atol=1e-6)


@pytest.mark.parametrize("crop", ["pad", "resized"])
def test_augmix_draws_per_image_in_range(images, crop):
    torch.manual_seed(0)
    same = images[:1].expand(8, *images.shape[1:])
    out = augmix(same, crop)
    assert out.shape == same.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out[0], out[1])  # independent draws per copy
    torch.manual_seed(0)
    assert torch.equal(augmix(same, crop), out)  # torch's RNG drives it
