"""The brittleness monitor on `tta-run` streams: brittle shares by hand, robust accuracy on
the last batches of each domain, a cached threshold, and a stream the monitor never changes."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from conftest import make_tiny_net
from test_forgetting import CleanBenchmark

import tta.harness.brittleness
from tta.cli import run_parser, to_config
from tta.harness.config import RunConfig, resolve
from tta.harness.order import stream_order
from tta.harness.run import run, save
from tta.harness.stream import to_batch
from tta.robust.margins import logit_margin

EPS = 8 / 255


@pytest.fixture
def quiet(tmp_path, monkeypatch):
    monkeypatch.setenv("TTA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TTA_QUIET", "1")


def config(**kwargs) -> RunConfig:
    options = {
        "batch_size": 10,
        "n_per_domain": 20,
        "device": "cpu",
        "forgetting": 0,
        "loss": "tent",
        "no_all_layers": True,
        "brittleness": EPS,
        "brittle_calibration": 20,
    }
    return RunConfig(**{**options, **kwargs})


def model():
    return make_tiny_net(), {"model": "tiny"}


def stream_images(bench: CleanBenchmark, name: str) -> tuple[torch.Tensor, np.ndarray]:
    images, labels = bench.load(name, 5, 20, 0)
    return to_batch(images, torch.device("cpu")), np.asarray(labels)


def test_source_brittle_share_is_the_source_logit_margins_below_the_threshold(quiet, tmp_path):
    bench = CleanBenchmark()
    result = run(config(), benchmark=bench, model=model(), echo=str)
    assert result.stage == "finished"
    payload = save(result, tmp_path / "run")
    brittle = payload["brittleness"]
    threshold = brittle["threshold"]["threshold"]
    source = make_tiny_net().eval()
    for row, name in zip(brittle["per_domain"], ("a", "b"), strict=True):
        x, _ = stream_images(bench, name)  # every image of a domain: order does not matter
        with torch.no_grad():
            expected = 100.0 * float((logit_margin(source(x)) <= threshold).float().mean())
        assert row["n"] == 20 and row["brittle_source"] == pytest.approx(expected)
        assert 0.0 <= row["brittle_adapted"] <= 100.0
    assert brittle["threshold"]["n_images"] == 20 and brittle["threshold"]["eps"] == EPS
    assert len(brittle["curve_adapted"]["error"]) == 4  # 2 domains x 2 batches
    assert (tmp_path / "run" / "brittleness.png").stat().st_size > 0
    written = json.loads((tmp_path / "run" / "results.json").read_text())
    assert written["brittleness"]["per_domain"] == brittle["per_domain"]


def test_the_monitor_changes_nothing_in_the_stream(quiet):
    bench = CleanBenchmark()
    watched = run(config(robust_batches=1), benchmark=bench, model=model(), echo=str)
    plain = run(config(brittleness=None), benchmark=bench, model=model(), echo=str)
    assert [d["error"] for d in watched.per_domain] == [d["error"] for d in plain.per_domain]
    assert watched.adapted.counters == plain.adapted.counters
    assert plain.results()["brittleness"] is None


def test_robust_accuracy_on_the_last_batches_of_each_domain(quiet):
    bench = CleanBenchmark()
    result = run(config(robust_batches=1), benchmark=bench, model=model(), echo=str)
    rows = result.results()["brittleness"]["per_domain"]
    for row in rows:
        assert row["n_attacked"] == 10  # the last batch of 10 of each domain
        for who in ("source", "adapted"):
            assert 0.0 <= row[f"robust_{who}"] <= row[f"clean_{who}"] <= 100.0
    assert result.card["brittleness"].endswith("source and adapted")
    source = make_tiny_net().eval()
    for row, name in zip(rows, ("a", "b"), strict=True):
        x, labels = stream_images(bench, name)
        last = np.sort(stream_order(labels, 0, name, 5, True, None)[10:])
        with torch.no_grad():
            correct = source(x[last]).argmax(1).numpy() == labels[last]
        assert row["clean_source"] == pytest.approx(100.0 * correct.mean())


def test_an_interrupted_stream_keeps_the_finished_domains(quiet, monkeypatch, tmp_path):
    bench = CleanBenchmark()
    load = bench.load

    def stop_at_b(corruption, *args):
        if corruption == "b":
            raise KeyboardInterrupt
        return load(corruption, *args)

    monkeypatch.setattr(bench, "load", stop_at_b)
    result = run(config(no_source=True), benchmark=bench, model=model(), echo=str)
    assert result.stage == "adapt" and result.n_finished == 1
    payload = save(result, tmp_path / "run")
    assert [r["domain"] for r in payload["brittleness"]["per_domain"]] == ["a"]
    json.loads((tmp_path / "run" / "results.json").read_text())


def test_the_threshold_is_calibrated_once_and_cached(quiet, monkeypatch):
    bench = CleanBenchmark()
    first = run(config(), benchmark=bench, model=model(), echo=str)

    def fail(*args, **kwargs):
        raise AssertionError("calibrated again instead of reading the cache")

    monkeypatch.setattr(tta.harness.brittleness, "calibrate_threshold", fail)
    second = run(config(), benchmark=bench, model=model(), echo=str)
    assert first.brittleness.threshold == second.brittleness.threshold
    with pytest.raises(AssertionError, match="calibrated again"):
        run(config(brittle_calibration=30), benchmark=bench, model=model(), echo=str)


def test_the_monitor_never_touches_the_callers_model(quiet):
    bench = CleanBenchmark()
    net, info = model()
    before = copy.deepcopy(net.state_dict())
    run(config(robust_batches=2), benchmark=bench, model=(net, info), echo=str)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"robust_batches": 2, "brittleness": None}, "pass it too"),
        ({"brittleness": 0.0}, "budget must be in"),
        ({"brittle_calibration": 3}, "at least 10 clean images"),
        ({"robust_batches": -1}, "must be >= 0"),
    ],
)
def test_bad_options_say_what_to_fix(options, message):
    with pytest.raises(ValueError, match=message):
        resolve(config(**options))


def test_cli_flags_reach_the_run():
    args = ["--brittleness", "2/255", "--robust-batches", "3", "--brittle-calibration", "50"]
    config = resolve(to_config(run_parser().parse_args(args)))
    assert config.brittleness == pytest.approx(2 / 255)
    assert (config.robust_batches, config.brittle_calibration) == (3, 50)
