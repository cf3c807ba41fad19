"""`t3a`: Iwasawa & Matsuo, "Test-Time Classifier Adjustment Module for Model-Agnostic Domain
Generalization", NeurIPS 2021 (official code: matsuolab/T3A, `domainbed/adapt_algorithms.py`,
class `T3A`; its protocol in `domainbed/scripts/unsupervised_adaptation.py`).

Training-free (`adapts = False`): the model is never changed (eval mode, source BatchNorm
statistics, as the official featurizer); only its linear classifier is replaced, batch by
batch, by class prototypes built from the test features seen so far.

- Split: the featurizer is everything before the model's last `nn.Linear` (in module
  order), whose input (the penultimate features z, captured by a forward hook, as LAME's)
  must be (batch, features); that layer is the classifier (weight W, bias b).
- Warm-up supports: the rows of W, one per class, labelled argmax(W W^T + b) with entropy
  H(softmax(W W^T + b)) (the official `warmup_supports`, `warmup_labels`, `warmup_ent`).
- Per batch: p = W z + b; each sample joins the supports with the label argmax p and the
  entropy H(softmax(p)). Then the entropy filter (`select_supports`): per class, the
  `filter_k` supports of lowest entropy are kept (the rest are dropped for good), the kept
  supports ordered by class, then by entropy.
- Prediction: prototypes c_k = normalize(sum of the L2-normalized supports labelled k);
  logits z . c_k (z itself not normalized; no bias), the official `z @ normalize(weights)`.
  The batch is classified with supports that include its own samples, as the official
  forward (supports are updated before predicting).
- `reset()` goes back to the warm-up supports.

Defaults: `filter_k=100`. The official protocol selects filter_K on held-out data from
{1, 5, 20, 50, 100, -1}; 100 is the value of that grid used here without selection.

Presets (`presets`): no gradient step, so only the batch size matters: 200 for the `cifar`
family (the continual protocol), 64 for `imagenet` (optimizers recorded, unused).

Deviations: `filter_k=-1` keeps every support (no filter), as the paper describes; the
official slice `[:-1]` drops each class's highest-entropy support instead. Ties in entropy
keep the arrival order (a stable sort; the official sort is unstable). Features are used in
float32 whatever the autocast dtype. Layer selectors do not apply (nothing is trained) and
are refused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tta.context import LossContext
from tta.functional import softmax_entropy
from tta.losses.base import Loss
from tta.presets import cifar_adam, imagenet_sgd
from tta.registry import LOSSES


def classifier_of(model: nn.Module, needed_by: str = "loss 't3a'") -> nn.Linear:
    """The model's last `nn.Linear` (module order): the classifier on the features."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(
            f"{needed_by} replaces the model's linear classifier, found as the last nn.Linear "
            f"layer, but {type(model).__name__} has no nn.Linear; use a model whose "
            "classifier is an nn.Linear on (batch, features)"
        )
    return linears[-1]


def select_supports(
    entropy: torch.Tensor, labels: torch.Tensor, num_classes: int, filter_k: int
) -> torch.Tensor:
    """Indices of the supports kept: per class the `filter_k` of lowest entropy (-1: all),
    ordered by class, then by entropy (ties in arrival order)."""
    kept = []
    for k in range(num_classes):
        members = (labels == k).nonzero().flatten()
        order = torch.sort(entropy[members], stable=True).indices
        members = members[order]
        kept.append(members if filter_k == -1 else members[:filter_k])
    return torch.cat(kept)


def prototype_logits(
    z: torch.Tensor, supports: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """z . c_k, c_k the normalized sum of the normalized supports of class k (0 if none)."""
    one_hot = F.one_hot(labels, num_classes).to(supports.dtype)
    weights = F.normalize(supports, dim=1).t() @ one_hot
    return z @ F.normalize(weights, dim=0)


@LOSSES.register("t3a")
class T3ALoss(Loss):
    """Training-free classifier adjustment with entropy-filtered per-class support sets."""

    name = "t3a"
    adapts = False
    refuses_layer_selectors = True
    presets = {"cifar": cifar_adam(), "imagenet": imagenet_sgd()}

    def __init__(self, filter_k: int = 100) -> None:
        if (
            isinstance(filter_k, bool)
            or not isinstance(filter_k, int)
            or not (filter_k >= 1 or filter_k == -1)
        ):
            raise ValueError(
                f"loss 't3a': filter_k is the number of supports kept per class (>= 1, or -1 "
                f"for all), got {filter_k!r}"
            )
        self.filter_k = filter_k
        self.classifier: nn.Linear | None = None
        self._hook = None
        self._features: torch.Tensor | None = None
        self._warmup: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.supports = self.labels = self.entropy = None

    def check_model(self, model: nn.Module) -> None:
        classifier_of(model)

    @torch.no_grad()
    def configure(self, model: nn.Module) -> None:
        if self._hook is not None:
            self._hook.remove()
        self.classifier = classifier_of(model)
        self._hook = self.classifier.register_forward_hook(self._capture)
        weight = self.classifier.weight.detach().float().clone()
        bias = None if self.classifier.bias is None else self.classifier.bias.detach().float()
        p = F.linear(weight, weight, bias)
        self._warmup = (weight, p.argmax(1), softmax_entropy(p))
        self.reset()

    def _capture(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self._features = inputs[0].detach()

    def reset(self) -> None:
        """Back to the warm-up supports (the classifier's weight rows)."""
        if self._warmup is not None:
            self.supports, self.labels, self.entropy = self._warmup
        self._features = None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        raise TypeError("loss 't3a' adjusts outputs only and has no objective to minimize")

    @torch.no_grad()
    def output(self, context: LossContext, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Add the batch to the supports, filter them, classify by the prototypes."""
        z, self._features = self._features, None
        if z is None or z.shape[0] != x.shape[0] or z.ndim != 2:
            raise RuntimeError(
                "loss 't3a' found no (batch, features) input of the model's last nn.Linear for "
                "this batch: that layer must be the classifier, run once per forward"
            )
        with torch.autocast(z.device.type, enabled=False):  # prototypes in float32
            return self._adjust(z.float())

    def _adjust(self, z: torch.Tensor) -> torch.Tensor:
        weight = self.classifier.weight.float()
        bias = None if self.classifier.bias is None else self.classifier.bias.float()
        p = F.linear(z, weight, bias)
        supports = torch.cat([self.supports.to(z.device), z])
        labels = torch.cat([self.labels.to(z.device), p.argmax(1)])
        entropy = torch.cat([self.entropy.to(z.device), softmax_entropy(p)])
        kept = select_supports(entropy, labels, weight.shape[0], self.filter_k)
        self.supports, self.labels, self.entropy = supports[kept], labels[kept], entropy[kept]
        return prototype_logits(z, self.supports, self.labels, weight.shape[0])

    def stats(self) -> dict[str, int]:
        return {"n_supports": 0 if self.labels is None else int(self.labels.numel())}
