"""`tta-run` and `tta-train` end to end on a tiny generated benchmark."""

from __future__ import annotations

import csv
import json

import numpy as np
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
    import tta.harness.run

    monkeypatch.setattr("tta.models.source.TrainConfig.epochs", 1)
    seen = []
    original = tta.harness.run.source_errors

    def spy(model, *args):
        bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        seen.append([bn.running_mean is not None for bn in bns])
        return original(model, *args)

    monkeypatch.setattr(tta.harness.run, "source_errors", spy)
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
    (tmp_path / "empty").mkdir()
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
    runs = [json.loads((out / f"seed{s}" / "results.json").read_text()) for s in (0, 1)]
    means = [np.mean([d["error"] for d in r["per_domain"]]) for r in runs]
    assert [r["mean_error"] for r in runs] == pytest.approx(means)
    assert summary["seeds"] == [0, 1] and summary["finished_seeds"] == [0, 1]
    assert summary["mean_error"] == pytest.approx(np.mean(means))
    assert summary["std_error"] == pytest.approx(np.std(means))  # population std over seeds
    assert summary["per_seed_mean_error"] == {
        "0": pytest.approx(means[0]),
        "1": pytest.approx(means[1]),
    }
    last = [r["per_domain"][3]["error"] for r in runs]
    assert summary["per_domain"][3]["error"] == pytest.approx(np.mean(last))
    assert summary["per_domain"][3]["std"] == pytest.approx(np.std(last))
    per_seed = runs[1]
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


def test_cli_defaults_are_the_apis():
    """`tta-run` with no flags adapts as `tta.adapt(model)` does: one place for defaults."""
    import inspect

    import tta
    from tta.cli import run_parser, to_config
    from tta.harness.config import resolve

    config = resolve(to_config(run_parser().parse_args([])))
    api = inspect.signature(tta.adapt).parameters
    for name in ("loss", "optimizer", "lr", "momentum", "steps", "selector"):
        assert getattr(config, name) == api[name].default, name
    assert config.selector == "all"


def test_method_runs_the_papers_selection_and_says_when_changed(trained, tmp_path, capsys):
    out = tmp_path / "tent"
    args = ["--method", "tent", "--data-root", str(trained), "--no-source", *TINY]
    assert run_main([*args, "--out", str(out)]) == 0
    card = json.loads((out / "results.json").read_text())["protocol"]
    assert card["selector"] == "all" and card["loss"] == "tent" and card["method"] == "tent"
    assert "note:" not in capsys.readouterr().out
    out = tmp_path / "tent-gala"
    assert run_main([*args, "--selector", "gala", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "note: --method tent updates all layers in its paper; --selector gala" in printed
    card = json.loads((out / "results.json").read_text())["protocol"]
    assert card["selector"] == "gala"
    assert (
        card["selector_options"]["threshold"] == 0.75 and card["selector_options"]["window"] == 20
    )


def test_params_takes_one_name(trained, tmp_path):
    """`--params layer3` is a list of one name, as `--params layer2,layer3` is of two."""
    out = tmp_path / "run"
    args = ["--loss", "entropy", "--params", "layer3", "--data-root", str(trained)]
    assert run_main([*args, "--out", str(out), "--no-source", *TINY]) == 0
    card = json.loads((out / "results.json").read_text())["protocol"]
    from tta.models.resnet import resnet20

    layer3 = sum(p.numel() for p in resnet20().layer3.parameters())
    assert card["params"] == ["layer3"] and card["n_trainable"] == layer3


def test_explicit_data_root_that_does_not_exist_is_an_error(trained, tmp_path, capsys):
    missing = tmp_path / "nonexistent" / "place"
    assert run_main(["--data-root", str(missing), "--out", str(tmp_path / "run"), *TINY]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "does not exist" in err and "mkdir -p" in err
    assert not missing.exists() and not (tmp_path / "run").exists()
    from tta.data.benchmarks import BENCHMARKS

    for name in ("fmnist-c", "cifar10-c", "imagenet-c"):  # every loader, via tta.paths
        with pytest.raises(FileNotFoundError, match="does not exist"):
            BENCHMARKS.create(name, data_root=str(missing)).prepare([("fog", 5)], 10, 0)
    assert not missing.exists()


def test_card_records_where_the_data_was_read_and_generated(trained, tmp_path):
    out = tmp_path / "run"
    assert run_main(["--data-root", str(trained), "--out", str(out), "--no-source", *TINY]) == 0
    card = json.loads((out / "results.json").read_text())["protocol"]
    assert card["fashion_mnist_dir"] == str(trained / "fashion-mnist")
    assert card["generated_dir"] == str(trained / "FMNIST-C" / "seed0")
    assert (trained / "FMNIST-C" / "seed0" / "manifest.json").exists()


def test_source_results_cache_is_keyed_on_data_and_version(trained, tmp_path, monkeypatch):
    """A new tta version or other data files must not reuse the cached source errors."""
    import shutil

    import tta
    import tta.harness.source_cache

    runs = []
    original = tta.harness.source_cache.run_stream
    monkeypatch.setattr(
        tta.harness.source_cache,
        "run_stream",
        lambda *a, **k: runs.append(1) or original(*a, **k),
    )
    args = ["--out", str(tmp_path / "run"), *TINY]
    assert run_main(["--data-root", str(trained), *args]) == 0
    assert run_main(["--data-root", str(trained), *args]) == 0
    assert len(runs) == 1, "the same model, stream, data and version: cached"
    other = tmp_path / "other-data"
    shutil.copytree(trained / "fashion-mnist", other / "fashion-mnist")
    assert run_main(["--data-root", str(other), *args]) == 0
    assert len(runs) == 2, "other data files: not the cached numbers"
    monkeypatch.setattr(tta, "__version__", "99.0")
    assert run_main(["--data-root", str(trained), *args]) == 0
    assert len(runs) == 3, "another tta version: not the cached numbers"


def test_selector_run_shows_source_all_layers_and_selector(trained, tmp_path, monkeypatch, capsys):
    """`--selector gala`: the table and results.json hold the source model, the same loss
    and parameters on all layers, and gala; the all-layers pass is cached; ECE, forgetting
    and the error along the stream are reported."""
    import tta.harness.all_layers

    passes = []
    original = tta.harness.all_layers.run_stream
    count = lambda *a, **k: passes.append(1) or original(*a, **k)  # noqa: E731
    monkeypatch.setattr(tta.harness.all_layers, "run_stream", count)
    # one thread in every run: the second must reproduce the first to the last digit
    base = ["--loss", "tent", "--selector", "gala", "--data-root", str(trained), "--threads", "1"]
    base += TINY
    out = tmp_path / "run"
    assert run_main([*base, "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    header = next(line for line in printed if line.startswith("domain"))
    columns = ["source", "%", "tent+all", "%", "tent+gala", "%", "ECE", "%"]
    assert header.split() == ["domain", "sev", "n", *columns]
    assert any(line.startswith("forgetting (clean error after - before") for line in printed)
    results = json.loads((out / "results.json").read_text())
    card, baseline = results["protocol"], results["all_layers_method"]
    assert baseline["selector"] == "all" and baseline["params"] == card["params"] == "all"
    assert baseline["loss"] == "tent" and baseline["lr"] == card["lr"]
    rows = results["all_layers_per_domain"]
    assert [d["domain"] for d in rows] == ["gaussian_noise", "fog"]
    assert results["all_layers_mean_error"] == pytest.approx(np.mean([d["error"] for d in rows]))
    assert card["threads"] == "1 (--threads)" and card["forgetting"] == "60 clean test images"
    assert 0 <= results["ece"] <= 100 and all("ece" in d for d in results["per_domain"])
    assert results["forgetting"] == pytest.approx(
        results["clean_error_after"] - results["clean_error_before"]
    )
    stream = results["stream"]
    assert stream["images"] == [20, 40, 60, 80] and stream["domain_starts_images"] == [0, 40]
    assert len(stream["error"]) == 4 and (out / "stream.png").exists()
    csv_header = (out / "results.csv").read_text().splitlines()[0]
    assert csv_header == "domain,severity,n,source_error,all_layers_error,error,ece"
    assert passes == [1]
    assert run_main([*base, "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert passes == [1], "the same all-layers baseline comes from the cache"
    assert again["all_layers_per_domain"] == rows and again["per_domain"] == results["per_domain"]
    assert run_main([*base, "--params", "norm", "--out", str(tmp_path / "norm")]) == 0
    norm = json.loads((tmp_path / "norm" / "results.json").read_text())
    assert norm["all_layers_method"]["params"] == "norm" and passes == [1, 1]
    assert run_main([*base, "--no-all-layers", "--out", str(tmp_path / "off")]) == 0
    off = json.loads((tmp_path / "off" / "results.json").read_text())
    assert off["all_layers_per_domain"] == [] and off["all_layers_mean_error"] is None
    assert off["protocol"]["all_layers_baseline"] == "off (--no-all-layers)"
    assert off["per_domain"] == results["per_domain"], "the baseline does not change the run"


def test_forgetting_and_threads_flags(trained, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--data-root", str(trained), "--no-source", *TINY, "--out", str(out)]
    assert run_main([*args, "--forgetting", "0"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["forgetting"] is None and results["clean_error_before"] is None
    assert results["protocol"]["forgetting"] == "off (--forgetting 0)"
    assert results["protocol"]["all_layers_baseline"] == "none (the selector is all)"
    assert run_main([*args, "--threads", "0"]) == 2
    assert "--threads must be a positive integer" in capsys.readouterr().err
    assert run_main([*args, "--forgetting", "-1"]) == 2
    assert "--forgetting takes a number of images >= 0" in capsys.readouterr().err
