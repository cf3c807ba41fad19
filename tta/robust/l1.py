"""L1 attacks: PGD with sparse steepest ascent (written here) and APGD-L1 (through pyautoattack).

`pgd_l1` is the L1 PGD of Tramèr & Boneh, "Adversarial Training and Robustness for
Multiple Perturbations", NeurIPS 2019 (their "SLIDE", official code
ftramer/MultiRobustness, `attacks.py`, `SparseL1Descent`): at each step the gradient is
kept on its largest coordinates only (those at or above the `sparsity` quantile of |g|),
signed and scaled to unit L1 norm, then the iterate moves `step_size` along it and is
projected back. The L-inf / L2 steepest-ascent steps of `tta.robust.pgd` would waste the L1
budget on every pixel; the sparse step is the L1 ball's steepest-ascent direction with ties
spread over the top coordinates.

Deviations: (1) coordinates that cannot move (a pixel at 0 with a negative gradient, or at
1 with a positive one) are left out before the quantile is taken, as APGD-L1 does (Croce &
Hein, "Mind the box: l1-APGD for sparse adversarial attacks on image classifiers", ICML
2021), so the step is not spent on clipped pixels; (2) projection is the exact Euclidean
projection onto the L1 ball (Duchi et al., ICML 2008, the sort-based algorithm) followed by
clamping into [0, 1]. Clamping only shrinks each coordinate's perturbation, so the result
is in the ball and the box, though not always the exact projection onto their
intersection (APGD-L1's `L1_projection` computes that one); (3) default step size
`2.5 * eps / steps` and a zero start, as `tta.robust.pgd`'s convention.

`apgd_l1` calls the AutoAttack authors' `APGDAttack(norm="L1")` (pyautoattack, optional:
`pip install 'tta[robust]'`); its output is clipped into the ball and the box (float
error), and torch's global RNG, which APGDAttack reseeds, is restored afterwards.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tta.robust.common import AttackResult, budget, check_images
from tta.robust.pgd import loss_and_grad
from tta.robust.state import attack_state

MISSING = (
    "APGD-L1 needs the package pyautoattack (the AutoAttack authors' code): "
    "pip install pyautoattack, or pip install 'tta[robust]'; or use pgd_l1"
)


def l1_norm(delta: torch.Tensor) -> torch.Tensor:
    """Per-sample L1 norm, shape (B,)."""
    return delta.flatten(1).abs().sum(1)


def project_l1_ball(delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each sample of `delta` onto {||d||_1 <= eps} (Duchi et al.
    2008): soft-threshold |d| by the theta that makes its L1 norm eps; samples inside stay."""
    flat = delta.flatten(1)
    radius = eps.flatten()
    magnitude = flat.abs()
    sorted_abs, _ = magnitude.sort(dim=1, descending=True)
    cumulative = sorted_abs.cumsum(dim=1)
    index = torch.arange(1, flat.shape[1] + 1, device=flat.device, dtype=flat.dtype)
    feasible = sorted_abs * index > (cumulative - radius[:, None])
    rho = feasible.to(torch.int64).cumsum(dim=1).argmax(dim=1)  # last feasible index
    theta = (cumulative.gather(1, rho[:, None]).squeeze(1) - radius) / (rho + 1).to(flat.dtype)
    projected = flat.sign() * (magnitude - theta[:, None]).clamp(min=0.0)
    inside = magnitude.sum(1) <= radius
    out = torch.where(inside[:, None], flat, projected)
    return out.view_as(delta)


def project_l1(x_adv: torch.Tensor, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Into the L1 ball around `x`, then into [0, 1] (see the module's deviation 2)."""
    delta = project_l1_ball(x_adv - x, eps)
    return (x + delta).clamp(0.0, 1.0)


def sparse_direction(grad: torch.Tensor, x_adv: torch.Tensor, sparsity: float) -> torch.Tensor:
    """sign(g) on the coordinates with |g| at or above the `sparsity` quantile among those
    that can move, scaled to unit L1 norm per sample (zero where the gradient is zero)."""
    flat = grad.flatten(1)
    point = x_adv.flatten(1)
    movable = ~(((point <= 0.0) & (flat < 0)) | ((point >= 1.0) & (flat > 0)))
    magnitude = torch.where(movable, flat.abs(), torch.zeros_like(flat))
    count = movable.sum(1)
    keep = torch.clamp(((1.0 - sparsity) * count.to(flat.dtype)).ceil().to(torch.int64), min=1)
    ranked, _ = magnitude.sort(dim=1, descending=True)
    threshold = ranked.gather(1, (keep - 1)[:, None])
    chosen = (magnitude >= threshold) & (magnitude > 0)
    direction = torch.where(chosen, flat.sign(), torch.zeros_like(flat))
    scale = direction.abs().sum(1, keepdim=True).clamp(min=1.0)
    return (direction / scale).view_as(grad)


def pgd_l1(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | torch.Tensor,
    steps: int = 20,
    sparsity: float = 0.95,
    step_size: float | None = None,
    early_stop: bool = True,
    seed: int = 0,
) -> AttackResult:
    """Untargeted L1 PGD with sparse steps (see the module docstring) on cross-entropy.

    `sparsity` in [0, 1): the fraction of movable coordinates left out of each step (0.95:
    the top 5% by |gradient|). With `early_stop` a sample keeps its first misclassified
    iterate. `seed` is accepted for the attacks' common signature (this one draws nothing).
    """
    check_images(x, y)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity is a fraction in [0, 1), got {sparsity}")
    x = x.detach()
    eps_t = budget(eps, x)
    alpha = 2.5 * eps_t / steps if step_size is None else torch.full_like(eps_t, step_size)
    with attack_state(model) as net:
        x_adv = x.clone()
        with torch.no_grad():
            fooled = net(x).argmax(1) != y
        result = x.clone()
        for _ in range(steps):
            _, grad, logits = loss_and_grad(net, x_adv, y)
            now = (logits.argmax(1) != y) & ~fooled
            result[now] = x_adv[now]
            fooled |= now
            with torch.no_grad():
                stepped = project_l1(
                    x_adv + alpha * sparse_direction(grad, x_adv, sparsity), x, eps_t
                )
                keep = fooled.view(-1, *([1] * (x.ndim - 1)))
                x_adv = torch.where(keep, x_adv, stepped) if early_stop else stepped
        with torch.no_grad():
            wrong = net(x_adv).argmax(1) != y
    if not early_stop:
        return AttackResult(x_adv.detach(), wrong)
    now = wrong & ~fooled
    result[now] = x_adv[now]
    return AttackResult(result.detach(), fooled | now)


def apgd_l1(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int = 100,
    restarts: int = 1,
    seed: int = 0,
) -> AttackResult:
    """APGD-CE in the L1 ball (Croce & Hein 2021) from pyautoattack's `APGDAttack`."""
    check_images(x, y)
    if not (isinstance(eps, int | float) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    try:
        from pyautoattack.autopgd_base import APGDAttack
    except ImportError as error:
        raise ImportError(MISSING) from error
    with attack_state(model) as net, torch.random.fork_rng(devices=_cuda_devices(x)):
        attack = APGDAttack(
            net,
            n_iter=steps,
            norm="L1",
            n_restarts=restarts,
            eps=float(eps),
            seed=seed,
            loss="ce",
            device=x.device,
        )
        x_adv = attack.perturb(x.detach().clone(), y).detach()
        # pyautoattack's projection is exact up to float error: clip into the ball and box
        x_adv = project_l1(x_adv, x, budget(eps, x))
        with torch.no_grad():
            fooled = net(x_adv).argmax(1) != y
    return AttackResult(x_adv, fooled)


def _cuda_devices(x: torch.Tensor) -> list[int]:
    return [x.device.index or 0] if x.device.type == "cuda" else []
