"""Mixed precision on fmnist-c: error and speed of autocast (bf16, fp16) against float32.

    python benchmarks/amp_speed.py [--methods tent eta sar t3a] [--amps bf16 fp16]
        [--channels-last] [--n-per-domain 1000] [--threads 2] [--out runs/amp_speed]

Each method runs the default fmnist-c stream (continual, severity 5, the 15 corruptions,
`--n-per-domain` images each, batch 200, seed 0, the loss's defaults: Adam 1e-3) once in
float32 and once per `--amps` dtype that the loss allows (float16 is skipped for a loss whose
backward passes bypass the scaler, see tta/precision.py; no shipped loss does), side by side: mean error, its difference
to float32 in points, adaptation images/s and the speed ratio (float32 time / amp time: > 1
is faster). `--channels-last` adds a float32 channels-last run per method. The runs of one
method follow each other, alternating which goes first, so slow drifts of a shared machine
fall on both. Writes `<out>/amp_speed.json` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import tta
from tta.harness.config import RunConfig, resolve
from tta.harness.run import run
from tta.harness.setup import build_benchmark, build_model
from tta.precision import scales_gradients
from tta.registry import LOSSES


def allows(loss: str, amp: str | None) -> bool:
    """float16 needs a loss whose every backward goes through the scaler."""
    return amp != "fp16" or not LOSSES.get(loss).adapts or scales_gradients(LOSSES.create(loss))


def one_run(loss: str, variant: dict, args, benchmark, model) -> dict:
    config = RunConfig(
        loss=loss,
        n_per_domain=args.n_per_domain,
        threads=args.threads,
        no_source=True,
        no_all_layers=True,
        forgetting=0,
        **variant,
    )
    result = run(config, benchmark=benchmark, model=copy.deepcopy(model), echo=lambda _: None)
    adapted = result.adapted
    return {
        "loss": loss,
        "amp": variant.get("amp"),
        "channels_last": variant.get("channels_last", False),
        "mean_error": result.mean_error,
        "images_per_s": adapted.n_images / adapted.time_s,
        "time_s": adapted.time_s,
        "n_images": adapted.n_images,
        "finished": not result.interrupted,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["tent", "eta", "sar", "t3a"])
    parser.add_argument("--amps", nargs="+", default=["bf16", "fp16"], choices=["bf16", "fp16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--n-per-domain", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/amp_speed")
    args = parser.parse_args()
    base = resolve(RunConfig(n_per_domain=args.n_per_domain))
    benchmark = build_benchmark(base)
    model = build_model(base, benchmark)
    rows = []
    for index, loss in enumerate(args.methods):
        variants = [{"amp": amp} for amp in args.amps if allows(loss, amp)]
        if args.channels_last:
            variants.append({"channels_last": True})
        order = [{}] + variants if index % 2 == 0 else variants + [{}]
        runs = [one_run(loss, variant, args, benchmark, model) for variant in order]
        reference = next(r for r in runs if r["amp"] is None and not r["channels_last"])
        for r in runs:
            r["error_difference"] = r["mean_error"] - reference["mean_error"]
            r["speed_ratio"] = reference["time_s"] / r["time_s"]
        rows += sorted(
            runs, key=lambda r: (r["amp"] is not None, r["amp"] or "", r["channels_last"])
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"n_per_domain": args.n_per_domain, "threads": args.threads, "rows": rows}
    summary["versions"] = {"tta": tta.__version__} if hasattr(tta, "__version__") else {}
    (out / "amp_speed.json").write_text(json.dumps(summary, indent=1))
    print(f"fmnist-c, {args.n_per_domain} images per corruption, {args.threads} threads")
    print("| method | precision | error % | vs float32 (points) | img/s | speed vs float32 |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        name = (r["amp"] or "float32") + (" channels-last" if r["channels_last"] else "")
        print(
            f"| {r['loss']} | {name} | {r['mean_error']:.2f} | {r['error_difference']:+.2f} | "
            f"{r['images_per_s']:.0f} | {r['speed_ratio']:.2f}x |"
        )


if __name__ == "__main__":
    main()
