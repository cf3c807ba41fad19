"""Epsilon-Scheduling's budget schedule: the hinges for fractions and epochs, the named
variants, `auto` on a synthetic validation curve, the learning-rate schedule, bad input."""

from __future__ import annotations

import math

import pytest

from tta.robust.finetune import EpsSchedule, FinetuneConfig, epsilon_at, plateau_epoch
from tta.robust.finetune.schedule import lr_factor

EPS = 8 / 255


@pytest.mark.parametrize("t1, t2", [(0.24, 0.74), (12, 37)])
def test_hinges_fractions_and_epochs_agree(t1: float, t2: float) -> None:
    config = FinetuneConfig(epochs=50, eps=EPS, t1=t1, t2=t2, schedule="linear")
    assert config.hinges() == pytest.approx((12.0, 37.0))
    schedule = EpsSchedule.from_config(config)
    assert schedule(0) == 0.0
    assert schedule(11.99) == 0.0
    assert schedule(12) == 0.0  # the ramp starts at T1
    assert schedule(12 + 25 / 2) == pytest.approx(EPS / 2)
    assert schedule(12 + 25 / 5) == pytest.approx(EPS / 5)
    assert schedule(37) == pytest.approx(EPS)
    assert schedule(49.9) == pytest.approx(EPS)


def test_named_schedules() -> None:
    fixed = EpsSchedule.from_config(FinetuneConfig(epochs=10, eps=EPS, schedule="fixed"))
    assert fixed(0) == EPS and fixed(5) == EPS  # RFT-fix: T1 = T2 = 0
    warm = EpsSchedule.from_config(FinetuneConfig(epochs=10, eps=EPS, schedule="warmup", t2=4))
    assert warm.hinges() == (0.0, 4.0)
    assert warm(0) == 0.0 and warm(2) == pytest.approx(EPS / 2) and warm(4) == EPS
    assert epsilon_at(4.999, EPS, 5, 5) == 0.0 and epsilon_at(5, EPS, 5, 5) == EPS  # hard switch


def test_auto_sets_t1_at_the_plateau() -> None:
    config = FinetuneConfig(
        epochs=20, eps=EPS, schedule="auto", patience=3, tolerance=0.02, t2=0.74
    )
    schedule = EpsSchedule.from_config(config)
    assert schedule.hinges() == (pytest.approx(14.8), 19.0)  # guard: latest start, last epoch
    #         +20  +20  +10  +1  +0.5  -1   (best 60 at epoch index 3; 3 epochs without +2)
    curve = [10, 30, 50, 60, 61, 61.5, 59, 70, 80]
    for epoch, value in enumerate(curve):
        schedule.observe(epoch, value)
        if epoch < 6:
            assert schedule.found_t1 is None, epoch
    assert schedule.found_t1 == 7.0  # end of epoch index 6
    assert schedule.hinges() == (7.0, 19.0)
    assert schedule(7) == 0.0 and schedule(13) == pytest.approx(EPS / 2) and schedule(19) == EPS
    assert plateau_epoch([10, 20, 30, 40, 50], 2, 0.02) is None  # still improving: no plateau
    assert plateau_epoch([50, 51, 51.9], 2, 0.02) == 3  # +1 and +1.9 points are below 2


def test_auto_without_plateau_starts_at_the_guard() -> None:
    config = FinetuneConfig(epochs=10, eps=EPS, schedule="auto", patience=5, t2=6)
    schedule = EpsSchedule.from_config(config)
    for epoch in range(6):
        schedule.observe(epoch, 10.0 * epoch)
    assert schedule.found_t1 is None
    assert schedule(5.9) == 0.0 and schedule(6) == 0.0 and schedule(7.5) == pytest.approx(EPS / 2)
    state = schedule.state()
    other = EpsSchedule.from_config(config)
    other.load_state(state)
    assert other.hinges() == schedule.hinges() and other.curve == schedule.curve


def test_lr_warmup_then_cosine() -> None:
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(0, 10, 0) == 1.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"t1": 1.5}, "whole number"),
        ({"t1": 0.8, "t2": 0.5}, "must not come after"),
        ({"t2": 30, "epochs": 10}, "past the run"),
        ({"schedule": "cosine"}, "unknown schedule"),
        ({"task": "cifar"}, "unknown task"),
        ({"eps": 8.0}, "eps must be in"),
        ({"eps": 0.0}, "needs eps > 0"),
        ({"epochs": 0}, "epochs must be"),
        ({"warmup_epochs": 10, "epochs": 10}, "warmup_epochs"),
        ({"lr": -1.0}, "lr"),
        ({"tolerance": math.nan}, "tolerance"),
    ],
)
def test_bad_config_is_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FinetuneConfig(**kwargs)


def test_config_round_trips_and_refuses_unknown_keys() -> None:
    config = FinetuneConfig(task="fmnist-unseen", objective="trades", eps=EPS)
    assert FinetuneConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown FinetuneConfig keys"):
        FinetuneConfig.from_dict({"task": "digits", "epsilon": 0.1})
    assert FinetuneConfig(objective="clean", eps=0.0).eps == 0.0
