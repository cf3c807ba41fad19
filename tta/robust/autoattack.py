"""AutoAttack through `pyautoattack` (the AutoAttack authors' package, fra31/auto-attack on
PyPI as `pyautoattack`): the standard ensemble (APGD-CE, APGD-T, FAB-T, Square), a custom
list of its attacks, and FAB as a minimum-norm attack (eps = inf) for input margins.

Optional: install with `pip install pyautoattack` (or `pip install tta[robust]`); it is
imported only here, inside the functions. The model is attacked in the state
`tta.robust.state` describes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from tta.robust.common import AttackResult, check_images, check_norm, lp_norm
from tta.robust.state import attack_state

AUTOATTACK_ATTACKS = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")
MISSING = (
    "AutoAttack needs the package pyautoattack (the AutoAttack authors' code): "
    "pip install pyautoattack, or pip install 'tta[robust]'"
)


def autoattack_class() -> Any:
    """`pyautoattack.AutoAttack`, or an ImportError that says how to install it."""
    try:
        from pyautoattack import AutoAttack
    except ImportError as error:
        raise ImportError(MISSING) from error
    return AutoAttack


def make_autoattack(
    net: nn.Module,
    eps: float,
    norm: str,
    version: str,
    attacks: list[str] | None,
    seed: int,
    device: torch.device,
) -> Any:
    if attacks is not None:
        unknown = sorted(set(attacks) - set(AUTOATTACK_ATTACKS))
        if unknown:
            raise ValueError(f"unknown AutoAttack attacks {unknown}; known: {AUTOATTACK_ATTACKS}")
        if version != "custom":
            raise ValueError("a list of attacks needs version='custom'")
    elif version == "custom":
        raise ValueError(f"version='custom' needs attacks, a list out of {AUTOATTACK_ATTACKS}")
    adversary = autoattack_class()(
        net, attacks=attacks, device=device, eps=eps, norm=norm, seed=seed, version=version
    )
    adversary.verbose = False
    return adversary


def autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: str = "Linf",
    version: str = "standard",
    attacks: list[str] | None = None,
    seed: int = 0,
    batch_size: int = 250,
) -> AttackResult:
    """AutoAttack's `run_standard_evaluation` ('standard', 'plus', 'rand', or 'custom' with
    `attacks`); `fooled` is judged on the returned points."""
    check_norm(norm)
    check_images(x, y)
    with attack_state(model) as net:
        adversary = make_autoattack(net, eps, norm, version, attacks, seed, x.device)
        x_adv, _ = adversary.run_standard_evaluation(x.detach(), y, batch_size=batch_size)
        with torch.no_grad():
            fooled = net(x_adv).argmax(1) != y
    return AttackResult(x_adv.detach(), fooled)


def fab_margins(
    model: nn.Module, x: torch.Tensor, norm: str = "Linf", seed: int = 0, batch_size: int = 250
) -> tuple[torch.Tensor, torch.Tensor]:
    """Input margins by FAB with eps = inf, untargeted, relative to the predicted labels.

    As the margin-consistency code (ngnawejonas/margin-consistency, `eval.py`:
    `AutoAttack(model, norm, eps=inf, version='custom', attacks_to_run=['fab'])` on the
    predicted labels; AutoAttack's FAB defaults: 5 restarts, 100 iterations, which with
    eps = inf run only on samples not yet fooled). The margin is `||x - x_adv||`; a sample
    FAB does not flip gets `inf` (the official code would record 0). Returns (margins,
    adversarial points).
    """
    check_norm(norm)
    with attack_state(model) as net:
        with torch.no_grad():
            predicted = net(x).argmax(1)
        result = autoattack(net, x, predicted, math.inf, norm, "custom", ["fab"], seed, batch_size)
    margins = lp_norm(result.x_adv - x, norm)
    margins[~result.fooled] = math.inf
    return margins, result.x_adv
