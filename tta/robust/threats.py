"""Accuracy under five perturbation types: clean, L-inf, L2, L1 and common corruptions.

The evaluation of Heuillet et al., "A Guide to Robust Generalization: The Impact of
Architecture, Pre-training, and Optimization Strategy" (2025, arXiv 2508.14079): one model,
one test split, accuracy on clean images, under L-inf, L2 and L1 attacks, and under common
corruptions. No official code was readable here; what is ours: L-inf and L2 by APGD-CE
(`tta.robust.apgd`, 10 steps by default), L1 by APGD-L1 (pyautoattack, when installed) or
our sparse L1 PGD (`tta.robust.l1`), budgets given by the caller, and corruptions = the 15
fmnist-c ones (`tta.data.corruptions`, CIFAR-10-C strengths, applied to the test images at
their own resolution, one severity, one seed per image as `tta.data.fmnist_c`), reported
as the mean accuracy over corruptions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from tta.data.corruptions import STANDARD_CORRUPTIONS, corrupt
from tta.data.fmnist_c import image_seed
from tta.robust.apgd import apgd_ce
from tta.robust.l1 import apgd_l1, pgd_l1
from tta.robust.state import attack_state

L1_ATTACKS = ("apgd", "pgd")
THREATS = ("clean", "linf", "l2", "l1", "corruption")


@dataclass(frozen=True)
class ThreatSpec:
    """Budgets (None: that threat is skipped), attack steps and the corruption setting."""

    linf: float | None = 8 / 255
    l2: float | None = 0.5
    l1: float | None = 12.0
    steps: int = 10
    l1_attack: str = "apgd"  # apgd (pyautoattack; falls back to pgd if missing) or pgd
    l1_steps: int = 20
    corruptions: tuple[str, ...] = STANDARD_CORRUPTIONS
    severity: int = 3
    batch_size: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("linf", "l2", "l1"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} budget must be a number > 0 or None, got {value!r}")
        if self.l1_attack not in L1_ATTACKS:
            raise ValueError(f"l1_attack must be one of {L1_ATTACKS}, got {self.l1_attack!r}")
        if not 1 <= self.severity <= 5:
            raise ValueError(f"severity must be in 1..5, got {self.severity}")
        unknown = sorted(set(self.corruptions) - set(STANDARD_CORRUPTIONS))
        if unknown:
            raise ValueError(f"unknown corruptions {unknown}; known: {STANDARD_CORRUPTIONS}")
        for name in ("steps", "l1_steps", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["corruptions"] = list(self.corruptions)
        return data


def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """Top-1 accuracy (%) of `net` (already in its attack state) on (x, y)."""
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y), batch_size):
            correct += int((net(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
    return 100.0 * correct / max(1, len(y))


def corrupted(x: torch.Tensor, name: str, severity: int, seed: int) -> torch.Tensor:
    """`x` (B, C, H, W) in [0, 1] under one corruption, at its own resolution; one-channel
    images go through the RGB corruption as three equal channels and come back as one."""
    channels = x.shape[1]
    if channels not in (1, 3):
        raise ValueError(f"corruptions take 1- or 3-channel images, got {channels} channels")
    images = (x.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    images = images.expand(-1, 3, -1, -1) if channels == 1 else images
    hwc = images.permute(0, 2, 3, 1).numpy()
    out = np.stack(
        [
            corrupt(np.ascontiguousarray(img), name, severity, image_seed(seed, name, severity, i))
            for i, img in enumerate(hwc)
        ]
    )
    result = torch.from_numpy(out).permute(0, 3, 1, 2).float().div(255).to(x.device)
    return result[:, :1] if channels == 1 else result


def attacked_accuracy(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: str, spec: ThreatSpec
) -> tuple[float, str]:
    """Accuracy (%) under one norm's attack, and the attack's name."""
    correct, name = 0, ""
    for i in range(0, len(y), spec.batch_size):
        xb, yb = x[i : i + spec.batch_size], y[i : i + spec.batch_size]
        if threat == "l1":
            result, name = _l1(net, xb, yb, spec)
        else:
            norm, eps = ("Linf", spec.linf) if threat == "linf" else ("L2", spec.l2)
            result = apgd_ce(net, xb, yb, eps=eps, norm=norm, steps=spec.steps, seed=spec.seed)
            name = f"apgd-ce {norm} eps={eps:.4g}, {spec.steps} steps"
        correct += int((~result.fooled).sum())
    return 100.0 * correct / max(1, len(y)), name


def _l1(net: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: ThreatSpec):
    if spec.l1_attack == "apgd":
        try:
            result = apgd_l1(net, x, y, eps=spec.l1, steps=spec.l1_steps, seed=spec.seed)
            return result, f"apgd-l1 (pyautoattack) eps={spec.l1:g}, {spec.l1_steps} steps"
        except ImportError:
            pass
    result = pgd_l1(net, x, y, eps=spec.l1, steps=spec.l1_steps, seed=spec.seed)
    return result, f"pgd-l1 (sparse steps) eps={spec.l1:g}, {spec.l1_steps} steps"


def threat_accuracies(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    spec: ThreatSpec | None = None,
    threats: Sequence[str] = THREATS,
) -> dict:
    """Accuracy (%) per threat, the attacks used and per-corruption accuracies.

    The model is evaluated in the state `tta.robust.state.attack_state` gives (eval mode,
    frozen, restored afterwards).
    """
    spec = spec or ThreatSpec()
    unknown = sorted(set(threats) - set(THREATS))
    if unknown:
        raise ValueError(f"unknown threats {unknown}; known: {THREATS}")
    out: dict = {"n": int(len(y)), "spec": spec.to_dict(), "attacks": {}}
    with attack_state(model) as net:
        if "clean" in threats:
            out["clean"] = accuracy(net, x, y, spec.batch_size)
        if "corruption" in threats and spec.corruptions:
            per = {
                name: accuracy(
                    net, corrupted(x, name, spec.severity, spec.seed), y, spec.batch_size
                )
                for name in spec.corruptions
            }
            out["per_corruption"] = per
            out["corruption"] = float(np.mean(list(per.values())))
    for threat in ("linf", "l2", "l1"):
        if threat in threats and getattr(spec, threat) is not None:
            out[threat], out["attacks"][threat] = attacked_accuracy(model, x, y, threat, spec)
    return out
