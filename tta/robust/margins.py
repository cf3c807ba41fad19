"""Input and logit margins, and margin consistency (Ngnawé et al., "Detecting Brittle
Decisions for Free: Leveraging Margin Consistency in Deep Robust Classifiers", NeurIPS 2024;
code ngnawejonas/margin-consistency).

- Logit margin `d_out(x) = z_(1) - z_(2)`, top-1 minus top-2 logit (the paper's; cheap, on
  every sample).
- Input margin `d_in(x)`: the distance to the decision boundary around the *predicted*
  label, estimated by a minimum-norm attack. `method='fab'`: FAB, eps = inf (the paper's,
  through pyautoattack). `method='bisection'` (ours, no extra package): the smallest budget
  at which APGD-CE flips the prediction, found by doubling from `start` and then bisecting
  `iters` times, each success lowering the upper bound to the norm of the adversarial
  point found. It is an upper bound on the true margin (an attack failure proves nothing),
  exact up to `upper / 2**iters` where the attack is exact (e.g. linear models).
- Margin consistency: Kendall's tau-b between the two margins (scipy), as the paper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tta.robust.apgd import apgd_ce
from tta.robust.common import check_norm, lp_norm
from tta.robust.state import attack_state

MIN_NORM_METHODS = ("fab", "bisection")


def logit_margin(logits: torch.Tensor) -> torch.Tensor:
    """Top-1 minus top-2 logit per sample, shape (B,); >= 0."""
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be (B, C) with C >= 2, got {tuple(logits.shape)}")
    top2 = logits.detach().topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


@dataclass
class InputMargins:
    """`margins` (B,), inf where no adversarial point was found; how they were estimated."""

    margins: torch.Tensor
    method: str
    norm: str
    options: dict

    @property
    def n_failed(self) -> int:
        return int((~torch.isfinite(self.margins)).sum())


def bisection_margins(
    model: nn.Module,
    x: torch.Tensor,
    norm: str = "Linf",
    start: float = 1 / 255,
    upper: float = 1.0,
    iters: int = 8,
    steps: int = 10,
    seed: int = 0,
) -> torch.Tensor:
    """Per-sample smallest budget at which APGD-CE (`steps`) flips the predicted label.

    Doubling from `start` until the attack succeeds (at most `upper`), then `iters`
    bisection steps between the last failure and the best success; inf where even `upper`
    fails. All samples of the batch move together (one budget per sample).
    """
    check_norm(norm)
    if not 0 < start <= upper:
        raise ValueError(f"need 0 < start <= upper, got start={start}, upper={upper}")
    x = x.detach()
    with attack_state(model) as net:
        with torch.no_grad():
            predicted = net(x).argmax(1)
        n = x.shape[0]
        low = torch.zeros(n, dtype=x.dtype, device=x.device)
        high = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
        eps = torch.full((n,), float(start), dtype=x.dtype, device=x.device)
        call = 0

        def attack(at: torch.Tensor, index: torch.Tensor) -> None:
            nonlocal call
            call += 1
            result = apgd_ce(net, x[index], predicted[index], at, norm, steps, seed=seed + call)
            found = lp_norm(result.x_adv - x[index], norm)
            won, lost = index[result.fooled], index[~result.fooled]
            high[won] = torch.minimum(high[won], found[result.fooled])
            low[lost] = torch.maximum(low[lost], at[~result.fooled])

        searching = torch.ones(n, dtype=torch.bool, device=x.device)
        while bool(searching.any()):
            index = searching.nonzero().flatten()
            attack(eps[index], index)
            searching = ~torch.isfinite(high) & (eps < upper)
            eps = torch.where(searching, torch.clamp(2 * eps, max=upper), eps)
        for _ in range(iters):
            index = torch.isfinite(high).nonzero().flatten()
            if index.numel() == 0:
                break
            attack((low[index] + high[index]) / 2, index)
    return high


def input_margins(
    model: nn.Module,
    x: torch.Tensor,
    norm: str = "Linf",
    method: str = "fab",
    batch_size: int = 250,
    seed: int = 0,
    **options: float,
) -> InputMargins:
    """Input margins of `x` by `method` ('fab' or 'bisection'), in batches of `batch_size`.

    `options` go to `bisection_margins` (start, upper, iters, steps).
    """
    check_norm(norm)
    if method not in MIN_NORM_METHODS:
        raise ValueError(f"unknown minimum-norm method {method!r}; known: {MIN_NORM_METHODS}")
    if method == "fab" and options:
        raise ValueError(f"FAB takes no options here (AutoAttack's defaults), got {options}")
    parts = []
    with attack_state(model) as net:
        for begin in range(0, x.shape[0], batch_size):
            chunk = x[begin : begin + batch_size]
            if method == "fab":
                from tta.robust.autoattack import fab_margins

                parts.append(fab_margins(net, chunk, norm, seed, batch_size)[0])
            else:
                parts.append(bisection_margins(net, chunk, norm, seed=seed, **options))
    if method == "fab":
        recorded = {"attack": "FAB (pyautoattack)", "eps": "inf", "restarts": 5, "iters": 100}
    else:
        defaults = {"start": 1 / 255, "upper": 1.0, "iters": 8, "steps": 10}
        recorded = {"attack": "APGD-CE bisection", **defaults, **options}
    return InputMargins(torch.cat(parts), method, norm, recorded)


def kendall_tau(d_in: np.ndarray | torch.Tensor, d_out: np.ndarray | torch.Tensor) -> float:
    """Kendall's tau-b between input and logit margins (scipy.stats.kendalltau)."""
    from scipy.stats import kendalltau

    a, b = _numpy(d_in), _numpy(d_out)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"need two 1-D arrays of the same length >= 2, got {a.shape}, {b.shape}")
    return float(kendalltau(a, b).statistic)


def _numpy(values: np.ndarray | torch.Tensor) -> np.ndarray:
    if torch.is_tensor(values):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64)
