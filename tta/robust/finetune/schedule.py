"""The budget schedule eps(t) of Epsilon-Scheduling, and the learning-rate schedule.

Budget (Ngnawé et al., ICLR 2026, arXiv 2509.23325, section 4): `eps(t) = alpha(t) eps_g`
with the hinge `alpha(t) = 0` for t <= T1, `(t - T1) / (T2 - T1)` between, 1 for t >= T2
(T1 = T2: a hard switch at T1; T1 = T2 = 0: RFT-fix). `t` is in epochs and advances per
training step (`epoch + step / steps_per_epoch`), so the ramp is smooth within an epoch;
the paper states the schedule per epoch (a deviation of granularity only).

`auto` (the paper's automatic variant): T1 is the end of the first epoch after which the
validation clean accuracy has not exceeded its best by more than `tolerance` for `patience`
epochs; the ramp then runs to the start of the last epoch, so that epoch trains at eps_g.
Ours: if no plateau shows by the configured latest start (the config's T2), the ramp starts
there, so a run that keeps improving still ends robust.

Learning rate: AdamW's rate times a linear warm-up over `warmup_epochs` then a cosine decay
to 0 at the end (per step), as the paper's "AdamW with cosine schedule and warm-up".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def alpha_at(t: float, t1: float, t2: float) -> float:
    """The hinge alpha(t) in [0, 1] (see the module docstring)."""
    if t2 < t1:
        raise ValueError(f"T1 ({t1}) must not come after T2 ({t2})")
    if t < t1 or (t == t1 and t2 > t1):
        return 0.0
    if t >= t2:
        return 1.0
    return (t - t1) / (t2 - t1)


def epsilon_at(t: float, eps_g: float, t1: float, t2: float) -> float:
    """eps(t) = alpha(t) * eps_g."""
    return alpha_at(t, t1, t2) * eps_g


@dataclass
class EpsSchedule:
    """eps(t) for a run; for `auto` it learns T1 from `observe(epoch, val_clean)`."""

    kind: str
    eps_g: float
    t1: float  # auto: the latest start (our guard)
    t2: float  # auto: the start of the last epoch
    patience: int = 5
    tolerance: float = 0.02  # fraction of accuracy: 0.02 = 2 points
    found_t1: float | None = None  # auto: the plateau, once seen
    curve: list[float] = field(default_factory=list)  # auto: val clean accuracy, %

    @classmethod
    def from_config(cls, config: object) -> EpsSchedule:
        t1, t2 = config.hinges()
        return cls(config.schedule, config.eps, t1, t2, config.patience, config.tolerance)

    def hinges(self) -> tuple[float, float]:
        """(T1, T2) in force now."""
        if self.kind == "auto" and self.found_t1 is not None:
            return min(self.found_t1, self.t1), self.t2
        return self.t1, self.t2

    def __call__(self, t: float) -> float:
        t1, t2 = self.hinges()
        return epsilon_at(t, self.eps_g, t1, t2)

    def observe(self, epoch: int, val_clean: float) -> None:
        """After epoch `epoch` (0-based) with validation clean accuracy `val_clean` (%)."""
        if self.kind != "auto" or self.found_t1 is not None:
            return
        self.curve.append(float(val_clean))
        at = plateau_epoch(self.curve, self.patience, self.tolerance)
        if at is not None:
            self.found_t1 = float(at)

    def state(self) -> dict:
        return {"found_t1": self.found_t1, "curve": list(self.curve)}

    def load_state(self, state: dict) -> None:
        self.found_t1, self.curve = state["found_t1"], list(state["curve"])


def plateau_epoch(curve: list[float], patience: int, tolerance: float) -> int | None:
    """The epoch (a time in epochs: the end of epoch k is k + 1) at which `curve` (accuracy
    in %, one value per finished epoch) has gone `patience` epochs without beating its best
    by more than `tolerance` x 100 points; None while it has not."""
    best, since = -math.inf, 0
    for k, value in enumerate(curve):
        if value > best + 100.0 * tolerance:  # as Keras' EarlyStopping(min_delta)
            best, since = value, 0
        else:
            since += 1
            if since >= patience:
                return k + 1
    return None


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up from 1/warmup to 1 over `warmup` steps, then cosine from 1 to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
