"""What every attack shares: threat models, per-sample budgets, projections, the result.

Images are in [0, 1]; an attack's output stays in [0, 1] and in the eps-ball around its
input (L-inf or L2), up to float rounding. `eps` may be one number or one per sample
(a tensor of shape (B,)), which the minimum-norm bisection in `tta.robust.margins` uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NORMS = ("Linf", "L2")


@dataclass
class AttackResult:
    """`x_adv`: the perturbed batch; `fooled`: prediction != label at `x_adv` (bool, (B,)).

    A sample misclassified before any perturbation counts as fooled and comes back as is.
    """

    x_adv: torch.Tensor
    fooled: torch.Tensor


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; known: {', '.join(NORMS)}")
    return norm


def check_images(x: torch.Tensor, y: torch.Tensor) -> None:
    """Refuse what the attacks cannot take: labels that do not match, values outside [0, 1]."""
    if not torch.is_tensor(x) or not x.is_floating_point() or x.ndim < 2:
        raise ValueError("attacks take a float batch (B, ...) of images in [0, 1]")
    if y.shape != (x.shape[0],):
        raise ValueError(f"labels must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    if x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise ValueError(
            f"attacks take images in [0, 1], got values in [{float(x.min()):.3g}, "
            f"{float(x.max()):.3g}]; move normalization inside the model"
        )


def budget(eps: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`eps` as a (B, 1, ..., 1) tensor broadcastable against `x` (one budget per sample)."""
    eps_t = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
    if eps_t.ndim == 0:
        eps_t = eps_t.expand(x.shape[0])
    if eps_t.shape != (x.shape[0],):
        raise ValueError(f"eps must be a number or a tensor of shape ({x.shape[0]},)")
    if bool((eps_t < 0).any()) or not bool(torch.isfinite(eps_t).all()):
        raise ValueError("eps must be finite and >= 0")
    return eps_t.view(-1, *([1] * (x.ndim - 1)))


def lp_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample norm of a batch of perturbations, shape (B,)."""
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "Linf" else flat.norm(p=2, dim=1)


def normalize(v: torch.Tensor, norm: str) -> torch.Tensor:
    """Each sample of `v` divided by its norm (as the official APGD's `normalize`)."""
    scale = lp_norm(v, norm).view(-1, *([1] * (v.ndim - 1)))
    return v / (scale + 1e-12)


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: torch.Tensor, norm: str) -> torch.Tensor:
    """Onto the eps-ball around `x`, then into [0, 1] (clamping never leaves the ball)."""
    if norm == "Linf":
        x_adv = torch.minimum(torch.maximum(x_adv, x - eps), x + eps)
    else:
        delta = x_adv - x
        length = lp_norm(delta, norm).view_as(eps)
        delta = delta * torch.clamp(eps / (length + 1e-12), max=1.0)
        x_adv = x + delta
    return x_adv.clamp(0.0, 1.0)


def random_start(
    x: torch.Tensor, eps: torch.Tensor, norm: str, generator: torch.Generator
) -> torch.Tensor:
    """A point drawn in the ball: L-inf uniform per pixel; L2 a Gaussian direction at a
    radius uniform in [0, eps]; clamped to [0, 1]."""
    if norm == "Linf":
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        delta = (2 * noise - 1) * eps
    else:
        direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        radius = torch.rand(eps.shape, generator=generator, device=x.device, dtype=x.dtype)
        delta = normalize(direction, norm) * radius * eps
    return (x + delta).clamp(0.0, 1.0)


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    """A private generator: attacks are reproducible and leave the global RNG untouched."""
    return torch.Generator(device=device).manual_seed(seed)
