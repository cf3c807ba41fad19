"""The online stream: settings, reporting, interruption."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_tiny_net
from torch import nn

import tta
from tta.data.base import Benchmark
from tta.harness.stream import StreamSpec, run_stream


class ArrayBenchmark(Benchmark):
    """In-memory domains of random 8x8 images, for stream tests."""

    def __init__(self, interrupt_at: str | None = None) -> None:
        super().__init__("arrays", 5, corruptions=("a", "b", "c"))
        rng = np.random.default_rng(0)
        self.data = {
            name: (rng.integers(0, 256, (24, 8, 8, 3), dtype=np.uint8), rng.integers(0, 5, 24))
            for name in self.corruptions
        }
        self.interrupt_at = interrupt_at

    def load(self, corruption, severity, n, seed):
        if corruption == self.interrupt_at:
            raise KeyboardInterrupt
        images, labels = self.data[corruption]
        return images[:n], labels[:n]


def run(
    setting: str, domains: tuple[str, ...], shuffle: bool = True, **kwargs
) -> tuple[tta.AdaptedModel, object]:
    adapted = tta.adapt(make_tiny_net(), loss="tent", lr=1e-2)
    spec = StreamSpec(
        benchmark="arrays", corruptions=domains, setting=setting, batch_size=8, n_per_domain=24,
        shuffle=shuffle,
    )  # fmt: skip
    return adapted, run_stream(adapted, spec, ArrayBenchmark(**kwargs))


def weights(adapted: tta.AdaptedModel) -> list[torch.Tensor]:
    return [p.detach().clone() for p in adapted.model.parameters()]


def test_reset_each_shift_starts_every_domain_from_the_source():
    reset_run, reset_result = run("reset-each-shift", ("a", "b"))
    alone, alone_result = run("continual", ("b",))
    assert all(torch.equal(x, y) for x, y in zip(weights(reset_run), weights(alone), strict=True))
    assert reset_result.per_domain[1]["error"] == alone_result.per_domain[0]["error"]


def test_continual_carries_the_state_across_domains():
    continual, _ = run("continual", ("a", "b"))
    alone, _ = run("continual", ("b",))
    assert not all(
        torch.equal(x, y) for x, y in zip(weights(continual), weights(alone), strict=True)
    )


def test_episodic_resets_before_every_batch():
    episodic, result = run("episodic", ("a",))
    assert episodic.episodic and result.counters["n_steps"] == 3
    source = make_tiny_net()
    changed = [
        not torch.equal(a, b) for a, b in zip(weights(episodic), source.parameters(), strict=True)
    ]
    assert any(changed), "the last batch's update stays until the next reset"


class LabelReader(nn.Module):
    """A fixed image model that predicts the class an image encodes (pixel value 50 x class)."""

    def __init__(self) -> None:
        super().__init__()
        self.mean = nn.Conv2d(3, 1, 8, bias=False)  # the mean over an 8x8x3 image
        nn.init.constant_(self.mean.weight, 1 / (3 * 8 * 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        encoded = self.mean(x).flatten(1) * 255 / 50
        return -(encoded - torch.arange(5.0)).square()


# Domain -> how many of its 24 images encode a wrong class: errors 12.5, 25 and 50 %.
N_WRONG = {"a": 3, "b": 6, "c": 12}


class LabelledBenchmark(ArrayBenchmark):
    """Constant images that encode their label, except the first N_WRONG[domain] of each."""

    def __init__(self) -> None:
        super().__init__()
        for name, (_, labels) in self.data.items():
            encoded = labels.copy()
            encoded[: N_WRONG[name]] = (labels[: N_WRONG[name]] + 1) % 5
            images = np.broadcast_to(50 * encoded[:, None, None, None], (24, 8, 8, 3))
            self.data[name] = (images.astype(np.uint8), labels)


@pytest.mark.parametrize("setting", ["continual", "mixed"])
def test_per_domain_errors_by_hand(setting):
    """Shuffled (or mixed) order, known predictions: each domain's error is its wrong share."""
    spec = StreamSpec(
        benchmark="arrays", corruptions=("a", "b", "c"), setting=setting, batch_size=8,
        n_per_domain=24,
    )  # fmt: skip
    result = run_stream(tta.adapt(LabelReader(), loss="source"), spec, LabelledBenchmark())
    assert [d["domain"] for d in result.per_domain] == ["a", "b", "c"]
    assert [d["error"] for d in result.per_domain] == [12.5, 25.0, 50.0]
    assert [d["n"] for d in result.per_domain] == [24, 24, 24]
    assert result.mean_error == pytest.approx((12.5 + 25.0 + 50.0) / 3)
    assert result.counters["n_forward"] == 9 and result.n_images == 72


def test_adapted_errors_match_an_independent_loop():
    """TENT over the stream in its given order gives the errors of a plain batch loop."""
    _, result = run("continual", ("a", "b", "c"), shuffle=False)
    adapted = tta.adapt(make_tiny_net(), loss="tent", lr=1e-2)
    benchmark, expected = ArrayBenchmark(), []
    for name in ("a", "b", "c"):
        images, labels = benchmark.data[name]
        wrong = 0
        for start in range(0, 24, 8):
            x = torch.tensor(images[start : start + 8]).permute(0, 3, 1, 2).float() / 255
            wrong += int((adapted(x).argmax(1).numpy() != labels[start : start + 8]).sum())
        expected.append(100 * wrong / 24)
    assert [d["error"] for d in result.per_domain] == pytest.approx(expected, abs=1e-9)
    assert result.counters["n_steps"] == 9 and result.domain_starts == [0, 3, 6]
    assert result.mean_error == pytest.approx(np.mean(expected))


def test_interrupt_keeps_the_finished_domains():
    _, result = run("continual", ("a", "b", "c"), interrupt_at="b")
    assert result.interrupted and [d["domain"] for d in result.per_domain] == ["a"]


def test_bad_stream_settings_are_refused():
    with pytest.raises(ValueError, match="unknown setting 'sometimes'; known: continual"):
        StreamSpec(setting="sometimes")
    with pytest.raises(ValueError, match="severity must be 1..5"):
        StreamSpec(severity=6)
