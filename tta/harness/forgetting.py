"""Forgetting, as EATA (Niu et al., ICML 2022) reports it: error on clean source test images
before and after the stream.

The stream only ever adapts on shifted images; these clean images are evaluated by deep copies
of the adapted model (right after `tta.adapt` configured it, and after the stream), without
gradients and without adapting, so the measurement never touches the model being run.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from tta.data.base import Benchmark
from tta.engine import AdaptedModel
from tta.harness.stream import to_batch


def clean_images(
    benchmark: Benchmark, n: int, seed: int
) -> tuple[tuple[np.ndarray, np.ndarray] | None, str]:
    """(images, labels) of `n` clean test images, or None and why not (for the card)."""
    if n <= 0:
        return None, "off (--forgetting 0)"
    try:
        images, labels = benchmark.clean_samples(n, seed)
    except NotImplementedError as error:
        return None, f"skipped: {error}"
    return (images, np.asarray(labels)), f"{len(labels)} clean test images"


@torch.no_grad()
def clean_error(
    adapted: AdaptedModel,
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    device: torch.device,
) -> float:
    """Error (%) of a deep copy of `adapted` predicting `images` without adapting.

    The copy predicts with its current weights (`AdaptedModel.predict`) in batches of
    `batch_size`; a normalization mode that updates statistics on every forward (ema,
    robust) updates the copy's only.
    """
    model = copy.deepcopy(adapted)
    wrong = 0
    for start in range(0, len(labels), batch_size):
        logits = model.predict(to_batch(images[start : start + batch_size], device))
        wrong += int((logits.argmax(1).cpu().numpy() != labels[start : start + batch_size]).sum())
    return 100.0 * wrong / len(labels)
