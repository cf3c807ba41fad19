"""Expected robustness (Ngnawé et al., "Robust Fine-Tuning from Non-Robust Pretrained Models:
Mitigating Suboptimal Transfer with Epsilon-Scheduling", ICLR 2026, arXiv 2509.23325).

`E.adv = (1 / eps_g) * integral_0^eps_g Acc_eps d eps`: robust accuracy averaged over
budgets uniform in [0, eps_g], estimated by the trapezoid rule (scipy) on a grid of step
1/255 with `Acc_0` the clean accuracy and each `Acc_eps` measured with APGD-CE, 10 steps,
L-inf (the paper's protocol; the norm, steps, restarts and grid are options). Reported as
Clean / Adv. (at eps_g) / E.adv, in %.

One shortcut, exact for what an attack finds: a sample fooled at a smaller budget counts
as fooled at every larger one (its perturbation lies in the larger ball), so each budget
attacks only the samples still robust. Robust accuracy is then monotone along the grid
and at most what independent runs per budget report. The model is attacked in the state
`tta.robust.state` describes (eval, frozen, restored afterwards).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from tta.robust.apgd import apgd_ce
from tta.robust.common import check_norm
from tta.robust.state import attack_state


def budget_grid(eps_max: float, step: float = 1 / 255) -> list[float]:
    """0, step, 2 step, ..., eps_max (eps_max closes the grid if it is not a multiple)."""
    if eps_max <= 0 or step <= 0:
        raise ValueError(f"eps_max and step must be positive, got {eps_max}, {step}")
    n = int(round(eps_max / step))
    grid = [k * step for k in range(n + 1) if k * step < eps_max - 1e-12]
    return grid + [eps_max]


def trapezoid_mean(values: list[float], grid: list[float]) -> float:
    """`(1 / (grid[-1] - grid[0])) * integral of values over grid`, trapezoid rule."""
    from scipy.integrate import trapezoid

    if len(values) != len(grid) or len(grid) < 2:
        raise ValueError("need one value per grid point and at least two points")
    return float(trapezoid(values, grid) / (grid[-1] - grid[0]))


@dataclass
class ExpectedRobustness:
    """Accuracies (%) along the grid; `clean` = Acc_0, `adv` = Acc_{eps_g}, `expected` = E.adv."""

    grid: list[float]
    accuracy: list[float]
    protocol: dict
    seconds: float
    clean_pass_seconds: float
    attacked: list[int] = field(default_factory=list)  # samples attacked at each budget > 0

    @property
    def clean(self) -> float:
        return self.accuracy[0]

    @property
    def adv(self) -> float:
        return self.accuracy[-1]

    @property
    def expected(self) -> float:
        return trapezoid_mean(self.accuracy, self.grid)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(clean=self.clean, adv=self.adv, expected=self.expected)
        out["grid_255"] = [round(e * 255, 6) for e in self.grid]
        return out

    def table(self) -> str:
        rows = [f"{'eps':>9}  {'accuracy %':>10}"]
        rows += [
            f"{e * 255:>5.2f}/255  {a:>10.2f}"
            for e, a in zip(self.grid, self.accuracy, strict=True)
        ]
        eps_g = f"{self.grid[-1] * 255:.4g}/255"
        rows.append(
            f"Clean {self.clean:.2f} | Adv.@{eps_g} {self.adv:.2f} | E.adv {self.expected:.2f}"
        )
        return "\n".join(rows)


def expected_robustness(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps_max: float = 8 / 255,
    grid_step: float = 1 / 255,
    steps: int = 10,
    restarts: int = 1,
    norm: str = "Linf",
    batch_size: int = 250,
    seed: int = 0,
) -> ExpectedRobustness:
    """Clean and robust accuracy on the grid, and E.adv, of `model` on (`images`, `labels`)."""
    check_norm(norm)
    grid = budget_grid(eps_max, grid_step)
    start = time.perf_counter()
    with attack_state(model) as net:
        with torch.no_grad():
            predictions = torch.cat(
                [
                    net(images[b : b + batch_size]).argmax(1)
                    for b in range(0, len(images), batch_size)
                ]
            )
        clean_seconds = time.perf_counter() - start
        robust = predictions == labels
        accuracy, attacked = [100.0 * float(robust.float().mean())], []
        for k, eps in enumerate(grid[1:], start=1):
            todo = robust.nonzero().flatten()
            attacked.append(int(todo.numel()))
            for b in range(0, todo.numel(), batch_size):
                index = todo[b : b + batch_size]
                result = apgd_ce(
                    net, images[index], labels[index], eps, norm, steps, restarts, seed=seed + k
                )
                robust[index[result.fooled]] = False
            accuracy.append(100.0 * float(robust.float().mean()))
    protocol = {
        "attack": "apgd-ce",
        "norm": norm,
        "steps": steps,
        "restarts": restarts,
        "rho": 0.75,
        "eps_max": eps_max,
        "grid_step": grid_step,
        "grid": grid,
        "seed": seed,
        "n_images": int(len(images)),
        "batch_size": batch_size,
        "model_state": "eval, frozen (tta.robust.state)",
        "fooled_carries_over": True,
    }
    return ExpectedRobustness(
        grid, accuracy, protocol, time.perf_counter() - start, clean_seconds, attacked
    )
