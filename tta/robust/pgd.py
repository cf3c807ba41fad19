"""PGD with a random start (Madry et al., "Towards Deep Learning Models Resistant to
Adversarial Attacks", ICLR 2018), L-inf and L2, on cross-entropy.

Step: L-inf `x + alpha * sign(g)`, L2 `x + alpha * g / ||g||_2`, then projection onto the
eps-ball and [0, 1]. Default step size `alpha = 2.5 * eps / steps` (the convention of
Madry et al.'s `robustness` library). With `early_stop` (default) a sample keeps the first
iterate that is misclassified, which is what robust accuracy asks for; `early_stop=False`
returns the last iterate of every sample (what adversarial training uses).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tta.robust.common import (
    AttackResult,
    budget,
    check_images,
    check_norm,
    make_generator,
    normalize,
    project,
    random_start,
)
from tta.robust.state import attack_state


def loss_and_grad(
    model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample cross-entropy, its gradient w.r.t. the input, and the logits."""
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x_adv)
        loss = F.cross_entropy(logits, y, reduction="none")
        (grad,) = torch.autograd.grad(loss.sum(), x_adv)
    return loss.detach(), grad.detach(), logits.detach()


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | torch.Tensor,
    norm: str = "Linf",
    steps: int = 10,
    step_size: float | None = None,
    random_init: bool = True,
    early_stop: bool = True,
    seed: int = 0,
) -> AttackResult:
    """Untargeted PGD on `model` (attacked as `tta.robust.state` says) around `x`, labels `y`."""
    check_norm(norm)
    check_images(x, y)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    x = x.detach()
    eps_t = budget(eps, x)
    alpha = 2.5 * eps_t / steps if step_size is None else torch.full_like(eps_t, step_size)
    generator = make_generator(seed, x.device)
    with attack_state(model) as net:
        x_adv = random_start(x, eps_t, norm, generator) if random_init else x.clone()
        with torch.no_grad():
            fooled = net(x).argmax(1) != y  # misclassified already: nothing to attack
        result = torch.where(_per_sample(fooled, x), x, x_adv)
        for _ in range(steps):
            _, grad, logits = loss_and_grad(net, x_adv, y)
            now = (logits.argmax(1) != y) & ~fooled
            result[now] = x_adv[now]
            fooled |= now
            with torch.no_grad():
                direction = grad.sign() if norm == "Linf" else normalize(grad, norm)
                stepped = project(x_adv + alpha * direction, x, eps_t, norm)
                x_adv = (
                    torch.where(_per_sample(fooled, x), x_adv, stepped) if early_stop else stepped
                )
        with torch.no_grad():
            wrong = net(x_adv).argmax(1) != y
    if not early_stop:  # the last iterate of every sample, judged as it is
        return AttackResult(x_adv.detach(), wrong)
    now = wrong & ~fooled
    result[now] = x_adv[now]
    return AttackResult(result.detach(), fooled | now)


def _per_sample(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, *([1] * (x.ndim - 1)))
