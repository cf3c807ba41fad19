"""`lame`: Boudiaf et al., "Parameter-free Online Test-time Adaptation", CVPR 2022.

Laplacian Adjusted Maximum-likelihood Estimation, as the official code (fiveai/LAME,
`src/adaptation/lame.py`, `src/config/defaults.py`, `configs/method/best/LAME`): the model
is not changed (`adapts = False`, no gradient step; it runs in eval mode with its source
BatchNorm statistics); only its output is adjusted, batch by batch.

- Unary term: -log(p + 1e-10), p = softmax(logits).
- Features: the input of the model's last `nn.Linear` (the penultimate features, captured by
  a forward hook registered in `configure`), L2-normalized.
- Affinity (`affinity="knn"`, `knn=5`): W[i, j] = 1 for the k nearest neighbours j of i
  (Euclidean, the point itself excluded), not symmetrized (`force_symmetry=False`).
  Also `"rbf"`: exp(-d^2 / (2 s^2)) with s the mean distance to the k-th nearest point
  (itself included), and `"linear"`: feature dot products. The repository's
  `defaults.py` has `LAME_AFFINITY='rbf'` and its best overall config sets only
  `LAME_KNN=5` (and an unused `LAME_SIGMA=1.0`); kNN with k=5 is our default.
- Concave-convex bound iterations (`laplacian_optimization`): Y <- softmax(-unary +
  lambda W Y) from Y = softmax(-unary), at most `max_steps=100` times, stopping when the
  energy sum(unary Y - lambda (lambda W Y) Y + Y log Y) changes by at most 1e-8 relative
  (the official energy, with its lambda applied twice; `bound_lambda=1`).
- Predictions returned: log Y (so softmax and argmax of the output are those of Y).

Presets (`presets`): no gradient step, so only the batch size matters: 200 for the `cifar`
family, 64 for `imagenet` (the optimizers of the common protocols are recorded, unused).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tta.context import LossContext
from tta.losses.base import Loss
from tta.presets import cifar_adam, imagenet_sgd
from tta.registry import LOSSES

AFFINITIES = ("knn", "rbf", "linear")
EXACT = "donot_use_mm_for_euclid_dist"  # d(i, i) = 0 exactly, as the official norm


def last_linear(model: nn.Module) -> nn.Linear:
    """The model's last `nn.Linear` (in module order): its input is the feature vector."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(
            f"loss 'lame' needs the features that enter the classifier, found as the input of "
            f"the last nn.Linear layer, but {type(model).__name__} has no nn.Linear. "
            "Use a model whose classifier is an nn.Linear."
        )
    return linears[-1]


def knn_affinity(features: torch.Tensor, knn: int) -> torch.Tensor:
    """W[i, j] = 1 if j is among the k nearest neighbours of i (i itself excluded)."""
    n = features.shape[0]
    dist = torch.cdist(features, features, compute_mode=EXACT)
    neighbours = dist.topk(min(knn + 1, n), dim=-1, largest=False).indices[:, 1:]
    return torch.zeros(n, n, dtype=features.dtype, device=features.device).scatter_(
        1, neighbours, 1.0
    )


def rbf_affinity(features: torch.Tensor, knn: int) -> torch.Tensor:
    """exp(-d^2 / (2 s^2)), s = mean distance to the k-th nearest point (itself included)."""
    dist = torch.cdist(features, features, compute_mode=EXACT)
    kth = dist.topk(min(knn, features.shape[0]), dim=-1, largest=False).values[:, -1]
    sigma = kth.mean()
    return torch.exp(-(dist**2) / (2 * sigma**2))


def affinity_matrix(features: torch.Tensor, kind: str = "knn", knn: int = 5) -> torch.Tensor:
    if kind == "knn":
        return knn_affinity(features, knn)
    if kind == "rbf":
        return rbf_affinity(features, knn)
    if kind == "linear":
        return features @ features.t()
    raise ValueError(f"unknown LAME affinity {kind!r}; known: {', '.join(AFFINITIES)}")


def _energy(y: torch.Tensor, unary: torch.Tensor, pairwise: torch.Tensor, lam: float) -> float:
    return float((unary * y - lam * pairwise * y + y * torch.log(y.clip(1e-20))).sum())


def laplacian_optimization(
    unary: torch.Tensor, kernel: torch.Tensor, bound_lambda: float = 1.0, max_steps: int = 100
) -> torch.Tensor:
    """LAME's bound iterations: Y <- softmax(-unary + lambda kernel Y) until the energy settles."""
    y = (-unary).softmax(-1)
    old_energy = float("inf")
    for i in range(max_steps):
        pairwise = bound_lambda * kernel.matmul(y)
        y = (-unary + pairwise).softmax(-1)
        energy = _energy(y, unary, pairwise, bound_lambda)
        if i > 1 and abs(energy - old_energy) <= 1e-8 * abs(old_energy):
            break
        old_energy = energy
    return y


def lame_probabilities(
    logits: torch.Tensor,
    features: torch.Tensor,
    affinity: str = "knn",
    knn: int = 5,
    bound_lambda: float = 1.0,
    max_steps: int = 100,
    force_symmetry: bool = False,
) -> torch.Tensor:
    """LAME's adjusted class probabilities of a batch, from its logits and features."""
    unary = -torch.log(logits.softmax(1) + 1e-10)
    kernel = affinity_matrix(F.normalize(features.flatten(1), p=2, dim=-1), affinity, knn)
    if force_symmetry:
        kernel = 0.5 * (kernel + kernel.t())
    return laplacian_optimization(unary, kernel, bound_lambda, max_steps)


@LOSSES.register("lame")
class LAMELoss(Loss):
    """Output-only Laplacian-regularized adjustment of the predictions; no weight changes."""

    name = "lame"
    adapts = False
    presets = {"cifar": cifar_adam(), "imagenet": imagenet_sgd()}

    def __init__(
        self,
        affinity: str = "knn",
        knn: int = 5,
        bound_lambda: float = 1.0,
        max_steps: int = 100,
        force_symmetry: bool = False,
    ) -> None:
        if affinity not in AFFINITIES:
            raise ValueError(f"unknown LAME affinity {affinity!r}; known: {', '.join(AFFINITIES)}")
        if knn < 1 or max_steps < 1:
            raise ValueError(f"knn and max_steps must be >= 1, got {knn} and {max_steps}")
        self.affinity = affinity
        self.knn = knn
        self.bound_lambda = bound_lambda
        self.max_steps = max_steps
        self.force_symmetry = force_symmetry
        self._features: torch.Tensor | None = None
        self._hook = None

    def check_model(self, model: nn.Module) -> None:
        last_linear(model)

    def configure(self, model: nn.Module) -> None:
        if self._hook is not None:
            self._hook.remove()
        self._hook = last_linear(model).register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self._features = inputs[0].detach()

    def reset(self) -> None:
        self._features = None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        raise TypeError("loss 'lame' adjusts outputs only and has no objective to minimize")

    def output(self, context: LossContext, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """log Y: the log of LAME's adjusted probabilities for this batch."""
        features, self._features = self._features, None
        if features is None or features.shape[0] != logits.shape[0]:
            raise RuntimeError(
                "loss 'lame' found no features of this batch: the model's last nn.Linear "
                "must run once per forward, on the whole batch"
            )
        probabilities = lame_probabilities(
            logits.detach(),
            features,
            self.affinity,
            self.knn,
            self.bound_lambda,
            self.max_steps,
            self.force_symmetry,
        )
        return probabilities.clamp_min(1e-20).log()
