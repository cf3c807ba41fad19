"""Ctrl-C at any stage stops the run and leaves valid, consistent results: every mean over
the same finished domains, strict JSON (null, never NaN), no plots of nothing, and no
half-written generated data that a later run would read."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TinyNet

from tta.data.base import Benchmark
from tta.harness.config import RunConfig
from tta.harness.run import report, run, save

DOMAINS = ("gaussian_noise", "shot_noise", "fog")


class MemoryBenchmark(Benchmark):
    """Random 8x8 images per domain; raises KeyboardInterrupt at the `interrupt_at`-th load."""

    def __init__(self, interrupt_at: int | None = None) -> None:
        super().__init__("memory", 5, image_size=8)
        self.interrupt_at = interrupt_at
        self.loads: list[str] = []

    def load(self, corruption, severity, n, seed):
        self.loads.append(corruption)
        if len(self.loads) == self.interrupt_at:
            raise KeyboardInterrupt
        rng = np.random.default_rng([seed, len(corruption), severity])
        return rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), rng.integers(0, 5, n)


def strict_json(path) -> dict:
    """Parse JSON refusing NaN and infinities (Python's json accepts them by default)."""

    def refuse(constant):
        raise ValueError(f"{path} holds {constant}: not valid JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture
def quiet(tmp_path, monkeypatch):
    monkeypatch.setenv("TTA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TTA_QUIET", "1")


@pytest.fixture
def trained_root(fmnist_root, monkeypatch):
    """A data root with a fake Fashion-MNIST and a 1-epoch source model in the cache."""
    from tta.cli import train_main

    assert train_main(["--data-root", str(fmnist_root), "--epochs", "1"]) == 0
    monkeypatch.setattr("tta.models.source.TrainConfig.epochs", 1)
    return fmnist_root


def run_memory(tmp_path, interrupt_at, no_source=False, model=True, all_layers=False):
    config = RunConfig(
        corruptions=DOMAINS,
        batch_size=10,
        n_per_domain=20,
        device="cpu",
        no_source=no_source,
        no_all_layers=not all_layers,
        selector="gala",
    )
    bench = MemoryBenchmark(interrupt_at)
    given = (TinyNet(), {"model": "tiny"}) if model else None
    result = run(config, benchmark=bench, model=given, echo=lambda _: None)
    out = tmp_path / "run"
    save(result, out)
    return result, bench, strict_json(out / "results.json"), out


def test_interrupt_in_the_source_baseline_stops_the_run(quiet, tmp_path):
    """Before: the source pass stopped after one domain, then adaptation ran all of them."""
    result, bench, results, out = run_memory(tmp_path, interrupt_at=2)
    assert bench.loads == ["gaussian_noise", "shot_noise"], "adaptation never started"
    assert results["interrupted"] and results["stage"] == "source"
    assert results["per_domain"] == [] and results["source_per_domain"] == []
    assert results["mean_error"] is None and results["source_mean_error"] is None
    assert results["finished_domains"] == [] and results["n_domains"] == 3
    assert results["n_forward"] == 0
    assert not (out / "errors.png").exists()
    assert not list((tmp_path / "cache").rglob("*.json")), "an interrupted pass is not cached"


def test_interrupt_in_adaptation_gives_means_over_the_same_domains(quiet, tmp_path):
    """Before: mean_error covered the finished domains, source_mean_error all of them."""
    result, bench, results, out = run_memory(tmp_path, interrupt_at=3 + 2)
    assert bench.loads == [*DOMAINS, "gaussian_noise", "shot_noise"]
    assert results["interrupted"] and results["stage"] == "adapt"
    assert results["finished_domains"] == [{"domain": "gaussian_noise", "severity": 5}]
    assert [d["domain"] for d in results["per_domain"]] == ["gaussian_noise"]
    assert [d["domain"] for d in results["source_per_domain"]] == ["gaussian_noise"]
    assert results["mean_error"] == pytest.approx(results["per_domain"][0]["error"])
    assert results["source_mean_error"] == pytest.approx(results["source_per_domain"][0]["error"])
    assert (out / "errors.png").exists() and (out / "selector_trace.npz").exists()
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 2


def test_interrupt_in_the_all_layers_baseline_stops_the_run(quiet, tmp_path):
    """Source finished, the all-layers pass stopped in its second domain: nothing adapted."""
    result, bench, results, out = run_memory(tmp_path, interrupt_at=3 + 2, all_layers=True)
    assert bench.loads == [*DOMAINS, "gaussian_noise", "shot_noise"], "adaptation never started"
    assert results["interrupted"] and results["stage"] == "all-layers"
    assert results["per_domain"] == [] and results["all_layers_per_domain"] == []
    assert results["mean_error"] is None and results["all_layers_mean_error"] is None
    assert results["n_forward"] == 0 and results["forgetting"] is None
    assert not (out / "errors.png").exists() and not (out / "stream.png").exists()
    cached = {p.parent.name for p in (tmp_path / "cache").rglob("*.json")}
    assert cached == {"source-results"}, "the interrupted all-layers pass is not cached"
    assert "interrupted during all-layers" in report(result, out)


def test_interrupt_in_adaptation_means_all_three_columns_over_the_same_domains(quiet, tmp_path):
    result, bench, results, out = run_memory(tmp_path, interrupt_at=3 + 3 + 2, all_layers=True)
    assert results["stage"] == "adapt"
    assert [d["domain"] for d in results["all_layers_per_domain"]] == ["gaussian_noise"]
    assert results["all_layers_mean_error"] == pytest.approx(
        results["all_layers_per_domain"][0]["error"]
    )
    assert len(results["per_domain"]) == len(results["source_per_domain"]) == 1
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0] == "domain,severity,n,source_error,all_layers_error,error,ece"
    assert len(rows) == 2


def test_interrupt_before_any_domain_finishes_writes_null_means_and_no_plots(quiet, tmp_path):
    """Before: results.json held NaN (invalid JSON) and empty plots were drawn."""
    result, _, results, out = run_memory(tmp_path, interrupt_at=1, no_source=True)
    assert results["interrupted"] and results["stage"] == "adapt"
    assert results["mean_error"] is None and results["source_mean_error"] is None
    assert results["per_domain"] == [] and results["finished_domains"] == []
    assert not (out / "errors.png").exists() and not (out / "selector_heatmap.png").exists()


@pytest.mark.parametrize("stage", ["model", "data", "method"])
def test_interrupt_while_setting_up_stops_with_nothing_finished(
    quiet, tmp_path, monkeypatch, stage
):
    import tta.harness.run

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    if stage == "data":
        monkeypatch.setattr(MemoryBenchmark, "prepare", interrupt)
    else:
        where = {"model": "build_model", "method": "build_adapted"}[stage]
        monkeypatch.setattr(tta.harness.run, where, interrupt)
    result, bench, results, _ = run_memory(tmp_path, None, model=stage != "model")
    assert results["stage"] == stage and results["interrupted"]
    assert bench.loads == [] and results["finished_domains"] == []
    assert results["mean_error"] is None


def test_ctrl_c_while_generating_fmnist_c(trained_root, tmp_path, monkeypatch, capsys):
    """The run stops with exit 130 and valid results; the next run regenerates the domain."""
    import tta.data.fmnist_c
    from tta.cli import run_main

    calls = []
    original = tta.data.fmnist_c.corrupt

    def corrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 30:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(tta.data.fmnist_c, "corrupt", corrupt)
    out = tmp_path / "run"
    tiny = ["--corruptions", "gaussian_noise,fog", "--n-per-domain", "20", "--batch-size", "10"]
    args = ["--data-root", str(trained_root), *tiny]
    assert run_main([*args, "--out", str(out)]) == 130
    results = strict_json(out / "results.json")
    assert results["stage"] == "data" and results["finished_domains"] == []
    assert results["mean_error"] is None and results["source_mean_error"] is None
    assert "interrupted during data: 0 of 2" in capsys.readouterr().out
    root = trained_root / "FMNIST-C" / "seed0"
    manifest = json.loads((root / "manifest.json").read_text())["generated"]
    assert "fog" not in manifest, "the half-generated domain is not recorded"
    monkeypatch.setattr(tta.data.fmnist_c, "corrupt", original)
    assert run_main([*args, "--out", str(tmp_path / "again")]) == 0
    again = tta.data.fmnist_c.load_domain("fog", 5, 20, 0, str(trained_root))
    fresh_root = tmp_path / "fresh"
    (fresh_root / "fashion-mnist").mkdir(parents=True)
    for f in (trained_root / "fashion-mnist").iterdir():
        (fresh_root / "fashion-mnist" / f.name).write_bytes(f.read_bytes())
    fresh = tta.data.fmnist_c.load_domain("fog", 5, 20, 0, str(fresh_root))
    assert np.array_equal(again[0], fresh[0]) and np.array_equal(again[1], fresh[1])


def test_leftover_files_of_an_interrupted_generation_are_not_trusted(fmnist_root):
    """A truncated <corruption>.npy or labels.npy without a manifest entry is rewritten."""
    from tta.data.fmnist_c import benchmark_root, ensure_generated, load_domain

    root = benchmark_root(str(fmnist_root), 0)
    root.mkdir(parents=True)
    (root / "fog.npy").write_bytes(b"\x93NUMPY truncated")
    (root / "labels.npy").write_bytes(b"\x93NUMPY")
    ensure_generated([("fog", 5)], 10, 0, str(fmnist_root))
    images, labels = load_domain("fog", 5, 10, 0, str(fmnist_root))
    assert images.shape == (10, 32, 32, 3) and labels.shape == (10,)
    assert not list(root.glob("*.tmp*"))


def test_interrupted_seed_stops_the_seeds_and_the_summary_covers_the_finished(quiet, tmp_path):
    from tta.harness.seeds import run_seeds

    config = RunConfig(corruptions=DOMAINS, batch_size=10, n_per_domain=20, no_source=True)
    bench = MemoryBenchmark(interrupt_at=len(DOMAINS) + 2)  # seed 1, its second domain
    model = (TinyNet(), {"model": "tiny"})
    summary = run_seeds(config, [0, 1, 2], tmp_path, benchmark=bench, model=model, echo=str)
    assert summary["interrupted"] and summary["interrupted_seed"] == 1
    assert summary["seeds"] == [0, 1, 2] and summary["finished_seeds"] == [0]
    seed0 = strict_json(tmp_path / "seed0" / "results.json")
    assert summary["mean_error"] == pytest.approx(seed0["mean_error"]) and summary["std_error"] == 0
    seed1 = strict_json(tmp_path / "seed1" / "results.json")
    assert seed1["stage"] == "adapt" and len(seed1["finished_domains"]) == 1
    assert not (tmp_path / "seed2").exists()
