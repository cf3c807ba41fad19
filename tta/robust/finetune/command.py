"""`tta-robust finetune`: flags for every `FinetuneConfig` field, a per-epoch table and the
test line; `--pretrain-only` trains (or finds) the fmnist5 backbone and stops."""

from __future__ import annotations

import argparse
import typing
from dataclasses import fields
from fractions import Fraction
from pathlib import Path

from tta.robust.finetune.config import (
    ATTACKS,
    AUGMENTS,
    OBJECTIVES,
    PROTOCOLS,
    SCHEDULES,
    TASKS,
    FinetuneConfig,
)

CHOICES = {
    "task": TASKS,
    "protocol": PROTOCOLS,
    "objective": OBJECTIVES,
    "attack": ATTACKS,
    "schedule": SCHEDULES,
    "augment": AUGMENTS,
}
HELP = {
    "backbone": "auto | fmnist | fmnist5 | a tta-run --model spec",
    "eps": "eps_g, e.g. 4/255",
    "t1": "epochs (>= 1) or fraction (< 1); auto: unused",
    "t2": "epochs or fraction; auto: the latest start of the ramp",
    "tolerance": "auto: plateau when no gain above this fraction (0.02 = 2 points)",
    "n_train": "cap on training images (none: all)",
}


def number(text: str) -> float:
    """'4/255', '0.24' or '12' as a float."""
    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError) as error:
        raise argparse.ArgumentTypeError(f"not a number: {text!r} (e.g. 4/255, 0.24)") from error


def optional_int(text: str) -> int | None:
    return None if text.strip().lower() in ("none", "all") else int(text)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="robust fine-tuning with Epsilon-Scheduling (a backbone + new head on a task)",
    )
    defaults = FinetuneConfig()
    hints = typing.get_type_hints(FinetuneConfig)
    for f in fields(FinetuneConfig):
        default = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        if f.name in CHOICES:
            p.add_argument(flag, choices=CHOICES[f.name], default=default)
        elif kind is float:
            p.add_argument(flag, type=number, default=default, help=HELP.get(f.name))
        elif kind is int:
            p.add_argument(flag, type=int, default=default, help=HELP.get(f.name))
        elif kind == (int | None):
            p.add_argument(flag, type=optional_int, default=default, help=HELP.get(f.name))
        else:
            p.add_argument(flag, default=default, help=HELP.get(f.name))
    p.add_argument("--out", default=None, help="output folder (default runs/finetune/<task>-...)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--pretrain-only", action="store_true", help="only train/find fmnist5")
    p.add_argument("--ship", action="store_true", help="with --pretrain-only: copy to weights/")


def config_from(args: argparse.Namespace) -> FinetuneConfig:
    return FinetuneConfig(**{f.name: getattr(args, f.name) for f in fields(FinetuneConfig)})


def default_out(config: FinetuneConfig) -> Path:
    eps = f"{config.eps * 255:g}"
    return Path(
        f"runs/finetune/{config.task}-{config.protocol}-{config.objective}-{config.schedule}"
        f"-eps{eps}-seed{config.seed}"
    )


def table(history: list[dict]) -> str:
    rows = [
        f"{'epoch':>5} {'eps/255':>8} {'loss':>7} {'val clean':>9} {'val adv':>8} "
        f"{'val E.adv':>9} {'val loss':>8} {'time s':>7}"
    ]
    rows += [
        f"{h['epoch']:>5} {h['eps'] * 255:>8.2f} {h['train_loss']:>7.3f} {h['val_clean']:>9.2f} "
        f"{h['val_adv']:>8.2f} {h['val_expected']:>9.2f} {h['val_loss']:>8.3f} {h['time_s']:>7.0f}"
        for h in history
    ]
    return "\n".join(rows)


def run(args: argparse.Namespace) -> dict:
    if args.pretrain_only:
        import shutil

        from tta.robust.finetune.pretrain import (
            SHIPPED_DIR,
            Pretrain5Config,
            checkpoint_paths,
            fmnist5_model,
        )

        _, checkpoint = fmnist5_model(data_root=args.data_root)
        cached, shipped = checkpoint_paths(Pretrain5Config())
        if args.ship and not shipped.exists():
            SHIPPED_DIR.mkdir(parents=True, exist_ok=True)
            shutil.copy(cached, shipped)
        print(
            f"{checkpoint['key']}: clean accuracy on classes 0-4 "
            f"{checkpoint['clean_accuracy']:.2f}%, trained in {checkpoint['train_time_s']:.0f} s"
        )
        return checkpoint
    from tta.robust.finetune.trainer import finetune

    config = config_from(args)
    out = Path(args.out) if args.out else default_out(config)
    result = finetune(config, out, data_root=args.data_root)
    print(table(result.history))
    t = result.test
    print(
        f"test ({t['n']} images): clean {t['clean']:.2f} | adv@{config.eps * 255:g}/255 "
        f"{t['adv']:.2f} | expected {t['expected']:.2f}  (T1 {result.schedule['t1']:g}, "
        f"T2 {result.schedule['t2']:g}; {result.time_s:.0f} s"
        + (f"; resumed at epoch {result.resumed_at_epoch}" if result.resumed_at_epoch else "")
        + ")"
    )
    print(f"wrote {out}/results.json, model.pt, card.md, curves.png")
    return result.to_dict()
