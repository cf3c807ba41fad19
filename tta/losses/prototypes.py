"""Source prototypes and the prototype contrastive term shared by RMT and SANTA.

Both official implementations (mariodoebler/test-time-adaptation,
`classification/methods/rmt.py` and `santa.py`, the contrastive loss integrated from
HobbitLong/SupContrast `losses.py`) do the same:

- Prototypes: the mean penultimate feature (the input of the classifier) of the labelled
  source images of each class, computed once with the model as configured for adaptation.
- For each test image, the prototype of highest cosine similarity to its feature.
- Contrastive term: the three views (nearest prototype, the test feature, the feature of its
  augmentation) of every image go through a projector (Linear(D, 128), ReLU,
  Linear(128, 128)), are L2-normalized and compared with a temperature-scaled dot product
  (`temperature=0.1`); SupCon with the views of one image as positives and every other view
  in the batch as negatives, averaged over all 3B anchors (the official `contrast_mode='all'`,
  `base_temperature = temperature`).
- The projector trains with the model, by the same optimizer and learning rate. The engine's
  optimizer holds the model's parameters only, so the projector gets its own optimizer
  (`aux_optimizer`, `aux_lr`), stepped after each committed update; set them to the run's
  (the presets do). Under float16 its gradients are unscaled with the engine's gradient
  scaler, and a step whose projector gradients overflowed is skipped.

Here the features are read by a forward hook on the model's last `nn.Linear` (as LAME's), so
any classifier whose head is an `nn.Linear` works. Deviation: a class without any source
image gets no prototype (the official mean of nothing is NaN).

Source data (`source_data`): labelled clean source images, as a pair (images, labels), or an
iterable of such pairs (tta-run passes the benchmark's source split this way); images are
floats (N, C, H, W) in the model's input range, labels integers (N,). Images alone (a
tensor, or an iterable of tensors) are accepted too: their labels are then the source
model's own predictions, which `stats()` reports (`source_labels`) as a deviation.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from tta.checks import check_input, input_kind, model_dtype
from tta.losses.buffers import frozen_buffers
from tta.losses.lame import last_linear

SourceData = (
    torch.Tensor
    | tuple[torch.Tensor, torch.Tensor]
    | Iterable[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]
)
AUX_OPTIMIZERS = ("adam", "sgd")


def _is_labelled_pair(item: object) -> bool:
    return (
        isinstance(item, tuple | list)
        and len(item) == 2
        and isinstance(item[1], torch.Tensor)
        and item[1].ndim == 1
        and not item[1].is_floating_point()
    )


def source_pool(
    data: SourceData, num_samples: int, model: nn.Module, needed_by: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Up to `num_samples` checked source images (on the model's device) and their labels
    (None when the data came without labels)."""
    pieces = [data] if isinstance(data, torch.Tensor) or _is_labelled_pair(data) else data
    num_classes = last_linear(model).out_features
    device = next(model.parameters()).device
    images, labels, remaining = [], [], num_samples
    for piece in pieces:
        labelled = _is_labelled_pair(piece)
        x = piece[0] if labelled else piece
        try:
            x = check_input(x, input_kind(model), None, model_dtype(model))[:remaining]
        except (TypeError, ValueError) as error:
            raise type(error)(f"{needed_by}, source_data: {error}") from error
        if labelled:
            y = piece[1][:remaining]
            if len(y) != len(x) or (len(y) and (y.min() < 0 or y.max() >= num_classes)):
                raise ValueError(
                    f"{needed_by}, source_data: labels must be one class index in "
                    f"[0, {num_classes}) per image; got {len(y)} labels for {len(x)} images"
                )
            labels.append(y.to(device).long())
        if labels and len(labels) != len(images) + 1:
            raise ValueError(
                f"{needed_by}, source_data: give every batch with labels, or none of them"
            )
        images.append(x.to(device))
        remaining -= len(x)
        if remaining <= 0:
            break
    if not images or sum(len(x) for x in images) == 0:
        raise ValueError(f"{needed_by}: source_data holds no images")
    return torch.cat(images), torch.cat(labels) if labels else None


class FeatureTap:
    """Keeps the input of the model's last `nn.Linear` (the features) of the latest forward,
    with its graph, so a loss can differentiate through it."""

    def __init__(self, model: nn.Module) -> None:
        self.features: torch.Tensor | None = None
        self._handle = last_linear(model).register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self.features = inputs[0].flatten(1)

    def forward(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, logits) of one forward of `model` on `x`."""
        logits = model(x)
        return self.take(len(x)), logits

    def take(self, batch_size: int) -> torch.Tensor:
        """The features of the latest forward (which must have been of `batch_size` samples)."""
        features, self.features = self.features, None
        if features is None or features.shape[0] != batch_size:
            raise RuntimeError(
                "the features of this batch were not found: the model's last nn.Linear must "
                "run once per forward, on the whole batch"
            )
        return features

    def remove(self) -> None:
        self._handle.remove()


def class_prototypes(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The mean feature of each class that has samples, in class order: (K, D)."""
    classes = labels.unique(sorted=True)
    return torch.stack([features[labels == c].mean(0) for c in classes])


def nearest_prototypes(prototypes: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """For each feature, the prototype of highest cosine similarity: (B, D)."""
    similarity = F.cosine_similarity(prototypes[:, None, :], features[None, :, :], dim=-1)
    return prototypes[similarity.argmax(0)]


def contrastive_loss(views: torch.Tensor, projector: nn.Module, temperature: float) -> torch.Tensor:
    """SupCon over (B, V, D) views: positives are the other views of the same sample.

    -(1 / VB) sum_i (1 / (V - 1)) sum_{p ~ i} log( exp(z_i.z_p / T) / sum_{j != i} exp(z_i.z_j / T) )
    with z the L2-normalized projections; view-major order as the official `torch.unbind`.
    """
    batch, n_views = views.shape[:2]
    z = F.normalize(projector(torch.cat(views.unbind(1))), p=2, dim=1)
    logits = z @ z.t() / temperature
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    log_prob = logits - logits.masked_fill(eye, float("-inf")).logsumexp(1, keepdim=True)
    same = torch.eye(batch, dtype=torch.bool, device=z.device).repeat(n_views, n_views) & ~eye
    return -(log_prob * same).sum(1).div(same.sum(1)).mean()


class PrototypeContrast:
    """Prototypes of the source features, the projector and its optimizer."""

    def __init__(
        self, projection_dim: int, temperature: float, aux_optimizer: str, aux_lr: float
    ) -> None:
        self.projection_dim = projection_dim
        self.temperature = temperature
        self.aux_optimizer = aux_optimizer
        self.aux_lr = aux_lr
        self.prototypes: torch.Tensor | None = None
        self.projector: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._initial: tuple[dict, dict] | None = None

    @torch.no_grad()
    def fit(
        self,
        model: nn.Module,
        tap: FeatureTap,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
    ) -> None:
        """Prototypes from the source pool; a fresh projector (global RNG) and optimizer."""
        with frozen_buffers(model):
            features = torch.cat(
                [tap.forward(model, chunk)[0] for chunk in images.split(batch_size)]
            )
        self.prototypes = class_prototypes(features.float(), labels)
        dim = features.shape[1]
        self.projector = nn.Sequential(
            nn.Linear(dim, self.projection_dim),
            nn.ReLU(),
            nn.Linear(self.projection_dim, self.projection_dim),
        ).to(device=features.device, dtype=features.dtype)
        params = list(self.projector.parameters())
        if self.aux_optimizer == "adam":
            self.optimizer = torch.optim.Adam(params, lr=self.aux_lr, betas=(0.9, 0.999))
        else:
            self.optimizer = torch.optim.SGD(params, lr=self.aux_lr, momentum=0.9)
        self._initial = copy.deepcopy((self.projector.state_dict(), self.optimizer.state_dict()))

    def loss(self, features: torch.Tensor, features_aug: torch.Tensor) -> torch.Tensor:
        """The contrastive term of a batch from its features and its augmentation's."""
        with torch.no_grad():
            anchors = nearest_prototypes(self.prototypes, features.detach().float())
        views = torch.stack([anchors.to(features.dtype), features, features_aug], dim=1)
        return contrastive_loss(views, self.projector, self.temperature)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def unscale(self, grad_scaler: torch.amp.GradScaler | None) -> None:
        """float16: divide the projector's gradients by the engine's loss scale, as the engine
        does for the model's, before the scale is updated."""
        if grad_scaler is not None:
            grad_scaler.unscale_(self.optimizer)

    def step(self) -> None:
        """The projector's step; skipped when a gradient overflowed (float16)."""
        grads = [p.grad for p in self.projector.parameters() if p.grad is not None]
        if grads and bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()):
            self.optimizer.step()
        self.zero_grad()

    def reset(self) -> None:
        """The projector and its optimizer back to their state right after `fit`."""
        if self._initial is not None:
            self.projector.load_state_dict(self._initial[0])
            self.optimizer.load_state_dict(self._initial[1])


def check_aux(aux_optimizer: str, aux_lr: float, needed_by: str) -> None:
    if aux_optimizer not in AUX_OPTIMIZERS:
        raise ValueError(
            f"{needed_by}: unknown aux_optimizer {aux_optimizer!r}; known: "
            f"{', '.join(AUX_OPTIMIZERS)}"
        )
    if not aux_lr > 0:
        raise ValueError(f"{needed_by}: aux_lr must be positive, got {aux_lr!r}")


@torch.no_grad()
def predicted_labels(model: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The model's argmax predictions, for source images given without labels."""
    with frozen_buffers(model):
        return torch.cat([model(chunk).argmax(1) for chunk in images.split(batch_size)])
