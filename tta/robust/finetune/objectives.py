"""Training objectives: clean cross-entropy, Madry AT, TRADES; at eps = 0 each is a plain
clean step (no attack is run), which is what phase 1 of Epsilon-Scheduling costs.

- `at` (Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks",
  ICLR 2018): cross-entropy on an adversarial example, found by APGD-CE (the
  Epsilon-Scheduling paper's training attack, `tta.robust.apgd.apgd_ce_max_loss`: every
  sample's highest-loss iterate) or PGD (random start, step 2.5 eps / steps, last iterate).
- `trades` (Zhang et al., "Theoretically Principled Trade-off between Robustness and
  Accuracy", ICML 2019; official code yaodongyu/TRADES, `trades.py`): `CE(f(x), y) + beta *
  KL(p(x) || p(x'))`, the KL summed over classes and averaged over the batch, x' found by
  PGD on that KL from `x + 0.001 N(0, 1)`. Deviation: step size 2.5 eps / steps (theirs
  0.007 at eps 0.031 with 10 steps); the `attack` option does not apply to TRADES.

Attacks run with the model frozen in eval mode (`tta.robust.state`, as TRADES' code and
our PGD training); the loss is then taken in the protocol's training mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tta.robust.apgd import apgd_ce_max_loss
from tta.robust.common import budget, make_generator, project
from tta.robust.pgd import pgd
from tta.robust.state import attack_state


def adversarial_example(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    attack: str = "apgd",
    steps: int = 7,
    seed: int = 0,
) -> torch.Tensor:
    """The AT training example in the L-inf ball of radius `eps` around `x`."""
    if attack == "apgd":
        return apgd_ce_max_loss(model, x, y, eps, steps=steps, seed=seed)
    if attack == "pgd":
        return pgd(model, x, y, eps, steps=steps, early_stop=False, seed=seed).x_adv
    raise ValueError(f"unknown attack {attack!r}; known: apgd, pgd")


def trades_kl(logits_clean: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """KL(p_clean || p_adv), summed over classes, averaged over the batch (TRADES)."""
    return F.kl_div(F.log_softmax(logits_adv, 1), F.softmax(logits_clean, 1), reduction="batchmean")


def trades_example(
    model: nn.Module, x: torch.Tensor, eps: float, steps: int = 7, seed: int = 0
) -> torch.Tensor:
    """TRADES' inner maximisation: PGD (L-inf) on KL(p(x) || p(x')) from x + 0.001 N(0,1)."""
    x = x.detach()
    eps_t = budget(eps, x)
    step = 2.5 * eps_t / steps
    generator = make_generator(seed, x.device)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    with attack_state(model) as net:
        with torch.no_grad():
            p_clean = net(x)
        x_adv = project(x + 0.001 * noise, x, eps_t, "Linf")
        for _ in range(steps):
            x_adv = x_adv.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = trades_kl(p_clean, net(x_adv))
                (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = project(x_adv.detach() + step * grad.sign(), x, eps_t, "Linf")
    return x_adv.detach()


def objective_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    objective: str = "at",
    attack: str = "apgd",
    steps: int = 7,
    trades_beta: float = 1.0,
    seed: int = 0,
) -> tuple[torch.Tensor, bool]:
    """The batch loss (to backpropagate) and whether an attack ran."""
    if objective not in ("clean", "at", "trades"):
        raise ValueError(f"unknown objective {objective!r}; known: clean, at, trades")
    if objective == "clean" or eps <= 0:
        return F.cross_entropy(model(x), y), False
    if objective == "at":
        x_adv = adversarial_example(model, x, y, eps, attack, steps, seed)
        return F.cross_entropy(model(x_adv), y), True
    x_adv = trades_example(model, x, eps, steps, seed)
    logits = model(x)
    loss = F.cross_entropy(logits, y) + trades_beta * trades_kl(logits, model(x_adv))
    return loss, True
