"""Leaderboard numbers against hand computations, from results.json files written here."""

from __future__ import annotations

import base64
import csv
import json
import re

import pytest
from test_sweep_fixtures import tiny_grid

from tta.harness.sweep.aggregate import gaps, method_rows, source_rows
from tta.harness.sweep.report import write_report
from tta.harness.sweep.study import Sweep


def fake_results(errors, ece=None, speed=100.0, memory=50.0, forward=4, skipped=0, stream=None):
    per_domain = [
        {"domain": d, "severity": 5, "n": 20, "error": e}
        for d, e in zip(["gaussian_noise", "fog"], errors, strict=True)
    ]
    results = {
        "stage": "finished",
        "interrupted": False,
        "per_domain": per_domain,
        "mean_error": sum(errors) / len(errors),
        "source_per_domain": [dict(d, error=90.0) for d in per_domain],
        "images_per_s": speed,
        "peak_memory_mb": memory,
        "n_forward": forward,
        "n_backward": forward,
        "n_steps": forward,
        "n_skipped": skipped,
    }
    if ece is not None:
        results["ece"] = ece
    if stream is not None:
        results["stream"] = {"batch": list(range(len(stream))), "error": stream}
    return results


def put(sweep, cell, results):
    files = sweep.files(cell.id)
    files.root.mkdir(parents=True, exist_ok=True)
    files.results.write_text(json.dumps(results))


def test_rows_are_means_and_population_stds_over_seeds(tmp_path):
    grid = tiny_grid(tmp_path, tmp_path / "out", {"method": ["tent", "pl"], "seed": [0, 1, 2]})
    sweep = Sweep(grid)
    sweep.write_plan()
    numbers = {  # (method, seed) -> per-domain errors, ece, images/s, memory, skipped
        ("tent", 0): ([10.0, 20.0], 1.0, 100.0, 50.0, 0),
        ("tent", 1): ([20.0, 30.0], 2.0, 200.0, 70.0, 2),
        ("tent", 2): ([30.0, 70.0], 3.0, 300.0, 60.0, 4),
        ("pl", 0): ([40.0, 40.0], 4.0, 50.0, 40.0, 1),
        ("pl", 1): ([42.0, 44.0], 5.0, 50.0, 40.0, 1),
        ("pl", 2): ([44.0, 48.0], 6.0, 50.0, 40.0, 1),
    }
    for cell in sweep.plan.test:
        errors, ece, speed, memory, skipped = numbers[(cell.row[0][1], cell.seed)]
        put(sweep, cell, fake_results(errors, ece, speed, memory, skipped=skipped))
    rows = method_rows(sweep.plan, sweep.read)
    tent = next(r for r in rows if r.name == "method=tent")
    # per-seed means 15, 25, 50 -> mean 30, population std sqrt(((15-30)^2+(25-30)^2+20^2)/3)
    assert tent.mean == pytest.approx(30.0)
    assert tent.std == pytest.approx(((225 + 25 + 400) / 3) ** 0.5)
    fog = tent.per_domain[1]
    assert fog["domain"] == "fog" and fog["error"] == pytest.approx(40.0)
    assert fog["std"] == pytest.approx(((400 + 100 + 900) / 3) ** 0.5)
    assert tent.ece == pytest.approx(2.0) and tent.costs["images_per_s"] == pytest.approx(200.0)
    assert tent.peak_memory_mb == 70.0 and tent.costs["n_skipped"] == pytest.approx(2.0)
    assert [r.name for r in rows] == ["method=tent", "method=pl"]  # 30 < 43
    assert rows[1].mean == pytest.approx(43.0) and rows[1].std == pytest.approx(
        (18 / 3) ** 0.5
    )  # 40, 43, 46
    (source,) = source_rows(sweep.plan, sweep.read)
    assert source.mean == 90.0 and source.std == 0.0 and source.seeds == [0, 1, 2]

    paths = write_report(sweep.dir)
    table = list(csv.DictReader(open(paths["csv"])))
    assert table[0]["row"] == "method=tent" and float(table[0]["mean_error"]) == pytest.approx(30.0)
    assert float(table[0]["fog std"]) == pytest.approx(fog["std"], abs=1e-4)
    markdown = paths["markdown"].read_text()
    assert "| 1 | method=tent | - | 3 | 30.00 +- 14.72 | 2.000 | - | 200 | 70 |" in markdown
    page = paths["html"].read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 3 and all(base64.b64decode(i)[:4] == b"\x89PNG" for i in images)
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")


def test_selection_oracle_and_gap_by_hand(tmp_path):
    select = {"axes": ["lr"], "validation": {"corruptions": "heldout"}}
    axes = {"method": ["tent"], "lr": [0.1, 0.01], "seed": [0, 1]}
    sweep = Sweep(tiny_grid(tmp_path, tmp_path / "out", axes, select=select))
    validation = {(0.1, 0): 30.0, (0.1, 1): 34.0, (0.01, 0): 35.0, (0.01, 1): 31.0}  # 32 vs 33
    test = {(0.1, 0): 50.0, (0.1, 1): 52.0, (0.01, 0): 40.0, (0.01, 1): 44.0}  # 51 vs 42
    for cell in sweep.plan.validation:
        error = validation[(float(cell.candidate[0][1]), cell.seed)]
        put(sweep, cell, fake_results([error, error]))
    for cell in sweep.plan.test:
        error = test[(float(cell.candidate[0][1]), cell.seed)]
        put(sweep, cell, fake_results([error, error]))
    (gap,) = gaps(sweep.plan, sweep.read)
    assert gap.selected == {"lr": "0.1"} and gap.validation_error == pytest.approx(32.0)
    assert gap.selected_test_error == pytest.approx(51.0)
    assert gap.oracle == {"lr": "0.01"} and gap.oracle_test_error == pytest.approx(42.0)
    assert gap.gap == pytest.approx(9.0)
    (selected,) = method_rows(sweep.plan, sweep.read)
    (oracle,) = method_rows(sweep.plan, sweep.read, oracle=True)
    assert selected.candidate == {"lr": "0.1"} and selected.mean == pytest.approx(51.0)
    assert oracle.kind == "oracle" and oracle.mean == pytest.approx(42.0)
    sweep.write_plan()
    markdown = write_report(sweep.dir)["markdown"].read_text()
    assert "| method=tent | lr=0.1 | 32.00 | 51.00 | lr=0.01 (oracle) | 42.00 | 9.00 |" in markdown


def test_unfinished_candidates_block_the_selection(tmp_path):
    select = {"axes": ["lr"], "validation": {"corruptions": "heldout"}}
    sweep = Sweep(tiny_grid(tmp_path, tmp_path / "out", {"lr": [0.1, 0.01]}, select=select))
    put(sweep, sweep.plan.validation[0], fake_results([10.0, 10.0]))
    half = dict(fake_results([1.0, 1.0]), interrupted=True, stage="adapt")  # not complete
    put(sweep, sweep.plan.validation[1], half)
    assert method_rows(sweep.plan, sweep.read) == []
    (gap,) = gaps(sweep.plan, sweep.read)
    assert gap.selected == {} and gap.gap is None
