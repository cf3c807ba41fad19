"""Speed of tta.robust on the shipped Fashion-MNIST ResNet-20 (CPU; one thread by default).

Measures, on the first N clean test images:
- one clean pass (inference) over the N images;
- APGD-CE throughput: images x steps per second (images/s per APGD step), at one budget
  where nothing is fooled early (1/255 on the robust model), so every step costs a
  forward and a backward on the whole batch;
- expected robustness (grid 1/255 to 8/255, APGD-CE 10 steps) and its cost in clean passes;
- input margins per image: the APGD bisection and (if pyautoattack is installed) FAB.

    OMP_NUM_THREADS=1 python benchmarks/robust_speed.py --n 500
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from tta.robust.apgd import apgd_ce
from tta.robust.expected import expected_robustness
from tta.robust.margins import input_margins
from tta.robust.models import fmnist_images, load_named_model


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def clean_pass(model: torch.nn.Module, x: torch.Tensor, bs: int) -> None:
    with torch.no_grad():
        for b in range(0, len(x), bs):
            model(x[b : b + bs])


def apgd_pass(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int, steps: int):
    for b in range(0, len(x), bs):
        apgd_ce(model, x[b : b + bs], y[b : b + bs], 1 / 255, steps=steps)


def measure(model: torch.nn.Module, x, y, bs: int, margin_images: int) -> dict:
    steps = 10
    clean_pass(model, x, bs)  # warm-up
    clean_s, _ = timed(clean_pass, model, x, bs)
    attack_s, _ = timed(apgd_pass, model, x, y, bs, steps)
    er_s, er = timed(expected_robustness, model, x, y, batch_size=bs)
    sub = x[:margin_images]
    bisection_s, _ = timed(input_margins, model, sub, method="bisection")
    row = {
        "clean_pass_s": clean_s,
        "clean_images_per_s": len(x) / clean_s,
        # steps + 1 gradient evaluations per image: the start point and each step
        "apgd_images_per_s_per_step": len(x) * (steps + 1) / attack_s,
        "expected_robustness_s": er_s,
        "expected_robustness_in_clean_passes": er_s / clean_s,
        "E.adv": er.expected,
        "bisection_s_per_image": bisection_s / len(sub),
        "fab_s_per_image": None,
    }
    try:
        import pyautoattack  # noqa: F401
    except ImportError:
        return row
    fab_s, _ = timed(input_margins, model, sub, method="fab")
    row["fab_s_per_image"] = fab_s / len(sub)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--margin-images", type=int, default=32)
    p.add_argument("--models", default="source,robust")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 1)))
    p.add_argument("--json", default=None, help="also write the numbers here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    x, y = fmnist_images("test", args.n)
    rows = {}
    for name in args.models.split(","):
        model, _ = load_named_model(name)
        rows[name] = measure(model, x, y, args.batch_size, args.margin_images)
        shown = {k: round(v, 3) if v else v for k, v in rows[name].items()}
        print(name, json.dumps(shown), flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"n": args.n, "threads": args.threads, "models": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
