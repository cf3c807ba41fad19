"""T3A: support selection and prototypes by hand, and step for step against a re-statement of
the official `T3A.forward` / `select_supports` (matsuolab/T3A, domainbed/adapt_algorithms.py)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_net
from torch import nn

import tta
from tta.functional import softmax_entropy
from tta.losses.t3a import prototype_logits, select_supports


def test_select_supports_keeps_the_k_lowest_entropy_per_class_by_hand():
    entropy = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.2, 0.8, 0.4])
    labels = torch.tensor([0, 0, 1, 0, 1, 1, 2])
    # class 0: 1 (0.1), 3 (0.3), 0 (0.9); class 1: 4 (0.2), 2 (0.5), 5 (0.8); class 2: 6
    assert select_supports(entropy, labels, 3, 2).tolist() == [1, 3, 4, 2, 6]
    assert select_supports(entropy, labels, 3, 1).tolist() == [1, 4, 6]
    assert select_supports(entropy, labels, 3, -1).tolist() == [1, 3, 0, 4, 2, 5, 6]
    assert select_supports(entropy, labels, 4, 5).tolist() == [1, 3, 0, 4, 2, 5, 6]  # class 3: none


def test_prototype_logits_by_hand():
    supports = torch.tensor([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]])
    labels = torch.tensor([0, 0, 1])
    z = torch.tensor([[1.0, 1.0], [2.0, -1.0]])
    # class 0: (0.6, 0.8) + (0, 1) = (0.6, 1.8), normalized; class 1: (1, 0); class 2: none
    c0 = torch.tensor([0.6, 1.8]) / torch.tensor([0.6, 1.8]).norm()
    expected = torch.stack([torch.stack([z[i] @ c0, z[i, 0], torch.tensor(0.0)]) for i in range(2)])
    assert torch.allclose(prototype_logits(z, supports, labels, 3), expected, atol=1e-6)


class OfficialT3A:
    """The official T3A forward with adapt=True, re-stated on a featurizer/classifier split."""

    def __init__(self, featurizer, classifier: nn.Linear, filter_k: int) -> None:
        self.featurizer, self.classifier, self.filter_k = featurizer, classifier, filter_k
        self.num_classes = classifier.out_features
        with torch.no_grad():
            self.supports = classifier.weight.data.clone()
            warm = classifier(self.supports)
        self.labels = F.one_hot(warm.argmax(1), self.num_classes).float()
        self.ent = softmax_entropy(warm)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        z = self.featurizer(x)
        p = self.classifier(z)
        self.supports = torch.cat([self.supports, z])
        self.labels = torch.cat([self.labels, F.one_hot(p.argmax(1), self.num_classes).float()])
        self.ent = torch.cat([self.ent, softmax_entropy(p)])
        y_hat = self.labels.argmax(1)
        everything = torch.arange(len(self.ent))
        kept = []
        for k in range(self.num_classes):
            order = torch.sort(self.ent[y_hat == k]).indices
            kept.append(everything[y_hat == k][order][: self.filter_k])
        kept = torch.cat(kept)
        self.supports, self.labels, self.ent = (
            self.supports[kept],
            self.labels[kept],
            self.ent[kept],
        )
        weights = F.normalize(self.supports, dim=1).T @ self.labels
        return z @ F.normalize(weights, dim=0)


def featurizer_of(net: nn.Module):
    def features(x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(net.bn1(net.conv1(x)))
        return torch.relu(net.bn2(net.conv2(out))).mean((2, 3))

    return features


@pytest.mark.parametrize("filter_k", [1, 3, 100])
def test_step_for_step_against_the_official_forward(filter_k):
    model = make_tiny_net()
    reference = copy.deepcopy(model)
    official = OfficialT3A(featurizer_of(reference), reference.fc, filter_k)
    adapted = tta.adapt(model, loss="t3a", filter_k=filter_k)
    assert torch.equal(adapted.loss.supports, model.fc.weight)  # warm-up: the weight rows
    generator = torch.Generator().manual_seed(5)
    for _ in range(4):
        x = torch.rand(12, 3, 8, 8, generator=generator)
        got, expected = adapted(x), official(x)
        assert torch.allclose(got, expected, atol=1e-5)
        assert torch.allclose(adapted.loss.supports, official.supports, atol=1e-6)
        assert torch.equal(adapted.loss.labels, official.labels.argmax(1))
    assert adapted.loss.stats()["n_supports"] == len(official.ent)
    if filter_k == 1:  # one support per predicted class at most
        assert len(official.ent) <= model.fc.out_features


def test_the_model_is_untouched_and_reset_restores_the_warm_up(images):
    model = make_tiny_net()
    before = copy.deepcopy(model.state_dict())
    adapted = tta.adapt(model, loss="t3a", filter_k=-1)
    first = adapted(images)
    adapted(images)
    assert len(adapted.loss.labels) == model.fc.out_features + 2 * len(images)  # no filter
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not adapted.adapts and adapted.counters.n_backward == 0
    adapted.reset()
    assert torch.equal(adapted.loss.supports, model.fc.weight)
    assert torch.allclose(adapted(images), first)


def test_t3a_refuses_layer_selectors_and_bad_options():
    with pytest.raises(ValueError, match="trains no parameter.*use selector 'all'"):
        tta.adapt(make_tiny_net(), loss="t3a", selector="gala")
    for bad in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match="filter_k is the number of supports"):
            tta.adapt(make_tiny_net(), loss="t3a", filter_k=bad)
    conv_only = nn.Sequential(nn.Conv2d(3, 5, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ValueError, match="has no nn.Linear"):
        tta.adapt(conv_only, loss="t3a")


def test_t3a_changes_predictions_from_the_source(images):
    """With supports from the test batch the prototypes differ from the weight rows."""
    model = make_tiny_net()
    source = copy.deepcopy(model)(images)
    adapted = tta.adapt(model, loss="t3a")
    assert not torch.allclose(adapted(images).softmax(1), source.softmax(1), atol=1e-3)
