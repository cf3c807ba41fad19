"""Grid files: expansion into cells, names checked before anything runs, cell identities."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_sweep_fixtures import tiny_grid, tiny_grid_data, write_grid

from tta.harness.config import RunConfig
from tta.harness.sweep.grid import GridError, load_grid, parse_grid, parse_time, with_overrides
from tta.harness.sweep.identity import cell_id
from tta.harness.sweep.plan import build_plan


def test_axes_expand_in_file_order_with_bundles_and_excludes(tmp_path):
    data = tiny_grid_data(
        tmp_path,
        tmp_path / "out",
        {
            "method": ["tent", "pl"],
            "variant": [{"norm": "batch"}, {"norm": "alpha", "norm_options": {"prior": "16"}}],
            "seed": [0, 1],
        },
    )
    data["exclude"] = [{"method": "pl", "variant": {"norm": "batch"}}]
    plan = build_plan(parse_grid(data, "g"))
    assert len(plan.test) == 2 * 2 * 2 - 2 and not plan.validation
    first = plan.test[0]
    assert first.row == (("method", "tent"), ("variant", "norm=batch")) and first.seed == 0
    alpha = [c for c in plan.test if c.options.get("norm") == "alpha"]
    assert alpha[0].options["norm_options"] == {"prior": 16}  # "16" read as a number
    assert {c.row for c in plan.test if c.row[0] == ("method", "pl")} == {
        (("method", "pl"), ("variant", "norm=alpha,norm_options=prior=16"))
    }
    assert len({c.id for c in plan.test}) == len(plan.test)


def test_yaml_numbers_written_1e_3_are_numbers(tmp_path):
    data = tiny_grid_data(tmp_path, tmp_path / "out", {"lr": ["1e-3", "1e-4"]})
    grid = load_grid(write_grid(tmp_path / "g.yaml", data))
    assert grid.axes["lr"] == [0.001, 0.0001] and grid.name == "tiny"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"axes": {"lrr": [0.1]}}, "'lrr' is not a tta-run option"),
        ({"fixed": {"out": "x"}}, "cannot be set in a grid"),
        ({"axes": {"lr": 0.1}}, "an axis is a non-empty list"),
        ({"axes": {"lr": ["fast"]}}, "lr takes a number"),
        ({"fixed": {"seeds": [0, 1]}}, "axis `seed"),
        ({"executor": {"kind": "pbs"}}, "unknown executor 'pbs'"),
        (
            {"select": {"axes": ["momentum"], "validation": {"corruptions": "heldout"}}},
            "not an axis",
        ),
        ({"select": {"axes": ["lr"]}}, "say how the validation stream differs"),
    ],
)
def test_bad_grids_say_what_to_fix(tmp_path, change, message):
    data = tiny_grid_data(tmp_path, tmp_path / "out", {"lr": [0.1, 0.2]})
    data.update(change)
    with pytest.raises(GridError, match=message):
        build_plan(parse_grid(data, "g"))


def test_unknown_names_fail_before_any_cell_runs(tmp_path):
    grid = tiny_grid(tmp_path, tmp_path / "out", {"loss": ["tent", "nope"]})
    with pytest.raises(GridError, match="cell loss=nope.*unknown loss 'nope'"):
        build_plan(grid)


def test_a_validation_stream_sharing_test_domains_is_refused(tmp_path):
    select = {"axes": ["lr"], "validation": {"corruptions": ["fog", "saturate"]}}
    grid = tiny_grid(tmp_path, tmp_path / "out", {"lr": [0.1, 0.2]}, select=select)
    with pytest.raises(GridError, match=r"shares \['fog'\] with the test stream"):
        build_plan(grid)


def test_identity_ignores_where_things_live_and_resolves_names():
    base = RunConfig(loss="tent", corruptions="heldout", data_root="/a", device="cpu")
    same = RunConfig(
        loss="tent",
        corruptions=("speckle_noise", "gaussian_blur", "spatter", "saturate"),
        data_root="/b",
        device="cuda",
        n_per_domain=1000,  # fmnist-c's default, written out
        lr=1e-3,  # tta.adapt's default
    )
    assert cell_id(base) == cell_id(same)
    assert cell_id(base) != cell_id(RunConfig(loss="tent", corruptions="heldout", seed=1))
    assert cell_id(RunConfig(method="tent")) != cell_id(RunConfig(method="tent", lr=1e-4))


def test_options_added_later_keep_existing_cell_names_at_their_default():
    """The names the cells of a study had before amp, reset_every and brittleness existed
    (computed with tta at e99b1d4), so such a study still resumes; set, they count."""
    assert cell_id(RunConfig()) == "72feeaa3696d"
    assert cell_id(RunConfig(method="eata", selector="gala")) == "185bfbff990e"
    for option in ({"amp": "bf16"}, {"reset_every": 1000}, {"brittleness": 2 / 255}):
        assert cell_id(RunConfig(**option)) != "72feeaa3696d"


def test_selected_and_oracle_cells_are_the_same_cells(tmp_path):
    """The test cell of every candidate exists once; the selected one is one of them."""
    select = {"axes": ["lr"], "validation": {"corruptions": "heldout"}}
    grid = tiny_grid(tmp_path, tmp_path / "out", {"lr": [0.1, 0.2], "seed": [0, 1]}, select=select)
    plan = build_plan(grid)
    assert len(plan.test) == len(plan.validation) == 4
    assert {c.candidate for c in plan.test} == {(("lr", "0.1"),), (("lr", "0.2"),)}
    assert all(c.options["corruptions"] == "heldout" for c in plan.validation)
    assert not {c.id for c in plan.test} & {c.id for c in plan.validation}


def test_one_validation_seed_is_one_cell_per_candidate(tmp_path):
    select = {"axes": ["lr"], "validation": {"corruptions": "heldout", "seed": 0}}
    grid = tiny_grid(tmp_path, tmp_path / "out", {"lr": [0.1, 0.2], "seed": [0, 1]}, select=select)
    plan = build_plan(grid)
    assert len(plan.unique(plan.validation)) == 2


@pytest.mark.parametrize(
    "text, minutes",
    [(90, 90), ("90", 90), ("30:30", 31), ("2:00:00", 120), ("1-0", 1440), ("1-2:30:00", 1590)],
)
def test_slurm_time_formats(text, minutes):
    assert parse_time(text, "t") == minutes


def test_command_line_overrides(tmp_path):
    grid = tiny_grid(tmp_path, tmp_path / "out", {"lr": [0.1, 0.2]}, executor={"kind": "local"})
    new = with_overrides(grid, {"n_per_domain": 5}, {"kind": "slurm", "gpus": 2, "time": "1:00:00"})
    assert new.fixed["n_per_domain"] == 5 and new.executor.kind == "slurm"
    assert new.executor.gpus == 2 and new.executor.time_min == 60
    with pytest.raises(GridError, match="axes of the grid"):
        with_overrides(grid, {"lr": 0.3}, {})


# tta-run grids; the fine-tuning grids (kind: finetune) are planned in test_robust_ft_sweep.py
SHIPPED = sorted(
    path
    for path in (Path(__file__).resolve().parents[1] / "benchmarks" / "sweeps").glob("*.yaml")
    if not path.stem.startswith("robust_ft_")
)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_grids_expand(path):
    grid = load_grid(path)
    plan = build_plan(grid)
    assert plan.test and grid.out == Path("runs/sweeps") / path.stem
    if path.stem == "fmnist_zoo":
        assert grid.executor.kind == "local" and grid.executor.parallel == 2
        assert len(plan.unique(plan.cells)) == 96 and grid.select.axes == ("lr",)
        assert {c.seed for c in plan.test} == {0, 1}
    else:
        assert grid.executor.kind == "slurm" and grid.executor.gpus == 1
        assert "NOT runnable on the development machines" in path.read_text()
