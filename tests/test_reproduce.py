"""The published-protocol runner (tta.harness.reproduce) on a tiny in-memory benchmark, and its
comparison table; the real protocols need data and checkpoints the tests never fetch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TinyNet

from tta.data.base import Benchmark
from tta.harness.comparison import comparison_rows
from tta.harness.config import RunConfig
from tta.harness.published import PROTOCOLS, Protocol, Published, protocol
from tta.harness.reproduce import main, method_config, parse_method, reproduce


class MemoryBenchmark(Benchmark):
    """Random 8x8 images per (corruption, severity): enough to drive the stream."""

    def __init__(self) -> None:
        super().__init__("cifar10-c", 10, image_size=8)

    def load(self, corruption, severity, n, seed):
        rng = np.random.default_rng([seed, len(corruption), severity])
        return rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), rng.integers(0, 10, n)


def test_every_protocol_states_consistent_published_numbers():
    for proto in PROTOCOLS.values():
        assert proto.published and set(proto.methods) <= {p.method for p in proto.published}
        for p in proto.published:
            if p.per_domain:
                assert len(p.per_domain) == 15
                assert np.mean(p.per_domain) == pytest.approx(p.error, abs=0.06)
    assert protocol("cifar10c-continual").model == "Standard"
    with pytest.raises(ValueError, match="unknown protocol"):
        protocol("mnist")


def test_the_zoo_leaderboard_is_stated_for_the_continual_protocols():
    """tta-benchmark's continual rows (issue 13) sit beside our methods, each runnable."""
    from tta.registry import LOSSES

    rows = {
        name: {p.method: p.error for p in protocol(name).published if p.source == "tta-benchmark"}
        for name in ("cifar10c-continual", "cifar100c-continual", "imagenetc-continual")
    }
    assert rows["cifar10c-continual"]["roid"] == 16.2 and rows["cifar10c-continual"]["lame"] == 64.3
    assert (
        rows["cifar100c-continual"]["rmt"] == 30.2 and rows["imagenetc-continual"]["roid"] == 54.5
    )
    for errors in rows.values():
        assert len(errors) == 11 and min(errors, key=errors.get) == "roid"
        assert all(parse_method(m)[0] in LOSSES for m in errors)


def test_parse_method():
    assert parse_method("tent") == ("tent", "all")
    assert parse_method("pl+gala") == ("pl", "gala")


def test_method_config_takes_the_preset_when_there_is_one():
    base = RunConfig(benchmark="cifar10-c", batch_size=200)
    assert method_config(base, "pl+gala") == RunConfig(
        benchmark="cifar10-c", batch_size=200, method="pl", selector="gala"
    )
    assert method_config(base, "norm") == RunConfig(
        benchmark="cifar10-c", batch_size=200, loss="norm", selector="all"
    )


def test_reproduce_runs_methods_and_writes_the_comparison(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TTA_QUIET", "1")
    torch.manual_seed(0)
    proto = protocol("cifar10c-continual")
    base = RunConfig(
        benchmark="cifar10-c",
        corruptions=("gaussian_noise", "fog"),
        batch_size=20,
        n_per_domain=40,
        device="cpu",
        no_source=True,
    )
    model = TinyNet(num_classes=10).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    info = {"model": "tiny", "num_classes": 10}
    markdown = reproduce(
        proto, base, ["source", "norm", "tent"], tmp_path, MemoryBenchmark(), (model, info)
    )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert "tent: " in capsys.readouterr().out
    payload = json.loads((tmp_path / "comparison.json").read_text())
    assert (tmp_path / "comparison.md").read_text() == markdown
    assert not payload["comparable"]
    assert any("40 images per domain" in d for d in payload["differences"])
    assert "Not the published protocol" in markdown
    assert set(payload["methods"]) == {"source", "norm", "tent"}
    tent = payload["methods"]["tent"]
    assert [d["domain"] for d in tent["per_domain"]] == ["gaussian_noise", "fog"]
    assert tent["settings"]["optimizer"] == "adam" and tent["settings"]["lr"] == 1e-3
    assert "| tent |" in markdown and "20.70" in markdown and "cotta: Table 2" in markdown
    assert "| gaussian_noise |" in markdown  # the per-corruption table


def test_comparison_rows_pair_ours_with_every_published_number():
    proto = Protocol(
        "p", "t", "cifar10-c", "m", "continual", 200, 10000, ("tent",),
        (Published("tent", 20.7, "cotta", "T2"), Published("tent", 20.0, "tta-benchmark", "x")),
    )  # fmt: skip
    rows = comparison_rows(proto, {"tent": {"mean_error": 20.5}, "lame": {"mean_error": 30.0}})
    assert [(r["method"], r["published"]) for r in rows] == [
        ("tent", 20.7),
        ("tent", 20.0),
        ("lame", None),
    ]
    assert rows[0]["difference"] == pytest.approx(-0.2)
    assert (
        comparison_rows(proto, {"tent": {"mean_error": 20.5}}, comparable=False)[0]["difference"]
        is None
    )


def test_main_fails_clearly_without_data_or_loader(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TTA_CACHE", str(tmp_path / "cache"))  # no data found anywhere
    monkeypatch.delenv("TTA_DATA", raising=False)
    missing = Protocol(
        "nope", "Nope-C", "nope-c", "Standard", "continual", 200, 10, ("source",), ()
    )
    monkeypatch.setitem(PROTOCOLS, "nope", missing)
    assert main("nope", ["--check"]) == 2
    assert "no 'nope-c' benchmark loader" in capsys.readouterr().err
    assert main("cifar10c-continual", ["--data-root", str(tmp_path), "--check"]) == 2
    assert "error:" in capsys.readouterr().err
