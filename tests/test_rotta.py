"""RoTTA: the memory bank's admission and eviction by hand, the time-aware weights, and three
steps against a re-statement of the official step (BIT-DA/RoTTA core/adapter/rotta.py)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import NoNormNet, make_tiny_net
from torch import nn

import tta
from tta.losses.cotta import cotta_augment
from tta.losses.rotta import MemoryBank, timeliness_weights


def contents(bank: MemoryBank) -> list[list[tuple[str, int]]]:
    """Per class: (name, age) of each stored item (the data is a name here)."""
    return [[(item.data, item.age) for item in items] for items in bank.classes]


def score(age: int, u: float, capacity: int, num_classes: int) -> float:
    return 1 / (1 + math.exp(-age / capacity)) + u / math.log(num_classes)


def test_admission_while_there_is_room_and_ageing():
    bank = MemoryBank(capacity=4, num_classes=2)
    assert bank.add("a", 0, 0.1) and bank.add("b", 0, 0.5)
    assert contents(bank) == [[("a", 2), ("b", 1)], []]  # every item ages after each offer


def test_a_full_class_evicts_its_highest_score_or_rejects_the_newcomer():
    bank = MemoryBank(capacity=4, num_classes=2)  # two per class
    bank.add("a", 0, 0.1)
    bank.add("b", 0, 0.5)  # ages now a: 2, b: 1
    # by hand: a scores 1/(1+e^-0.5) + 0.1/ln 2 = 0.767, b 1/(1+e^-0.25) + 0.5/ln 2 = 1.283,
    # the newcomer (age 0) 0.5 + 0.2/ln 2 = 0.789: b goes, the newcomer comes in
    assert score(1, 0.5, 4, 2) > score(0, 0.2, 4, 2) > score(2, 0.1, 4, 2)
    assert bank.add("c", 0, 0.2)
    assert contents(bank) == [[("a", 3), ("c", 1)], []]
    # a newcomer that scores above every item of its full class is turned away; all still age
    assert not bank.add("d", 0, 0.69)
    assert score(0, 0.69, 4, 2) >= max(score(4, 0.1, 4, 2), score(2, 0.2, 4, 2))
    assert contents(bank) == [[("a", 4), ("c", 2)], []]


def test_a_full_bank_evicts_from_the_majority_classes():
    bank = MemoryBank(capacity=4, num_classes=3)  # 4/3 per class: a class may reach 2
    for name, label, u in (("a", 0, 0.9), ("b", 0, 0.1), ("c", 1, 0.2), ("d", 1, 0.3)):
        bank.add(name, label, u)
    assert len(bank) == 4 and contents(bank)[2] == []
    # class 2 is under its share but the bank is full: the highest score among the majority
    # classes 0 and 1 (two items each) goes, a (age 4, u 0.9)
    scores = {n: score(age, u, 4, 3) for n, age, u in (("a", 4, 0.9), ("b", 3, 0.1))}
    scores |= {n: score(age, u, 4, 3) for n, age, u in (("c", 2, 0.2), ("d", 1, 0.3))}
    assert max(scores, key=scores.get) == "a" and scores["a"] > score(0, 0.5, 4, 3)
    assert bank.add("e", 2, 0.5)
    assert contents(bank) == [[("b", 4)], [("c", 3), ("d", 2)], [("e", 1)]]
    # now class 1 alone is the majority: its best score is d's or c's, whichever is higher
    expected = "c" if score(4, 0.2, 4, 3) >= score(3, 0.3, 4, 3) else "d"
    assert bank.add("f", 2, 0.0)
    assert [n for n, _ in contents(bank)[1]] == [n for n in ("c", "d") if n != expected]


def test_equal_scores_evict_the_last_found():
    bank = MemoryBank(capacity=2, num_classes=2)
    bank.add("a", 0, 0.4)
    bank.add("b", 1, 0.4)  # a: age 2, b: age 1; make their scores tie
    bank.classes[1][0].age = 2
    assert bank.add("c", 0, 0.0) is True  # class 0 is full: only its item a may go
    assert contents(bank) == [[("c", 1)], [("b", 3)]]
    bank2 = MemoryBank(capacity=4, num_classes=3)  # classes 0 and 1 may hold two each
    for name, label in (("x", 0), ("y", 0), ("z", 1), ("w", 1)):
        bank2.add(name, label, 0.3)
    for items in bank2.classes:
        for item in items:
            item.age = 5  # four equal scores in the majority classes 0 and 1
    assert bank2.add("v", 2, 0.0)  # the last one found, w, goes
    assert [[n for n, _ in items] for items in contents(bank2)] == [["x", "y"], ["z"], ["v"]]


def test_time_aware_weights_by_hand():
    w = timeliness_weights([0, 64, 128], 64, torch.device("cpu"))
    expected = [0.5, math.exp(-1) / (1 + math.exp(-1)), math.exp(-2) / (1 + math.exp(-2))]
    assert w.tolist() == pytest.approx(expected, rel=1e-6)


class OfficialRobustBN(nn.Module):
    """A re-statement of the official RobustBN2d: statistics move in train mode only."""

    def __init__(self, bn: nn.BatchNorm2d, momentum: float) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("source_mean", bn.running_mean.clone())
        self.register_buffer("source_var", bn.running_var.clone())
        self.weight = nn.Parameter(bn.weight.detach().clone())
        self.bias = nn.Parameter(bn.bias.detach().clone())
        self.eps = bn.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            b_var, b_mean = torch.var_mean(x, dim=[0, 2, 3], unbiased=False)
            mean = (1 - self.momentum) * self.source_mean + self.momentum * b_mean
            var = (1 - self.momentum) * self.source_var + self.momentum * b_var
            self.source_mean, self.source_var = mean.detach(), var.detach()
        else:
            mean, var = self.source_mean, self.source_var
        x = (x - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + self.eps)
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def official_rotta(model: nn.Module, batches: list[torch.Tensor], capacity: int, seed: int):
    """The official RoTTA forward_and_adapt, batch size = update frequency = `capacity`."""
    student = copy.deepcopy(model)
    student.bn1 = OfficialRobustBN(model.bn1, 0.05)
    student.bn2 = OfficialRobustBN(model.bn2, 0.05)
    student.requires_grad_(False)
    for bn in (student.bn1, student.bn2):
        bn.requires_grad_(True)
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.detach_()
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999))
    bank = MemoryBank(capacity, 5)
    outputs = []
    for k, x in enumerate(batches):
        torch.manual_seed(seed + k)
        with torch.no_grad():
            student.eval()
            teacher.eval()
            ema_out = teacher(x)
            predict = ema_out.softmax(1)
            entropy = (-predict * torch.log(predict + 1e-6)).sum(1)
        for data, label, u in zip(x, predict.argmax(1).tolist(), entropy.tolist(), strict=True):
            bank.add(data, label, u)
        student.train()
        teacher.train()
        data, ages = bank.contents()
        memory = torch.stack(data)
        strong = cotta_augment(memory)
        ema_sup = teacher(memory)
        stu_sup = student(strong)
        a = torch.tensor(ages).float() / capacity
        weight = torch.exp(-a) / (1 + torch.exp(-a))
        loss = (-(ema_sup.softmax(1) * stu_sup.log_softmax(1)).sum(1) * weight).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
            t.data[:] = (1 - 0.001) * t.data[:] + 0.001 * s.data[:]
        outputs.append(ema_out)
    return student, teacher, outputs


def test_three_steps_match_the_official_step():
    torch.manual_seed(0)
    batches = [torch.rand(16, 3, 8, 8) for _ in range(3)]
    source = make_tiny_net()
    student, teacher, expected = official_rotta(source, batches, capacity=16, seed=10)
    adapted = tta.adapt(make_tiny_net(), loss="rotta", capacity=16, update_frequency=16)
    for k, x in enumerate(batches):
        torch.manual_seed(10 + k)
        assert torch.allclose(adapted(x), expected[k], atol=1e-5), k
    ours = adapted.model
    assert adapted.counters.n_steps == 3 and adapted.counters.n_forward == 3 * 4
    for name in ("bn1", "bn2"):
        mine, theirs = getattr(ours, name), getattr(student, name)
        assert torch.allclose(mine.weight, theirs.weight, atol=1e-6)
        assert torch.allclose(mine.bias, theirs.bias, atol=1e-6)
        # only the memory passes moved the statistics, as the official train-mode passes
        assert torch.allclose(mine.running_mean, theirs.source_mean, atol=1e-6)
        assert torch.allclose(mine.running_var, theirs.source_var, atol=1e-6)
        mine_t, theirs_t = getattr(adapted.loss.teacher, name), getattr(teacher, name)
        assert torch.allclose(mine_t.running_mean, theirs_t.source_mean, atol=1e-6)
        assert torch.allclose(mine_t.weight, theirs_t.weight, atol=1e-6)
    assert not torch.allclose(ours.bn1.weight, source.bn1.weight)  # it did adapt


def test_predicting_a_batch_moves_no_statistics_until_an_update(images):
    adapted = tta.adapt(make_tiny_net(), loss="rotta", capacity=8, update_frequency=32)
    before = copy.deepcopy(adapted.model.state_dict())
    teacher_before = copy.deepcopy(adapted.loss.teacher.state_dict())
    adapted(images)  # 16 of 32 samples: no update yet
    assert adapted.counters.n_skipped == 1 and adapted.counters.n_backward == 0
    # the engine's forward moved the student's robust statistics: they were put back, and the
    # teacher's eval-mode prediction moved none
    for state, reference in ((adapted.model, before), (adapted.loss.teacher, teacher_before)):
        now = state.state_dict()
        assert all(torch.equal(now[k], reference[k]) for k in reference)
    adapted(images)  # 32 samples: an update on the bank (8 items, the capacity)
    assert adapted.counters.n_steps == 1
    stats = adapted.loss.stats()
    assert stats["n_memory_offered"] == 32 and 8 <= stats["n_memory_admitted"] <= 32
    assert 1 <= len(adapted.loss.memory) <= 8
    for state, reference in ((adapted.model, before), (adapted.loss.teacher, teacher_before)):
        assert not torch.equal(
            state.state_dict()["bn1.running_mean"], reference["bn1.running_mean"]
        )


def test_the_bank_fills_class_by_class_up_to_capacity(images):
    adapted = tta.adapt(make_tiny_net(), loss="rotta", capacity=8, update_frequency=16)
    adapted(images)
    bank = adapted.loss.memory
    assert len(bank) <= 8 and max(len(items) for items in bank.classes) <= math.ceil(8 / 5)


def test_reset_restores_teacher_and_empties_the_bank(images):
    adapted = tta.adapt(make_tiny_net(), loss="rotta", capacity=16, update_frequency=16, lr=0.1)
    teacher = copy.deepcopy(adapted.loss.teacher.state_dict())
    adapted(images)
    assert not torch.equal(adapted.loss.teacher.state_dict()["bn1.weight"], teacher["bn1.weight"])
    adapted.reset()
    assert adapted.loss.memory is None and adapted.loss.n_seen == 0
    state = adapted.loss.teacher.state_dict()
    assert all(torch.equal(state[k], teacher[k]) for k in teacher)


def test_composes_with_gala_and_changes_only_selected_layers(images):
    adapted = tta.adapt(
        make_tiny_net(),
        loss="rotta",
        selector="gala",
        selector_options={"threshold": -1.0},  # one layer per step: the best aligned
        capacity=16,
        update_frequency=16,
        lr=0.05,
    )
    assert_only_selected_layers_change(adapted, images)


def assert_only_selected_layers_change(adapted, images) -> None:
    """After GALA's first step (every layer), only the layers it selects may change."""
    adapted(images)
    before = {n: p.detach().clone() for n, p in adapted.model.named_parameters()}
    for _ in range(2):
        adapted(images)
    trace = adapted.selector.trace()
    chosen = {trace["layer_names"][i] for row in trace["selected"][1:] for i in row}
    now = dict(adapted.model.named_parameters())
    changed = {
        layer.name
        for layer in adapted.layers
        if any(not torch.equal(now[n], before[n]) for n in layer.param_names)
    }
    assert changed and changed <= chosen and len(chosen) < len(adapted.layers), (changed, chosen)
    assert adapted.counters.n_backward == 3


def test_refuses_models_that_do_not_take_images():
    mlp = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    with pytest.raises(ValueError, match="loss 'rotta'.*needs an image model"):
        tta.adapt(mlp, loss="rotta", norm="batch")
    with pytest.raises(ValueError, match="capacity must be a positive integer"):
        tta.adapt(make_tiny_net(), loss="rotta", capacity=0)
    with pytest.raises(ValueError, match="robust"):
        tta.adapt(NoNormNet(), loss="rotta")


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_runs_under_mixed_precision(images, amp):
    adapted = tta.adapt(make_tiny_net(), loss="rotta", capacity=16, update_frequency=16, amp=amp)
    source = copy.deepcopy(adapted.model.state_dict())
    for _ in range(2):
        out = adapted(images)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert adapted.counters.n_steps + adapted.counters.n_skipped == 2
    assert adapted.counters.n_steps >= 1 and not torch.equal(
        adapted.model.bn1.weight, source["bn1.weight"]
    )
