"""The loss-side plumbing RMT and SANTA share (tta/losses/rmt.py, santa.py).

Both official methods (mariodoebler/test-time-adaptation) add the prototype contrastive term
of tta/losses/prototypes.py to a self-training loss against a second model (RMT's mean
teacher, SANTA's frozen anchor), with the same source-data options, presets, checks and
projector bookkeeping; this base class holds them once so the two cannot drift apart.
"""

from __future__ import annotations

import torch
from torch import nn

from tta.context import LossContext
from tta.losses.base import Loss
from tta.losses.cotta import cotta_augment
from tta.losses.prototypes import (
    FeatureTap,
    PrototypeContrast,
    SourceData,
    check_aux,
    predicted_labels,
    source_pool,
)
from tta.presets import cifar_adam, imagenet_sgd


def check_int(value: object, option: str, needed_by: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{needed_by}: {option} must be an integer >= {minimum}, got {value!r}")
    return value


class PrototypeContrastLoss(Loss):
    """Self-training against a second model plus the source-prototype contrastive term."""

    default_norm = "batch"
    scores_logits_alone = False  # the objective needs a second model, the images, prototypes
    grad_scaling = True  # backward through LossContext.backward; the projector unscaled too
    source_data_option = "source_data"  # tta-run fills it from the benchmark's source split
    source_data_labels = True
    default_num_samples = 10000
    presets = {
        "cifar": cifar_adam(options={"aux_optimizer": "adam", "aux_lr": 1e-3}),
        "imagenet": imagenet_sgd(
            lr=0.01,
            options={"aux_optimizer": "sgd", "aux_lr": 0.01, "source_batch_size": 64},
        ),
    }
    reference_name = "second model"  # what __call__'s refusal says the loss needs

    def __init__(
        self,
        source_data: SourceData | None = None,
        num_samples: int = default_num_samples,
        lambda_ce_trg: float = 1.0,
        lambda_cont: float = 1.0,
        temperature: float = 0.1,
        projection_dim: int = 128,
        source_batch_size: int = 200,
        aux_optimizer: str = "adam",
        aux_lr: float = 1e-3,
    ) -> None:
        """Check and keep the options both methods take; build the projector's holder."""
        who = f"loss {self.name!r}"
        self.num_samples = check_int(num_samples, "num_samples", who)
        self.source_batch_size = check_int(source_batch_size, "source_batch_size", who)
        check_int(projection_dim, "projection_dim", who)
        for option, value in (("lambda_ce_trg", lambda_ce_trg), ("lambda_cont", lambda_cont)):
            if not value >= 0:
                raise ValueError(f"{who}: {option} must be >= 0, got {value!r}")
        if not temperature > 0:
            raise ValueError(f"{who}: temperature must be > 0, got {temperature!r}")
        check_aux(aux_optimizer, aux_lr, who)
        self.source_data = source_data
        self.lambda_ce_trg = lambda_ce_trg
        self.lambda_cont = lambda_cont
        self.temperature = temperature
        self.aux_optimizer = aux_optimizer
        self.aux_lr = aux_lr
        self.contrast = PrototypeContrast(projection_dim, temperature, aux_optimizer, aux_lr)
        self.tap: FeatureTap | None = None
        self.source_labels = "none"

    def labelled_source(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """The pool of source images with labels (the model's predictions when none were
        given, reported by `stats`); the loss drops its reference to `source_data`."""
        images, labels = source_pool(
            self.source_data, self.num_samples, model, f"loss {self.name!r}"
        )
        self.source_labels = "given" if labels is not None else "predicted"
        if labels is None:
            labels = predicted_labels(model, images, self.source_batch_size)
        self.source_data = None  # the pool (and the prototypes) hold what is needed
        return images, labels

    def views(
        self, context: LossContext, x: torch.Tensor, reference: nn.Module
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Features of the engine's forward, features and logits of the augmented images,
        and the reference model's logits of the images (no gradient)."""
        features = self.tap.take(len(x))  # of the engine's forward, which gave the logits
        features_aug, logits_aug = self.tap.forward(context.model, cotta_augment(x))
        with torch.no_grad():
            reference_logits = reference(x)
        context.count_forward(2)
        return features, features_aug, logits_aug, reference_logits

    def add_contrast(
        self, loss: torch.Tensor, features: torch.Tensor, features_aug: torch.Tensor
    ) -> torch.Tensor:
        """`loss` plus lambda_cont times the prototype contrastive term (when on)."""
        if self.lambda_cont <= 0:
            return loss
        self.contrast.zero_grad()
        return loss + self.lambda_cont * self.contrast.loss(features, features_aug)

    def backward_all(self, context: LossContext, loss: torch.Tensor) -> torch.Tensor:
        """Backward through the engine's scaler; the projector's gradients unscaled too."""
        context.backward(loss)
        if self.lambda_cont > 0:
            self.contrast.unscale(context.grad_scaler)
        return loss.detach()

    def after_update(self, context: LossContext) -> None:
        """The projector's step, after the engine's committed update."""
        if self.lambda_cont > 0:
            self.contrast.step()

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        raise TypeError(
            f"loss {self.name!r} needs its {self.reference_name} and source data; it runs in "
            "tta.adapt only"
        )

    def stats(self) -> dict[str, int | str]:
        """Where the source labels came from: given, predicted by the source model, or none."""
        return {"source_labels": self.source_labels}
