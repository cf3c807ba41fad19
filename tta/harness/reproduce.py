"""Run a published protocol (`tta.harness.published`) with tta and compare with the literature.

The scripts in `benchmarks/` are one call to `main`. The run uses the library only: the
benchmark's loader, `tta.models.zoo.model_for_benchmark`, `tta.adapt` with each method's
preset (`tta.presets`) and `tta.harness.stream.run_stream`. Data files, the model checkpoint and the
class count are all checked before the first method runs. Output: `<out>/comparison.md` and
`<out>/comparison.json` (ours vs published, mean and per corruption, with sources), on the
GPU when there is one.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

import tta
from tta.data.corruptions import STANDARD_CORRUPTIONS
from tta.harness.comparison import differences, write_comparison
from tta.harness.published import Protocol, protocol
from tta.harness.stream import StreamSpec, peak_memory_mb, run_stream, to_batch
from tta.registry import LOSSES

USER_ERRORS = (ValueError, TypeError, FileNotFoundError, RuntimeError, NotImplementedError)
FALLBACK = {"optimizer": "adam", "lr": 1e-3, "momentum": 0.9, "params": None, "options": {}}


def parse_method(method: str) -> tuple[str, str]:
    """'pl+gala' -> ('pl', 'gala'); 'tent' -> ('tent', 'all')."""
    loss, _, selector = method.partition("+")
    return loss, selector or "all"


def method_settings(loss: str, benchmark: str, batch_size: int) -> dict:
    """Optimizer, lr, momentum, params and loss options of `loss` from its preset."""
    from tta.presets import PRESETS, family_of, preset

    family = family_of(benchmark)
    if (loss, family) not in PRESETS:  # source, norm: nothing to optimize
        return dict(FALLBACK)
    found = preset(loss, family, benchmark)
    return {
        "optimizer": found.optimizer,
        "lr": found.lr_for(batch_size),
        "momentum": found.momentum,
        "params": found.params,
        "options": dict(found.options),
    }


def source_batches(loss: str, options: dict, benchmark, batch_size: int, seed: int, device):
    """Clean source images for a loss that asks for them (EATA's Fisher), else {}."""
    factory = LOSSES.get(loss)
    option = getattr(factory, "source_data_option", None)
    if option is None or option in options:
        return {}
    n = int(options.get("num_samples", getattr(factory, "default_num_samples", 2000)))
    images, _ = benchmark.source_samples(n, seed)
    starts = range(0, len(images), batch_size)
    return {option: (to_batch(images[i : i + batch_size], device) for i in starts)}


def run_method(
    model: nn.Module, method: str, spec: StreamSpec, benchmark, device: torch.device
) -> dict:
    """One method over the stream, on a fresh copy of the source model."""
    loss, selector = parse_method(method)
    settings = method_settings(loss, spec.benchmark, spec.batch_size)
    options = settings["options"]
    extra = source_batches(loss, options, benchmark, spec.batch_size, spec.seed, device)
    torch.manual_seed(spec.seed)
    adapted = tta.adapt(
        copy.deepcopy(model),
        loss=loss,
        selector=selector,
        params=settings["params"],
        optimizer=settings["optimizer"],
        lr=settings["lr"],
        momentum=settings["momentum"],
        **options,
        **extra,
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = run_stream(adapted, spec, benchmark, device, desc=method)
    return {
        "method": method,
        "settings": settings,
        "per_domain": result.per_domain,
        "mean_error": result.mean_error,
        "time_s": result.time_s,
        "images_per_s": result.n_images / result.time_s if result.time_s else 0.0,
        "peak_memory_mb": peak_memory_mb(device),
        "counters": result.counters,
        "interrupted": result.interrupted,
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


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_benchmark(name: str, data_root: str | None, download: bool):
    from tta.data.benchmarks import BENCHMARKS

    if name not in BENCHMARKS:
        raise RuntimeError(
            f"this tta has no {name!r} benchmark loader (known: {', '.join(BENCHMARKS.names())})"
        )
    return BENCHMARKS.create(name, data_root=data_root, download=download)


def reproduce(
    proto: Protocol,
    model: nn.Module,
    model_info: dict,
    benchmark,
    spec: StreamSpec,
    methods: list[str],
    device: torch.device,
    out_dir: Path,
) -> str:
    """Run `methods` over the stream and write the comparison; returns its markdown."""
    model = model.to(device)
    card = {**spec.card(), **model_info, "device": str(device)}
    if hasattr(benchmark, "describe"):
        described = benchmark.describe().items()
        card.update({k if k.startswith("data") else f"data_{k}": v for k, v in described})
    notes = differences(proto, spec, model_info.get("model", proto.model))
    ours: dict[str, dict] = {}
    for method in methods:
        ours[method] = run_method(model, method, spec, benchmark, device)
        print(f"{method}: {ours[method]['mean_error']:.2f}% mean error", flush=True)
        if ours[method]["interrupted"]:
            notes.append(f"interrupted during {method}")
            break
    return write_comparison(out_dir, proto, card, ours, notes)


def main(name: str, argv: list[str] | None = None) -> int:
    """Command line of one protocol (`benchmarks/<protocol>.py`)."""
    proto = protocol(name)
    args = parser(proto).parse_args(argv)
    try:
        from tta.models.zoo import model_for_benchmark

        methods = [m for m in args.methods.split(",") if m]
        for method in methods:
            loss, selector = parse_method(method)
            LOSSES.get(loss)
            tta.LAYER_SELECTORS.get(selector)
        corruptions = (
            tuple(args.corruptions.split(",")) if args.corruptions else STANDARD_CORRUPTIONS
        )
        spec = StreamSpec(
            benchmark=proto.benchmark,
            corruptions=corruptions,
            severity=proto.severity,
            setting=proto.setting,
            batch_size=proto.batch_size,
            n_per_domain=args.n_per_domain,
            seed=args.seed,
        )
        device = pick_device(args.device)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        benchmark = load_benchmark(proto.benchmark, args.data_root, args.download)
        benchmark.prepare(spec.domains(), spec.n_per_domain, spec.seed)
        model, info = model_for_benchmark(args.model, benchmark, args.model_dir)
        print(f"{proto.title}\nmodel: {json.dumps(info)}\ndevice: {device}", flush=True)
        if args.check:
            print("data and model check out; --check stops here")
            return 0
        out_dir = Path(args.out or f"runs/{proto.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        markdown = reproduce(proto, model, info, benchmark, spec, methods, device, out_dir)
    except USER_ERRORS as error:
        print(f"{proto.name}: error: {error}", file=sys.stderr)
        return 2
    print(markdown)
    print(f"written: {out_dir / 'comparison.md'}, {out_dir / 'comparison.json'}")
    return 0
