"""Stream settings checked against their definitions: gradual, mixed, correlated (Dirichlet),
domain orders, held-out set, batch size 1 with windowed BatchNorm, several seeds."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_net
from torch import nn

import tta
from tta.data.base import Benchmark
from tta.data.corruptions import HELDOUT_CORRUPTIONS, STANDARD_CORRUPTIONS
from tta.harness.config import RunConfig
from tta.harness.order import dirichlet_order, same_label_run_length
from tta.harness.seeds import run_seeds
from tta.harness.stream import GRADUAL_SEVERITIES, StreamSpec, run_stream
from tta.norm.window import WindowBatchNorm

N, CLASSES = 60, 5


class IndexedBenchmark(Benchmark):
    """Domains of 8x8 images that encode (domain, index) in their pixels; records loads."""

    def __init__(self, names=("a", "b", "c")) -> None:
        super().__init__("indexed", CLASSES, corruptions=tuple(names))
        self.loads = []
        rng = np.random.default_rng(0)
        self.labels = {name: rng.integers(0, CLASSES, N) for name in names}

    def load(self, corruption, severity, n, seed):
        self.loads.append((corruption, severity))
        d = self.corruptions.index(corruption)
        images = np.zeros((N, 8, 8, 3), dtype=np.uint8)
        images[..., 0] = np.arange(N)[:, None, None]
        images[..., 1] = d
        images[..., 2] = severity or 0
        return images[:n], self.labels[corruption][:n]


class Spy(nn.Module):
    """Records which (domain, index) it sees; predicts class (index % CLASSES)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = []

    def forward(self, x):
        pixels = (x[:, :, 0, 0] * 255).round().long()
        self.seen.extend(map(tuple, pixels[:, [1, 0, 2]].tolist()))
        return F.one_hot(pixels[:, 0] % CLASSES, CLASSES).float()


def spy_run(setting, names=("a", "b", "c"), batch_size=8, **kwargs):
    bench = IndexedBenchmark(names)
    spy = Spy()
    spec = StreamSpec(
        benchmark="indexed",
        corruptions=names,
        setting=setting,
        batch_size=batch_size,
        n_per_domain=N,
        **kwargs,
    )
    result = run_stream(tta.adapt(spy, loss="source"), spec, bench)
    return bench, spy, result


def test_gradual_sweeps_severities_up_and_down_per_corruption():
    assert GRADUAL_SEVERITIES == (1, 2, 3, 4, 5, 4, 3, 2, 1)
    spec = StreamSpec(corruptions=("fog", "snow"), setting="gradual")
    assert spec.domains() == [("fog", s) for s in GRADUAL_SEVERITIES] + [
        ("snow", s) for s in GRADUAL_SEVERITIES
    ]
    assert spec.card()["severities"] == list(GRADUAL_SEVERITIES)
    bench, spy, result = spy_run("gradual", names=("a", "b"))
    assert bench.loads == [(n, s) for n in ("a", "b") for s in GRADUAL_SEVERITIES]
    assert [(d["domain"], d["severity"]) for d in result.per_domain] == bench.loads
    severities_seen = [s for _, _, s in spy.seen]
    assert severities_seen == [s for _ in "ab" for s in GRADUAL_SEVERITIES for _ in range(N)]


def test_mixed_covers_every_image_once_and_reports_errors_per_domain():
    bench, spy, result = spy_run("mixed")
    assert sorted(spy.seen) == sorted((d, i, 5) for d in range(3) for i in range(N))
    batches = [spy.seen[i : i + 8] for i in range(0, len(spy.seen), 8)]
    assert sum(len({d for d, _, _ in b}) > 1 for b in batches) > len(batches) // 2, "mixed"
    assert result.domain_starts == [0] and bench.loads == [("a", 5), ("b", 5), ("c", 5)]
    for k, entry in enumerate(result.per_domain):
        labels = bench.labels["abc"[k]]
        expected = 100 * np.mean((np.arange(N) % CLASSES) != labels)
        assert entry["domain"] == "abc"[k] and entry["n"] == N
        assert entry["error"] == pytest.approx(expected)


def test_continual_keeps_domains_apart_and_orders_are_seeded():
    _, spy, _ = spy_run("continual")
    assert [d for d, _, _ in spy.seen] == [d for d in range(3) for _ in range(N)]
    _, again, _ = spy_run("continual")
    assert again.seen == spy.seen
    _, other, _ = spy_run("continual", seed=1)
    assert other.seen != spy.seen


def label_runs(delta, seeds=range(5), n_per_class=100):
    labels = np.repeat(np.arange(10), n_per_class)
    runs = []
    for seed in seeds:
        order = dirichlet_order(labels, delta, np.random.default_rng(seed))
        assert np.array_equal(np.sort(order), np.arange(len(labels))), "a permutation"
        runs.append(same_label_run_length(labels[order]))
    return float(np.mean(runs))


def test_dirichlet_order_is_label_correlated_and_follows_delta():
    labels = np.repeat(np.arange(10), 100)
    shuffled = np.mean(
        [
            same_label_run_length(labels[np.random.default_rng(s).permutation(1000)])
            for s in range(5)
        ]
    )
    small, default, large = label_runs(0.01), label_runs(0.1), label_runs(1.0)
    assert shuffled < 1.2
    assert large > 5 * shuffled, "correlated even at delta 1 (runs of about N / (K * slots))"
    assert small > 1.5 * default > 1.5 * large, "smaller delta -> longer same-label runs"


def test_correlated_setting_feeds_the_model_label_runs():
    spec = StreamSpec(setting="correlated")
    assert spec.dirichlet_delta == 0.1 and spec.card()["dirichlet_delta"] == 0.1
    bench, spy, result = spy_run("correlated", names=("a",), batch_size=1)
    seen_labels = bench.labels["a"][[i for _, i, _ in spy.seen]]
    assert sorted(i for _, i, _ in spy.seen) == list(range(N))
    assert same_label_run_length(seen_labels) > 2 * same_label_run_length(bench.labels["a"])
    _, mixed_spy, _ = spy_run("mixed", dirichlet_delta=0.05)
    assert len(mixed_spy.seen) == 3 * N


def test_domain_order_seed_permutes_the_domains():
    names = STANDARD_CORRUPTIONS
    spec = StreamSpec(corruptions=names, order_seed=3)
    assert sorted(spec.order()) == sorted(names) and spec.order() != names
    assert StreamSpec(corruptions=names, order_seed=3).order() == spec.order()
    assert StreamSpec(corruptions=names, order_seed=4).order() != spec.order()
    assert spec.card()["domain_order"] == list(spec.order())
    assert "domain_order" not in StreamSpec().card()


def test_heldout_is_a_named_domain_set_for_every_corruption_benchmark():
    assert StreamSpec(corruptions="heldout").corruptions == HELDOUT_CORRUPTIONS
    assert StreamSpec(corruptions="fog,heldout").corruptions == ("fog", *HELDOUT_CORRUPTIONS)
    assert len(StreamSpec(corruptions="all").corruptions) == 19
    from tta.data.benchmarks import BENCHMARKS

    for name in ("fmnist-c", "cifar10-c", "cifar100-c", "imagenet-c"):
        options = {"wnids": ["n00000001"]} if name == "imagenet-c" else {}
        BENCHMARKS.create(name, **options).check_domains([(c, 5) for c in HELDOUT_CORRUPTIONS])


def test_bad_specs_are_refused():
    with pytest.raises(ValueError, match="dirichlet_delta must be positive"):
        StreamSpec(dirichlet_delta=0.0)
    with pytest.raises(ValueError, match="gradual .* has none"):
        StreamSpec(setting="gradual", severity=None)
    with pytest.raises(ValueError, match="no domains given"):
        StreamSpec(corruptions="")


def test_window_norm_normalizes_with_the_last_w_samples():
    torch.manual_seed(0)
    source = nn.BatchNorm2d(3)
    with torch.no_grad():
        source.weight.uniform_(0.5, 1.5)
        source.bias.uniform_(-0.5, 0.5)
    window = WindowBatchNorm(source, window=3)
    assert window.weight is source.weight
    xs = torch.randn(5, 1, 3, 4, 4)
    outputs = [window(x) for x in xs]
    last3 = torch.cat(list(xs[2:]))
    expected = F.batch_norm(last3, None, None, source.weight, source.bias, True, 0.0, source.eps)
    assert torch.allclose(outputs[4], expected[-1:], atol=1e-5)
    fresh = WindowBatchNorm(source, window=8)
    batch = torch.randn(6, 3, 4, 4)
    plain = F.batch_norm(batch, None, None, source.weight, source.bias, True, 0.0, source.eps)
    assert torch.allclose(fresh(batch), plain, atol=1e-5), "empty window: batch statistics"


def test_tent_at_batch_size_1_with_a_window_norm():
    model = make_tiny_net()
    names = [n for n, _ in model.named_parameters()]
    adapted = tta.adapt(model, loss="tent", norm="window", norm_options={"window": 4}, lr=1e-3)
    assert (
        isinstance(model.bn1, WindowBatchNorm) and [n for n, _ in model.named_parameters()] == names
    )
    assert [layer.name for layer in adapted.layers] == ["bn1", "bn2"]
    for _ in range(6):
        out = adapted(torch.rand(1, 3, 8, 8))
        assert torch.isfinite(out).all()
    assert int(model.bn1.window_count) == 4 and adapted.counters.n_steps == 6
    adapted.reset()
    assert int(model.bn1.window_count) == 0 == model.bn1._count, "reset empties the window"
    norm = tta.adapt(make_tiny_net(), loss="norm", norm="window", norm_options={"window": 2})
    norm(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="window must be a positive int"):
        tta.adapt(make_tiny_net(), loss="tent", norm="window", norm_options={"window": 0})


def test_batch_norm_at_batch_size_1_is_refused_with_the_fix():
    adapted = tta.adapt(make_tiny_net(), loss="tent")
    with pytest.raises(ValueError, match="norm='window'"):
        adapted(torch.rand(1, 3, 8, 8))
    assert adapted.counters.n_forward == 0


def test_several_seeds_report_mean_and_std(tmp_path, monkeypatch):
    """`run_seeds` runs the harness's one path per seed: the same as adapting by hand."""
    monkeypatch.setenv("TTA_QUIET", "1")
    bench = IndexedBenchmark()
    config = RunConfig(
        benchmark="indexed",
        corruptions=("a", "b"),
        batch_size=8,
        n_per_domain=N,
        lr=1e-2,
        device="cpu",
        no_source=True,
    )
    spec = StreamSpec(benchmark="indexed", corruptions=("a", "b"), batch_size=8, n_per_domain=N)
    model = make_tiny_net(0)
    summary = run_seeds(config, [0, 1, 2], tmp_path, benchmark=bench, model=(model, {}))

    def make(seed):
        torch.manual_seed(seed)
        return tta.adapt(copy.deepcopy(model), loss="tent", lr=1e-2)

    singles = [run_stream(make(s), replace(spec, seed=s), bench) for s in (0, 1, 2)]
    means = [r.mean_error for r in singles]
    assert summary["seeds"] == [0, 1, 2]
    assert summary["mean_error"] == pytest.approx(np.mean(means))
    assert summary["std_error"] == pytest.approx(np.std(means))
    first = summary["per_domain"][0]
    errors = [r.per_domain[0]["error"] for r in singles]
    assert first["domain"] == "a" and first["n_seeds"] == 3
    assert first["error"] == pytest.approx(np.mean(errors)) and first["std"] == pytest.approx(
        np.std(errors)
    )
