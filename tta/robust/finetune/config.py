"""What one robust fine-tuning run is: a JSON-friendly configuration, checked on creation.

The method is Epsilon-Scheduling (Ngnawé et al., "Robust Fine-Tuning from Non-Robust
Pretrained Models: Mitigating Suboptimal Transfer with Epsilon-Scheduling", ICLR 2026,
arXiv 2509.23325; official code github.com/ngnawejonas/EpsilonScheduling, not readable
here): a pretrained backbone and a new linear head trained on a target task with an
adversarial budget `eps(t) = alpha(t) * eps_g` (see `schedule`). The defaults follow the
paper where it fixes a value (APGD-CE, 7 training / 10 evaluation steps, L-inf, T1 = 12
and T2 = 37 of 50 epochs as fractions 0.24 / 0.74, auto: patience 5, tolerance 2%, AdamW
with a cosine learning rate after a linear warm-up); epochs, images, batch size, learning
rate and weight decay are ours, sized for a CPU (the paper fine-tunes ImageNet backbones
for 50 epochs on GPUs).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

TASKS = ("digits", "fmnist-unseen")
BACKBONES = ("auto", "fmnist", "fmnist5")  # or a tta-run --model spec (timm:, <ckpt>,arch=)
PROTOCOLS = ("full", "linear", "partial")
OBJECTIVES = ("clean", "at", "trades")
ATTACKS = ("apgd", "pgd")
SCHEDULES = ("fixed", "linear", "auto", "warmup")
AUGMENTS = ("auto", "none", "crop+flip")


@dataclass
class FinetuneConfig:
    """One run. `t1`, `t2`: epochs (whole numbers >= 1) or fractions of the run (< 1).

    schedule: `fixed` eps_g from the start (RFT-fix, T1 = T2 = 0); `linear` 0 before T1, a
    linear ramp to eps_g at T2; `warmup` the ramp from T1 = 0 to T2; `auto` T1 when the
    validation clean accuracy has not improved by more than `tolerance` (a fraction,
    0.02 = 2 points) for `patience` epochs (at the latest at T2: our guard), ramp to the
    last epoch. `objective='clean'` ignores eps (plain fine-tuning).
    """

    task: str = "digits"
    backbone: str = "auto"
    protocol: str = "full"
    last_k: int = 1  # partial: the last k residual blocks (and the head) train
    objective: str = "at"
    trades_beta: float = 1.0
    attack: str = "apgd"
    train_steps: int = 7
    eval_steps: int = 10
    val_steps: int | None = None  # APGD-CE steps of the per-epoch validation (None: eval_steps)
    eps: float = 4 / 255
    schedule: str = "linear"
    t1: float = 0.24
    t2: float = 0.74
    patience: int = 5
    tolerance: float = 0.02
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_epochs: float = 1.0
    augment: str = "auto"  # auto: crop+flip for fmnist-unseen, none for digits
    n_train: int | None = None  # caps on the task's splits (None: all)
    n_val: int | None = 200
    n_test: int | None = 500
    split_seed: int = 0  # the train/val/test split; `seed` drives head, order, attacks
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        _choice("task", self.task, TASKS)
        if not self.backbone or not isinstance(self.backbone, str):
            raise ValueError(f"backbone must be one of {', '.join(BACKBONES)} or a model spec")
        _choice("protocol", self.protocol, PROTOCOLS)
        _choice("objective", self.objective, OBJECTIVES)
        _choice("attack", self.attack, ATTACKS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("augment", self.augment, AUGMENTS)
        _at_least("epochs", self.epochs, 1)
        _at_least("batch_size", self.batch_size, 1)
        _at_least("train_steps", self.train_steps, 1)
        _at_least("eval_steps", self.eval_steps, 1)
        if self.val_steps is not None:
            _at_least("val_steps", self.val_steps, 1)
        _at_least("patience", self.patience, 1)
        _at_least("last_k", self.last_k, 1)
        for name in ("n_train", "n_val", "n_test"):
            if getattr(self, name) is not None:
                _at_least(name, getattr(self, name), 2)
        if not (math.isfinite(self.eps) and 0 <= self.eps <= 1):
            raise ValueError(f"eps must be in [0, 1] (e.g. 4/255 = {4 / 255:.5f}), got {self.eps}")
        if self.objective != "clean" and self.eps == 0:
            raise ValueError(f"objective {self.objective!r} needs eps > 0; use objective='clean'")
        for name in ("lr", "weight_decay", "trades_beta", "tolerance", "warmup_epochs"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0) or (name == "lr" and value == 0):
                raise ValueError(f"{name} must be a finite number >= 0 (lr > 0), got {value}")
        if self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) must be below epochs ({self.epochs})"
            )
        t1, t2 = self.hinges()
        if t1 > t2:
            raise ValueError(f"t1 ({self.t1} -> epoch {t1:g}) must not come after t2 ({t2:g})")

    def hinges(self) -> tuple[float, float]:
        """(T1, T2) in epochs as the schedule uses them (auto: T1 is only the latest start,
        T2 the last epoch)."""
        t1, t2 = epochs_of("t1", self.t1, self.epochs), epochs_of("t2", self.t2, self.epochs)
        if self.schedule == "fixed":
            return 0.0, 0.0
        if self.schedule == "warmup":
            return 0.0, t2
        if self.schedule == "auto":
            return min(t2, float(self.epochs - 1)), float(self.epochs - 1)
        return t1, t2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> FinetuneConfig:
        """From a dict (results.json, a sweep cell); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown FinetuneConfig keys {unknown}; known: {sorted(known)}")
        return cls(**values)


def epochs_of(name: str, value: float, epochs: int) -> float:
    """A hinge in epochs: a fraction (< 1) of `epochs`, or a whole number of epochs."""
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be >= 0 (epochs, or a fraction < 1), got {value}")
    if value < 1:
        return float(value * epochs)
    if value != int(value):
        raise ValueError(f"{name}={value}: use a whole number of epochs or a fraction below 1")
    if value > epochs:
        raise ValueError(f"{name}={value:g} epochs is past the run's {epochs} epochs")
    return float(value)


def _choice(name: str, value: str, known: tuple[str, ...]) -> None:
    if value not in known:
        raise ValueError(f"unknown {name} {value!r}; known: {', '.join(known)}")


def _at_least(name: str, value: int, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
