"""Command line: `tta-run` (adapt over a benchmark stream) and `tta-train` (source model).

`tta-run` parses its flags into a `RunConfig` and hands it to the harness
(`tta.harness.run`); defaults of the adaptation options are `tta.adapt`'s.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from tta.api import OPTIMIZERS
from tta.data.benchmarks import BENCHMARKS
from tta.harness.config import (
    API_DEFAULTS,
    DEFAULT_BATCH_SIZE,
    DEFAULT_FORGETTING_IMAGES,
    RunConfig,
)
from tta.harness.results import dump_json
from tta.harness.run import run_and_save
from tta.harness.seeds import run_seeds
from tta.harness.stream import SETTINGS
from tta.precision import AMP_DTYPES
from tta.presets import FAMILIES, methods
from tta.registry import LAYER_SELECTORS, LOSSES, NORMS
from tta.robust_cli import parse_eps

USER_ERRORS = (ValueError, TypeError, FileNotFoundError, RuntimeError)


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
        "--loss",
        default=None,
        help=f"default {API_DEFAULTS['loss']}, or --method's; one of: {', '.join(LOSSES.names())}",
    )
    p.add_argument(
        "--loss-option", action="append", default=[], metavar="KEY=VALUE", help="e.g. d_margin=0.4"
    )
    p.add_argument(
        "--selector",
        default=API_DEFAULTS["selector"],
        help=f"which layers each step updates; one of: {', '.join(LAYER_SELECTORS.names())}",
    )
    p.add_argument("--selector-option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--sample-filter", default=None, help="e.g. grad-align")
    p.add_argument("--sample-filter-option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--norm",
        default=None,
        help="what BatchNorm normalizes with (default: the loss's); one of: "
        f"{', '.join(NORMS.names())}",
    )
    p.add_argument("--norm-option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--params",
        default=None,
        help="norm, all, or parameter/module names, comma-separated (e.g. layer3 or layer2,fc); "
        "default: the loss's",
    )
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
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"default {DEFAULT_BATCH_SIZE}, or the preset's",
    )
    p.add_argument(
        "--n-per-domain",
        default=None,
        help="images per domain, or 'all'; default 1000 on fmnist-c, 5000 on imagenet-c, else all",
    )
    p.add_argument(
        "--optimizer",
        default=None,
        choices=OPTIMIZERS,
        help=f"default {API_DEFAULTS['optimizer']}, or the preset's",
    )
    p.add_argument(
        "--lr", type=float, default=None, help=f"default {API_DEFAULTS['lr']}, or the preset's"
    )
    p.add_argument(
        "--momentum",
        type=float,
        default=None,
        help=f"SGD momentum; default {API_DEFAULTS['momentum']}, or the preset's",
    )
    p.add_argument(
        "--steps", type=int, default=API_DEFAULTS["steps"], help="adaptation steps per batch"
    )
    p.add_argument(
        "--reset-every",
        type=int,
        default=None,
        metavar="N",
        help="back to the source weights, optimizer and loss state after every N adaptation "
        "steps (RDumb); 0: never; default: the loss's (1000 for rdumb, else never)",
    )
    p.add_argument(
        "--amp",
        default=None,
        choices=sorted(AMP_DTYPES),
        help="mixed precision of the adapted run: autocast to bfloat16, or float16 with a "
        "gradient scaler (every shipped loss; a custom one calling backward itself is refused); "
        "weights stay float32; default float32",
    )
    p.add_argument(
        "--channels-last", action="store_true", help="NHWC weights and images (image models)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", default=None, help="comma-separated seeds: mean and std over them")
    p.add_argument("--data-root", default=None, help="where datasets are found or generated")
    p.add_argument(
        "--download", action="store_true", help="download missing source data (needs internet)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--no-source", action="store_true", help="skip the source-model baseline")
    p.add_argument(
        "--no-all-layers",
        action="store_true",
        help="skip the all-layers baseline: the same loss and parameters with --selector all, "
        "run (and cached) when --selector is another",
    )
    p.add_argument(
        "--forgetting",
        type=int,
        default=DEFAULT_FORGETTING_IMAGES,
        metavar="N",
        help="clean test images to measure forgetting on (error before and after the stream, "
        "as EATA); 0 turns it off; benchmarks without clean images skip it",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads (default: OMP_NUM_THREADS if set, else the CPUs of the affinity mask); "
        "use 1 per job when jobs share the machine",
    )
    p.add_argument(
        "--brittleness",
        type=parse_eps,
        default=None,
        metavar="EPS",
        help="monitor brittle decisions at this L-inf budget (e.g. 2/255): per batch, the share "
        "of logit margins at or below a threshold calibrated on clean images, source vs adapted",
    )
    p.add_argument(
        "--brittle-calibration",
        type=int,
        default=300,
        metavar="N",
        help="clean images whose input margins set the brittleness threshold (cached)",
    )
    p.add_argument(
        "--robust-batches",
        type=int,
        default=0,
        metavar="K",
        help="with --brittleness: APGD-CE robust accuracy on the last K batches of every "
        "domain, source vs adapted",
    )
    p.add_argument(
        "--out", default=None, help="run directory (default runs/<time>-<loss>-<selector>)"
    )
    return p


def to_config(args: argparse.Namespace) -> RunConfig:
    """The run description of parsed `tta-run` flags (unresolved: presets apply in `run`)."""
    return RunConfig(
        method=args.method,
        preset_family=args.preset_family,
        loss=args.loss,
        loss_options=parse_options(args.loss_option, "--loss-option"),
        params=args.params,
        selector=args.selector,
        selector_options=parse_options(args.selector_option, "--selector-option"),
        sample_filter=args.sample_filter,
        sample_filter_options=parse_options(args.sample_filter_option, "--sample-filter-option"),
        norm=args.norm,
        norm_options=parse_options(args.norm_option, "--norm-option"),
        optimizer=args.optimizer,
        lr=args.lr,
        momentum=args.momentum,
        steps=args.steps,
        reset_every=args.reset_every,
        amp=args.amp,
        channels_last=args.channels_last,
        benchmark=args.benchmark,
        corruptions=args.corruptions,
        severity=args.severity,
        setting=args.setting,
        dirichlet_delta=args.dirichlet_delta,
        order_seed=args.order_seed,
        model=args.model,
        model_dir=args.model_dir,
        dataset=args.dataset,
        target=args.target,
        batch_size=args.batch_size,
        n_per_domain=args.n_per_domain,
        seed=args.seed,
        data_root=args.data_root,
        download=args.download,
        device=args.device,
        no_source=args.no_source,
        no_all_layers=args.no_all_layers,
        forgetting=args.forgetting,
        threads=args.threads,
        brittleness=args.brittleness,
        brittle_calibration=args.brittle_calibration,
        robust_batches=args.robust_batches,
        out=args.out,
    )


def parse_seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError as error:
        raise ValueError(f"--seeds takes comma-separated integers, got {text!r}") from error


def seeds_main(config: RunConfig, seeds: list[int]) -> int:
    """One run per seed (in <out>/seed<N>/), then mean and std over seeds in seeds.json."""
    out = Path(config.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-seeds")
    summary = run_seeds(config, seeds, out)
    (out / "seeds.json").write_text(dump_json(summary))
    if summary["interrupted"]:
        finished = summary["finished_seeds"]
        print(f"interrupted at seed {summary['interrupted_seed']}; seeds.json covers {finished}")
        return 130
    print(
        f"mean error over seeds {seeds}: {summary['mean_error']:.2f} +- {summary['std_error']:.2f}"
    )
    return 0


def run_main(argv: list[str] | None = None) -> int:
    args = run_parser().parse_args(argv)
    try:
        config = to_config(args)
        if args.seeds:
            return seeds_main(config, parse_seeds(args.seeds))
        return 130 if run_and_save(config).interrupted else 0
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


if __name__ == "__main__":  # python -m tta.cli ARGS: the same as tta-run ARGS
    sys.exit(run_main())
