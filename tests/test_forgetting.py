"""Forgetting (EATA): error on clean test images before and after the stream, measured on
copies of the adapted model, on images the stream never adapts on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_tiny_net
from test_stream import LabelReader

import tta.harness.run
from tta.data.base import Benchmark
from tta.harness.config import RunConfig
from tta.harness.run import run, save

CLEAN = 250  # the pixel value that marks a clean image; stream images stay below it


class CleanBenchmark(Benchmark):
    """Random 8x8 stream images (< CLEAN) and clean images that encode their label
    (pixel 50 x label, read by `LabelReader`) with a marked corner; the first 3 of 20
    clean images encode a wrong label: a clean error of 15%."""

    def __init__(self) -> None:
        super().__init__("clean", 5, corruptions=("a", "b"), image_size=8)
        self.clean_calls: list[tuple[int, int]] = []

    def load(self, corruption, severity, n, seed):
        rng = np.random.default_rng([seed, len(corruption)])
        return rng.integers(0, 200, (n, 8, 8, 3), dtype=np.uint8), rng.integers(0, 5, n)

    def clean_samples(self, n, seed=0):
        self.clean_calls.append((n, seed))
        labels = np.arange(n) % 5
        encoded = labels.copy()
        encoded[:3] = (labels[:3] + 1) % 5
        images = np.broadcast_to(50 * encoded[:, None, None, None], (n, 8, 8, 3)).copy()
        images[:, 0, 0, :] = CLEAN
        return images.astype(np.uint8), labels


def config(**kwargs) -> RunConfig:
    options = {"batch_size": 10, "n_per_domain": 20, "device": "cpu", "forgetting": 20}
    return RunConfig(**{**options, **kwargs})


@pytest.fixture
def quiet(tmp_path, monkeypatch):
    monkeypatch.setenv("TTA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TTA_QUIET", "1")


def test_clean_error_by_hand_before_and_after(quiet, tmp_path):
    """A fixed model that reads the label: 3 of 20 clean images wrong, before and after."""
    bench = CleanBenchmark()
    given = (LabelReader(), {"model": "label-reader"})
    result = run(config(loss="source"), benchmark=bench, model=given, echo=str)
    assert bench.clean_calls == [(20, 0)]
    assert result.clean_error_before == pytest.approx(15.0)
    assert result.clean_error_after == pytest.approx(15.0)
    assert result.forgetting == pytest.approx(0.0)
    payload = save(result, tmp_path / "run")
    assert payload["clean_error_before"] == pytest.approx(15.0)
    assert payload["forgetting"] == pytest.approx(0.0)
    assert payload["protocol"]["forgetting"] == "20 clean test images"


def test_measured_on_copies_with_clean_images_the_live_model_never_sees(quiet, monkeypatch):
    """The live model adapts on stream batches only and ends exactly as without the
    measurement; copies of it see the clean images (before and after: twice)."""
    live, seen = [], []
    build = tta.harness.run.build_adapted

    def spy(*args, **kwargs):
        adapted = build(*args, **kwargs)
        live.append(adapted)
        adapted.model.register_forward_pre_hook(
            lambda module, inputs: seen.append((module is live[-1].model, inputs[0].amax().item()))
        )
        return adapted

    monkeypatch.setattr(tta.harness.run, "build_adapted", spy)
    tent = {"loss": "tent", "lr": 1e-2, "no_source": True}
    model = (make_tiny_net(), {"model": "tiny"})
    measured = run(config(**tent), benchmark=CleanBenchmark(), model=model, echo=str)
    marked = CLEAN / 255
    assert all(x < marked for is_live, x in seen if is_live), "no clean image in the live model"
    assert sum(is_live for is_live, _ in seen) == 4, "2 domains x 2 batches: stream only"
    assert sum(x >= marked for is_live, x in seen if not is_live) == 2 * 2, "2 batches x 2"
    assert measured.counters["n_steps"] == 4
    seen.clear()
    plain = run(config(**tent, forgetting=0), benchmark=CleanBenchmark(), model=model, echo=str)
    assert plain.clean_error_before is None and plain.forgetting is None
    assert [d["error"] for d in measured.per_domain] == [d["error"] for d in plain.per_domain]
    weights = [adapted.model.state_dict().values() for adapted in live]
    for a, b in zip(*weights, strict=True):
        assert torch.equal(a, b), "the measurement left the live model as it was"
    assert measured.clean_error_before is not None and measured.forgetting == pytest.approx(
        measured.clean_error_after - measured.clean_error_before
    )


def test_benchmarks_without_clean_images_skip_it_with_a_note(quiet, tmp_path):
    class NoClean(CleanBenchmark):
        def clean_samples(self, n, seed=0):
            return Benchmark.clean_samples(self, n, seed)

    model = (make_tiny_net(), {"model": "tiny"})
    result = run(config(no_source=True), benchmark=NoClean(), model=model, echo=str)
    assert result.stage == "finished" and result.forgetting is None
    assert result.card["forgetting"] == "skipped: clean has no clean test images"
    payload = save(result, tmp_path / "run")
    assert payload["clean_error_before"] is None and payload["forgetting"] is None


def test_fmnist_clean_images_are_the_test_images_before_corruption(fmnist_root):
    """Corrupting a clean image with its per-image seed gives the fmnist-c image."""
    from tta.data.corruptions import corrupt
    from tta.data.fmnist import load_fmnist
    from tta.data.fmnist_c import FashionMnistC, image_seed, load_domain

    bench = FashionMnistC(str(fmnist_root))
    test_images, test_labels = load_fmnist("test", str(fmnist_root))
    images, labels = bench.clean_samples(1000, seed=0)  # more than the 60 test images: all
    assert images.shape == (60, 32, 32, 3) and images.dtype == np.uint8
    assert np.array_equal(images, test_images) and np.array_equal(labels, test_labels)
    corrupted, _ = load_domain("gaussian_noise", 5, 3, 0, str(fmnist_root))
    for i in range(3):
        seed = image_seed(0, "gaussian_noise", 5, i)
        assert np.array_equal(corrupt(images[i], "gaussian_noise", 5, seed), corrupted[i])
    some, _ = bench.clean_samples(10, seed=1)
    assert len(some) == 10 and np.array_equal(some, bench.clean_samples(10, seed=1)[0])
