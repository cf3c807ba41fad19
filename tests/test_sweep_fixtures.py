"""Shared pieces of the tta-sweep tests: a tiny grid over the fake Fashion-MNIST of
conftest (2 corruptions x 20 images, batches of 10, the shipped ResNet-20), and readers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tta.harness.sweep.grid import Grid, parse_grid

TEST_DOMAINS = ["gaussian_noise", "fog"]
VALIDATION_DOMAINS = ["speckle_noise", "saturate"]


def tiny_grid_data(
    root: Path,
    out: Path,
    axes: dict[str, list],
    executor: dict[str, Any] | str = "debug",
    select: dict[str, Any] | None = None,
    **fixed: Any,
) -> dict[str, Any]:
    data = {
        "name": "tiny",
        "out": str(out),
        "fixed": {
            "corruptions": TEST_DOMAINS,
            "n_per_domain": 20,
            "batch_size": 10,
            "data_root": str(root),
            "device": "cpu",
            "no_source": True,
            **fixed,
        },
        "axes": axes,
        "executor": executor if isinstance(executor, str) else {"poll_s": 0.2, **executor},
    }
    if select:
        data["select"] = select
    return data


def tiny_grid(*args: Any, **kwargs: Any) -> Grid:
    return parse_grid(tiny_grid_data(*args, **kwargs), "tiny")


def write_grid(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def results_of(out: Path) -> dict[str, dict]:
    """cell id -> results.json of every cell directory that has one."""
    return {
        p.parent.name: json.loads(p.read_text())
        for p in sorted((out / "cells").glob("*/results.json"))
    }


def attempts_of(out: Path) -> dict[str, int]:
    """cell id -> number of times it was started."""
    return {
        d.name: len((d / "attempts.log").read_text().splitlines())
        if (d / "attempts.log").exists()
        else 0
        for d in sorted((out / "cells").iterdir())
    }


def test_tiny_grid_is_valid(tmp_path):
    grid = tiny_grid(tmp_path, tmp_path / "out", {"lr": [1e-3, 1e-2]})
    assert grid.axes == {"lr": [0.001, 0.01]} and grid.executor.kind == "debug"
