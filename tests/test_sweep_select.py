"""Selection reads the validation stream only: poisoning the test stream's labels changes the
test errors but never the selected setting."""

from __future__ import annotations

import pytest
from test_sweep_fixtures import TEST_DOMAINS, VALIDATION_DOMAINS, tiny_grid

from tta.data.fmnist_c import FashionMnistC
from tta.harness.sweep.driver import drive
from tta.harness.sweep.select import selections

SELECT = {"axes": ["lr"], "validation": {"corruptions": VALIDATION_DOMAINS}}
AXES = {"method": ["tent"], "lr": [1e-4, 0.5]}


def run_sweep(root, out):
    grid = tiny_grid(root, out, AXES, select=SELECT, params="all")
    sweep, summary = drive(grid, echo=lambda _: None)
    assert summary.counts == {"done": 4}
    return sweep


def test_poisoned_test_labels_do_not_change_the_selection(fmnist_root, tmp_path, monkeypatch):
    clean = run_sweep(fmnist_root, tmp_path / "clean")
    chosen = {row: c.chosen for row, c in selections(clean.plan, clean.read).items()}
    assert all(chosen.values())

    real_load = FashionMnistC.load
    loaded = []

    def poisoned(self, corruption, severity, n, seed):
        images, labels = real_load(self, corruption, severity, n, seed)
        loaded.append(corruption)
        if corruption in TEST_DOMAINS:
            labels = (labels + 1 + seed) % 10  # wrong labels on the test stream only
        return images, labels

    monkeypatch.setattr(FashionMnistC, "load", poisoned)
    poison = run_sweep(fmnist_root, tmp_path / "poison")
    assert set(loaded) == set(TEST_DOMAINS + VALIDATION_DOMAINS)

    read_ids = []

    def spy(cell_id):
        read_ids.append(cell_id)
        return poison.read(cell_id)

    choices = selections(poison.plan, spy)
    assert {row: c.chosen for row, c in choices.items()} == chosen
    assert set(read_ids) <= {c.id for c in poison.plan.validation}  # never a test cell
    for cell in poison.plan.validation:  # the validation stream is untouched
        assert poison.read(cell.id)["mean_error"] == pytest.approx(
            clean.read(cell.id)["mean_error"]
        )
    test_errors = [
        (clean.read(c.id)["mean_error"], poison.read(c.id)["mean_error"]) for c in poison.plan.test
    ]
    assert any(a != b for a, b in test_errors), "the poison reached the test stream"


def test_without_the_oracle_only_the_selected_setting_meets_the_test_stream(fmnist_root, tmp_path):
    grid = tiny_grid(
        fmnist_root, tmp_path / "out", AXES, select={**SELECT, "oracle": False}, params="all"
    )
    sweep, summary = drive(grid, echo=lambda _: None)
    (choice,) = selections(sweep.plan, sweep.read).values()
    ran = {c.id for c in sweep.plan.cells if sweep.read(c.id) is not None}
    selected = [c for c in sweep.plan.test if c.candidate == choice.chosen]
    assert ran == {c.id for c in sweep.plan.validation} | {c.id for c in selected}
    assert summary.counts == {"done": 3} and summary.started == 3
