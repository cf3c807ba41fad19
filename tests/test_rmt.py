"""RMT: symmetric cross-entropy and the prototype contrastive term by hand, the warm-up and
two adaptation steps against a re-statement of the official code
(mariodoebler/test-time-adaptation classification/methods/rmt.py), source data handling."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_net
from torch import nn

import tta
from tta.cli import run_parser, to_config
from tta.harness.config import resolve
from tta.harness.setup import source_data
from tta.losses.cotta import cotta_augment
from tta.losses.prototypes import class_prototypes, contrastive_loss, nearest_prototypes
from tta.losses.rmt import symmetric_cross_entropy

SOURCE_X = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(7))
SOURCE_Y = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])


def test_symmetric_cross_entropy_by_hand():
    x, t = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    big = math.log(1 + math.e)  # -log softmax(x)_1 = log(1 + e) - 1, -log softmax(x)_2 = log(1 + e)
    expected = 0.5 * (big - 0.5) + 0.5 * math.log(2)
    assert symmetric_cross_entropy(x, t).item() == pytest.approx(expected, rel=1e-6)


def test_prototypes_and_nearest_by_hand():
    features = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    labels = torch.tensor([0, 0, 2, 4])  # classes 1 and 3 have no image: no prototype
    protos = class_prototypes(features, labels)
    assert protos.tolist() == [[2.0, 0.0], [0.0, 2.0], [5.0, 5.0]]
    test = torch.tensor([[1.0, 0.1], [0.1, 9.0], [1.0, 1.2]])
    assert nearest_prototypes(protos, test).tolist() == [[2.0, 0.0], [0.0, 2.0], [5.0, 5.0]]


def test_contrastive_term_by_hand():
    """Two images, three views each, an identity projector: the formula written out."""
    z = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.2], [0.3, 1.0], [0.8, 0.5],
                                  [0.1, 0.9]]), dim=1)  # fmt: skip
    views = torch.stack([z[[0, 1]], z[[2, 3]], z[[4, 5]]], dim=1)  # (B=2, V=3, D=2)
    order = [(v, b) for v in range(3) for b in range(2)]  # view-major, as torch.unbind
    t = 0.1
    total = 0.0
    for i, (vi, bi) in enumerate(order):
        zi = views[bi, vi]
        denominator = sum(
            math.exp(float(zi @ views[bj, vj]) / t) for j, (vj, bj) in enumerate(order) if j != i
        )
        positives = [views[bi, vj] for vj in range(3) if vj != vi]
        total += -sum(math.log(math.exp(float(zi @ p) / t) / denominator) for p in positives) / 2
    expected = total / 6
    assert contrastive_loss(views, nn.Identity(), t).item() == pytest.approx(expected, rel=1e-5)


def official_supcon(features: torch.Tensor, projector: nn.Module, t: float) -> torch.Tensor:
    """The official contrastive_loss (labels=None, contrast_mode 'all'), re-stated."""
    batch = features.shape[0]
    mask = torch.eye(batch)
    count = features.shape[1]
    contrast = F.normalize(projector(torch.cat(torch.unbind(features, dim=1), dim=0)), p=2, dim=1)
    logits = contrast @ contrast.T / t
    logits = logits - logits.max(1, keepdim=True).values.detach()
    mask = mask.repeat(count, count)
    logits_mask = torch.ones_like(mask).scatter(1, torch.arange(batch * count).view(-1, 1), 0)
    mask = mask * logits_mask
    log_prob = logits - torch.log((torch.exp(logits) * logits_mask).sum(1, keepdim=True))
    return -((mask * log_prob).sum(1) / mask.sum(1)).view(count, batch).mean()


def test_contrastive_term_matches_the_official_formula():
    torch.manual_seed(0)
    views, projector = torch.randn(5, 3, 8), nn.Sequential(nn.Linear(8, 4), nn.ReLU())
    mine = contrastive_loss(views, projector, 0.1)
    assert torch.allclose(mine, official_supcon(views, projector, 0.1), atol=1e-5)


def batch_stat_copy(model: nn.Module) -> nn.Module:
    """The official configure_model: BatchNorm on batch statistics, every parameter trains."""
    model = copy.deepcopy(model)
    for bn in (model.bn1, model.bn2):
        bn.track_running_stats, bn.running_mean, bn.running_var = False, None, None
    return model.requires_grad_(True)


def extract(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """TinyNet's feature extractor (the official split_up_model): everything but fc."""
    out = torch.relu(model.bn1(model.conv1(x)))
    return torch.relu(model.bn2(model.conv2(out))).mean((2, 3))


def nearest_official(prototypes: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    protos = prototypes.unsqueeze(1)  # (K, 1, D), as the official
    b = features.shape[0]
    dist = F.cosine_similarity(
        protos.repeat(1, b, 1), features.view(1, b, -1).repeat(protos.shape[0], 1, 1), dim=-1
    )
    return protos[dist.topk(1, largest=True, dim=0).indices.squeeze(0)]


def official_prototypes(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        feats = extract(model, SOURCE_X)
    return torch.cat([feats[SOURCE_Y == c].mean(0, keepdim=True) for c in range(5)])


def ema(teacher: nn.Module, student: nn.Module) -> None:
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.data = 0.999 * t.data + (1 - 0.999) * s.data


# The conv biases feed a batch-statistics BatchNorm: their gradient is zero up to rounding,
# which Adam's normalized step turns into arbitrary steps of size lr. They do not change
# any output, so the comparisons skip them.
NO_EFFECT = ("conv1.bias", "conv2.bias")


def assert_same_parameters(mine: nn.Module, theirs: nn.Module, atol: float) -> None:
    for (name, a), b in zip(mine.named_parameters(), theirs.parameters(), strict=True):
        if name not in NO_EFFECT:
            assert torch.allclose(a, b, atol=atol), name


def official_rmt(batches: list[torch.Tensor], seed: int):
    """Two official RMT steps (no warm-up): the student/teacher/projector and the outputs."""
    student = batch_stat_copy(make_tiny_net())
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.detach_()
    prototypes = official_prototypes(student)
    torch.manual_seed(seed)
    projector = nn.Sequential(nn.Linear(8, 128), nn.ReLU(), nn.Linear(128, 128))
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3, betas=(0.9, 0.999))
    optimizer.add_param_group({"params": projector.parameters(), "lr": 1e-3})
    outputs = []
    for k, x in enumerate(batches):
        torch.manual_seed(seed + 1 + k)
        features = extract(student, x)
        out = student.fc(features)
        features_aug = extract(student, cotta_augment(x))
        out_aug = student.fc(features_aug)
        out_ema = teacher(x)
        with torch.no_grad():
            anchors = nearest_official(prototypes, features)
        views = torch.cat([anchors, features[:, None], features_aug[:, None]], dim=1)
        loss_cont = official_supcon(views, projector, 0.1)
        loss_st = (
            0.5 * symmetric_cross_entropy(out, out_ema)
            + 0.5 * symmetric_cross_entropy(out_aug, out_ema)
        ).mean(0)
        perm = torch.randperm(len(SOURCE_X))  # the source batch (a shuffled pass of the pool)
        loss_src = F.cross_entropy(student(SOURCE_X[perm]), SOURCE_Y[perm])
        (loss_st + loss_cont + loss_src).backward()
        optimizer.step()
        optimizer.zero_grad()
        ema(teacher, student)
        outputs.append((out + out_ema).detach())
    return student, teacher, projector, outputs


def test_two_steps_match_the_official_step():
    torch.manual_seed(0)
    batches = [torch.rand(16, 3, 8, 8) for _ in range(2)]
    student, teacher, projector, expected = official_rmt(batches, seed=20)
    model = make_tiny_net()  # draws from a seed of its own
    torch.manual_seed(20)
    adapted = tta.adapt(
        model,
        loss="rmt",
        source_data=(SOURCE_X, SOURCE_Y),
        warmup_samples=0,
        source_batch_size=8,
    )
    assert adapted.describe()["params"] == "all" and adapted.describe()["norm"] == "batch"
    for k, x in enumerate(batches):
        torch.manual_seed(21 + k)
        assert torch.allclose(adapted(x), expected[k], atol=1e-5), k
    assert adapted.counters.n_forward == 2 * 4 and adapted.counters.n_backward == 2
    for mine, theirs in (
        (adapted.model, student),
        (adapted.loss.teacher, teacher),
        (adapted.loss.contrast.projector, projector),
    ):
        assert_same_parameters(mine, theirs, atol=1e-5)
    assert adapted.loss.stats() == {"source_labels": "given"}


def test_warm_up_matches_the_official_warm_up():
    student = batch_stat_copy(make_tiny_net())
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.detach_()
    torch.manual_seed(5)
    nn.Sequential(nn.Linear(8, 128), nn.ReLU(), nn.Linear(128, 128))  # the projector's draws
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    for i in range(2):  # 16 warm-up samples // source batch 8
        for group in optimizer.param_groups:
            group["lr"] = 1e-3 * (i + 1) / 2
        perm = torch.randperm(8)
        loss = symmetric_cross_entropy(student(SOURCE_X[perm]), teacher(SOURCE_X[perm])).mean(0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        ema(teacher, student)
    model = make_tiny_net()
    torch.manual_seed(5)
    adapted = tta.adapt(
        model,
        loss="rmt",
        source_data=[(SOURCE_X[:5], SOURCE_Y[:5]), (SOURCE_X[5:], SOURCE_Y[5:])],
        warmup_samples=16,
        source_batch_size=8,
    )
    for mine, theirs in ((adapted.model, student), (adapted.loss.teacher, teacher)):
        assert_same_parameters(mine, theirs, atol=1e-6)
    assert not torch.allclose(adapted.model.fc.weight, make_tiny_net().fc.weight)
    assert all(p.grad is None for p in adapted.model.parameters())
    # reset() returns to the warmed-up model and teacher, as the official saved states
    warmed = copy.deepcopy(adapted.model.state_dict())
    adapted(torch.rand(8, 3, 8, 8))
    adapted.reset()
    assert all(torch.equal(adapted.model.state_dict()[k], v) for k, v in warmed.items())
    assert_same_parameters(adapted.loss.teacher, teacher, atol=1e-6)


def test_without_source_data_it_refuses_unless_everything_that_needs_it_is_off(images):
    with pytest.raises(ValueError, match="needs labelled clean source images.*source-free"):
        tta.adapt(make_tiny_net(), loss="rmt")
    adapted = tta.adapt(
        make_tiny_net(), loss="rmt", lambda_ce_src=0.0, lambda_cont=0.0, warmup_samples=0
    )
    adapted(images)
    assert adapted.counters.n_forward == 3 and adapted.loss.stats() == {"source_labels": "none"}


def test_images_without_labels_are_labelled_by_the_source_model(images):
    adapted = tta.adapt(make_tiny_net(), loss="rmt", source_data=SOURCE_X, warmup_samples=0)
    adapted(images)
    assert adapted.loss.stats() == {"source_labels": "predicted"}
    with pytest.raises(ValueError, match="labels must be one class index in"):
        tta.adapt(make_tiny_net(), loss="rmt", source_data=(SOURCE_X, SOURCE_Y + 3))


def test_tta_run_passes_labelled_source_batches():
    class FakeBenchmark:
        def source_samples(self, n, seed=0):
            rng = np.random.default_rng(seed)
            return rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8), np.arange(n) % 10

    config = resolve(to_config(run_parser().parse_args(["--loss", "rmt", "--batch-size", "3",
                                                        "--loss-option", "num_samples=7"])))  # fmt: skip
    batches = list(source_data(config, FakeBenchmark(), torch.device("cpu"))["source_data"])
    assert [tuple(x.shape) for x, _ in batches] == [(3, 3, 4, 4), (3, 3, 4, 4), (1, 3, 4, 4)]
    assert torch.cat([y for _, y in batches]).tolist() == list(range(7))


def test_composes_with_gala_and_changes_only_selected_layers(images):
    from test_rotta import assert_only_selected_layers_change

    adapted = tta.adapt(
        make_tiny_net(),
        loss="rmt",
        selector="gala",
        selector_options={"threshold": -1.0},
        source_data=(SOURCE_X, SOURCE_Y),
        warmup_samples=0,
        lr=0.05,
    )
    assert_only_selected_layers_change(adapted, images)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_runs_under_mixed_precision(images, amp):
    adapted = tta.adapt(
        make_tiny_net(), loss="rmt", source_data=(SOURCE_X, SOURCE_Y), warmup_samples=0, amp=amp
    )
    projector = copy.deepcopy(adapted.loss.contrast.projector.state_dict())
    for _ in range(2):
        out = adapted(images)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert adapted.counters.n_steps >= 1
    now = adapted.loss.contrast.projector.state_dict()
    assert not torch.equal(now["0.weight"], projector["0.weight"])
    assert all(torch.isfinite(v).all() for v in now.values())
