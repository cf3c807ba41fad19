"""GALA: cosines, choice, skip, reset window, variants, SGD/Adam paths, trace, end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import make_tiny_net
from torch import nn

import tta
from tta.engine import AdaptedModel
from tta.harness.trace import write_trace
from tta.layers import partition
from tta.losses.base import Loss
from tta.models import resnet20
from tta.selectors.base import Proposal
from tta.selectors.gala import Gala, parse_window

# ---------------------------------------------------------------- selector on hand-made proposals


def proposal(before, updates, step=0) -> Proposal:
    """Layers of one or more tensors, given as lists of 1-D values."""
    before = [[torch.tensor(t, dtype=torch.float32) for t in layer] for layer in before]
    updates = [[torch.tensor(t, dtype=torch.float32) for t in layer] for layer in updates]
    layers = [
        partition([(f"l{i}.w{j}", nn.Parameter(t)) for j, t in enumerate(layer)])[0]
        for i, layer in enumerate(before)
    ]
    return Proposal(step, layers, before, updates)


def hand_cos(u: list[list[float]], td: list[list[float]]) -> float:
    u = torch.tensor([x for t in u for x in t], dtype=torch.float64)
    td = torch.tensor([x for t in td for x in t], dtype=torch.float64)
    return float(u @ (u + td) / (u.norm() * (u + td).norm()))


def start_window(gala: Gala, anchor, step: int = 0) -> list[float]:
    """The window's first call: anchor := `anchor`, every layer keeps its update."""
    ones = [[[1.0] * len(t) for t in layer] for layer in anchor]
    return gala.select(proposal(anchor, ones, step=step))


ANCHOR = [[[0.0, 0.0], [0.0]], [[0.0, 0.0, 0.0]], [[0.0]]]  # 3 layers, the first of 2 tensors


def test_cosines_match_hand_computation_over_flattened_layers():
    gala = Gala()
    assert start_window(gala, ANCHOR) == [1.0, 1.0, 1.0]
    before = [[[1.0, -2.0], [0.5]], [[0.3, 0.1, -0.2]], [[2.0]]]  # theta; TD = theta - 0
    updates = [[[0.5, 1.0], [-1.0]], [[0.2, 0.2, 0.0]], [[-1.0]]]
    cos = gala.cosines(proposal(before, updates))
    expected = [hand_cos(u, td) for u, td in zip(updates, before, strict=True)]
    np.testing.assert_allclose(cos, expected, rtol=1e-5, atol=1e-6)
    assert cos.dtype == np.float32 and cos[2] == pytest.approx(-1.0)  # u = -1, u + TD = 1


def test_single_keeps_only_the_argmax_layer_above_threshold():
    gala = Gala(threshold=0.75)
    start_window(gala, ANCHOR, step=6)
    before = [[[1.0, 0.0], [0.0]], [[1.0, 0.0, 0.0]], [[1.0]]]
    updates = [[[1.0, 1.0], [0.0]], [[1.0, 0.1, 0.0]], [[-0.5]]]  # cos ~0.95, ~0.999, -1
    assert gala.select(proposal(before, updates, step=7)) == [0.0, 1.0, 0.0]
    trace = gala.trace()
    assert trace["selected"][-1] == [1] and trace["skipped"][-1] is False
    assert trace["step"][-1] == 7 and trace["window_position"] == [0, 1]


def test_step_is_skipped_when_no_layer_passes_threshold():
    gala = Gala(threshold=0.75)
    start_window(gala, ANCHOR)
    before = [[[1.0, 0.0], [0.0]], [[1.0, 0.0, 0.0]], [[1.0]]]
    updates = [[[-0.2, 1.0], [0.0]], [[0.0, 1.0, 0.0]], [[-0.5]]]  # cos ~0.64, ~0.71, -1
    assert gala.select(proposal(before, updates)) == [0.0, 0.0, 0.0]
    assert gala.trace()["skipped"][-1] is True
    # the same proposal passes a lower threshold: the threshold is what skipped it
    lower = Gala(threshold=0.6)
    start_window(lower, ANCHOR)
    assert lower.select(proposal(before, updates)) == [0.0, 1.0, 0.0]


def test_layer_without_update_is_not_a_candidate():
    gala = Gala(threshold=-0.5)
    start_window(gala, ANCHOR)
    before = [[[1.0, 0.0], [0.0]], [[1.0, 0.0, 0.0]], [[1.0]]]
    updates = [[[0.0, 0.0], [0.0]], [[0.0, 0.0, 0.0]], [[0.5]]]
    assert gala.select(proposal(before, updates)) == [0.0, 0.0, 1.0]
    cos = gala.trace()["cosine"][-1]
    assert np.isnan(cos[0]) and np.isnan(cos[1]) and cos[2] == pytest.approx(1.0)
    nothing = [[[0.0, 0.0], [0.0]], [[0.0, 0.0, 0.0]], [[0.0]]]
    assert gala.select(proposal(before, nothing)) == [0.0, 0.0, 0.0]  # no candidate: skipped


def test_multi_keeps_every_layer_above_threshold():
    gala = Gala(threshold=0.75, variant="multi")
    start_window(gala, ANCHOR)
    before = [[[1.0, 0.0], [0.0]], [[1.0, 0.0, 0.0]], [[1.0]]]
    updates = [[[1.0, 1.0], [0.0]], [[1.0, 0.1, 0.0]], [[-0.5]]]
    assert gala.select(proposal(before, updates)) == [1.0, 1.0, 0.0]


def test_window_moves_anchor_and_first_step_updates_all_layers():
    gala = Gala(threshold=0.75, window=3)
    one = [[[1.0]], [[1.0]]]
    assert gala.select(proposal([[[0.0]], [[0.0]]], one, step=0)) == [1.0, 1.0]  # anchor 0
    gala.select(proposal([[[1.0]], [[1.0]]], one, step=1))
    gala.select(proposal([[[2.0]], [[2.0]]], one, step=2))
    # step 3 opens a new window: anchor := theta = 5, even a reversing update is kept
    back = [[[-1.0]], [[-1.0]]]
    assert gala.select(proposal([[[5.0]], [[5.0]]], back, step=3)) == [1.0, 1.0]
    # step 4: TD is measured from the new anchor 5 (TD = -1 agrees with u = -1: cos 1);
    # from the old anchor 0, TD = +4 would give cos -1 and a skip
    assert gala.select(proposal([[[4.0]], [[4.0]]], back, step=4)) == [1.0, 0.0]
    trace = gala.trace()
    assert trace["window_position"] == [0, 1, 2, 0, 1]
    assert trace["selected"][3] == [0, 1]


def test_no_reset_window_keeps_the_first_anchor():
    for window in (None, 0, "inf", float("inf")):
        assert parse_window(window) is None
    gala = Gala(window=None)
    one = [[[1.0]], [[1.0]]]
    for step in range(25):
        gala.select(proposal([[[float(step)]], [[float(step)]]], one, step=step))
    back = [[[-1.0]], [[-1.0]]]
    # theta = 30 with anchor 0: a reversing update is anti-aligned (cos -1) and skipped
    assert gala.select(proposal([[[30.0]], [[30.0]]], back, step=25)) == [0.0, 0.0]
    assert gala.trace()["window_position"][20] == 20


def test_damping_scales_the_steps_after_the_window_start():
    gala = Gala(window=10, damping=0.5, damping_steps=2)
    one = [[[1.0]], [[1.0]]]
    scales = [max(gala.select(proposal([[[float(s)]], [[0.0]]], one, step=s))) for s in range(5)]
    assert scales == [1.0, 0.5, 0.5, 1.0, 1.0]
    assert Gala().damping is None  # off by default


def test_reset_restarts_the_window_but_keeps_the_trace():
    gala = Gala(window=20)
    one = [[[1.0]], [[1.0]]]
    for step in range(3):
        gala.select(proposal([[[float(step)]], [[0.0]]], one, step=step))
    gala.reset()
    assert gala.select(proposal([[[-9.0]], [[0.0]]], [[[-1.0]], [[1.0]]], step=3)) == [1.0, 1.0]
    assert gala.trace()["step"] == [0, 1, 2, 3] and gala.trace()["window_position"][-1] == 0
    gala.clear_trace()
    assert gala.trace() == {}


@pytest.mark.parametrize(
    "options",
    [
        {"threshold": 1.5},
        {"window": -3},
        {"window": 2.5},
        {"granularity": "stage"},
        {"variant": "best"},
        {"damping": 0},
        {"block_patterns": ["layer1"]},  # needs granularity="block"
    ],
)
def test_bad_options_are_rejected(options):
    with pytest.raises(ValueError):
        tta.LAYER_SELECTORS.create("gala", **options)


# ---------------------------------------------------------------- engine paths, hand-set gradients


class Vec(nn.Module):
    def __init__(self, values: list[float]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(values))


class ToyModel(nn.Module):
    """Output <w_a, d_a> + <w_b, d_b>: the loss gradient of layer l is the direction d_l."""

    def __init__(self) -> None:
        super().__init__()
        self.a = Vec([1.0, 2.0])
        self.b = Vec([0.5, -1.0, 3.0])
        self.directions = [torch.zeros(2), torch.zeros(3)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = (self.a.weight * self.directions[0]).sum() + (
            self.b.weight * self.directions[1]
        ).sum()
        return out.reshape(1, 1).expand(len(x), 2)


class MeanLoss(Loss):
    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.mean()


def toy_engine(optimizer: str, **gala_options) -> tuple[AdaptedModel, ToyModel]:
    model = ToyModel()
    layers = partition(list(model.named_parameters()))
    params = [p for layer in layers for p in layer.params]
    opt = (
        torch.optim.SGD(params, lr=0.1, momentum=0.0)
        if optimizer == "sgd"
        else torch.optim.Adam(params, lr=0.1)
    )
    return AdaptedModel(model, MeanLoss(), layers, Gala(**gala_options), opt), model


def step(adapted: AdaptedModel, model: ToyModel, da: list[float], db: list[float]) -> None:
    model.directions = [torch.tensor(da), torch.tensor(db)]
    adapted(torch.zeros(1, 1, 1, 1))


def weights(model: ToyModel) -> list[torch.Tensor]:
    return [model.a.weight.detach().clone(), model.b.weight.detach().clone()]


@pytest.mark.parametrize(
    ("loss", "options", "forwards_per_batch"),
    [
        ("tent", {}, 1),
        ("sar", {"margin": 10.0, "reset_constant": 0.0}, 2),  # SAM's second forward
        ("cotta", {"ap": 1.1, "n_augmentations": 4}, 6),  # student, anchor, 4 augmented
    ],
)
def test_window_counts_batches_whatever_the_losses_forward_passes(
    images, loss, options, forwards_per_batch
):
    """GALA's 20-step window is 20 batches under SAR and CoTTA too, not 20 forward passes."""
    adapted = tta.adapt(
        make_tiny_net(), loss=loss, params="all", selector="gala", lr=1e-3, **options
    )
    n_batches = 45
    for _ in range(n_batches):
        adapted(images)
    trace = adapted.selector.trace()
    assert adapted.counters.n_forward >= forwards_per_batch * n_batches
    assert trace["step"] == list(range(n_batches))
    assert trace["window_position"] == [b % 20 for b in range(n_batches)]
    starts = [b for b in range(n_batches) if trace["window_position"][b] == 0]
    assert starts == [0, 20, 40]
    assert all(len(trace["selected"][b]) == len(adapted.layers) for b in starts)


def test_window_still_ticks_when_the_loss_skips_a_batch(images):
    """A batch the loss skips (no proposal) still counts as a step of the window."""
    adapted = tta.adapt(
        make_tiny_net(),
        loss="eta",
        selector="gala",
        selector_options={"window": 3},
        e_margin=10.0,
        d_margin=1.0,
    )
    for _ in range(2):
        adapted(images)
    adapted.loss.e_margin = 1e-6  # no sample is reliable: the loss skips, GALA is not called
    adapted(images)
    adapted.loss.e_margin = 10.0
    adapted(images)  # step 3 opens the second window
    trace = adapted.selector.trace()
    assert trace["step"] == [0, 1, 3] and trace["window_position"] == [0, 1, 0]


def test_sgd_path_update_is_minus_lr_times_gradient():
    adapted, model = toy_engine("sgd", threshold=0.75, window=20)
    w0 = weights(model)
    step(adapted, model, [1.0, 0.0], [0.0, 1.0, 0.0])  # window start: both layers move
    w1 = weights(model)
    torch.testing.assert_close(w1[0], w0[0] - 0.1 * torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(w1[1], w0[1] - 0.1 * torch.tensor([0.0, 1.0, 0.0]))
    # a: same direction again (cos 1); b: orthogonal to its displacement (cos 1/sqrt 2)
    step(adapted, model, [1.0, 0.0], [1.0, 0.0, 0.0])
    w2 = weights(model)
    torch.testing.assert_close(w2[0], w1[0] - 0.1 * torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(w2[1], w1[1])
    cos = adapted.selector.trace()["cosine"][1]
    np.testing.assert_allclose(cos, [1.0, 1 / math.sqrt(2)], rtol=1e-5)
    # both reverse: a is anti-aligned (cos -1), b returns to its anchor (u + TD = 0, cos 0)
    step(adapted, model, [-1.0, 0.0], [0.0, -1.0, 0.0])
    torch.testing.assert_close(weights(model)[0], w2[0])
    torch.testing.assert_close(weights(model)[1], w2[1])
    assert adapted.counters.n_steps == 2 and adapted.counters.n_skipped == 1


def test_adam_path_drops_weights_of_unselected_layers_but_updates_their_moments():
    adapted, model = toy_engine("adam", threshold=0.75, window=20)
    reference = ToyModel()  # plain Adam on every layer, from the same start
    ref_opt = torch.optim.Adam(reference.parameters(), lr=0.1)
    grads = [([1.0, 0.5], [0.2, 1.0, -0.3]), ([1.0, 0.4], [-2.0, 0.1, 1.0])]
    for da, db in grads:
        before = weights(model)
        ref_before = [p.detach().clone() for p in reference.parameters()]
        step(adapted, model, da, db)
        ref_opt.zero_grad()
        for p, g in zip(reference.parameters(), (da, db), strict=True):
            p.grad = torch.tensor(g)
        ref_opt.step()
    # step 0 updated both layers exactly as Adam does
    # step 1: a (same direction) kept Adam's step; b (reversed) was dropped
    assert adapted.selector.trace()["selected"] == [[0, 1], [0]]
    ref_after = [p.detach() for p in reference.parameters()]
    torch.testing.assert_close(weights(model)[0], ref_after[0])
    torch.testing.assert_close(weights(model)[1], before[1])
    assert not torch.equal(ref_after[1], ref_before[1])  # Adam did propose a change for b
    # every layer's moments saw both gradients, selected or not
    for ours, ref in zip((model.a.weight, model.b.weight), reference.parameters(), strict=True):
        state, ref_state = adapted.optimizer.state[ours], ref_opt.state[ref]
        torch.testing.assert_close(state["exp_avg"], ref_state["exp_avg"])
        torch.testing.assert_close(state["exp_avg_sq"], ref_state["exp_avg_sq"])
        assert float(state["step"]) == 2.0


# ---------------------------------------------------------------- through tta.adapt


def test_entropy_all_params_sgd_paper_setting_runs_and_traces():
    model = make_tiny_net()
    adapted = tta.adapt(
        model, loss="entropy", params="all", selector="gala", optimizer="sgd", lr=0.01
    )
    x = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    start = [p.detach().clone() for p in model.parameters()]
    for _ in range(4):
        adapted(x)
    trace = adapted.selector.trace()
    assert trace["step"] == [0, 1, 2, 3] and trace["cosine"].shape == (4, len(adapted.layers))
    assert trace["layer_names"] == [layer.name for layer in adapted.layers]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(p, s) for p, s in zip(model.parameters(), start, strict=True))
    assert adapted.counters.n_steps + adapted.counters.n_skipped == 4


def test_gala_searches_every_layer_unless_params_says_otherwise():
    """The paper's search space is every layer, whatever the loss's own parameter set."""
    adapted = tta.adapt(make_tiny_net(), loss="tent", selector="gala")
    assert [layer.name for layer in adapted.layers] == ["conv1", "bn1", "conv2", "bn2", "fc"]
    assert adapted.describe()["params"] == "all"
    plain = tta.adapt(make_tiny_net(), loss="tent", selector="all")
    assert [layer.name for layer in plain.layers] == ["bn1", "bn2"]  # TENT's own set
    adapted = tta.adapt(make_tiny_net(), loss="tent", selector="gala", params="norm")
    assert [layer.name for layer in adapted.layers] == ["bn1", "bn2"]
    x = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        assert torch.isfinite(adapted(x)).all()
    assert len(adapted.selector.trace()["selected"]) == 3


def test_block_granularity_and_patterns_reach_the_partition():
    adapted = tta.adapt(
        resnet20(),
        loss="tent",
        params="norm",
        selector="gala",
        selector_options={"granularity": "block"},
    )
    assert [layer.name for layer in adapted.layers] == ["stem", "layer1", "layer2", "layer3"]
    options = {"granularity": "block", "block_patterns": ["layer1", "layer2"], "variant": "multi"}
    adapted = tta.adapt(
        resnet20(), loss="entropy", params="all", selector="gala", selector_options=options
    )
    assert [layer.name for layer in adapted.layers] == ["stem", "layer1", "layer2", "head"]
    adapted(torch.rand(4, 3, 32, 32))
    adapted(torch.rand(4, 3, 32, 32))
    assert adapted.selector.trace()["cosine"].shape == (2, 4)


def test_tensor_granularity_scores_each_tensor():
    adapted = tta.adapt(
        make_tiny_net(),
        loss="tent",
        params="norm",
        selector="gala",
        selector_options={"granularity": "tensor"},
    )
    assert [layer.name for layer in adapted.layers] == [
        "bn1.weight",
        "bn1.bias",
        "bn2.weight",
        "bn2.bias",
    ]
    adapted(torch.rand(8, 3, 8, 8))
    adapted(torch.rand(8, 3, 8, 8))
    assert adapted.selector.trace()["cosine"].shape == (2, 4)


# ---------------------------------------------------------------- trace files


def test_write_trace_saves_npz_heatmap_and_summary(tmp_path):
    gala = Gala(window=3)
    names = ["l0", "l1"]
    for step_index in range(6):  # two windows of [all layers, layer 0 (tie), skipped]
        u = -1.0 if step_index % 3 == 2 else 1.0
        theta = [[[float(step_index)]], [[float(step_index)]]]
        gala.select(proposal(theta, [[[u]], [[u]]], step=step_index))
    summary = write_trace(tmp_path, gala.trace(), names, [0, 3], ["fog", "snow"])
    assert summary["n_selector_steps"] == 6 and summary["n_selector_skipped"] == 2
    assert summary["selection_counts"] == {"l0": 4, "l1": 2}
    saved = np.load(tmp_path / "selector_trace.npz")
    assert saved["selected"].shape == (6, 2) and saved["cosine"].dtype == np.float32
    assert saved["skipped"].tolist() == [False, False, True] * 2
    assert list(saved["domain_names"]) == ["fog", "snow"]
    png = (tmp_path / "selector_heatmap.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_tta_run_with_gala_writes_trace_files_and_summary(fmnist_root, tmp_path, monkeypatch):
    from tta.cli import run_main, train_main

    assert train_main(["--data-root", str(fmnist_root), "--epochs", "1"]) == 0
    monkeypatch.setattr("tta.models.source.TrainConfig.epochs", 1)
    out = tmp_path / "run"
    args = ["--loss", "tent", "--selector", "gala", "--selector-option", "window=3"]
    args += ["--corruptions", "gaussian_noise,fog", "--n-per-domain", "40", "--batch-size", "10"]
    assert run_main([*args, "--data-root", str(fmnist_root), "--out", str(out), "--no-source"]) == 0
    results = json.loads((out / "results.json").read_text())
    summary = results["selector"]
    assert summary["n_selector_steps"] == 8
    assert summary["n_selector_skipped"] == results["n_skipped"]
    # windows of 3 start at steps 0, 3, 6: every layer is selected there at least
    assert min(summary["selection_counts"].values()) >= 3
    assert (out / "selector_heatmap.png").exists()
    saved = np.load(out / "selector_trace.npz")
    assert saved["domain_starts"].tolist() == [0, 4] and saved["window_position"][3] == 0
