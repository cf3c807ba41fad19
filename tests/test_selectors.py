"""Baseline layer selectors: norm, fixed, random, auto-rgn, auto-snr (hand-built proposals)."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from conftest import NoNormNet, make_tiny_net
from torch import nn

import tta
from tta.layers import Layer, partition
from tta.selectors.base import Proposal

# TinyNet at module granularity: conv1, bn1, conv2, bn2, fc.
TINY_LAYERS = ["conv1", "bn1", "conv2", "bn2", "fc"]


def create(name: str, **options):
    return tta.LAYER_SELECTORS.create(name, **options)


def module_layers(model: nn.Module, granularity: str = "module") -> list[Layer]:
    return partition(list(model.named_parameters()), granularity, model)


def proposal(
    params: list[list[torch.Tensor]],
    grads: list[list[torch.Tensor | None]] | None = None,
    updates: list[list[torch.Tensor]] | None = None,
    step: int = 0,
    layers: list[Layer] | None = None,
) -> Proposal:
    """A proposal over hand-set tensors, one layer per inner list (named l0, l1, ...)."""
    layers = layers or [
        Layer(f"l{i}", [f"l{i}.{j}" for j in range(len(ps))], [nn.Parameter(p) for p in ps])
        for i, ps in enumerate(params)
    ]
    grads = grads if grads is not None else [[torch.ones_like(p) for p in ps] for ps in params]
    if updates is None:
        updates = [
            [torch.zeros_like(p) if g is None else -0.1 * g for g, p in zip(gs, ps, strict=True)]
            for gs, ps in zip(grads, params, strict=True)
        ]
    return Proposal(step, layers, params, updates, grads)


class Staged(nn.Module):
    """Two named stages and a head: layer1.{0,1}, layer2.{0,1}, fc."""

    def __init__(self) -> None:
        super().__init__()
        self.layer1 = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.layer2 = nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))
        self.fc = nn.Linear(4, 3)


# --- norm -----------------------------------------------------------------------------------


def test_norm_selects_exactly_the_norm_layers():
    model = make_tiny_net()
    layers = module_layers(model)
    assert [layer.name for layer in layers] == TINY_LAYERS
    selector = create("norm")
    selector.bind(model, layers)
    params = [[p.detach().clone() for p in layer.params] for layer in layers]
    assert selector.select(proposal(params, step=7)) == [0.0, 1.0, 0.0, 1.0, 0.0]
    assert selector.trace() == {"step": [7], "selected": [[1, 3]], "skipped": [False]}


def test_norm_handles_layernorm_and_groupnorm():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.GroupNorm(2, 4), nn.Linear(4, 2))
    selector = create("norm")
    selector.bind(model, module_layers(model))
    params = [[p.detach() for p in layer.params] for layer in module_layers(model)]
    assert selector.select(proposal(params)) == [0.0, 1.0, 1.0, 0.0]


def test_norm_errors_without_norm_layers_among_the_trainable():
    with pytest.raises(ValueError, match="no normalization layer"):
        tta.adapt(NoNormNet(), loss="entropy", params="all", selector="norm")
    model = make_tiny_net()
    with pytest.raises(ValueError, match="no normalization layer.*conv1"):
        tta.adapt(model, loss="entropy", params=["conv1", "fc"], selector="norm")
    unbound = create("norm")
    with pytest.raises(RuntimeError, match="bind"):
        unbound.select(proposal([[torch.ones(2)]]))


# --- fixed ----------------------------------------------------------------------------------


def select_fixed(model: nn.Module, **options) -> list[float]:
    selector = create("fixed", **options)
    layers = module_layers(model, selector.granularity)
    selector.bind(model, layers)
    params = [[p.detach() for p in layer.params] for layer in layers]
    return selector.select(proposal(params, layers=layers))


def test_fixed_resolves_names_prefixes_first_and_last():
    staged = Staged()
    names = [layer.name for layer in module_layers(staged)]
    assert names == ["layer1.0", "layer1.1", "layer2.0", "layer2.1", "fc"]
    assert select_fixed(staged, layers=["layer1"]) == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert select_fixed(staged, layers=["layer2.1", "fc"]) == [0.0, 0.0, 0.0, 1.0, 1.0]
    assert select_fixed(staged, layers="layer1.0,fc") == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert select_fixed(staged, first=2) == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert select_fixed(staged, last=1) == [0.0, 0.0, 0.0, 0.0, 1.0]
    # a name prefix, not a string prefix: "1" selects layer "1", not "10"
    eleven = nn.Sequential(*[nn.Linear(2, 2) for _ in range(11)])
    assert select_fixed(eleven, layers=["1"]) == [0.0, 1.0] + [0.0] * 9
    # tensor granularity: "fc" selects fc.weight and fc.bias, first=1 only layer1.0.weight.
    assert select_fixed(staged, layers=["fc"], granularity="tensor")[-2:] == [1.0, 1.0]
    assert sum(select_fixed(staged, first=1, granularity="tensor")) == 1.0


def test_fixed_errors_name_valid_choices():
    staged = Staged()
    with pytest.raises(ValueError, match=r"\['layer3'\] match no trainable layer.*layer1\.0"):
        select_fixed(staged, layers=["layer1", "layer3"])
    with pytest.raises(ValueError, match="exactly one of"):
        create("fixed", layers=["fc"], first=1)
    with pytest.raises(ValueError, match="exactly one of"):
        create("fixed", first=1, last=1)
    with pytest.raises(ValueError, match="exactly one of"):
        create("fixed")
    with pytest.raises(ValueError, match="positive integer"):
        create("fixed", first=0)
    with pytest.raises(ValueError, match="non-empty list"):
        create("fixed", layers=[])
    with pytest.raises(ValueError, match="last=9 but there are only 5"):
        select_fixed(staged, last=9)
    # the error surfaces at tta.adapt, before any batch
    with pytest.raises(ValueError, match="match no trainable layer"):
        tta.adapt(
            make_tiny_net(), loss="tent", selector="fixed", selector_options={"layers": ["fc"]}
        )


def test_fixed_resolves_lazily_when_not_bound():
    selector = create("fixed", last=1)
    assert selector.select(proposal([[torch.ones(2)], [torch.ones(3)]])) == [0.0, 1.0]


# --- random ---------------------------------------------------------------------------------


def random_draws(seed: int, steps: int = 20, n_layers: int = 6, **options) -> list[list[int]]:
    selector = create("random", seed=seed, **options)
    params = [[torch.ones(3)] for _ in range(n_layers)]
    for step in range(steps):
        scales = selector.select(proposal(params, step=step))
        assert set(scales) <= {0.0, 1.0}
        assert sum(scales) == options.get("k", 1)
    return selector.trace()["selected"]


def test_random_is_reproducible_for_a_seed_and_varies():
    draws = random_draws(0)
    assert draws == random_draws(0)
    assert draws != random_draws(1)
    assert len({tuple(d) for d in draws}) >= 3, "the choice should vary from step to step"
    assert all(len(set(d)) == 2 for d in random_draws(0, k=2))


def test_random_skips_layers_without_update_and_steps_without_candidates():
    selector = create("random", seed=3)
    params = [[torch.ones(2)], [torch.ones(2)], [torch.ones(2)]]
    zero_middle = [[torch.ones(2)], [None], [torch.ones(2)]]
    updates = [[-0.1 * torch.ones(2)], [torch.zeros(2)], [-0.1 * torch.ones(2)]]
    for _ in range(15):
        scales = selector.select(proposal(params, zero_middle, updates))
        assert scales[1] == 0.0 and sum(scales) == 1.0
    nothing = [[torch.zeros(2)] for _ in range(3)]
    assert selector.select(proposal(params, updates=nothing, step=99)) == [0.0, 0.0, 0.0]
    trace = selector.trace()
    assert trace["skipped"][-1] and trace["selected"][-1] == [] and trace["step"][-1] == 99


# --- auto-rgn -------------------------------------------------------------------------------


def test_auto_rgn_scales_are_relative_gradient_norms_over_their_max():
    params = [[torch.tensor([3.0, 4.0])], [torch.tensor([1.0, 0.0])], [torch.tensor([2.0])]]
    grads = [[torch.tensor([0.6, 0.8])], [torch.tensor([0.0, 0.5])], [None]]
    # RGN = 1/5 = 0.2, 0.5/1 = 0.5, 0 -> scales 0.4, 1, 0
    selector = create("auto-rgn")
    assert selector.granularity == "tensor"
    scales = selector.select(proposal(params, grads))
    assert scales == pytest.approx([0.4, 1.0, 0.0])
    assert scales[1] == 1.0
    trace = selector.trace()
    assert trace["selected"] == [[0, 1]] and trace["scales"][0] == scales


def test_auto_rgn_flattens_multi_tensor_layers_and_handles_zero_weights():
    # one layer of two tensors: ||g|| = sqrt(1 + 4) , ||theta|| = sqrt(4 + 1)  -> RGN 1
    params = [[torch.tensor([2.0]), torch.tensor([1.0])], [torch.tensor([4.0])], [torch.zeros(2)]]
    grads = [[torch.tensor([1.0]), torch.tensor([2.0])], [torch.tensor([2.0])], [torch.ones(2)]]
    scales = create("auto-rgn").select(proposal(params, grads))
    # RGN 1 and 0.5; the zero-weight tensor has no relative norm and keeps its full update
    assert scales == pytest.approx([1.0, 0.5, 1.0])
    all_zero = [[torch.zeros(1)], [torch.zeros(1)]]
    assert create("auto-rgn").select(proposal(all_zero[:1] * 2, all_zero)) == [0.0, 0.0]


def test_auto_rgn_equals_per_tensor_learning_rates_with_adam(images):
    lr = 1e-2
    reference = make_tiny_net()
    adapted = tta.adapt(
        make_tiny_net(), loss="entropy", params="all", selector="auto-rgn", optimizer="adam", lr=lr
    )
    adapted(images)
    # by hand: the same gradient, RGN per tensor, Adam with one learning rate per tensor
    named = list(reference.named_parameters())
    loss = tta.LOSSES.create("entropy")(reference(images))
    grads = torch.autograd.grad(loss, [p for _, p in named])
    rgn = torch.stack([g.norm() / p.norm() for g, (_, p) in zip(grads, named, strict=True)])
    scales = (rgn / rgn.max()).detach()
    for (_, p), g in zip(named, grads, strict=True):
        p.grad = g
    groups = [{"params": [p], "lr": lr * s.item()} for (_, p), s in zip(named, scales, strict=True)]
    torch.optim.Adam(groups, lr=lr).step()
    for name, p in named:
        assert torch.allclose(adapted.model.get_parameter(name), p, atol=1e-6), name
    assert adapted.selector.trace()["scales"][0] == pytest.approx(scales.tolist(), rel=1e-5)


# --- auto-snr -------------------------------------------------------------------------------


def snr_step(selector, grads_a, grads_b, step):
    params = [[torch.ones(2)], [torch.ones(2)]]
    grads = [[torch.tensor(grads_a)], [torch.tensor(grads_b)]]
    return selector.select(proposal(params, grads, step=step))


def test_auto_snr_freezes_the_noisy_tensor():
    selector = create("auto-snr", window=3, eps=1e-12)
    steady = [[1.0, 1.0], [1.1, 0.9], [0.9, 1.1]]  # mean 1, var 0.01 per element -> SNR 100
    noisy = [[1.0, -1.0], [-1.0, 1.0], [1.0, -1.0]]  # mean +-1/3, var 4/3 -> SNR 1/12
    scales = [
        snr_step(selector, a, b, i) for i, (a, b) in enumerate(zip(steady, noisy, strict=True))
    ]
    assert scales[:2] == [[0.0, 0.0], [0.0, 0.0]], "the window is filled before any update"
    assert scales[2] == [1.0, 0.0]
    trace = selector.trace()
    assert trace["snr"][2] == pytest.approx([100.0, 1 / 12], rel=1e-4)
    assert trace["skipped"] == [True, True, False] and trace["selected"][2] == [0]
    # the window slides: three steady steps later the second tensor is kept too
    for i in range(3):
        scales = snr_step(selector, steady[i], steady[i], 3 + i)
    assert scales == [1.0, 1.0]
    # reset empties the window: the next step only collects again
    selector.reset()
    assert snr_step(selector, steady[0], steady[0], 6) == [0.0, 0.0]


@pytest.mark.parametrize(
    ("loss", "episodic", "message"),
    [("memo", False, "at every test point"), ("tent", True, "at every batch (episodic)")],
)
def test_auto_snr_refuses_runs_that_restart_before_its_window_fills(loss, episodic, message):
    """After a reset auto-snr only collects for window - 1 steps; a run that resets every
    point or batch with fewer steps would never update, so tta.adapt refuses it up front."""
    model = make_tiny_net()
    before = copy.deepcopy(model.state_dict())
    snr = {"window": 3, "normalize": True}  # normalize: the best tensor always updates
    options = {"selector": "auto-snr", "selector_options": snr, "episodic": episodic}
    with pytest.raises(ValueError, match=re.escape(message) + ".*steps >= 3"):
        tta.adapt(model, loss=loss, steps=2, **options)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    adapted = tta.adapt(model, loss=loss, steps=3, **options)
    adapted(torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)))
    assert adapted.counters.n_steps > 0


def test_auto_snr_threshold_and_normalize():
    steady, noisy = [[1.0, 1.0], [1.1, 0.9]], [[1.0, -1.0], [-0.8, 1.2]]
    # window 2, unbiased variance: steady SNR = (1.05^2 / 0.005 + 0.95^2 / 0.005) / 2 = 200.5,
    # noisy SNR = (0.1^2 / 1.62 + 0.1^2 / 2.42) / 2
    raw = create("auto-snr", window=2, threshold=300.0, eps=1e-12)
    normalized = create("auto-snr", window=2, threshold=0.5, normalize=True, eps=1e-12)
    for i in range(2):
        last_raw = snr_step(raw, steady[i], noisy[i], i)
        last_norm = snr_step(normalized, steady[i], noisy[i], i)
    assert last_raw == [0.0, 0.0], "both below the raw threshold: the step is skipped"
    assert last_norm == [1.0, 0.0]
    assert normalized.trace()["snr"][1][0] == 1.0
    assert raw.trace()["snr"][1] == pytest.approx([200.5, (0.01 / 1.62 + 0.01 / 2.42) / 2], 1e-4)
    with pytest.raises(ValueError, match="window"):
        create("auto-snr", window=1)


# --- end to end -----------------------------------------------------------------------------

E2E = [
    ("norm", {}),
    ("fixed", {"layers": ["conv2"]}),
    ("fixed", {"last": 2}),
    ("random", {"seed": 0}),
    ("auto-rgn", {}),
    ("auto-snr", {"window": 2, "threshold": 0.5, "normalize": True}),
]


@pytest.mark.parametrize(("name", "options"), E2E, ids=[f"{n}-{list(o)}" for n, o in E2E])
def test_end_to_end_only_selected_layers_change(name, options, images):
    model = make_tiny_net()
    source = copy.deepcopy(model.state_dict())
    adapted = tta.adapt(
        model,
        loss="entropy",
        params="all",
        selector=name,
        optimizer="sgd",
        lr=1e-2,
        selector_options=options,
    )
    for i in range(3):
        adapted(images[5 * i : 5 * i + 8])
    trace = adapted.selector.trace()
    assert trace["step"] == [0, 1, 2] and len(trace["selected"]) == 3
    selected = {i for step in trace["selected"] for i in step}
    expected = {n for i in selected for n in adapted.layers[i].param_names}
    state = model.state_dict()
    changed = {n for n, _ in model.named_parameters() if not torch.equal(state[n], source[n])}
    assert selected, "some layer must have been selected"
    assert changed <= expected, "only the selected layers may change"
    if name == "auto-rgn":  # a tiny scale may round to no change: check the large ones
        scaled = {i for step in trace["scales"] for i, s in enumerate(step) if s > 1e-2}
        assert {adapted.layers[i].param_names[0] for i in scaled} <= changed
    else:
        assert changed == expected
    if name != "auto-rgn":
        assert len(changed) < len(list(model.parameters())), "some layer must stay frozen"
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert adapted.counters.n_steps + adapted.counters.n_skipped == 3
    assert adapted.counters.n_skipped == sum(trace["skipped"])
    if name == "norm":
        assert changed == {"bn1.weight", "bn1.bias", "bn2.weight", "bn2.bias"}
    if name == "fixed":
        assert changed == (
            {"conv2.weight", "conv2.bias"}
            if "layers" in options
            else {"bn2.weight", "bn2.bias", "fc.weight", "fc.bias"}
        )
    if name == "random":
        assert all(len(step) == 1 for step in trace["selected"])
    if name == "auto-snr":
        assert trace["skipped"][0] and not any(trace["skipped"][1:])
