"""ETA/EATA and the entropy and redundancy sample filters, against hand computation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_net

import tta
from tta.context import Counters, LossContext
from tta.filters.entropy import EntropyFilter, reliable
from tta.filters.redundancy import RedundancyFilter, non_redundant, update_average
from tta.losses.eata import EataLoss, EtaLoss, fisher_information


def entropy_by_hand(row: list[float]) -> float:
    exps = [math.exp(v) for v in row]
    probs = [e / sum(exps) for e in exps]
    return -sum(p * math.log(p) for p in probs)


def probs_by_hand(row: list[float]) -> list[float]:
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def cosine_by_hand(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


# 4 classes, E0 = 0.4 ln 4 = 0.555: rows 0 and 3 are reliable (H = 0.0015, 0.12), 1 and 2
# are not (H = ln 4, 0.92).
ROWS = [[8.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0], [0.0, 5.0, 0.0, 0.0]]


def penalty_of(loss_fn: EataLoss, model: torch.nn.Module) -> float:
    with torch.no_grad():
        return float(loss_fn.penalty(model))


def fake_adapted() -> LossContext:
    """A loss context without an engine: a stand-in model, fresh counters, no reset."""
    return LossContext(torch.nn.Linear(1, 1), (), Counters(), lambda: None)


def test_entropy_filter_keeps_entropy_below_margin_ln_c():
    e0 = 0.4 * math.log(4)
    expected = [entropy_by_hand(row) < e0 for row in ROWS]
    assert expected == [True, False, False, True]
    logits = torch.tensor(ROWS)
    filt = EntropyFilter()
    assert filt.keep(torch.zeros(4, 3, 2, 2), logits).tolist() == expected
    assert filt.stats() == {"n_kept": 2, "n_removed": 2}
    # margin scales the threshold: 0.7 ln 4 = 0.97 also admits row 2 (H = 0.92)
    assert EntropyFilter(margin=0.7).keep(None, logits).tolist() == [True, False, True, True]
    entropy = torch.tensor([entropy_by_hand(row) for row in ROWS])
    assert reliable(entropy, 4, 0.4).tolist() == expected


def test_redundancy_filter_against_the_moving_average():
    first = torch.tensor([[3.0, 0.0, 0.0], [2.0, 1.0, 0.0]])
    second = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    filt = RedundancyFilter(d_margin=0.5)
    # no average yet: every sample passes, and the average becomes their mean prediction
    assert filt.keep(None, first).tolist() == [True, True]
    p1 = [probs_by_hand(row) for row in first.tolist()]
    m1 = [(a + b) / 2 for a, b in zip(*p1, strict=True)]
    torch.testing.assert_close(filt.average, torch.tensor(m1))
    p2 = [probs_by_hand(row) for row in second.tolist()]
    cosines = [cosine_by_hand(m1, p) for p in p2]
    assert cosines[0] >= 0.5 > cosines[1]  # the first repeats the average, the second is new
    assert filt.keep(None, second).tolist() == [False, True]
    m2 = [0.9 * m + 0.1 * p for m, p in zip(m1, p2[1], strict=True)]
    torch.testing.assert_close(filt.average, torch.tensor(m2))
    assert filt.stats() == {"n_kept": 3, "n_removed": 1}
    filt.reset()
    assert filt.average is None


def test_redundancy_helpers_edge_cases():
    average = torch.tensor([0.5, 0.5])
    assert update_average(average, torch.zeros(0, 2)) is average  # nothing kept: unchanged
    assert update_average(None, torch.zeros(0, 2)) is None
    assert non_redundant(torch.rand(3, 2), None, 0.05).all()


def test_eta_weights_and_loss_by_hand():
    loss_fn = EtaLoss(d_margin=0.5)
    logits = torch.tensor(ROWS, requires_grad=True)
    adapted = fake_adapted()
    loss = loss_fn.backward(adapted, None, logits, None)
    e0 = 0.4 * math.log(4)
    kept = [0, 3]  # reliable; no average yet, so none is redundant
    entropies = [entropy_by_hand(ROWS[i]) for i in kept]
    expected = sum(e / math.exp(e - e0) for e in entropies) / len(kept)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert logits.grad[[1, 2]].abs().sum() == 0 and logits.grad[[0, 3]].abs().sum() > 0
    # the average starts at the mean prediction of the reliable samples
    mean = [(a + b) / 2 for a, b in zip(*(probs_by_hand(ROWS[i]) for i in kept), strict=True)]
    torch.testing.assert_close(loss_fn.average, torch.tensor(mean))
    assert loss_fn.stats() == {"n_unreliable": 2, "n_redundant": 0, "n_kept": 2}
    assert adapted.counters.n_filtered_samples == 2 and adapted.counters.n_backward == 1


def test_eta_second_batch_drops_redundant_samples():
    loss_fn = EtaLoss(d_margin=0.5)
    first = torch.tensor([[6.0, 0.0, 0.0, 0.0]], requires_grad=True)
    loss_fn.backward(fake_adapted(), None, first, None)
    # [7, 0, 0, 0] repeats the average (cos ~ 1); [0, 0, 6, 0] is reliable and new
    logits = torch.tensor([[7.0, 0.0, 0.0, 0.0], [0.0, 0.0, 6.0, 0.0]], requires_grad=True)
    loss = loss_fn.backward(fake_adapted(), None, logits, None)
    e = entropy_by_hand([0.0, 0.0, 6.0, 0.0])
    assert loss.item() == pytest.approx(e / math.exp(e - 0.4 * math.log(4)), rel=1e-5)
    assert loss_fn.n_redundant == 1
    loss_fn.reset()
    assert loss_fn.average is None


def test_eta_external_keep_is_applied_first():
    loss_fn = EtaLoss()
    logits = torch.tensor(ROWS, requires_grad=True)
    keep = torch.tensor([False, True, True, True])
    adapted = fake_adapted()
    loss_fn.backward(adapted, None, logits, keep)
    assert logits.grad[0].abs().sum() == 0 and logits.grad[3].abs().sum() > 0
    assert loss_fn.stats() == {"n_unreliable": 2, "n_redundant": 0, "n_kept": 1}


def test_no_surviving_sample_skips_the_step(images):
    model = make_tiny_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adapted = tta.adapt(model, loss="eta", e_margin=1e-6)
    adapted(images[:8])
    counters = adapted.counters
    assert counters.n_skipped == 1 and counters.n_steps == 0 and counters.n_backward == 0
    assert counters.n_filtered_samples == 8 and adapted.loss.n_unreliable == 8
    for name, value in model.state_dict().items():
        if name in before:
            assert torch.equal(value, before[name]), name


def test_entropy_sample_filter_in_the_engine(images):
    adapted = tta.adapt(
        make_tiny_net(),
        loss="tent",
        sample_filter="entropy",
        sample_filter_options={"margin": 1e-6},
    )
    adapted(images[:8])
    assert adapted.counters.n_skipped == 1 and adapted.counters.n_filtered_samples == 8
    adapted = tta.adapt(make_tiny_net(), loss="tent", sample_filter="redundancy")
    adapted(images[:8])
    assert adapted.counters.n_steps == 1 and adapted.sample_filter.average is not None
    adapted.reset()
    assert adapted.sample_filter.average is None


def test_eata_without_fisher_data_is_a_clear_error():
    model = make_tiny_net()
    with pytest.raises(ValueError, match=r"needs clean source images.*fisher_data=x_clean"):
        tta.adapt(model, loss="eata")
    assert model.bn1.running_mean is not None  # checked before the model was touched


def test_fisher_penalty_zero_at_source_and_positive_after_a_step(images):
    model = make_tiny_net()
    adapted = tta.adapt(
        model, loss="eata", fisher_data=images, fisher_batch_size=4, e_margin=1.0, d_margin=1.5
    )
    loss_fn = adapted.loss
    assert adapted.loss.fisher_data is None  # released after the estimate
    assert penalty_of(loss_fn, model) == 0.0
    assert sorted(loss_fn.fishers) == ["bn1.bias", "bn1.weight", "bn2.bias", "bn2.weight"]
    adapted(images[:8])
    assert adapted.counters.n_steps == 1
    assert penalty_of(loss_fn, model) > 0
    # the penalty is alpha * sum F (theta - theta_src)^2
    params = dict(model.named_parameters())
    by_hand = sum(
        float((fisher * (params[name].detach() - source) ** 2).sum())
        for name, (fisher, source) in loss_fn.fishers.items()
    )
    assert penalty_of(loss_fn, model) == pytest.approx(2000.0 * by_hand, rel=1e-5)


def test_fisher_is_the_mean_over_batches_of_squared_gradients(images):
    model = make_tiny_net()
    EtaLoss().configure(model)  # the model as EATA configures it before the estimate
    batches = [images[:4], images[4:8]]
    fishers = fisher_information(model, batches)
    expected = {}
    for batch in batches:
        model.zero_grad()
        logits = model(batch)
        F.cross_entropy(logits, logits.argmax(1)).backward()
        for name, p in model.named_parameters():
            expected[name] = expected.get(name, 0) + p.grad**2 / len(batches)
    for name, p in model.named_parameters():
        torch.testing.assert_close(fishers[name][0], expected[name])
        torch.testing.assert_close(fishers[name][1], p.detach())


def batch_sizes_seen(fisher_data, **options) -> tuple[list[int], EataLoss]:
    """The batch sizes EATA's Fisher estimate runs the model on."""
    loss_fn = EataLoss(fisher_data=fisher_data, **options)
    model = make_tiny_net()
    loss_fn.check_model(model)
    seen = []
    original = model.forward
    model.forward = lambda x: seen.append(len(x)) or original(x)
    loss_fn.configure(model)
    return seen, loss_fn


def test_fisher_data_as_batches_with_labels_and_a_sample_cap(images):
    data = [(images[:6], None), (images[6:12], None)]
    seen, loss_fn = batch_sizes_seen(data, num_samples=8, fisher_batch_size=64)
    assert seen == [8] and loss_fn.fishers  # re-batched to fisher_batch_size, cut at 8
    seen, _ = batch_sizes_seen(iter(data), num_samples=11, fisher_batch_size=4)
    assert seen == [4, 4, 3]


def test_fisher_batches_come_at_fisher_batch_size_however_the_data_is_batched(images):
    """tta-run passes test-size batches; the estimate must not depend on them."""
    x = images[:10]
    pieces = [x[:3], x[3:8], torch.zeros(0, 3, 8, 8), x[8:9], (x[9:], None), images[10:]]

    def fisher(data, batch_size):
        model = make_tiny_net()
        loss_fn = EataLoss(fisher_data=data, num_samples=10, fisher_batch_size=batch_size)
        loss_fn.configure(model)
        return loss_fn.fishers

    from_tensor = fisher(x, 4)  # batches of 4, 4, 2
    from_pieces = fisher(iter(pieces), 4)
    assert sorted(from_tensor) == sorted(from_pieces)
    for name, (value, source) in from_tensor.items():
        assert torch.equal(value, from_pieces[name][0]), name
        assert torch.equal(source, from_pieces[name][1]), name
    # the batch size matters: batches of 5 give another estimate
    other = fisher(x, 5)
    assert not all(torch.equal(from_tensor[n][0], other[n][0]) for n in from_tensor)
    # by hand: mean over the batches (4, 4, 2) of the squared batch-mean gradients
    model = make_tiny_net()
    EtaLoss().configure(model)
    by_hand = fisher_information(model, [x[:4], x[4:8], x[8:]])
    for name, (value, _) in from_tensor.items():
        torch.testing.assert_close(value, by_hand[name][0], rtol=0, atol=0)


def test_fisher_data_that_is_not_what_the_model_takes_is_named():
    with pytest.raises(TypeError, match="fisher_data: the input has dtype torch.float64"):
        tta.adapt(make_tiny_net(), loss="eata", fisher_data=torch.rand(4, 3, 8, 8).double())
    bad = torch.rand(4, 3, 8, 8)
    bad[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="fisher_data: the input holds 1 NaN/inf"):
        tta.adapt(make_tiny_net(), loss="eata", fisher_data=[bad])


def test_eata_checks_options_and_fisher_images():
    with pytest.raises(ValueError, match="d_margin"):
        EtaLoss(d_margin=0)
    with pytest.raises(ValueError, match="fraction of ln C"):
        EtaLoss(e_margin=-1)
    with pytest.raises(ValueError, match="num_samples"):
        EataLoss(num_samples=0)
    with pytest.raises(ValueError, match="input channels"):
        tta.adapt(make_tiny_net(), loss="eata", fisher_data=torch.rand(4, 1, 8, 8))
    assert EataLoss(fisher_alpha=0).penalty(make_tiny_net()) == 0.0  # no data needed


def test_plain_call_is_zero_not_nan_when_nothing_passes():
    logits = torch.zeros(3, 4, requires_grad=True)  # uniform: entropy ln 4, unreliable
    loss = EtaLoss()(logits)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros(3, 4))
