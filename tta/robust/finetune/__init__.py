"""Robust fine-tuning with Epsilon-Scheduling (Ngnawé et al., ICLR 2026, arXiv 2509.23325).

`finetune(FinetuneConfig(...), out_dir, on_epoch)` -> `FinetuneResult`; `evaluate(model,
task, eps)` -> clean / adv / expected robustness; `load_task` for the target tasks
(`digits`, `fmnist-unseen`); the budget schedule `epsilon_at` / `EpsSchedule`.
"""

from tta.robust.finetune.config import FinetuneConfig
from tta.robust.finetune.schedule import EpsSchedule, alpha_at, epsilon_at, plateau_epoch
from tta.robust.finetune.tasks import TaskData, load_task
from tta.robust.finetune.trainer import FinetuneResult, build_model, evaluate, finetune

__all__ = [
    "EpsSchedule",
    "FinetuneConfig",
    "FinetuneResult",
    "TaskData",
    "alpha_at",
    "build_model",
    "epsilon_at",
    "evaluate",
    "finetune",
    "load_task",
    "plateau_epoch",
]
