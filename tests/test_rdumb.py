"""RDumb and the engine's `reset_every`: resets exactly after every N-th step (committed or
skipped, per step not per batch), restoring weights, buffers, optimizer and loss state."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_tiny_net

import tta
from tta.cli import run_parser, to_config
from tta.harness.config import resolve
from tta.harness.setup import build_adapted
from tta.presets import preset


def state_of(adapted) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in adapted.model.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_resets_exactly_after_every_nth_step(images):
    adapted = tta.adapt(make_tiny_net(), loss="tent", lr=1e-2, reset_every=3)
    source = state_of(adapted)
    for batch in range(1, 8):
        adapted(images.roll(batch, 0))
        at_source = same(state_of(adapted), source)
        assert at_source == (batch % 3 == 0), batch
        assert adapted.counters.n_resets == batch // 3
        adam_state = adapted.optimizer.state_dict()["state"]
        assert (adam_state == {}) == (batch % 3 == 0), batch  # Adam's moments reset too
    assert adapted.counters.n_steps == 7  # the reset does not rewind the work counters


def test_counts_steps_not_batches(images):
    adapted = tta.adapt(make_tiny_net(), loss="tent", lr=1e-2, steps=2, reset_every=3)
    adapted(images)  # steps 1, 2
    adapted(images)  # step 3 (reset), then step 4 from the source
    assert adapted.counters.n_resets == 1
    step_counts = [s["step"] for s in adapted.optimizer.state_dict()["state"].values()]
    assert step_counts and all(int(c) == 1 for c in step_counts)


def test_matches_resetting_by_hand(images):
    """The engine's reset_every=N is a fresh adaptation every N steps, as the official loop."""
    batches = [images.roll(i, 0) * (1.0 - 0.05 * i) for i in range(5)]
    auto = tta.adapt(make_tiny_net(), loss="eta", lr=1e-2, e_margin=1.0, reset_every=2)
    by_hand = tta.adapt(make_tiny_net(), loss="eta", lr=1e-2, e_margin=1.0)
    for i, x in enumerate(batches, start=1):
        assert torch.equal(auto(x), by_hand(x))
        if i % 2 == 0:
            by_hand.reset()
        assert same(state_of(auto), state_of(by_hand))
        assert (auto.loss.average is None) == (by_hand.loss.average is None)
    assert auto.loss.average is not None  # batch 5 came after the last reset


def test_skipped_steps_count(images):
    """ETA keeping no sample skips the step; the official counter counts it all the same."""
    adapted = tta.adapt(make_tiny_net(), loss="rdumb", e_margin=1e-6, reset_every=2)
    for _ in range(4):
        adapted(images)
    assert adapted.counters.n_skipped == 4 and adapted.counters.n_resets == 2


def test_rdumb_is_eta_with_a_reset_every_1000(images):
    adapted = tta.adapt(make_tiny_net(), loss="rdumb")
    assert adapted.reset_every == 1000 and adapted.describe()["reset_every"] == 1000
    assert tta.adapt(make_tiny_net(), loss="eta").reset_every == 0
    assert tta.adapt(make_tiny_net(), loss="rdumb", reset_every=0).reset_every == 0
    rdumb = tta.adapt(make_tiny_net(), loss="rdumb", lr=1e-2, e_margin=1.0, reset_every=0)
    eta = tta.adapt(make_tiny_net(), loss="eta", lr=1e-2, e_margin=1.0)
    for _ in range(2):
        assert torch.equal(rdumb(images), eta(images))
    assert preset("rdumb", "cifar", "cifar100-c").options["d_margin"] == 0.4
    assert preset("rdumb", "imagenet").options["d_margin"] == 0.05


def test_composes_with_gala(images):
    adapted = tta.adapt(
        make_tiny_net(), loss="rdumb", selector="gala", e_margin=1.0, reset_every=2, lr=1e-2
    )
    source = state_of(adapted)
    adapted(images)
    assert not same(state_of(adapted), source)
    adapted(images.flip(0))
    assert same(state_of(adapted), source) and adapted.counters.n_resets == 1


def test_any_method_with_a_teacher(images):
    adapted = tta.adapt(make_tiny_net(), loss="cotta", ap=0.0, lr=1e-2, reset_every=1)
    teacher = copy.deepcopy(adapted.loss.anchor.state_dict())
    adapted(images)
    after = adapted.loss.teacher.state_dict()
    assert all(torch.equal(after[k], teacher[k]) for k in teacher)  # the loss's state too


@pytest.mark.parametrize("value", [-1, 1.5, True, "10"])
def test_bad_values(value):
    with pytest.raises(ValueError, match="reset_every"):
        tta.adapt(make_tiny_net(), loss="tent", reset_every=value)


def test_refused_for_a_loss_without_steps():
    with pytest.raises(ValueError, match="nothing to reset"):
        tta.adapt(make_tiny_net(), loss="lame", reset_every=10)


def test_run_flag_reaches_the_engine():
    parse = run_parser().parse_args
    config = resolve(to_config(parse(["--loss", "tent", "--reset-every", "5"])))
    adapted = build_adapted(config, make_tiny_net(), None, torch.device("cpu"))
    assert config.reset_every == 5 and adapted.reset_every == 5
    default = resolve(to_config(parse(["--method", "rdumb"])))
    assert build_adapted(default, make_tiny_net(), None, torch.device("cpu")).reset_every == 1000
    with pytest.raises(ValueError, match="--reset-every"):
        resolve(to_config(parse(["--loss", "tent", "--reset-every", "-1"])))
