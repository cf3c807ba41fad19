"""The robust fine-tuning study on the sweep engine: grid expansion of `kind: finetune`, the
Optuna successive-halving pruner stopping a bad trial, a resumed cell study that does not
rerun finished trials, and the leaderboard's columns and findings."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tta.harness.sweep.finetune_grid import SearchSpec
from tta.harness.sweep.finetune_report import METRICS, write_finetune_report
from tta.harness.sweep.finetune_search import open_study, run_search
from tta.harness.sweep.grid import GridError
from tta.harness.sweep.kinds import load_any_grid, parse_any_grid, plan_of
from tta.harness.sweep.state import write_json
from tta.harness.sweep.study import Sweep

pytest.importorskip("optuna")


def grid_data(**extra) -> dict:
    return {
        "kind": "finetune",
        "name": "ft",
        "fixed": {"eps": "4/255", "n_train": 64, "device": "cpu"},
        "axes": {
            "task": ["digits", "fmnist-unseen"],
            "objective": ["at", "trades"],
            "protocol": [
                {"protocol": "full", "epochs": 6},
                {"protocol": "full", "epochs": 2},
                {"protocol": "linear", "epochs": 6},
            ],
            "seed": [0, 1],
        },
        "search": {"trials": 3, "pruner": {"min_resource": 1, "reduction_factor": 2}},
        "evaluate": {"l2": 0.5, "l1": "12", "severity": 2},
        **extra,
    }


def test_finetune_grid_expands_to_one_cell_per_configuration_and_seed(tmp_path):
    grid = parse_any_grid({**grid_data(), "out": str(tmp_path)}, "ft")
    plan = plan_of(grid)
    assert len(plan.test) == 2 * 2 * 3 * 2 and plan.validation == []
    assert len({c.id for c in plan.test}) == len(plan.test)
    assert len(plan.rows()) == 12  # the seed is not part of a row
    cell = plan.test[0]
    assert cell.identity["config"]["eps"] == pytest.approx(4 / 255)
    assert "device" not in cell.identity["config"]  # where it runs is not what it is
    assert cell.identity["evaluate"]["linf"] == pytest.approx(4 / 255)  # `linf: train`
    assert cell.identity["evaluate"]["l1"] == 12.0
    assert cell.identity["search"]["trials"] == 3
    assert dict(cell.row)["protocol"] == "protocol=full,epochs=6"
    # the grid survives its JSON copy (what --report reads) with the same cell names
    again = parse_any_grid(json.loads(json.dumps(grid.to_dict())), "ft")
    assert [c.id for c in plan_of(again).test] == [c.id for c in plan.test]
    # a different search is a different study, so different cells
    other = parse_any_grid({**grid_data(search={"trials": 4}), "out": str(tmp_path)}, "ft")
    assert {c.id for c in plan_of(other).test}.isdisjoint(c.id for c in plan.test)


def test_finetune_grid_errors_name_the_problem(tmp_path):
    with pytest.raises(GridError, match="unknown option 'lr_max'"):
        parse_any_grid({**grid_data(), "fixed": {"lr_max": 1}}, "ft")
    with pytest.raises(GridError, match="select: is for tta-run grids"):
        parse_any_grid({**grid_data(), "select": {"axes": ["lr"]}}, "ft")
    with pytest.raises(GridError, match="cell task=digits.*objective"):
        plan_of(
            parse_any_grid(
                {**grid_data(), "axes": {"task": ["digits"], "objective": ["bogus"]}}, "ft"
            )
        )
    with pytest.raises(GridError, match="low < high"):
        parse_any_grid({**grid_data(), "search": {"space": {"lr": {"low": 1, "high": 0.1}}}}, "ft")
    with pytest.raises(GridError, match="unknown kind"):
        parse_any_grid({"kind": "nope"}, "x")


def synthetic_train(calls: list, stop_at: tuple[int, int] | None = None, epochs: int = 6):
    """A fake fine-tuning run: validation loss lr * (1 + 1 / epoch), reported each epoch."""

    def train(params, out_dir: Path, on_epoch):
        calls.append((out_dir.name, dict(params)))
        out_dir.mkdir(parents=True, exist_ok=True)
        loss = 0.0
        for epoch in range(1, epochs + 1):
            if stop_at == (int(out_dir.name), epoch):
                raise KeyboardInterrupt  # the process is killed in the middle of this trial
            loss = params["lr"] * (1 + 1 / epoch)
            on_epoch({"epoch": epoch, "val_loss": loss, "val_clean": 50.0})
        return {"val_loss": loss}

    return train


def test_successive_halving_prunes_a_bad_trial(tmp_path):
    spec = SearchSpec(
        trials=2, reduction_factor=2, space={"lr": {"low": 0.01, "high": 100.0, "log": True}}
    )
    study = open_study(tmp_path, spec, seed=0)
    study.enqueue_trial({"lr": 0.1})  # good: completes all 6 epochs
    study.enqueue_trial({"lr": 10.0})  # 100x worse at epoch 1: stopped there
    calls: list = []
    outcome = run_search(tmp_path, spec, synthetic_train(calls), echo=lambda _: None)
    states = {t["number"]: (t["state"], t["epochs_run"]) for t in outcome.trials}
    assert states == {0: ("COMPLETE", 6), 1: ("PRUNED", 1)}
    assert outcome.best_params == {"lr": 0.1}
    assert outcome.best_value == pytest.approx(0.1 * (1 + 1 / 6))


def test_a_resumed_cell_study_does_not_rerun_finished_trials(tmp_path):
    space = {"lr": {"low": 0.01, "high": 1.0}}
    spec = SearchSpec(trials=3, sampler="random", min_resource=10, space=space)  # no pruning
    first: list = []
    with pytest.raises(KeyboardInterrupt):  # killed during trial 2's third epoch
        run_search(tmp_path, spec, synthetic_train(first, stop_at=(2, 3)), echo=lambda _: None)
    assert [name for name, _ in first] == ["0", "1", "2"]
    done_before = [t for t in open_study(tmp_path, spec, 0).trials if t.state.is_finished()]
    assert len(done_before) == 2
    second: list = []
    outcome = run_search(tmp_path, spec, synthetic_train(second), echo=lambda _: None)
    # only one more trial ran: the killed one's parameters, queued again as trial 3
    assert [name for name, _ in second] == ["3"]
    assert second[0][1] == first[2][1]
    assert outcome.recovered == 1
    states = [(t["number"], t["state"]) for t in outcome.trials]
    assert states[2] == (2, "FAIL") and states[3] == (3, "COMPLETE")
    finished = [t for t in outcome.trials if t["state"] in ("COMPLETE", "PRUNED")]
    assert len(finished) == 3
    # a third start finds the study complete and runs nothing
    third: list = []
    run_search(tmp_path, spec, synthetic_train(third), echo=lambda _: None)
    assert third == []


def fake_results(config: dict, accuracy: dict[str, float]) -> dict:
    return {
        "kind": "finetune",
        "stage": "finished",
        "config": config,
        "best": {"trial": 0, "params": {"lr": 0.001}, "val_loss": 0.5, "epochs_run": 2},
        "search": {"complete": 2, "pruned": 1, "failed": 0, "epochs_run": 5},
        "test": {**accuracy, "n": 10},
        "time_s": {"search": 10.0, "evaluate": 2.0},
    }


def test_leaderboard_has_the_five_accuracies_and_checks_the_findings(tmp_path):
    data = grid_data(out=str(tmp_path / "sweep"))
    data["axes"] = {
        "objective": ["at", "trades"],
        "protocol": [{"protocol": "full"}, {"protocol": "linear"}],
    }
    sweep = Sweep(parse_any_grid(data, "ft"))
    sweep.write_plan()
    for cell in sweep.plan.test:
        config = cell.identity["config"]
        linear = config["protocol"] == "linear"
        trades = config["objective"] == "trades"
        accuracy = {
            "clean": 90.0 - 5 * trades,
            "linf": (2.0 if linear else 40.0) + 3 * trades,
            "l2": 50.0,
            "l1": 30.0 - 1 * trades,
            "corruption": 70.0,
        }
        write_json(sweep.files(cell.id).results, fake_results(config, accuracy))
    paths = write_finetune_report(sweep)
    text = paths["markdown"].read_text()
    head = next(line for line in text.splitlines() if line.startswith("| #"))
    for title in ("clean %", "L-inf %", "L2 %", "L1 %", "corruption %", "chosen (validation)"):
        assert title in head
    assert "TRADES higher in: clean 0/2" in text and "L-inf 2/2 (mean gap +3.0)" in text
    assert "L1 0/2" in text
    assert "linear probing: mean L-inf accuracy 3.5%" in text and "full fine-tuning 41.5%" in text
    with open(paths["csv"]) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and all(f"{m}_std" in rows[0] for m in METRICS)
    assert [float(r["linf"]) for r in rows] == [43.0, 40.0, 5.0, 2.0]  # ranked by L-inf
    html = paths["html"].read_text()
    assert html.count("data:image/png;base64,") == 2


@pytest.mark.parametrize(("name", "cells"), [("robust_ft_offline", 24), ("robust_ft_paper", 144)])
def test_shipped_finetune_grids_plan(name, cells):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "sweeps" / f"{name}.yaml"
    grid = load_any_grid(path)
    plan = plan_of(grid)
    assert grid.kind == "finetune" and len(plan.test) == cells
    protocols = {
        (c.identity["config"]["protocol"], c.identity["config"]["epochs"]) for c in plan.test
    }
    assert len(protocols) == 3  # FFT long, FFT short, LP
    assert {c.identity["config"]["objective"] for c in plan.test} == {"at", "trades"}
