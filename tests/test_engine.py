"""The engine: predict-before-update, reset, episodic, TENT exactness, non-finite losses."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import make_tiny_net

import tta
from tta.losses import softmax_entropy


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_entropy_matches_hand_computation():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    expected = torch.tensor([math.log(2.0), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))])
    assert torch.allclose(softmax_entropy(logits), expected, atol=1e-6)
    loss = tta.LOSSES.create("entropy")
    assert torch.isclose(loss(logits), expected.mean())


def test_returns_logits_of_the_forward_before_the_update(tiny_net, images):
    reference = copy.deepcopy(tiny_net)
    tta.norm.batch.use_batch_statistics(reference)
    with torch.no_grad():
        expected = reference(images)
    adapted = tta.adapt(tiny_net, loss="tent", lr=1e-2)
    logits = adapted(images)
    assert torch.allclose(logits, expected, atol=1e-6)
    with torch.no_grad():
        after = adapted.model(images)
    assert not torch.allclose(after, expected, atol=1e-4), "the update should change the model"
    assert adapted.counters.n_forward == 1 and adapted.counters.n_backward == 1


def test_reset_restores_weights_buffers_and_optimizer_bit_for_bit(tiny_net, images):
    adapted = tta.adapt(tiny_net, loss="entropy", params="all", lr=1e-2)
    source_state = copy.deepcopy(adapted.model.state_dict())
    first = adapted(images)
    for _ in range(3):
        adapted(images)
    assert not state_equal(source_state, adapted.model.state_dict())
    adapted.reset()
    assert state_equal(source_state, adapted.model.state_dict())
    assert adapted.optimizer.state_dict()["state"] == {}
    assert torch.equal(adapted(images), first), "after reset the run repeats exactly"


def test_episodic_equals_reset_before_every_batch(images):
    batches = [images[:8], images[8:], images[:8]]
    episodic = tta.adapt(make_tiny_net(), loss="tent", lr=1e-2, episodic=True)
    manual = tta.adapt(make_tiny_net(), loss="tent", lr=1e-2)
    for batch in batches:
        manual.reset()
        assert torch.equal(episodic(batch), manual(batch))
    assert state_equal(episodic.model.state_dict(), manual.model.state_dict())


def test_tent_trains_exactly_the_batchnorm_affine_parameters(tiny_net, images):
    adapted = tta.adapt(tiny_net, loss="tent")
    trainable = {n for n, p in adapted.model.named_parameters() if p.requires_grad}
    assert trainable == {"bn1.weight", "bn1.bias", "bn2.weight", "bn2.bias"}
    before = copy.deepcopy(adapted.model.state_dict())
    adapted(images)
    after = adapted.model.state_dict()
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert changed == trainable


def test_tent_normalizes_with_batch_statistics(tiny_net, images):
    adapted = tta.adapt(tiny_net, loss="tent")
    assert tiny_net.bn1.running_mean is None and not tiny_net.bn1.track_running_stats
    alone = adapted.predict(images[:4])
    together = adapted.predict(images)[:4]
    assert not torch.allclose(alone, together, atol=1e-5), "outputs must depend on the batch"


def official_tent_step(model, optimizer, x):
    """The TENT paper's forward_and_adapt (DequanWang/tent, tent.py), written out."""
    outputs = model(x)
    loss = -(outputs.softmax(1) * outputs.log_softmax(1)).sum(1).mean(0)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return outputs


def official_tent_configure(model):
    model.train()
    model.requires_grad_(False)
    params = []
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.requires_grad_(True)
            module.track_running_stats = False
            module.running_mean = None
            module.running_var = None
            params += [module.weight, module.bias]
    return params


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_tent_equals_the_official_code_step_for_step(images, optimizer):
    reference = make_tiny_net()
    params = official_tent_configure(reference)
    if optimizer == "adam":
        ref_opt = torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0)
    else:
        ref_opt = torch.optim.SGD(params, lr=2.5e-4, momentum=0.9)
    lr = 1e-3 if optimizer == "adam" else 2.5e-4
    adapted = tta.adapt(make_tiny_net(), loss="tent", optimizer=optimizer, lr=lr)
    for step in range(4):
        batch = images[4 * (step % 3) : 4 * (step % 3) + 8]
        expected = official_tent_step(reference, ref_opt, batch)
        assert torch.allclose(adapted(batch), expected.detach(), atol=1e-6), f"step {step}"


def test_nonfinite_loss_skips_the_update_and_keeps_weights_finite(tiny_net, images):
    adapted = tta.adapt(tiny_net, loss="tent", lr=1e-2)
    before = copy.deepcopy(adapted.model.state_dict())
    adapted.loss.__class__ = type(
        "NanLoss", (type(adapted.loss),), {"__call__": lambda self, logits: logits.sum() * math.nan}
    )
    with pytest.warns(RuntimeWarning, match="non-finite"):
        adapted(images)
    assert adapted.counters.n_nonfinite == 1 and adapted.counters.n_skipped == 1
    assert state_equal(before, adapted.model.state_dict())


def test_steps_run_several_updates_per_batch(tiny_net, images):
    adapted = tta.adapt(tiny_net, loss="tent", steps=3)
    adapted(images)
    assert adapted.counters.n_backward == 3 and adapted.counters.n_steps == 3


def test_source_and_norm_take_no_gradient_step(tiny_net, images):
    for loss in ("source", "norm"):
        adapted = tta.adapt(make_tiny_net(), loss=loss)
        adapted(images)
        assert adapted.counters.n_backward == 0 and adapted.optimizer is None
    norm = tta.adapt(tiny_net, loss="norm")
    assert tiny_net.bn1.running_mean is None
    assert norm.predict(images).shape == (16, 5)


def test_predict_under_no_grad_context_still_adapts(tiny_net, images):
    adapted = tta.adapt(tiny_net, loss="tent", lr=1e-2)
    with torch.no_grad():
        adapted(images)
    assert adapted.counters.n_steps == 1
