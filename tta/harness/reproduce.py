"""Run a published protocol (`tta.harness.published`) with tta and compare with the literature.

The scripts in `benchmarks/` are one call to `main`. Each method is one `RunConfig` (its
preset from `tta.presets`, the protocol's stream) run by `tta.harness.run.run`, the path
`tta-run` takes; the benchmark and model are loaded once and shared. Data files, the model
checkpoint and the class count are all checked before the first method runs. Output:
`<out>/comparison.md` and `<out>/comparison.json` (ours vs published, mean and per
corruption, with sources), on the GPU when there is one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from tta.data.base import Benchmark
from tta.data.benchmarks import BENCHMARKS
from tta.harness.comparison import differences, write_comparison
from tta.harness.config import RunConfig, resolve
from tta.harness.published import Protocol, protocol
from tta.harness.run import run
from tta.harness.setup import build_model, build_spec, pick_device
from tta.presets import methods as methods_with_presets
from tta.registry import LAYER_SELECTORS, LOSSES

USER_ERRORS = (ValueError, TypeError, FileNotFoundError, RuntimeError, NotImplementedError)


def parse_method(method: str) -> tuple[str, str]:
    """'pl+gala' -> ('pl', 'gala'); 'tent' -> ('tent', 'all')."""
    loss, _, selector = method.partition("+")
    return loss, selector or "all"


def method_config(base: RunConfig, method: str) -> RunConfig:
    """`base` running `method` ('loss[+selector]'): its preset when it has one."""
    loss, selector = parse_method(method)
    if loss in methods_with_presets():
        return replace(base, method=loss, selector=selector)
    return replace(base, loss=loss, selector=selector)  # source, norm: nothing to optimize


def run_method(
    base: RunConfig, method: str, benchmark: Benchmark, model: tuple[nn.Module, dict]
) -> dict:
    """One method over the stream, on a copy of the source model."""
    result = run(method_config(base, method), benchmark=benchmark, model=model)
    config = result.config
    return {
        "method": method,
        "settings": {
            "optimizer": config.optimizer,
            "lr": config.lr,
            "momentum": config.momentum,
            "params": config.params,
            "options": config.loss_options,
        },
        "per_domain": result.per_domain,
        "mean_error": result.mean_error,
        "time_s": result.adapted.time_s,
        "images_per_s": result.results()["images_per_s"],
        "peak_memory_mb": result.peak_memory_mb,
        "counters": result.counters,
        "interrupted": result.interrupted,
        "stage": result.stage,
    }


def parser(proto: Protocol) -> argparse.ArgumentParser:
    published = "; ".join(f"{p.method} {p.error} ({p.source})" for p in proto.published)
    p = argparse.ArgumentParser(
        description=f"{proto.title}: run tta and compare with the published numbers.",
        epilog=f"Published error (%): {published}.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data-root", default=None, help="where the benchmark's data is found")
    p.add_argument("--download", action="store_true", help="download missing data (internet)")
    p.add_argument(
        "--model-dir",
        default=None,
        help="robustbench checkpoints: <dir>/<dataset>/<threat>/<name>.pt",
    )
    p.add_argument("--model", default=proto.model, help="model spec (tta.models.zoo)")
    p.add_argument(
        "--methods", default=",".join(proto.methods), help="comma-separated loss[+selector]"
    )
    p.add_argument("--n-per-domain", type=int, default=proto.n_per_domain)
    p.add_argument("--corruptions", default=None, help="comma-separated subset (not comparable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, ...")
    p.add_argument("--out", default=None, help="default runs/<protocol>-<time>")
    p.add_argument("--check", action="store_true", help="check data and model, then stop")
    return p


def load_benchmark(name: str, data_root: str | None, download: bool) -> Benchmark:
    if name not in BENCHMARKS:
        raise RuntimeError(
            f"this tta has no {name!r} benchmark loader (known: {', '.join(BENCHMARKS.names())})"
        )
    return BENCHMARKS.create(name, data_root=data_root, download=download)


def reproduce(
    proto: Protocol,
    base: RunConfig,
    methods: list[str],
    out_dir: Path,
    benchmark: Benchmark,
    model: tuple[nn.Module, dict],
) -> str:
    """Run `methods` with the stream of `base` and write the comparison; returns its markdown."""
    spec = build_spec(resolve(base), benchmark)
    info = model[1]
    card = {**spec.card(), **info, "device": str(pick_device(base.device))}
    described = benchmark.describe().items()
    card.update({k if k.startswith("data") else f"data_{k}": v for k, v in described})
    notes = differences(proto, spec, info.get("model", proto.model))
    ours: dict[str, dict] = {}
    for method in methods:
        ours[method] = run_method(base, method, benchmark, model)
        mean = ours[method]["mean_error"]
        print(f"{method}: {'-' if mean is None else f'{mean:.2f}'}% mean error", flush=True)
        if ours[method]["interrupted"]:
            notes.append(f"interrupted during {method} ({ours[method]['stage']})")
            break
    return write_comparison(out_dir, proto, card, ours, notes)


def main(name: str, argv: list[str] | None = None) -> int:
    """Command line of one protocol (`benchmarks/<protocol>.py`)."""
    proto = protocol(name)
    args = parser(proto).parse_args(argv)
    try:
        methods = [m for m in args.methods.split(",") if m]
        for method in methods:
            loss, selector = parse_method(method)
            LOSSES.get(loss)
            LAYER_SELECTORS.get(selector)
        base = RunConfig(
            benchmark=proto.benchmark,
            corruptions=tuple(args.corruptions.split(",")) if args.corruptions else "standard",
            severity=proto.severity,
            setting=proto.setting,
            batch_size=proto.batch_size,
            n_per_domain=args.n_per_domain,
            seed=args.seed,
            model=args.model,
            model_dir=args.model_dir,
            data_root=args.data_root,
            download=args.download,
            device=args.device,
            no_source=True,  # the source model is a method of its own here
            no_all_layers=True,  # so is each loss on all layers (its row without +selector)
            forgetting=0,  # not part of the published tables
        )
        device = pick_device(args.device)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        benchmark = load_benchmark(proto.benchmark, args.data_root, args.download)
        spec = build_spec(resolve(base), benchmark)
        benchmark.prepare(spec.domains(), spec.n_per_domain, spec.seed)
        model, info = build_model(base, benchmark)
        print(f"{proto.title}\nmodel: {json.dumps(info)}\ndevice: {device}", flush=True)
        if args.check:
            print("data and model check out; --check stops here")
            return 0
        out_dir = Path(args.out or f"runs/{proto.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        markdown = reproduce(proto, base, methods, out_dir, benchmark, (model, info))
    except USER_ERRORS as error:
        print(f"{proto.name}: error: {error}", file=sys.stderr)
        return 2
    print(markdown)
    print(f"written: {out_dir / 'comparison.md'}, {out_dir / 'comparison.json'}")
    return 0
