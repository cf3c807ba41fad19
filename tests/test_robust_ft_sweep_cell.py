"""One real `finetune` cell through the sweep driver (inline executor): Optuna trials of
`tta.robust.finetune` on a sliver of scikit-learn's digits with the shipped backbone, the
best trial's model evaluated under five threats, and a second start that reruns nothing."""

from __future__ import annotations

import json

import pytest

from tta.harness.sweep.driver import drive
from tta.harness.sweep.kinds import parse_any_grid
from tta.harness.sweep.report import write_report

pytest.importorskip("optuna")
pytest.importorskip("sklearn")


def test_a_finetune_cell_searches_evaluates_and_resumes(tmp_path):
    data = {
        "kind": "finetune",
        "out": str(tmp_path / "sweep"),
        "fixed": {
            "task": "digits",
            "backbone": "fmnist",
            "objective": "at",
            "n_train": 64,
            "n_val": 32,
            "n_test": 24,
            "epochs": 2,
            "warmup_epochs": 0,
            "train_steps": 1,
            "eval_steps": 1,
            "attack": "pgd",
            "batch_size": 32,
            "schedule": "fixed",
        },
        "search": {"trials": 2, "sampler": "random"},
        "evaluate": {
            "steps": 2,
            "l1_steps": 2,
            "l1_attack": "pgd",
            "l1": 5,
            "corruptions": ["gaussian_noise", "fog"],
        },
        "executor": {"kind": "debug"},
    }
    grid = parse_any_grid(data, "cell")
    sweep, summary = drive(grid, echo=lambda _: None)
    assert summary.counts == {"done": 1} and summary.started == 1
    (cell,) = sweep.plan.test
    results = json.loads(sweep.files(cell.id).results.read_text())
    test = results["test"]
    assert test["n"] == 24
    for metric in ("clean", "linf", "l2", "l1", "corruption"):
        assert 0.0 <= test[metric] <= 100.0
    assert set(test["per_corruption"]) == {"gaussian_noise", "fog"}
    assert test["linf"] <= test["clean"] and test["l1"] <= test["clean"]
    assert results["search"]["complete"] + results["search"]["pruned"] == 2
    assert (
        sweep.files(cell.id).root / "trials" / str(results["best"]["trial"]) / "model.pt"
    ).exists()
    assert set(results["best"]["params"]) == {"lr", "weight_decay"}
    again, summary = drive(grid, echo=lambda _: None)
    assert summary.started == 0 and summary.counts == {"done": 1}
    paths = write_report(sweep.dir)
    assert "L-inf %" in paths["markdown"].read_text()
