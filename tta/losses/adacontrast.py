"""`adacontrast`: Chen, Wang, Darrell and Ebrahimi, "Contrastive Test-Time Adaptation", CVPR 2022.

As the official code (DianCh/AdaContrast `target.py`, `moco/builder.py`) in its online form
of mariodoebler/test-time-adaptation (`classification/methods/adacontrast.py`, defaults in
`conf.py` `_C.ADACONTRAST`, `_C.M_TEACHER`, configs `cfgs/*/adacontrast.yaml`):

- Three views of each test image (tta/losses/moco_augment.py): a weak one (random flip) and
  two strong ones (MoCo-v2 light), drawn per image.
- Pseudo-labels: the student's prediction on the weak view, refined by soft kNN voting
  (`knn_soft_vote`): the `num_neighbors=10` bank entries nearest to the student's weak-view
  features (cosine distance) average their stored probabilities, and the label is the
  argmax of that average. During the first `warmup_samples=1024` images (counted before
  each batch; with batch 200 the first 6 batches) the label is the plain argmax.
- Feature bank (`update_bank`): the momentum encoder's features and probabilities on the
  weak views, written after the update; it grows by concatenation until it holds at least
  `queue_size=16384` entries, then its oldest entries are overwritten in a ring (with the
  official pointer arithmetic).
- MoCo memory (`MemoryQueue`): `queue_size` normalized keys, initialized random (normal,
  normalized) with random labels; after each instance-logit computation the momentum
  encoder's keys of the second strong view and the batch's pseudo-labels replace the oldest.
- Momentum (key) encoder: a copy of the model updated before each key forward as
  k <- m k + (1 - m) theta over every parameter (`momentum=0.999`, cotta's `ema_update`).
- Loss: alpha CE(student(strong_1), pseudo-label) + beta InfoNCE + eta sum_c pbar_c log
  pbar_c (pbar the batch mean of the strong-view probabilities; "weak_strong"), alpha =
  beta = eta = 1. InfoNCE: logits [q.k, q.memory] / T (`temperature=0.07`, the configs'
  CONTRAST.TEMPERATURE), target the positive; `contrast_type="class_aware"` masks the
  memory entries whose label equals the sample's pseudo-label. As the official code, the
  labels used for the mask are those after the memory update, the features those before.
- BatchNorm: every adaptation forward (student and momentum encoder) runs with the
  BatchNorm layers in train mode (batch statistics, running statistics updated with
  momentum 0.1), as the official `model.train()`; predictions use eval mode (running
  statistics), as its `model.eval()`. So `default_norm = "source"` (the model's BatchNorm
  as it is) and the loss switches the modes itself.
- Predictions returned: the student's logits on the test images after the update (the
  official `forward` predicts after `forward_and_adapt`).
- Every parameter trains (`default_params = "all"`).

Mixed precision (`amp`): bfloat16 and float16 (one backward, through
`LossContext.backward`); the memory queue and the feature bank are kept in float32.

Presets (`presets`): the official configs for `cifar10_c` and `imagenet_c`: SGD lr 2e-4,
momentum 0.9, weight decay 1e-4, Nesterov; batch 200 (`cifar`) and 64 (`imagenet`).

Deviations: the engine's SGD is not Nesterov and has no weight decay in the presets (the
engine's `weight_decay` is not a preset field; pass it to `tta.adapt`); the engine's own
forward of the test images (before the update) is spent and its logits unused (one forward
more per batch than the official five); only BatchNorm layers are put in train mode (the
official `model.train()` also switches dropout, which the benchmarks' models do not have);
the features are the input of the model's last `nn.Linear` (the official splits the model
into encoder and classifier per architecture); the blur (see moco_augment.py). A sample
filter given to the engine (`keep`) restricts the batch first.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from tta.checks import require_images
from tta.classes import last_linear
from tta.context import LossContext
from tta.losses.base import Loss
from tta.losses.cotta import ema_update
from tta.losses.moco_augment import strong_view, weak_view
from tta.presets import cifar_adam, imagenet_sgd
from tta.registry import LOSSES

CONTRAST_TYPES = ("class_aware", "nearest")


@contextmanager
def batchnorm_train(model: nn.Module) -> Iterator[None]:
    """BatchNorm layers in train mode inside the block, back to their modes after it."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    modes = [m.training for m in norms]
    try:
        for m in norms:
            m.train()
        yield
    finally:
        for m, mode in zip(norms, modes, strict=True):
            m.train(mode)


def classifier(model: nn.Module) -> nn.Linear:
    """The model's last nn.Linear, whose input is the feature vector, or a clear error."""
    found = last_linear(model)
    if found is None:
        raise ValueError(
            f"loss 'adacontrast' contrasts the features that enter the classifier, found as the "
            f"input of the last nn.Linear layer, but {type(model).__name__} has no nn.Linear; "
            "use a model whose classifier is an nn.Linear"
        )
    return found[1]


def features_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(input of the model's last nn.Linear, flattened; logits) of one forward."""
    captured: list[torch.Tensor] = []
    hook = classifier(model).register_forward_hook(lambda m, i, o: captured.append(i[0]))
    try:
        logits = model(x)
    finally:
        hook.remove()
    if len(captured) != 1 or captured[0].shape[0] != x.shape[0]:
        raise RuntimeError(
            "loss 'adacontrast' takes the features entering the model's last nn.Linear; it "
            "must run once per forward, on the whole batch"
        )
    return captured[0].flatten(1), logits


@torch.no_grad()
def knn_soft_vote(
    features: torch.Tensor, bank_features: torch.Tensor, bank_probs: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels, probabilities): the mean stored probabilities of the k nearest bank entries
    by cosine distance 1 - <f/|f|, b/|b|>, and their argmax."""
    distances = 1 - F.normalize(features, dim=1) @ F.normalize(bank_features, dim=1).T
    nearest = distances.sort(dim=1).indices[:, :k]
    probs = bank_probs[nearest].mean(1)
    return probs.argmax(1), probs


class MemoryQueue:
    """MoCo's memory: `size` keys (columns of `features`, D x K) with labels, a ring buffer."""

    def __init__(self, dim: int, size: int, num_classes: int, device: torch.device) -> None:
        self.features = F.normalize(torch.randn(dim, size, device=device), dim=0)
        self.labels = torch.randint(0, num_classes, (size,), device=device)
        self.pointer = 0

    @torch.no_grad()
    def push(self, keys: torch.Tensor, labels: torch.Tensor) -> None:
        size = self.features.shape[1]
        idx = torch.arange(self.pointer, self.pointer + len(keys), device=keys.device) % size
        self.features[:, idx] = keys.T.to(self.features.dtype)
        self.labels[idx] = labels
        self.pointer = (self.pointer + len(keys)) % size


@torch.no_grad()
def update_bank(bank: dict, features: torch.Tensor, probs: torch.Tensor, queue_size: int) -> None:
    """The official `update_labels`: grow to at least `queue_size`, then overwrite in a ring."""
    start = bank["ptr"]
    end = start + len(features)
    if bank["features"].shape[0] < queue_size:
        bank["features"] = torch.cat([bank["features"], features.to(bank["features"].dtype)])
        bank["probs"] = torch.cat([bank["probs"], probs.to(bank["probs"].dtype)])
    else:
        idx = torch.arange(start, end, device=features.device) % len(bank["features"])
        bank["features"][idx] = features.to(bank["features"].dtype)
        bank["probs"][idx] = probs.to(bank["probs"].dtype)
    bank["ptr"] = end % len(bank["features"])


def instance_loss(
    logits_ins: torch.Tensor,
    pseudo_labels: torch.Tensor,
    memory_labels: torch.Tensor,
    class_aware: bool,
) -> torch.Tensor:
    """InfoNCE with the positive at index 0; class-aware: same-label negatives masked out."""
    if class_aware:
        mask = torch.ones_like(logits_ins, dtype=torch.bool)
        mask[:, 1:] = pseudo_labels.view(-1, 1) != memory_labels
        logits_ins = logits_ins.masked_fill(~mask, float("-inf"))
    target = torch.zeros(len(logits_ins), dtype=torch.long, device=logits_ins.device)
    return F.cross_entropy(logits_ins, target)


def diversity_loss(logits: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """sum_c pbar_c log pbar_c: minus the entropy of the batch-mean prediction."""
    mean = logits.softmax(1).mean(0)
    return (mean * torch.log(mean + eps)).sum()


@LOSSES.register("adacontrast")
class AdaContrastLoss(Loss):
    """Contrastive learning with a memory queue, kNN-refined pseudo-labels, momentum encoder."""

    name = "adacontrast"
    default_params = "all"
    default_norm = "source"  # the loss switches BatchNorm to train mode for its forwards
    scores_logits_alone = False  # the objective needs augmented views of the images
    grad_scaling = True  # its one backward goes through LossContext.backward (float16-safe)
    presets = {
        "cifar": cifar_adam(optimizer="sgd", lr=2e-4, momentum=0.9),
        "imagenet": imagenet_sgd(lr=2e-4),
    }

    def __init__(
        self,
        queue_size: int = 16384,
        momentum: float = 0.999,
        temperature: float = 0.07,
        num_neighbors: int = 10,
        warmup_samples: int = 1024,
        contrast_type: str = "class_aware",
        alpha: float = 1.0,
        beta: float = 1.0,
        eta: float = 1.0,
    ) -> None:
        for option, value in (("queue_size", queue_size), ("num_neighbors", num_neighbors)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"loss 'adacontrast': {option} must be a positive integer, got {value!r}"
                )
        if not 0 <= momentum <= 1 or not temperature > 0 or warmup_samples < 0:
            raise ValueError(
                "loss 'adacontrast': momentum must be in [0, 1], temperature > 0 and "
                f"warmup_samples >= 0; got {momentum!r}, {temperature!r}, {warmup_samples!r}"
            )
        if contrast_type not in CONTRAST_TYPES:
            raise ValueError(
                f"loss 'adacontrast': contrast_type must be one of {', '.join(CONTRAST_TYPES)}, "
                f"got {contrast_type!r}"
            )
        self.queue_size = queue_size
        self.momentum = float(momentum)
        self.temperature = float(temperature)
        self.num_neighbors = num_neighbors
        self.warmup_samples = warmup_samples
        self.class_aware = contrast_type == "class_aware"
        self.alpha, self.beta, self.eta = float(alpha), float(beta), float(eta)
        self.key_encoder: nn.Module | None = None
        self.source_key_encoder: dict[str, torch.Tensor] | None = None
        self.reset()

    def check_model(self, model: nn.Module) -> None:
        require_images(model, "loss 'adacontrast'", "learns from augmented views of images")
        classifier(model)

    def configure(self, model: nn.Module) -> None:
        self.key_encoder = copy.deepcopy(model).requires_grad_(False)
        self.source_key_encoder = copy.deepcopy(self.key_encoder.state_dict())

    def reset(self) -> None:
        """Key encoder back to the source; empty bank, fresh random memory, warm-up again."""
        if self.key_encoder is not None:
            self.key_encoder.load_state_dict(self.source_key_encoder)
        self.memory: MemoryQueue | None = None
        self.bank: dict = {"features": None, "probs": None, "ptr": 0}
        self.n_seen = 0
        self._weak: torch.Tensor | None = None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        raise TypeError("loss 'adacontrast' needs the images; it runs inside tta.adapt only")

    @torch.no_grad()
    def pseudo_labels(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Argmax during the warm-up, then the kNN soft vote over the bank."""
        refine = self.n_seen >= self.warmup_samples
        if not refine:
            self.n_seen += len(features)
        if refine and self.bank["features"] is not None:
            return knn_soft_vote(
                features, self.bank["features"], self.bank["probs"], self.num_neighbors
            )[0]
        return logits.argmax(1)

    def objective(self, context: LossContext, x: torch.Tensor) -> torch.Tensor:
        """The AdaContrast loss of a batch; pushes the keys into the memory queue."""
        model, key_encoder = context.model, self.key_encoder
        weak, query, key = weak_view(x), strong_view(x), strong_view(x)
        self._weak = weak
        with batchnorm_train(model), batchnorm_train(key_encoder):
            feats_w, logits_w = features_and_logits(model, weak)
            labels = self.pseudo_labels(feats_w.detach(), logits_w.detach())
            ema_update(key_encoder, model, self.momentum)
            feats_q, logits_q = features_and_logits(model, query)
            with torch.no_grad():
                keys = F.normalize(features_and_logits(key_encoder, key)[0], dim=1)
        context.count_forward(3)
        if self.memory is None:
            self.memory = MemoryQueue(keys.shape[1], self.queue_size, logits_w.shape[1], x.device)
        q = F.normalize(feats_q, dim=1)
        positive = (q * keys).sum(1, keepdim=True)
        negative = q @ self.memory.features.clone()
        logits_ins = torch.cat([positive, negative], dim=1) / self.temperature
        self.memory.push(keys, labels)
        loss_ins = instance_loss(logits_ins, labels, self.memory.labels, self.class_aware)
        loss_cls = F.cross_entropy(logits_q, labels)
        loss = self.alpha * loss_cls + self.beta * loss_ins
        if self.eta > 0:
            loss = loss + self.eta * diversity_loss(logits_q)
        return loss

    def backward(
        self,
        context: LossContext,
        x: torch.Tensor,
        logits: torch.Tensor,
        keep: torch.Tensor | None,
    ) -> torch.Tensor | None:
        loss = self.objective(context, x if keep is None else x[keep])
        context.backward(loss)
        return loss.detach()

    @torch.no_grad()
    def after_update(self, context: LossContext) -> None:
        """The bank learns the key encoder's features and predictions of the weak views."""
        weak, self._weak = self._weak, None
        if weak is None:
            return
        with batchnorm_train(self.key_encoder):
            features, logits = features_and_logits(self.key_encoder, weak)
        context.count_forward()
        if self.bank["features"] is None:
            self.bank["features"] = features.new_empty(0, features.shape[1], dtype=torch.float32)
            self.bank["probs"] = logits.new_empty(0, logits.shape[1], dtype=torch.float32)
        update_bank(self.bank, features, logits.float().softmax(1), self.queue_size)

    @torch.no_grad()
    def output(self, context: LossContext, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The student's logits on the test images after the update (eval-mode BatchNorm)."""
        context.count_forward()
        return context.model(x)
