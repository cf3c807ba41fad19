"""Command line: `tta-run` (adapt over a benchmark stream) and `tta-train` (source model)."""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

import tta
from tta.data.benchmarks import BENCHMARKS, Benchmark
from tta.harness.results import format_card, format_table, versions, write_results
from tta.harness.stream import (
    SETTINGS,
    StreamResult,
    StreamSpec,
    peak_memory_mb,
    run_stream,
    to_batch,
)
from tta.harness.trace import write_trace
from tta.paths import cache_dir
from tta.presets import FAMILIES, family_of, methods, preset
from tta.registry import LAYER_SELECTORS, LOSSES, SAMPLE_FILTERS

USER_ERRORS = (ValueError, TypeError, FileNotFoundError, RuntimeError)

# What an option left unset becomes when no --method preset fills it.
RUN_DEFAULTS = {"loss": "tent", "optimizer": "adam", "lr": 1e-3, "momentum": 0.9, "batch_size": 200}


def parse_value(text: str) -> object:
    """CLI option values: numbers and booleans parsed, 'inf' allowed, the rest kept as text."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_options(pairs: list[str], flag: str) -> dict[str, object]:
    options = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"{flag} takes KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        options[key.replace("-", "_")] = parse_value(value)
    return options


def run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tta-run",
        description="Adapt a model online over a corruption benchmark stream and report errors.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--method",
        default=None,
        help="a method with its paper's recommended loss, optimizer, lr, batch size and options "
        f"(explicit flags override them); one of: {', '.join(methods())}",
    )
    p.add_argument(
        "--preset-family",
        default=None,
        choices=FAMILIES,
        help="which preset of --method: default from the benchmark "
        "(fmnist-c, cifar*-c -> cifar; imagenet-c -> imagenet)",
    )
    p.add_argument(
        "--loss", default=None, help=f"default tent; one of: {', '.join(LOSSES.names())}"
    )
    p.add_argument(
        "--loss-option", action="append", default=[], metavar="KEY=VALUE", help="e.g. d_margin=0.4"
    )
    p.add_argument(
        "--selector", default="gala", help=f"one of: {', '.join(LAYER_SELECTORS.names())}"
    )
    p.add_argument("--selector-option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--sample-filter", default=None, help="e.g. grad-align")
    p.add_argument("--sample-filter-option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--params", default=None, help="norm, all, or comma-separated parameter names")
    p.add_argument(
        "--benchmark", default="fmnist-c", help=f"one of: {', '.join(BENCHMARKS.names())}"
    )
    p.add_argument(
        "--corruptions",
        default=None,
        help="domains in order: comma-separated names or sets (standard, heldout, all); "
        "default: the benchmark's (the standard 15 corruptions)",
    )
    p.add_argument("--severity", type=int, default=5, help="1..5 (ignored by domainbed)")
    p.add_argument("--setting", default="continual", choices=SETTINGS)
    p.add_argument(
        "--dirichlet-delta", type=float, default=None, help="label-correlated order (correlated)"
    )
    p.add_argument("--order-seed", type=int, default=None, help="permute the domain order")
    p.add_argument("--model", default=None, help="robustbench name, torchvision:<name>, ...")
    p.add_argument("--model-dir", default=None, help="where robustbench checkpoints live")
    p.add_argument("--dataset", default=None, help="domainbed: PACS, VLCS, OfficeHome, ...")
    p.add_argument("--target", default=None, help="domainbed: the target (test) domain")
    p.add_argument("--batch-size", type=int, default=None, help="default 200, or the preset's")
    p.add_argument(
        "--n-per-domain",
        default=None,
        help="images per domain, or 'all'; default 1000 on fmnist-c, 5000 on imagenet-c, else all",
    )
    p.add_argument(
        "--optimizer", default=None, choices=("adam", "sgd"), help="default adam, or the preset's"
    )
    p.add_argument("--lr", type=float, default=None, help="default 1e-3, or the preset's")
    p.add_argument(
        "--momentum", type=float, default=None, help="SGD momentum; default 0.9, or the preset's"
    )
    p.add_argument("--steps", type=int, default=1, help="adaptation steps per batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", default=None, help="comma-separated seeds: mean and std over them")
    p.add_argument("--data-root", default=None, help="where datasets are found or generated")
    p.add_argument(
        "--download", action="store_true", help="download missing source data (needs internet)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--no-source", action="store_true", help="skip the source-model baseline")
    p.add_argument(
        "--out", default=None, help="run directory (default runs/<time>-<loss>-<selector>)"
    )
    return p


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the options the user left unset: from the --method preset, then RUN_DEFAULTS.

    Explicit flags always win. Sets `args.loss_options` (the preset's method options, then
    --loss-option) and `args.preset_family` (None without --method).
    """
    options: dict[str, object] = {}
    if args.method is not None:
        if args.loss is not None and args.loss != args.method:
            raise ValueError(
                f"--method {args.method} sets the loss to {args.method!r}, but --loss "
                f"{args.loss} was given; pass one of them"
            )
        BENCHMARKS.get(args.benchmark)  # an unknown name says so before any family lookup
        args.preset_family = args.preset_family or family_of(args.benchmark)
        found = preset(args.method, args.preset_family, args.benchmark)
        args.loss = args.method
        for key in ("optimizer", "batch_size", "momentum", "params"):
            if getattr(args, key) is None:
                setattr(args, key, getattr(found, key))
        if args.lr is None:
            args.lr = found.lr_for(args.batch_size)
        options = dict(found.options)
    elif args.preset_family is not None:
        raise ValueError("--preset-family chooses the preset of --method; pass --method too")
    for key, value in RUN_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.loss_options = {**options, **parse_options(args.loss_option, "--loss-option")}
    return args


def source_data(
    args: argparse.Namespace, benchmark: Benchmark, device: torch.device
) -> dict[str, object]:
    """Clean source images for a loss that needs them (EATA's Fisher), in test-size batches.

    A loss declares the need with a `source_data_option` class attribute (the constructor
    argument to fill) and `default_num_samples`; `num_samples` in the loss options overrides
    the count. The images come from the benchmark's source split.
    """
    factory = LOSSES.get(args.loss)
    option = getattr(factory, "source_data_option", None)
    if option is None or option in args.loss_options:
        return {}
    n = int(args.loss_options.get("num_samples", getattr(factory, "default_num_samples", 2000)))
    try:
        images, _ = benchmark.source_samples(n, args.seed)
    except NotImplementedError as error:
        raise ValueError(
            f"loss {args.loss!r} needs clean source images ({option}), but {error}; "
            "use a loss without them (e.g. eta instead of eata)"
        ) from error
    size = args.batch_size
    return {option: (to_batch(images[i : i + size], device) for i in range(0, len(images), size))}


def check_names(args: argparse.Namespace) -> None:
    """Fail on unknown names before any model is trained or data generated."""
    LOSSES.get(args.loss)
    LAYER_SELECTORS.get(args.selector)
    BENCHMARKS.get(args.benchmark)
    if args.sample_filter:
        SAMPLE_FILTERS.get(args.sample_filter)


DEFAULT_N_PER_DOMAIN = {"fmnist-c": 1000, "imagenet-c": 5000}


def build_benchmark(args: argparse.Namespace) -> Benchmark:
    options = {"data_root": args.data_root, "download": args.download}
    if args.dataset is not None or args.target is not None:
        options.update(dataset=args.dataset, target=args.target)
    return BENCHMARKS.create(args.benchmark, **options)


def build_spec(args: argparse.Namespace, benchmark: Benchmark) -> StreamSpec:
    """The stream from the flags; domain names are checked against the benchmark."""
    n = args.n_per_domain
    if n is None:
        n = DEFAULT_N_PER_DOMAIN.get(args.benchmark)
    elif str(n).lower() == "all":
        n = None
    else:
        try:
            n = int(n)
        except ValueError as error:
            raise ValueError(
                f"--n-per-domain takes a positive integer or 'all', got {n!r}"
            ) from error
    spec = StreamSpec(
        benchmark=args.benchmark,
        corruptions=args.corruptions or benchmark.default_domains(),
        severity=args.severity if benchmark.uses_severity else None,
        setting=args.setting,
        batch_size=args.batch_size,
        n_per_domain=n,
        seed=args.seed,
        dirichlet_delta=args.dirichlet_delta,
        order_seed=args.order_seed,
    )
    benchmark.check_domains(spec.domains())
    return spec


def build_model(args: argparse.Namespace, benchmark: Benchmark) -> tuple[torch.nn.Module, dict]:
    from tta.models.zoo import default_model_for, model_for_benchmark

    if args.model is None:
        model, info = default_model_for(benchmark)
    else:
        model, info = model_for_benchmark(args.model, benchmark, args.model_dir)
    benchmark.check_model(model)
    return model, info


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available here; use --device cpu")
    return device


def source_errors(model, spec: StreamSpec, benchmark, model_key: str, device) -> StreamResult:
    """The unadapted model's errors on the same stream, cached (they never change).

    `model` must be a copy taken before `tta.adapt` configured the adapted one (TENT-style
    methods change BatchNorm in place).
    """
    key = hashlib.sha256(json.dumps([model_key, spec.card()], sort_keys=True).encode()).hexdigest()
    path = cache_dir() / "source-results" / f"{key[:16]}.json"
    if path.exists():
        return StreamResult(per_domain=json.loads(path.read_text()))
    source = tta.adapt(model, loss="source")
    result = run_stream(source, spec, benchmark, device, desc="source")
    if not result.interrupted:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result.per_domain))
    return result


def run(args: argparse.Namespace) -> int:
    resolve_args(args)
    check_names(args)
    params = args.params.split(",") if args.params and "," in args.params else args.params
    selector_options = parse_options(args.selector_option, "--selector-option")
    filter_options = parse_options(args.sample_filter_option, "--sample-filter-option")
    device = pick_device(args.device)
    benchmark = build_benchmark(args)
    spec = build_spec(args, benchmark)
    torch.manual_seed(args.seed)
    model, model_info = build_model(args, benchmark)
    model = model.to(device)
    source_copy = None if args.no_source else copy.deepcopy(model)  # before adapt configures it
    benchmark.prepare(spec.domains(), spec.n_per_domain, spec.seed)
    adapted = tta.adapt(
        model,
        loss=args.loss,
        params=params,
        selector=args.selector,
        optimizer=args.optimizer,
        lr=args.lr,
        steps=args.steps,
        momentum=args.momentum,
        selector_options=selector_options,
        sample_filter=args.sample_filter,
        sample_filter_options=filter_options,
        **args.loss_options,
        **source_data(args, benchmark, device),
    )
    n_trainable = sum(p.numel() for layer in adapted.layers for p in layer.params)
    method = {
        "method": args.method,
        "preset_family": args.preset_family,
        "loss": args.loss,
        "loss_options": args.loss_options,
        "params": params or LOSSES.get(args.loss).default_params,
        "n_trainable": n_trainable,
        "selector": args.selector,
        "selector_options": selector_options,
        "sample_filter": args.sample_filter,
        "sample_filter_options": filter_options,
        "optimizer": args.optimizer,
        "lr": args.lr,
        "momentum": args.momentum if args.optimizer == "sgd" else None,
        "steps": args.steps,
    }
    card = {**spec.card(), **benchmark.describe(), **method, **model_info, "device": str(device)}
    print("protocol card:\n" + format_card(card), flush=True)
    out_dir = Path(args.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{args.loss}-{args.selector}")
    source = (
        None
        if args.no_source
        else source_errors(
            source_copy, spec, benchmark, json.dumps(model_info, default=str), device
        )
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = run_stream(adapted, spec, benchmark, device, desc=f"{args.loss}+{args.selector}")
    trace = adapted.selector.trace()
    selector_summary = (
        write_trace(
            out_dir,
            trace,
            [layer.name for layer in adapted.layers],
            result.domain_starts,
            [d["domain"] for d in result.per_domain],
        )
        if trace
        else None
    )
    results = {
        "protocol": card,
        "per_domain": result.per_domain,
        "mean_error": result.mean_error,
        "source_per_domain": source.per_domain if source else [],
        "source_mean_error": source.mean_error if source else None,
        "time_s": result.time_s,
        "images_per_s": result.n_images / result.time_s if result.time_s else 0.0,
        "peak_memory_mb": peak_memory_mb(device),
        **result.counters,
        "selector": selector_summary,
        "loss_stats": adapted.loss.stats(),
        "sample_filter_stats": adapted.sample_filter.stats() if adapted.sample_filter else {},
        "interrupted": result.interrupted or bool(source and source.interrupted),
        "versions": versions(),
        "seed": args.seed,
    }
    label = f"{args.loss}+{args.selector}"
    write_results(out_dir, results, label)
    print(format_table(result.per_domain, results["source_per_domain"], label))
    print(
        f"{result.n_images} images in {result.time_s:.1f} s ({results['images_per_s']:.0f} img/s); "
        f"forward {result.counters['n_forward']}, backward {result.counters['n_backward']}, "
        f"skipped {result.counters['n_skipped']}; results in {out_dir}/"
    )
    if results["interrupted"]:
        done = len(result.per_domain)
        print(
            f"interrupted: results of the {done} finished domain(s) of {len(spec.domains())} written to {out_dir}/"
        )
        return 130
    return 0


def run_seeds(args: argparse.Namespace) -> int:
    """One run per seed (in <out>/seed<N>/), then mean and std over seeds in seeds.json."""
    import numpy as np

    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-seeds")
    means = {}
    for seed in seeds:
        seed_args = copy.copy(args)
        seed_args.seed, seed_args.out = seed, str(out / f"seed{seed}")
        code = run(seed_args)
        means[seed] = json.loads((out / f"seed{seed}" / "results.json").read_text())["mean_error"]
        if code != 0:
            return code
    summary = {
        "seeds": seeds,
        "mean_error": float(np.mean(list(means.values()))),
        "std_error": float(np.std(list(means.values()))),
        "per_seed_mean_error": means,
    }
    (out / "seeds.json").write_text(json.dumps(summary, indent=2))
    print(
        f"mean error over seeds {seeds}: {summary['mean_error']:.2f} +- {summary['std_error']:.2f}"
    )
    return 0


def run_main(argv: list[str] | None = None) -> int:
    args = run_parser().parse_args(argv)
    try:
        return run_seeds(args) if args.seeds else run(args)
    except USER_ERRORS as error:
        print(f"tta-run: error: {error}", file=sys.stderr)
        return 2


def train_main(argv: list[str] | None = None) -> int:
    from tta.models.source import SHIPPED_DIR, TrainConfig, source_model

    p = argparse.ArgumentParser(prog="tta-train", description="Train the fmnist-c source model.")
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", default=None, help="comma-separated seeds: mean and std over them")
    p.add_argument("--data-root", default=None)
    p.add_argument("--retrain", action="store_true", help="train even if a checkpoint exists")
    p.add_argument("--ship", action="store_true", help=f"also copy the checkpoint to {SHIPPED_DIR}")
    args = p.parse_args(argv)
    try:
        config = TrainConfig(epochs=args.epochs, seed=args.seed)
        model, checkpoint = source_model(config, args.data_root, retrain=args.retrain)
    except USER_ERRORS as error:
        print(f"tta-train: error: {error}", file=sys.stderr)
        return 2
    if args.ship:
        SHIPPED_DIR.mkdir(parents=True, exist_ok=True)
        torch.save(checkpoint, SHIPPED_DIR / f"{config.key()}.pt")
    print(f"{config.key()}: clean accuracy {checkpoint['clean_accuracy']:.2f}%")
    return 0
