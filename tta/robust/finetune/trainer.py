"""Robust fine-tuning with Epsilon-Scheduling: `finetune(config)` and `evaluate(model, ...)`.

Ngnawé et al., "Robust Fine-Tuning from Non-Robust Pretrained Models: Mitigating Suboptimal
Transfer with Epsilon-Scheduling", ICLR 2026, arXiv 2509.23325 (official code
github.com/ngnawejonas/EpsilonScheduling, not readable from here: written from the paper).
A pretrained backbone gets a new linear head and trains on the target task under a
protocol (`backbones`), an objective (`objectives`) and the budget schedule (`schedule`),
with AdamW, a linear warm-up and a cosine learning rate per step. After every epoch the
validation split gives clean, adversarial (APGD-CE, `eval_steps`, at eps_g) and expected
robustness accuracy (`tta.robust.expected`) and the clean loss; the epoch's log goes to
`on_epoch` after the checkpoint is written.

Deviations: see `config` (sizes for a CPU), `schedule` (per-step ramp; auto's latest
start) and `objectives` (TRADES' step size). Model selection: the last epoch is kept (no
early stopping on validation).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tta.models.source import augment
from tta.progress import progress
from tta.robust.expected import expected_robustness
from tta.robust.finetune import backbones as bb
from tta.robust.finetune import checkpoint as ck
from tta.robust.finetune.config import FinetuneConfig
from tta.robust.finetune.objectives import objective_loss
from tta.robust.finetune.schedule import EpsSchedule, lr_factor
from tta.robust.finetune.tasks import TaskData, load_task


@dataclass
class FinetuneResult:
    """What a run produced; `to_dict()` is results.json (everything but the model)."""

    config: FinetuneConfig
    history: list[dict]
    test: dict  # clean, adv, expected (%), grid, accuracy along the grid, n
    time_s: float  # training and validation, summed over resumed parts
    model: nn.Module
    schedule: dict = field(default_factory=dict)  # t1, t2 (epochs) in force at the end
    backbone: dict = field(default_factory=dict)
    out_dir: Path | None = None
    resumed_at_epoch: int = 0  # epochs read from a checkpoint (0: a fresh run)
    data_sizes: dict = field(default_factory=dict)
    num_classes: int = 0

    def to_dict(self) -> dict:
        return {
            "method": "epsilon-scheduling (Ngnawe et al., ICLR 2026)",
            "config": self.config.to_dict(),
            "backbone": self.backbone,
            "num_classes": self.num_classes,
            "data_sizes": self.data_sizes,
            "schedule": self.schedule,
            "history": self.history,
            "test": self.test,
            "time_s": self.time_s,
            "resumed_at_epoch": self.resumed_at_epoch,
        }


def evaluate(
    model: nn.Module,
    task: str | TaskData,
    eps: float = 4 / 255,
    split: str = "test",
    steps: int = 10,
    n: int | None = None,
    seed: int = 0,
    split_seed: int = 0,
    batch_size: int = 250,
    data_root: str | None = None,
) -> dict:
    """Clean, L-inf adversarial (APGD-CE `steps` at `eps`) and expected robustness (%) of
    `model` on a split of `task` (a name or loaded `TaskData`), the first `n` images."""
    data = load_task(task, split_seed, data_root=data_root) if isinstance(task, str) else task
    x, y = data.split(split)
    if n is not None:
        x, y = x[:n], y[:n]
    device = next(model.parameters()).device
    return _robust_accuracy(model, x.to(device), y.to(device), eps, steps, seed, batch_size)


def _robust_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    seed: int,
    batch_size: int = 250,
) -> dict:
    if eps <= 0:  # nothing to attack: every budget is the clean one
        with torch.no_grad():
            was = model.training
            model.eval()
            clean = 100.0 * float((_predict(model, x, batch_size) == y).float().mean())
            model.train(was)
        return {"clean": clean, "adv": clean, "expected": clean, "grid": [0.0], "n": len(y)}
    result = expected_robustness(model, x, y, eps, steps=steps, batch_size=batch_size, seed=seed)
    return {
        "clean": result.clean,
        "adv": result.adv,
        "expected": result.expected,
        "grid": result.grid,
        "accuracy": result.accuracy,
        "n": int(len(y)),
        "seconds": result.seconds,
    }


def _predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([model(x[b : b + batch_size]).argmax(1) for b in range(0, len(x), batch_size)])


@torch.no_grad()
def _clean_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 250) -> float:
    was = model.training
    model.eval()
    total = sum(
        float(F.cross_entropy(model(x[b : b + batch_size]), y[b : b + batch_size], reduction="sum"))
        for b in range(0, len(x), batch_size)
    )
    model.train(was)
    return total / max(len(y), 1)


def build_model(
    config: FinetuneConfig, num_classes: int, data_root: str | None = None
) -> tuple[nn.Module, dict]:
    """The backbone the config names with a fresh head for `num_classes`."""
    name = bb.resolve_backbone(config.backbone, config.task)
    model, info = bb.load_backbone(name, data_root)
    return bb.new_head(model, num_classes, config.seed), info


def finetune(
    config: FinetuneConfig,
    out_dir: str | Path | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    *,
    data: TaskData | None = None,
    model: nn.Module | None = None,
    data_root: str | None = None,
) -> FinetuneResult:
    """Fine-tune as the module docstring says. With `out_dir`, a checkpoint after every
    epoch (a rerun resumes from it), and at the end model.pt, card.md, results.json and
    curves.png. `data` / `model` replace the task's data / the backbone (its head is
    replaced). An exception from `on_epoch` (e.g. optuna.TrialPruned) stops the run after
    that epoch's checkpoint and propagates."""
    if not isinstance(config, FinetuneConfig):
        raise TypeError(f"finetune takes a FinetuneConfig, got {type(config).__name__}")
    out = Path(out_dir) if out_dir is not None else None
    device = torch.device(config.device)
    if data is None:
        data = load_task(
            config.task, config.split_seed, config.n_train, config.n_val, config.n_test, data_root
        )
    if model is None:
        model, info = build_model(config, data.num_classes, data_root)
    else:
        model, info = bb.new_head(model, data.num_classes, config.seed), {"backbone": "given"}
    model = model.to(device)
    params = bb.prepare(model, config.protocol, config.last_k)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    x_train, y_train = data.train
    steps_per_epoch = max(len(y_train) // config.batch_size, 1)
    total = config.epochs * steps_per_epoch
    warmup = round(config.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup))
    eps_schedule = EpsSchedule.from_config(config)
    flip = config.augment == "crop+flip" or (
        config.augment == "auto" and config.task == "fmnist-unseen"
    )
    history: list[dict] = []
    start_epoch, elapsed = 0, 0.0
    state = ck.load_epoch(out, config.to_dict()) if out is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        eps_schedule.load_state(state["eps_schedule"])
        history, start_epoch, elapsed = state["history"], state["epoch"], state["time_s"]
    x_val, y_val = (t.to(device) for t in data.val)
    for epoch in range(start_epoch, config.epochs):
        began = time.perf_counter()
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        order = torch.randperm(len(y_train), generator=generator)
        bb.set_training(model, config.protocol, config.last_k)
        losses, budgets, attacked = [], [], 0
        bar = progress(range(steps_per_epoch), desc=f"finetune epoch {epoch + 1}/{config.epochs}")
        for step in bar:
            index = order[step * config.batch_size : (step + 1) * config.batch_size]
            x = x_train[index]
            if flip:
                x = augment(x, generator)
            x, y = x.to(device), y_train[index].to(device)
            eps = (
                0.0 if config.objective == "clean" else eps_schedule(epoch + step / steps_per_epoch)
            )
            loss, ran = objective_loss(
                model,
                x,
                y,
                eps,
                config.objective,
                config.attack,
                config.train_steps,
                config.trades_beta,
                seed=(config.seed * 1_000_003 + epoch) * 10_007 + step,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            budgets.append(eps)
            attacked += int(ran)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", eps=f"{eps * 255:.2f}/255")
        val_steps = config.val_steps or config.eval_steps
        val = _robust_accuracy(model, x_val, y_val, config.eps, val_steps, config.seed)
        eps_schedule.observe(epoch, val["clean"])
        t1, t2 = eps_schedule.hinges()
        elapsed += time.perf_counter() - began
        log = {
            "epoch": epoch + 1,
            "eps": budgets[-1],
            "eps_mean": sum(budgets) / len(budgets),
            "attacked_steps": attacked,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": sum(losses) / len(losses),
            "val_clean": val["clean"],
            "val_adv": val["adv"],
            "val_expected": val["expected"],
            "val_loss": _clean_loss(model, x_val, y_val),
            "t1": t1,
            "t2": t2,
            "time_s": elapsed,
        }
        history.append(log)
        if out is not None:
            ck.save_epoch(
                out,
                {
                    "config": config.to_dict(),
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "eps_schedule": eps_schedule.state(),
                    "history": history,
                    "time_s": elapsed,
                },
            )
        if on_epoch is not None:
            on_epoch(dict(log))
    model.eval()
    x_test, y_test = (t.to(device) for t in data.test)
    test = _robust_accuracy(model, x_test, y_test, config.eps, config.eval_steps, config.seed)
    t1, t2 = eps_schedule.hinges()
    result = FinetuneResult(
        config=config,
        history=history,
        test=test,
        time_s=elapsed,
        model=model,
        schedule={"t1": t1, "t2": t2, "found_t1": eps_schedule.found_t1, "kind": config.schedule},
        backbone=info,
        out_dir=out,
        resumed_at_epoch=state["epoch"] if state is not None else 0,
        data_sizes=data.sizes(),
        num_classes=data.num_classes,
    )
    if out is not None:
        _write_outputs(out, result)
    return result


def _write_outputs(out: Path, result: FinetuneResult) -> None:
    from tta.robust.finetune.plots import plot_run

    results = result.to_dict()
    ck.save_model(
        out,
        result.model,
        {
            "config": results["config"],
            "num_classes": result.num_classes,
            "backbone": result.backbone,
        },
    )
    ck.write_results(out, results)
    ck.write_card(out, results)
    hinges = (result.schedule["t1"], result.schedule["t2"])
    if result.config.objective == "clean":
        hinges = (float(result.config.epochs), float(result.config.epochs))
    plot_run(result.history, result.config.eps, hinges, out / "curves.png")
