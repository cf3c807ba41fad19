"""Expected robustness, AutoAttack's optional path, the robust model's training and cache,
and `tta-robust` (tta.robust, tta.robust_cli) on tiny data made here."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch
from conftest import fake_fmnist
from test_robust_linear import linear_problem

from tta.robust import budget_grid, expected_robustness
from tta.robust.expected import trapezoid_mean
from tta.robust.train import RobustTrainConfig, fgsm_rs, robust_model, triangle
from tta.robust_cli import main, parse_eps, parse_eps_list


def test_budget_grid_steps_by_1_255_and_ends_at_eps_max():
    grid = budget_grid(8 / 255)
    assert len(grid) == 9 and grid[0] == 0 and grid[-1] == 8 / 255
    assert np.allclose(np.diff(grid), 1 / 255)
    assert budget_grid(0.1, 0.03) == pytest.approx([0, 0.03, 0.06, 0.09, 0.1])


def test_trapezoid_against_a_hand_computation():
    # (1/2) * [(100 + 80)/2 * 1 + (80 + 50)/2 * 1] = 77.5
    assert trapezoid_mean([100.0, 80.0, 50.0], [0.0, 1.0, 2.0]) == pytest.approx(77.5)
    # uneven last interval: (1/0.3) * [(90 + 60)/2 * 0.2 + (60 + 30)/2 * 0.1] = 65
    assert trapezoid_mean([90.0, 60.0, 30.0], [0.0, 0.2, 0.3]) == pytest.approx(65.0)


def test_expected_robustness_of_the_linear_model_is_its_analytic_curve():
    """APGD is exact there: Acc_eps = share of correct samples with margin > eps."""
    model, x, y, margins = linear_problem(n=40)
    labels = y.clone()
    labels[:3] = 1 - labels[:3]
    eps_max = float(margins.max()) * 0.8
    result = expected_robustness(model, x, labels, eps_max, grid_step=eps_max / 6, batch_size=16)
    correct = (labels == y).numpy()
    analytic = [100 * np.mean(correct & (margins.numpy() > e)) for e in result.grid]
    assert result.accuracy == pytest.approx(analytic)
    assert result.clean == pytest.approx(100 * 37 / 40)
    assert result.expected == pytest.approx(trapezoid_mean(analytic, result.grid))
    assert result.protocol["attack"] == "apgd-ce" and result.protocol["steps"] == 10
    assert result.attacked[0] == 37  # the misclassified are never attacked


def test_autoattack_path_matches_the_analytic_robust_accuracy():
    pytest.importorskip("pyautoattack")
    from tta.robust.autoattack import autoattack

    model, x, y, margins = linear_problem(n=12)
    eps = float(margins.sort().values[5:7].mean())  # between two margins: no tie
    result = autoattack(model, x, y, eps, version="custom", attacks=["apgd-ce", "fab"])
    assert torch.equal(result.fooled, margins <= eps) and int(result.fooled.sum()) == 6


def test_autoattack_missing_says_how_to_install_it(monkeypatch):
    from tta.robust.autoattack import autoattack

    monkeypatch.setitem(sys.modules, "pyautoattack", None)
    model, x, y, _ = linear_problem(n=4)
    with pytest.raises(ImportError, match="pip install pyautoattack"):
        autoattack(model, x, y, 0.01)


def test_fgsm_rs_stays_in_the_ball_and_the_box(tiny_net):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 8, 8, generator=g)
    x[:, 0] = 1.0
    y = torch.randint(0, 5, (8,), generator=g)
    x_adv = fgsm_rs(tiny_net.train(), x, y, 8 / 255, 10 / 255, g)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6


def test_learning_rate_triangle():
    assert [triangle(s, 10) for s in (0, 2, 4, 7, 10)] == pytest.approx([0, 0.5, 1, 0.5, 0])


def test_robust_model_is_trained_once_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TTA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TTA_QUIET", "1")
    fake_fmnist(tmp_path / "data" / "fashion-mnist", n_train=300, n_test=20)
    config = RobustTrainConfig(init="scratch", epochs=1, n_train=128)
    assert config.key() != RobustTrainConfig(init="scratch", epochs=1, n_train=256).key()
    model, first = robust_model(config, str(tmp_path / "data"))
    assert (tmp_path / "cache" / "models" / f"{config.key()}.pt").exists()
    _, second = robust_model(config, str(tmp_path / "data"))
    assert second["train_time_s"] == first["train_time_s"] and not model.training
    with pytest.raises(ValueError, match="unknown method"):
        RobustTrainConfig(method="trades")


def test_parse_eps():
    assert parse_eps("8/255") == pytest.approx(8 / 255)
    assert parse_eps_list("2/255,8/255") == pytest.approx([2 / 255, 8 / 255])
    assert parse_eps("0.5") == 0.5 and parse_eps("inf") == math.inf


def test_cli_eval_writes_table_json_and_plot(fmnist_root, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["eval", "--data-root", str(fmnist_root), "--n", "20", "--eps", "2/255"]
    assert main(argv + ["--steps", "2", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["grid_255"] == [0, 1, 2]
    assert results["protocol"]["steps"] == 2 and results["protocol"]["n_images"] == 20
    assert results["expected"] == pytest.approx(
        trapezoid_mean(results["accuracy"], results["grid"])
    )
    assert (out / "accuracy_vs_eps.png").stat().st_size > 0
    assert "E.adv" in capsys.readouterr().out


def test_cli_margins_writes_json_and_plots(fmnist_root, tmp_path):
    out = tmp_path / "margins"
    argv = ["margins", "--data-root", str(fmnist_root), "--n", "30", "--n-subset", "12"]
    argv += ["--n-heldout", "12", "--method", "bisection", "--bisection-iters", "1"]
    assert main(argv + ["--truth-steps", "1", "--eps", "1/255,4/255", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert {"tau", "pseudo_tau", "by_eps", "protocol", "seconds"} <= set(results)
    assert [e["eps_255"] for e in results["by_eps"]] == pytest.approx([1, 4])
    assert {"detection", "estimate", "truth", "pseudo_detection"} <= set(results["by_eps"][0])
    assert results["protocol"]["min_norm"]["method"] == "bisection"
    assert len(results["margins"]["d_in"]) == 12
    assert (out / "margins_scatter.png").exists() and (out / "roc.png").exists()


def test_cli_errors_are_one_line(fmnist_root, capsys):
    assert main(["eval", "--model", "nope.pt", "--data-root", str(fmnist_root)]) == 2
    assert "tta-robust eval: error:" in capsys.readouterr().err
