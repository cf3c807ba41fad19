"""The online stream: settings, reporting, interruption."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_tiny_net

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


def run(setting: str, domains: tuple[str, ...], **kwargs) -> tuple[tta.AdaptedModel, object]:
    adapted = tta.adapt(make_tiny_net(), loss="tent", lr=1e-2)
    spec = StreamSpec(
        benchmark="arrays", corruptions=domains, setting=setting, batch_size=8, n_per_domain=24
    )
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


def test_result_reports_per_domain_errors_and_counts():
    _, result = run("continual", ("a", "b", "c"))
    assert [d["domain"] for d in result.per_domain] == ["a", "b", "c"]
    assert all(0 <= d["error"] <= 100 and d["n"] == 24 for d in result.per_domain)
    assert result.counters["n_forward"] == 9 and result.domain_starts == [0, 3, 6]
    assert result.mean_error == pytest.approx(np.mean([d["error"] for d in result.per_domain]))


def test_interrupt_keeps_the_finished_domains():
    _, result = run("continual", ("a", "b", "c"), interrupt_at="b")
    assert result.interrupted and [d["domain"] for d in result.per_domain] == ["a"]


def test_bad_stream_settings_are_refused():
    with pytest.raises(ValueError, match="unknown setting 'sometimes'; known: continual"):
        StreamSpec(setting="sometimes")
    with pytest.raises(ValueError, match="severity must be 1..5"):
        StreamSpec(severity=6)
