"""ROID: soft likelihood ratio, certainty/diversity weights, weight ensemble and prior
correction by hand; two engine steps against a re-statement of the official step."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import make_tiny_net

import tta
from tta.losses.roid import prior_correction, roid_augment, roid_weights, slr, weight_ensemble


def test_soft_likelihood_ratio_by_hand():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.995, 0.004, 0.001]])
    logits = probs.log()
    expected = []
    for row in probs.tolist():
        clipped = [min(p, 0.99) for p in row]
        expected.append(-sum(p * math.log(p / (1 - p) + 1e-5) for p in clipped))
    assert torch.allclose(slr(logits), torch.tensor(expected), atol=1e-5)


def test_clipped_probability_gets_no_gradient():
    logits = torch.tensor([[8.0, 0.0, 0.0]], requires_grad=True)  # p0 > 0.99: clipped
    slr(logits).sum().backward()
    p = logits.detach().softmax(1)[0]
    # only the unclipped terms depend on the logits; their gradient is not zero
    assert p[0] > 0.99 and logits.grad.abs().sum() > 0
    # d/dz of the clipped p0 term is 0: the gradient equals that of the other two terms alone
    z = logits.detach().clone().requires_grad_(True)
    q = z.softmax(1)[0, 1:]
    (-(q * torch.log(q / (1 - q) + 1e-5)).sum()).backward()
    assert torch.allclose(logits.grad, z.grad, atol=1e-7)


def test_weights_by_hand():
    probs = torch.tensor([[0.8, 0.1, 0.1], [0.3, 0.4, 0.3], [0.1, 0.1, 0.8], [0.2, 0.7, 0.1]])
    ema = torch.tensor([0.5, 0.3, 0.2])
    temperature = 1 / 3

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
            sum(x * x for x in a) * sum(y * y for y in b)
        )

    div = [1 - cos(ema.tolist(), row) for row in probs.tolist()]
    cert = [sum(p * math.log(p) for p in row) for row in probs.tolist()]  # -entropy
    div_n = [(d - min(div)) / (max(div) - min(div)) for d in div]
    cert_n = [(c - min(cert)) / (max(cert) - min(cert)) for c in cert]
    mask = [d < sum(div_n) / 4 for d in div_n]
    expected = [
        0.0 if m else math.exp(d * c / temperature)
        for d, c, m in zip(div_n, cert_n, mask, strict=True)
    ]

    weights, got_mask = roid_weights(probs.log(), ema, temperature)
    assert got_mask.tolist() == mask and any(mask) and not all(mask)
    assert torch.allclose(weights, torch.tensor(expected), atol=1e-5)


def test_equal_values_do_not_give_nan_weights():
    weights, mask = roid_weights(torch.zeros(1, 4), torch.full((4,), 0.25), 1 / 3)
    assert weights.tolist() == [1.0] and mask.tolist() == [False]


def test_prior_correction_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    prior = logits.softmax(1).mean(0)
    smooth = max(1 / 2, 1 / 3) / float(prior.max())
    factor = (prior + smooth) / (1 + smooth * 3)
    assert torch.allclose(prior_correction(logits), logits * factor)
    assert torch.allclose(factor.sum(), torch.tensor(1.0))  # a smoothed distribution


def test_weight_ensemble_by_hand():
    param = torch.nn.Parameter(torch.tensor([1.0, 2.0, -3.0]))
    source = torch.tensor([0.0, 2.0, 1.0])
    weight_ensemble([(param, source)], 0.99)
    assert torch.allclose(param.detach(), torch.tensor([0.99, 2.0, 0.99 * -3.0 + 0.01 * 1.0]))
    assert float(param.detach()[1]) == 2.0  # equal to the source: exactly unchanged


def official_roid_step(model, source, optimizer, x, state, momentum_src=0.99):
    """mariodoebler/test-time-adaptation methods/roid.py, forward_and_adapt, restated."""
    outputs = model(x)
    with torch.no_grad():
        probs = outputs.softmax(1)
        w_div = 1 - torch.nn.functional.cosine_similarity(state["ema"][None], probs, dim=1)
        w_div = (w_div - w_div.min()) / (w_div.max() - w_div.min())
        mask = w_div < w_div.mean()
        w_cert = (probs * outputs.log_softmax(1)).sum(1)
        w_cert = (w_cert - w_cert.min()) / (w_cert.max() - w_cert.min())
        weights = torch.exp(w_div * w_cert / (1 / 3))
        weights[mask] = 0.0
        state["ema"] = 0.9 * state["ema"] + 0.1 * probs.mean(0)
    p = outputs.softmax(1).clamp(0.0, 0.99)
    loss = (-(p * torch.log(p / (1 - p) + 1e-5)).sum(1) * weights)[~mask].sum() / len(x)
    aug = model(roid_augment(x[~mask]))
    ref = outputs[~mask]
    sce = -0.5 * (ref.softmax(1) * aug.log_softmax(1)).sum(1) - 0.5 * (
        aug.softmax(1) * ref.log_softmax(1)
    ).sum(1)
    loss = loss + (sce * weights[~mask]).sum() / len(x)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad and momentum_src < 1.0:  # as `ema_update_model`
                param.data = momentum_src * param.data + (1 - momentum_src) * source[name]
        prior = outputs.softmax(1).mean(0)
        smooth = max(1 / outputs.shape[0], 1 / outputs.shape[1]) / torch.max(prior)
        return outputs.detach() * (prior + smooth) / (1 + smooth * outputs.shape[1])


def test_steps_match_the_official_restatement(images):
    adapted = tta.adapt(make_tiny_net(), loss="roid", lr=1e-2)
    reference = copy.deepcopy(adapted.model)  # configured: batch statistics, norm params train
    source = {n: p.detach().clone() for n, p in reference.named_parameters()}
    params = [p for p in reference.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-2, betas=(0.9, 0.999))
    state = {"ema": torch.full((5,), 0.2)}
    for step in range(3):
        x = images.roll(step, 0) * (0.8 + 0.1 * step)
        torch.manual_seed(step)
        ours = adapted(x)
        torch.manual_seed(step)
        theirs = official_roid_step(reference, source, optimizer, x, state)
        assert torch.allclose(ours, theirs, atol=1e-5)
    for (name, mine), other in zip(
        adapted.model.named_parameters(), reference.parameters(), strict=True
    ):
        assert torch.allclose(mine, other, atol=1e-6), name
    assert torch.allclose(adapted.loss.class_probs, state["ema"])
    assert adapted.counters.n_forward == 6 and adapted.counters.n_backward == 3
    assert adapted.loss.stats()["n_masked"] > 0


def test_composes_with_gala(images):
    adapted = tta.adapt(make_tiny_net(), loss="roid", selector="gala", lr=1e-2)
    gala = adapted.selector
    names = [layer.param_names for layer in adapted.layers]
    source = {n: p.detach().clone() for n, p in adapted.model.named_parameters()}
    adapted(images)  # a window's first step: every layer keeps its update
    n_left_out = 0
    for step in range(1, 4):
        before = {n: p.detach().clone() for n, p in adapted.model.named_parameters()}
        adapted(images.roll(step, 0))
        selected = set(gala.trace()["selected"][-1])
        for index, layer_names in enumerate(names):
            if index in selected:
                continue
            n_left_out += 1
            for name in layer_names:  # not selected: only the pull toward the source
                expected = before[name].lerp(source[name], 0.01)
                assert torch.allclose(adapted.model.get_parameter(name), expected), name
    assert n_left_out > 0 and adapted.counters.n_steps + adapted.counters.n_skipped == 4


def test_reset_forgets_the_prior_average(images):
    adapted = tta.adapt(make_tiny_net(), loss="roid")
    adapted(images)
    assert adapted.loss.class_probs is not None
    adapted.reset()
    assert adapted.loss.class_probs is None


def test_without_consistency_one_forward(images):
    adapted = tta.adapt(make_tiny_net(), loss="roid", use_consistency=False)
    adapted(images)
    assert adapted.counters.n_forward == 1


@pytest.mark.parametrize(
    "options", [{"momentum_src": 1.5}, {"temperature": 0.0}, {"momentum_probs": -0.1}]
)
def test_bad_options(options):
    with pytest.raises(ValueError, match="loss 'roid'"):
        tta.adapt(make_tiny_net(), loss="roid", **options)


def test_augmentation_keeps_shape_and_range(images):
    torch.manual_seed(0)
    out = roid_augment(images)
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, images)


@pytest.mark.parametrize("loss", ["roid", "cmf"])
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision(images, loss, amp):
    adapted = tta.adapt(make_tiny_net(), loss=loss, amp=amp, lr=1e-2)
    source = {n: p.detach().clone() for n, p in adapted.model.named_parameters()}
    for step in range(2):
        logits = adapted(images.roll(step, 0))
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert adapted.loss.class_probs.dtype == torch.float32
    changed = [n for n, p in adapted.model.named_parameters() if not torch.equal(p, source[n])]
    assert adapted.counters.n_steps + adapted.counters.n_nonfinite == 2 and changed
