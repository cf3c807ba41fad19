"""`tta-run` and `tta-train` end to end on a tiny generated benchmark."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from tta.cli import run_main, train_main

TINY = ["--corruptions", "gaussian_noise,fog", "--n-per-domain", "40", "--batch-size", "20"]


@pytest.fixture
def trained(fmnist_root):
    assert train_main(["--data-root", str(fmnist_root), "--epochs", "1"]) == 0
    return fmnist_root


def test_run_writes_table_json_csv_and_plot(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("tta.models.source.TrainConfig.epochs", 1)
    out = tmp_path / "run"
    args = ["--loss", "tent", "--data-root", str(trained), "--out", str(out), *TINY]
    assert run_main(args) == 0
    printed = capsys.readouterr().out
    assert "protocol card" in printed and "gaussian_noise" in printed and "mean" in printed
    results = json.loads((out / "results.json").read_text())
    for key in (
        "protocol",
        "per_domain",
        "mean_error",
        "source_mean_error",
        "time_s",
        "images_per_s",
        "peak_memory_mb",
        "n_forward",
        "n_backward",
        "n_skipped",
        "versions",
    ):
        assert key in results, key
    assert [d["domain"] for d in results["per_domain"]] == ["gaussian_noise", "fog"]
    assert results["n_forward"] == 4 and results["n_backward"] == 4
    assert results["protocol"]["setting"] == "continual" and results["protocol"]["severity"] == 5
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 2 and float(rows[0]["source_error"]) >= 0
    assert (out / "errors.png").stat().st_size > 1000


def test_source_baseline_uses_the_unconfigured_model(trained, tmp_path, monkeypatch):
    """TENT switches BatchNorm to batch statistics in place; the baseline must not see that."""
    import tta.cli

    monkeypatch.setattr("tta.models.source.TrainConfig.epochs", 1)
    seen = []
    original = tta.cli.source_errors

    def spy(model, *args):
        bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        seen.append([bn.running_mean is not None for bn in bns])
        return original(model, *args)

    monkeypatch.setattr(tta.cli, "source_errors", spy)
    args = ["--loss", "tent", "--data-root", str(trained), "--out", str(tmp_path / "run"), *TINY]
    assert run_main(args) == 0
    assert seen and seen[0] and all(seen[0]), "the baseline's BatchNorm keeps running statistics"


def test_unknown_names_fail_with_the_known_ones(capsys):
    assert run_main(["--selector", "nope"]) == 2
    assert "unknown selector 'nope'; known:" in capsys.readouterr().err
    assert run_main(["--benchmark", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown benchmark 'nope'; known:" in err and "fmnist-c" in err
    assert run_main(["--corruptions", "rain"]) == 2
    assert "unknown corruption 'rain'" in capsys.readouterr().err


def test_missing_data_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TTA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("tta.data.fmnist.DEBIAN_DIR", tmp_path / "nowhere")
    assert run_main(["--data-root", str(tmp_path / "empty"), *TINY]) == 2
    assert "Fashion-MNIST not found" in capsys.readouterr().err


def test_interrupted_run_writes_finished_domains(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("tta.models.source.TrainConfig.epochs", 1)
    from tta.data.fmnist_c import FashionMnistC

    original = FashionMnistC.load

    def load(self, corruption, *args):
        if corruption == "fog":
            raise KeyboardInterrupt
        return original(self, corruption, *args)

    monkeypatch.setattr(FashionMnistC, "load", load)
    out = tmp_path / "run"
    code = run_main(["--data-root", str(trained), "--out", str(out), "--no-source", *TINY])
    assert code == 130
    results = json.loads((out / "results.json").read_text())
    assert results["interrupted"] and [d["domain"] for d in results["per_domain"]] == [
        "gaussian_noise"
    ]
    assert "interrupted" in capsys.readouterr().out


def test_seeds_and_named_domain_sets(trained, tmp_path, monkeypatch):
    monkeypatch.setattr("tta.models.source.TrainConfig.epochs", 1)
    out = tmp_path / "seeds"
    args = ["--data-root", str(trained), "--out", str(out), "--corruptions", "heldout"]
    args += ["--n-per-domain", "20", "--batch-size", "10", "--seeds", "0,1", "--no-source"]
    assert run_main(args) == 0
    summary = json.loads((out / "seeds.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["std_error"] >= 0
    per_seed = json.loads((out / "seed1" / "results.json").read_text())
    assert [d["domain"] for d in per_seed["per_domain"]] == [
        "speckle_noise",
        "gaussian_blur",
        "spatter",
        "saturate",
    ]
    assert per_seed["protocol"]["seed"] == 1


def test_bad_n_per_domain(capsys):
    assert run_main(["--n-per-domain", "many"]) == 2
    assert "--n-per-domain takes a positive integer or 'all'" in capsys.readouterr().err
