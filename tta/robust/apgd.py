"""APGD-CE (Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", ICML 2020, Algorithm 1), L-inf and L2.

Step for step as the official code (fra31/auto-attack, `autopgd_base.py`,
`APGDAttack.attack_single_run` and `perturb`), written here:

- start: `x + eps * t / ||t||` (L-inf: t uniform in [-1, 1]^d; L2: t Gaussian), in [0, 1];
- step size `eta = 2 eps`; momentum: `z = P(x_k + eta * s(g))`, `x_{k+1} = P(x_k +
  a (z - x_k) + (1 - a)(x_k - x_{k-1}))` with `a = 1` at the first step and 0.75 after
  (s = sign for L-inf, g / ||g||_2 for L2; P = projection onto the ball and [0, 1]);
- checkpoints: the first after `max(int(0.22 N), 1)` steps, then intervals shrinking by
  `max(int(0.03 N), 1)` down to `max(int(0.06 N), 1)` (the paper's p_{j+1} = p_j +
  max(p_j - p_{j-1} - 0.03, 0.06));
- at a checkpoint a sample halves its step size and restarts from its best point (highest
  loss, with that point's gradient) when (1) the loss increased in at most `rho = 0.75` of
  the steps since the last checkpoint, or (2) its step size was not halved at the last
  checkpoint and its best loss has not improved since;
- a sample counts as fooled when any iterate is misclassified (that iterate is returned);
  samples misclassified before the attack are not attacked; restarts attack only the
  samples still robust, with fresh random starts from one generator seeded once.

Deviation: condition (1) compares the first step's loss with the loss at the starting
point, as the paper's algorithm; the official code compares it with a zero-initialised
row (so counts it as an increase whenever the loss is positive). Only the L-inf and L2
threat models (not L1) and the CE loss are written here; APGD-DLR and the targeted
versions are available through AutoAttack (`tta.robust.autoattack`).
"""

from __future__ import annotations

import torch
from torch import nn

from tta.robust.common import (
    AttackResult,
    budget,
    check_images,
    check_norm,
    make_generator,
    normalize,
    project,
)
from tta.robust.pgd import loss_and_grad
from tta.robust.state import attack_state

MOMENTUM = 0.75


def checkpoint_schedule(steps: int) -> tuple[int, int, int]:
    """(first interval, minimum interval, decrement) in steps, as the official code."""
    return max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)


def checkpoints(steps: int) -> list[int]:
    """The iteration indices (0-based) after which the step-size rule is checked."""
    interval, minimum, decrement = checkpoint_schedule(steps)
    out, at = [], interval - 1
    while at < steps:
        out.append(at)
        interval = max(interval - decrement, minimum)
        at += interval
    return out


def _apgd_run(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: torch.Tensor,
    norm: str,
    steps: int,
    rho: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One APGD run from a random start; returns (adversarial or start point, fooled,
    highest-loss iterate)."""
    if norm == "Linf":
        t = 2 * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 1
    else:
        t = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    x_adv = (x + eps * normalize(t, norm)).clamp(0.0, 1.0)
    loss, grad, logits = loss_and_grad(net, x_adv, y)
    fooled = logits.argmax(1) != y
    x_found = x_adv.clone()
    x_best, grad_best, loss_best = x_adv.clone(), grad.clone(), loss.clone()
    step = 2.0 * eps.clone()
    history = [loss]  # loss at x^(0), x^(1), ...
    interval, minimum, decrement = checkpoint_schedule(steps)
    since_check = 0
    best_at_last_check = loss_best.clone()
    halved_at_last_check = torch.ones_like(fooled)  # as the official code: (2) waits a check
    x_prev = x_adv.clone()
    for i in range(steps):
        with torch.no_grad():
            momentum_term = x_adv - x_prev
            x_prev = x_adv.clone()
            a = MOMENTUM if i > 0 else 1.0
            direction = grad.sign() if norm == "Linf" else normalize(grad, norm)
            z = project(x_adv + step * direction, x, eps, norm)
            x_adv = project(x_adv + a * (z - x_adv) + (1 - a) * momentum_term, x, eps, norm)
        loss, grad, logits = loss_and_grad(net, x_adv, y)
        wrong = logits.argmax(1) != y
        x_found[wrong] = x_adv[wrong]
        fooled |= wrong
        history.append(loss)
        improved = loss > loss_best
        x_best[improved] = x_adv[improved]
        grad_best[improved] = grad[improved]
        loss_best = torch.where(improved, loss, loss_best)
        since_check += 1
        if since_check == interval:
            recent = torch.stack(history[-interval - 1 :])
            increases = (recent[1:] > recent[:-1]).sum(0)
            oscillating = increases <= interval * rho
            stalled = ~halved_at_last_check & (best_at_last_check >= loss_best)
            halve = oscillating | stalled
            halved_at_last_check = halve
            best_at_last_check = loss_best.clone()
            if bool(halve.any()):
                step[halve] /= 2.0
                x_adv[halve] = x_best[halve]
                grad[halve] = grad_best[halve]
            interval = max(interval - decrement, minimum)
            since_check = 0
    return x_found, fooled, x_best


def apgd_ce(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | torch.Tensor,
    norm: str = "Linf",
    steps: int = 10,
    restarts: int = 1,
    rho: float = 0.75,
    seed: int = 0,
) -> AttackResult:
    """Untargeted APGD on cross-entropy around `x` with labels `y` (model frozen, see
    `tta.robust.state`). `eps` is one budget or one per sample."""
    check_norm(norm)
    check_images(x, y)
    if steps < 1 or restarts < 1:
        raise ValueError(f"steps and restarts must be >= 1, got {steps}, {restarts}")
    x = x.detach()
    eps_t = budget(eps, x)
    generator = make_generator(seed, x.device)
    with attack_state(model) as net:
        with torch.no_grad():
            fooled = net(x).argmax(1) != y
        x_adv = x.clone()
        for _ in range(restarts):
            todo = (~fooled).nonzero().flatten()
            if todo.numel() == 0:
                break
            found, success, _ = _apgd_run(
                net, x[todo], y[todo], eps_t[todo], norm, steps, rho, generator
            )
            x_adv[todo[success]] = found[success]
            fooled[todo[success]] = True
    return AttackResult(x_adv, fooled)


def apgd_ce_max_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | torch.Tensor,
    norm: str = "Linf",
    steps: int = 7,
    rho: float = 0.75,
    seed: int = 0,
) -> torch.Tensor:
    """APGD-CE as an inner maximisation for adversarial training: every sample is attacked
    (also those already misclassified) from one random start, and its highest-loss iterate
    comes back (Madry et al.'s max over the ball), not the first misclassified one that
    `apgd_ce` returns for evaluation."""
    check_norm(norm)
    check_images(x, y)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    x = x.detach()
    eps_t = budget(eps, x)
    with attack_state(model) as net:
        _, _, x_best = _apgd_run(net, x, y, eps_t, norm, steps, rho, make_generator(seed, x.device))
    return x_best.detach()
