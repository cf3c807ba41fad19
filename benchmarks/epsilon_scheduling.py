"""Epsilon-Scheduling on real data, offline (issue 12, item 2): does scheduling the budget
avoid suboptimal transfer and improve expected robustness (Ngnawé et al., ICLR 2026)?

For each target task (`digits` from the shipped Fashion-MNIST ResNet-20, `fmnist-unseen`
from `fmnist5`), eps_g in {4/255, 8/255} and 3 seeds:

- FT      plain fine-tuning (clean CE; trained once per seed, evaluated at each eps_g);
- fix     RFT-fix: AT with APGD-CE at eps_g from the first epoch (T1 = T2 = 0);
- linear  Epsilon-Scheduling, T1 = 0.24, T2 = 0.74 of the run (the paper's 12 / 37 of 50);
- auto    T1 at the validation plateau (tolerance 2%, patience scaled to the run), ramp
          to the last epoch.

Everything else as `tta.robust.finetune` (full fine-tuning, AdamW, warm-up + cosine, APGD-CE
7 steps in training, 10 at evaluation, expected robustness on the grid of 1/255), at a CPU
size: `--size default` (160 training images, 8 epochs, 150 test images, validation attack
2 steps) is meant to fit ~30 minutes on 2 cores; `--size full` is 4x the images, 2x the
epochs, 500 test images and a 10-step validation attack. Runs are cached per cell in `--out` (results.json) and resume from their
epoch checkpoints.

    OMP_NUM_THREADS=2 python benchmarks/epsilon_scheduling.py              # default size
    OMP_NUM_THREADS=2 python benchmarks/epsilon_scheduling.py --size full
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from fractions import Fraction
from pathlib import Path

from tta.robust.finetune import FinetuneConfig, evaluate, finetune, load_task

SIZES = {
    # images per split, epochs, batch, auto's patience, validation attack steps
    "smoke": dict(
        n_train=64, n_val=32, n_test=32, epochs=3, batch_size=32, patience=1, val_steps=1
    ),
    "default": dict(
        n_train=160, n_val=48, n_test=150, epochs=8, batch_size=32, patience=2, val_steps=2
    ),
    "long": dict(  # auto's regime: 20 epochs, the paper's patience 5, 96 validation images
        n_train=160, n_val=96, n_test=150, epochs=20, batch_size=32, patience=5, val_steps=2
    ),
    "full": dict(
        n_train=640, n_val=200, n_test=500, epochs=16, batch_size=64, patience=3, val_steps=10
    ),
}
METHODS = {
    "FT": dict(objective="clean"),
    "fix": dict(objective="at", schedule="fixed"),
    "linear": dict(objective="at", schedule="linear", t1=0.24, t2=0.74),
    "auto": dict(objective="at", schedule="auto", t2=0.74),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=SIZES, default="default")
    p.add_argument("--tasks", default="digits,fmnist-unseen")
    p.add_argument("--eps", default="4/255,8/255")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--out", default="runs/epsilon_scheduling")
    return p.parse_args()


def run_cell(config: FinetuneConfig, out: Path, data: object) -> dict:
    """results.json of a finished cell, or train it (resuming from its checkpoint)."""
    done = out / "results.json"
    if done.exists():
        results = json.loads(done.read_text())
        if results["config"] == config.to_dict():
            return results
    return finetune(config, out, data=data).to_dict()


def main() -> None:
    args = parse_args()
    size = SIZES[args.size]
    tasks = args.tasks.split(",")
    budgets = [float(Fraction(e)) for e in args.eps.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    out = Path(args.out) / args.size
    rows: dict[tuple, list[dict]] = {}
    start = time.perf_counter()
    for task in tasks:
        data = load_task(task, 0, size["n_train"], size["n_val"], size["n_test"])
        for seed in seeds:
            base = dict(
                task=task,
                seed=seed,
                lr=args.lr,
                warmup_epochs=1.0,
                n_train=size["n_train"],
                n_val=size["n_val"],
                n_test=size["n_test"],
                epochs=size["epochs"],
                batch_size=size["batch_size"],
                patience=size["patience"],
                val_steps=size["val_steps"],
            )
            if "FT" in methods:  # clean training ignores eps: train once, test at every eps_g
                config = FinetuneConfig(**base, **METHODS["FT"], eps=budgets[0])
                cell = out / task / "FT" / f"seed{seed}"
                results = run_cell(config, cell, data)
                for eps in budgets:
                    test = (
                        results["test"] if eps == budgets[0] else _test_at(cell, config, data, eps)
                    )
                    rows.setdefault((task, eps, "FT"), []).append(
                        test | {"time_s": results["time_s"]}
                    )
            for method in (m for m in methods if m != "FT"):
                for eps in budgets:
                    config = FinetuneConfig(**base, **METHODS[method], eps=eps)
                    cell = out / task / f"eps{eps * 255:g}" / method / f"seed{seed}"
                    results = run_cell(config, cell, data)
                    test = results["test"] | {
                        "time_s": results["time_s"],
                        "t1": results["schedule"]["t1"],
                    }
                    rows.setdefault((task, eps, method), []).append(test)
            print(f"[{time.perf_counter() - start:.0f} s] {task} seed {seed} done", flush=True)
    wall = time.perf_counter() - start
    table = markdown(rows, methods)
    print(table)
    print(f"wall time {wall:.0f} s ({args.size}: {size})")
    (out / "table.md").write_text(table + "\n")
    summary = {
        "size": args.size,
        "sizes": size,
        "lr": args.lr,
        "wall_s": wall,
        "seeds": seeds,
        "rows": [
            {"task": t, "eps_255": e * 255, "method": m, **stats(v)}
            for (t, e, m), v in rows.items()
        ],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def _test_at(cell: Path, config: FinetuneConfig, data: object, eps: float) -> dict:
    """FT's test accuracies at another eps_g (cached beside its results)."""
    path = cell / f"test_eps{eps * 255:g}.json"
    if path.exists():
        return json.loads(path.read_text())
    import torch

    from tta.robust.finetune.trainer import build_model

    model, _ = build_model(config, data.num_classes)
    model.load_state_dict(torch.load(cell / "model.pt", weights_only=True)["state_dict"])
    test = evaluate(model.eval(), data, eps, steps=config.eval_steps, seed=config.seed)
    path.write_text(json.dumps(test) + "\n")
    return test


def stats(values: list[dict]) -> dict:
    out = {"n_seeds": len(values)}
    for key in ("clean", "adv", "expected", "time_s"):
        xs = [v[key] for v in values]
        out[key] = statistics.mean(xs)
        out[f"{key}_std"] = statistics.stdev(xs) if len(xs) > 1 else 0.0
    if "t1" in values[0]:
        out["t1"] = [v["t1"] for v in values]
    return out


def markdown(rows: dict[tuple, list[dict]], methods: list[str]) -> str:
    lines = [
        "| task | eps_g | method | clean | adv | expected | T1 (epochs, per seed) | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (task, eps, method), values in sorted(
        rows.items(), key=lambda kv: (kv[0][0], kv[0][1], methods.index(kv[0][2]))
    ):
        s = stats(values)
        t1 = ", ".join(f"{t:g}" for t in s["t1"]) if "t1" in s else "–"
        lines.append(
            f"| {task} | {eps * 255:g}/255 | {method} | {s['clean']:.1f} ± {s['clean_std']:.1f} | "
            f"{s['adv']:.1f} ± {s['adv_std']:.1f} | {s['expected']:.1f} ± {s['expected_std']:.1f} | "
            f"{t1} | {s['time_s']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
