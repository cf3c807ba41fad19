"""AdaContrast: kNN soft voting, the feature bank and the memory queue by hand, the loss
terms, the per-image views against torchvision, and engine steps against a re-statement
of the official step (DianCh/AdaContrast, mariodoebler/test-time-adaptation)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from conftest import make_tiny_net

import tta
import tta.losses.adacontrast as ada
from tta.losses.adacontrast import (
    MemoryQueue,
    diversity_loss,
    instance_loss,
    knn_soft_vote,
    update_bank,
)
from tta.losses.moco_augment import gaussian_blur, shift_hue, strong_view


def test_knn_soft_vote_by_hand():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    query = torch.tensor([[2.0, 0.1], [0.1, 3.0]])
    # cosine distances: query 0 is nearest to bank 0, then bank 2; query 1 to bank 1, then 2
    labels, voted = knn_soft_vote(query, bank, probs, k=2)
    expected = torch.stack([(probs[0] + probs[2]) / 2, (probs[1] + probs[2]) / 2])
    assert torch.allclose(voted, expected) and labels.tolist() == [0, 1]
    labels, _ = knn_soft_vote(query, bank, probs, k=1)
    assert labels.tolist() == [0, 1]


def test_bank_grows_then_rings():
    bank = {"features": torch.empty(0, 1), "probs": torch.empty(0, 2), "ptr": 0}
    pointers = []
    for step in range(5):
        feats = torch.full((2, 1), float(step))
        update_bank(bank, feats, torch.full((2, 2), 0.5), queue_size=5)
        pointers.append(bank["ptr"])
    # sizes 2, 4, 6 (>= 5: full); then batches 3 and 4 overwrite slots 4-5 and 0-1
    assert pointers == [0, 2, 4, 0, 2]
    assert bank["features"].flatten().tolist() == [4.0, 4.0, 1.0, 1.0, 3.0, 3.0]


def test_memory_queue_ring():
    memory = MemoryQueue(dim=3, size=4, num_classes=5, device=torch.device("cpu"))
    assert torch.allclose(memory.features.norm(dim=0), torch.ones(4))
    memory.push(torch.eye(3)[:3], torch.tensor([0, 1, 2]))
    memory.push(torch.ones(2, 3), torch.tensor([3, 4]))
    assert memory.labels.tolist() == [4, 1, 2, 3] and memory.pointer == 1
    assert torch.equal(memory.features[:, 0], torch.ones(3))
    assert torch.equal(memory.features[:, 1], torch.eye(3)[1])


def test_class_aware_instance_loss_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0]])  # positive, then three memory entries
    labels = torch.tensor([1])
    memory_labels = torch.tensor([1, 0, 1])  # entries 1 and 3 share the label: masked
    got = instance_loss(logits, labels, memory_labels, class_aware=True)
    expected = -torch.log(torch.exp(torch.tensor(2.0)) / (torch.exp(torch.tensor(2.0)) + 1.6487))
    assert torch.allclose(got, expected, atol=1e-4)
    plain = instance_loss(logits, labels, memory_labels, class_aware=False)
    assert torch.allclose(plain, F.cross_entropy(logits, torch.tensor([0])))


def test_diversity_loss_by_hand():
    logits = torch.tensor([[0.0, 0.0], [10.0, -10.0]])
    mean = logits.softmax(1).mean(0)
    assert torch.allclose(diversity_loss(logits), (mean * mean.log()).sum(), atol=1e-6)
    assert diversity_loss(torch.zeros(3, 4)) == pytest.approx(-torch.log(torch.tensor(4.0)))


def test_hue_and_blur_match_torchvision():
    x = torch.rand(3, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    shifts = torch.tensor([0.1, -0.07, 0.0])
    got = shift_hue(x, shifts)
    for i in range(3):
        assert torch.allclose(got[i], TF.adjust_hue(x[i], float(shifts[i])), atol=1e-5)
    sigmas = torch.tensor([0.3, 1.0, 2.0])
    blurred = gaussian_blur(x, sigmas)
    for i in range(3):
        expected = TF.gaussian_blur(x[i : i + 1], [13, 13], [float(sigmas[i])] * 2)
        assert torch.allclose(blurred[i : i + 1], expected, atol=1e-5)


def test_strong_views_are_drawn_per_image():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 8, 8).expand(64, 3, 8, 8)
    views = strong_view(x)
    assert views.min() >= 0 and views.max() <= 1
    distinct = {tuple(v.flatten()[:5].tolist()) for v in views}
    assert len(distinct) > 32


class Restated:
    """The official AdaContrast step (AdaMoCo + forward_and_adapt + update_labels) restated
    for the TinyNet: encoder = everything before `fc`, features its pooled output."""

    def __init__(self, model, queue_size, warmup, lr):
        self.model = model
        self.key = copy.deepcopy(model).requires_grad_(False)
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        self.queue_size, self.warmup, self.seen = queue_size, warmup, 0
        self.mem_feat = F.normalize(torch.randn(8, queue_size), dim=0)
        self.mem_labels = torch.randint(0, 5, (queue_size,))
        self.queue_ptr = 0
        self.bank = {"features": torch.tensor([]), "probs": torch.tensor([]), "ptr": 0}

    @staticmethod
    def encode(net, x):
        out = torch.relu(net.bn1(net.conv1(x)))
        feats = torch.relu(net.bn2(net.conv2(out))).mean((2, 3))
        return feats, net.fc(feats)

    def step(self, x, weak, query, key):
        self.model.train()
        self.key.train()
        feats_w, logits_w = self.encode(self.model, weak)
        with torch.no_grad():
            if self.seen >= self.warmup:
                dist = 1 - F.normalize(feats_w, dim=1) @ F.normalize(self.bank["features"]).T
                idx = dist.sort().indices[:, :10]
                labels = self.bank["probs"][idx, :].mean(1).max(1)[1]
            else:
                self.seen += len(feats_w)
                labels = logits_w.softmax(1).argmax(1)
        feats_q, logits_q = self.encode(self.model, query)
        q = F.normalize(feats_q, dim=1)
        with torch.no_grad():
            for pk, ps in zip(self.key.parameters(), self.model.parameters(), strict=True):
                pk.data = 0.999 * pk.data + 0.001 * ps.data
            k = F.normalize(self.encode(self.key, key)[0], dim=1)
        l_pos = torch.einsum("nc,nc->n", [q, k]).unsqueeze(-1)
        l_neg = torch.einsum("nc,ck->nk", [q, self.mem_feat.clone().detach()])
        logits_ins = torch.cat([l_pos, l_neg], dim=1) / 0.07
        idx = torch.arange(self.queue_ptr, self.queue_ptr + len(k)) % self.queue_size
        self.mem_feat[:, idx] = k.T
        self.mem_labels[idx] = labels
        self.queue_ptr = (self.queue_ptr + len(k)) % self.queue_size
        mask = torch.ones_like(logits_ins, dtype=torch.bool)
        mask[:, 1:] = labels.reshape(-1, 1) != self.mem_labels
        logits_ins = torch.where(mask, logits_ins, torch.tensor([float("-inf")]))
        loss_ins = F.cross_entropy(logits_ins, torch.zeros(len(x), dtype=torch.long))
        probs_mean = logits_q.softmax(1).mean(0)
        loss_div = -torch.sum(-probs_mean * torch.log(probs_mean + 1e-8))
        loss = F.cross_entropy(logits_q, labels) + loss_ins + loss_div
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        with torch.no_grad():
            feats, logits = self.encode(self.key, weak)
            probs = logits.softmax(1)
            start, end = self.bank["ptr"], self.bank["ptr"] + len(feats)
            if self.bank["features"].shape[0] < self.queue_size:
                self.bank["features"] = torch.cat([self.bank["features"], feats], dim=0)
                self.bank["probs"] = torch.cat([self.bank["probs"], probs], dim=0)
            else:
                idx = torch.arange(start, end) % len(self.bank["features"])
                self.bank["features"][idx, :] = feats
                self.bank["probs"][idx, :] = probs
            self.bank["ptr"] = end % len(self.bank["features"])
        self.model.eval()
        with torch.no_grad():
            return self.model(x)


def test_steps_match_the_official_restatement(images, monkeypatch):
    """Views fixed (flip, and two fixed colour changes) so both sides see the same images."""
    monkeypatch.setattr(ada, "weak_view", lambda x: x.flip(-1))
    views = iter([])

    def strong(x):
        return next(views)(x)

    monkeypatch.setattr(ada, "strong_view", strong)
    options = {"queue_size": 24, "warmup_samples": 16, "lr": 1e-2, "optimizer": "sgd"}
    adapted = tta.adapt(make_tiny_net(), loss="adacontrast", **options)
    net = make_tiny_net()
    torch.manual_seed(1)  # the memory's random start: official at construction, ours lazily
    reference = Restated(net, 24, 16, 1e-2)
    for step in range(4):  # batch 1 argmax, then kNN voting; the bank wraps at batch 3
        x = images.roll(step, 0) * (1.0 - 0.1 * step)
        query, key = (lambda v: (0.8 * v).clamp(0, 1)), (lambda v: v.pow(1.5))
        views = iter([query, key])
        if step == 0:
            torch.manual_seed(1)
        ours = adapted(x)
        theirs = reference.step(x, x.flip(-1), query(x), key(x))
        assert torch.allclose(ours, theirs, atol=1e-5), step
    for (name, mine), other in zip(
        adapted.model.named_parameters(), reference.model.parameters(), strict=True
    ):
        assert torch.allclose(mine, other, atol=1e-5), name
    assert torch.allclose(adapted.loss.memory.features, reference.mem_feat, atol=1e-5)
    assert torch.equal(adapted.loss.memory.labels, reference.mem_labels)
    assert torch.allclose(adapted.loss.bank["features"], reference.bank["features"], atol=1e-5)
    assert adapted.loss.bank["ptr"] == reference.bank["ptr"]
    buffers = dict(adapted.model.named_buffers())
    for name, value in reference.model.named_buffers():  # running statistics updated alike
        assert torch.allclose(buffers[name].float(), value.float(), atol=1e-5), name
    assert all(not m.training for m in adapted.model.modules())  # eval mode between batches
    assert adapted.counters.n_forward == 4 * 6 and adapted.counters.n_backward == 4


def test_composes_with_gala(images):
    adapted = tta.adapt(make_tiny_net(), loss="adacontrast", selector="gala", lr=1e-2)
    names = [layer.param_names for layer in adapted.layers]
    adapted(images)
    n_left_out = 0
    for step in range(1, 4):
        before = {n: p.detach().clone() for n, p in adapted.model.named_parameters()}
        adapted(images.roll(step, 0))
        selected = set(adapted.selector.trace()["selected"][-1])
        for index, layer_names in enumerate(names):
            if index not in selected:
                n_left_out += 1
                for name in layer_names:
                    assert torch.equal(adapted.model.get_parameter(name), before[name]), name
    assert n_left_out > 0


def test_reset_restores_the_key_encoder_and_empties_the_queues(images):
    adapted = tta.adapt(make_tiny_net(), loss="adacontrast", lr=1e-2)
    source = copy.deepcopy(adapted.loss.key_encoder.state_dict())
    adapted(images)
    assert adapted.loss.memory is not None and adapted.loss.n_seen == len(images)
    adapted.reset()
    key = adapted.loss.key_encoder.state_dict()
    assert all(torch.equal(key[k], source[k]) for k in source)
    assert adapted.loss.memory is None and adapted.loss.bank["features"] is None
    assert adapted.loss.n_seen == 0


@pytest.mark.parametrize(
    "options", [{"queue_size": 0}, {"contrast_type": "other"}, {"temperature": 0.0}]
)
def test_bad_options(options):
    with pytest.raises(ValueError, match="loss 'adacontrast'"):
        tta.adapt(make_tiny_net(), loss="adacontrast", **options)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision(images, amp):
    adapted = tta.adapt(make_tiny_net(), loss="adacontrast", amp=amp, lr=1e-2, warmup_samples=16)
    for step in range(3):  # the third batch votes in the bank
        logits = adapted(images.roll(step, 0))
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert adapted.loss.bank["features"].dtype == torch.float32
    assert adapted.loss.memory.features.dtype == torch.float32
    assert adapted.counters.n_steps + adapted.counters.n_nonfinite == 3


def test_model_without_linear_head_is_refused():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), torch.nn.AdaptiveAvgPool2d(1))
    with pytest.raises(ValueError, match="no nn.Linear"):
        tta.adapt(torch.nn.Sequential(model, torch.nn.Flatten()), loss="adacontrast")
