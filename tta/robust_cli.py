"""Command line `tta-robust`: `eval` (expected robustness), `margins` (margin consistency),
`train-robust` (the adversarially trained Fashion-MNIST ResNet-20), `finetune` (robust
fine-tuning with Epsilon-Scheduling, `tta.robust.finetune.command`). Thin: parses flags and
calls `tta.robust`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from fractions import Fraction
from pathlib import Path

import torch

USER_ERRORS = (ValueError, TypeError, FileNotFoundError, RuntimeError, ImportError)


def parse_eps(text: str) -> float:
    """'8/255', '0.03' or 'inf' as a float."""
    try:
        return math.inf if text.strip().lower() == "inf" else float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError) as error:
        raise argparse.ArgumentTypeError(f"not a budget: {text!r} (use 8/255 or 0.03)") from error


def parse_eps_list(text: str) -> list[float]:
    return [parse_eps(part) for part in text.split(",") if part.strip()]


def json_safe(value: object) -> object:
    """inf/nan -> None, tensors -> lists, so the results are strict JSON."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if torch.is_tensor(value):
        return json_safe(value.tolist())
    if hasattr(value, "tolist"):  # numpy
        return json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(results), indent=2, allow_nan=False) + "\n")


def common_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="source",
        help="source (the shipped fmnist ResNet-20), robust (tta-robust train-robust), or a "
        "tta-run --model spec (torchvision:, timm:, <ckpt>,arch=)",
    )
    p.add_argument("--data-root", default=None)
    p.add_argument("--norm", choices=("Linf", "L2"), default="Linf")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder (default runs/robust/<cmd>-<model>)")


def out_dir(args: argparse.Namespace, command: str) -> Path:
    name = args.model.replace("/", "_").replace(":", "_").replace(",", "_")
    return Path(args.out or f"runs/robust/{command}-{name}")


def eval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="expected robustness: accuracy vs eps, E.adv")
    common_flags(p)
    p.add_argument("--eps", type=parse_eps, default=8 / 255, help="eps_g, e.g. 8/255")
    p.add_argument("--grid-step", type=parse_eps, default=1 / 255)
    p.add_argument("--steps", type=int, default=10, help="APGD-CE steps per budget")
    p.add_argument("--restarts", type=int, default=1)
    p.add_argument("--n", type=int, default=1000, help="first N clean test images")
    p.add_argument(
        "--autoattack",
        choices=("none", "standard", "custom"),
        default="none",
        help="also report AutoAttack (pyautoattack) accuracy at eps_g",
    )
    p.add_argument("--aa-attacks", default="apgd-ce,apgd-t,fab-t,square")


def margins_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("margins", help="margin consistency: tau, detection, subset estimate")
    common_flags(p)
    p.add_argument(
        "--eps",
        type=parse_eps_list,
        default=[8 / 255],
        help="budget(s), comma-separated (e.g. 2/255,8/255): margins are computed once",
    )
    p.add_argument("--n", type=int, default=2000, help="the whole set: first N test images")
    p.add_argument("--n-subset", type=int, default=500, help="samples given input margins")
    p.add_argument(
        "--n-heldout", type=int, default=500, help="last train images, for the pseudo-margin"
    )
    p.add_argument("--pseudo", choices=("logits", "features", "none"), default="logits")
    p.add_argument("--method", choices=("fab", "bisection"), default="fab")
    p.add_argument("--bisection-iters", type=int, default=8)
    p.add_argument("--truth-steps", type=int, default=10, help="APGD-CE steps for the truth")
    p.add_argument("--truth-restarts", type=int, default=1)


def train_parser(sub: argparse._SubParsersAction) -> None:
    from tta.robust.train import INITS, METHODS, RobustTrainConfig

    d = RobustTrainConfig()
    p = sub.add_parser("train-robust", help="adversarially train the Fashion-MNIST ResNet-20")
    p.add_argument("--method", choices=METHODS, default=d.method)
    p.add_argument("--eps", type=parse_eps, default=d.eps)
    p.add_argument("--init", choices=INITS, default=d.init)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--n-train", type=int, default=d.n_train, help="images per epoch")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--data-root", default=None)
    p.add_argument("--retrain", action="store_true", help="train even if a checkpoint exists")
    p.add_argument("--ship", action="store_true", help="also copy it to tta/robust/weights/")


def run_eval(args: argparse.Namespace) -> dict:
    from tta.robust.expected import expected_robustness
    from tta.robust.models import fmnist_images, load_named_model
    from tta.robust.plots import plot_accuracy_vs_eps

    model, info = load_named_model(args.model, args.data_root)
    x, y = fmnist_images("test", args.n, args.data_root)
    result = expected_robustness(
        model,
        x,
        y,
        args.eps,
        args.grid_step,
        args.steps,
        args.restarts,
        args.norm,
        args.batch_size,
        args.seed,
    )
    print(result.table())
    out = out_dir(args, "eval")
    results = {"model": info, "data": "fashion-mnist test", **result.to_dict()}
    results["cost_vs_clean_pass"] = result.seconds / max(result.clean_pass_seconds, 1e-9)
    if args.autoattack != "none":
        from tta.robust.autoattack import autoattack

        attacks = args.aa_attacks.split(",") if args.autoattack == "custom" else None
        start = time.perf_counter()
        aa = autoattack(model, x, y, args.eps, args.norm, args.autoattack, attacks, args.seed)
        accuracy = 100.0 * float((~aa.fooled).float().mean())
        results["autoattack"] = {
            "version": args.autoattack,
            "attacks": attacks,
            "accuracy": accuracy,
            "seconds": time.perf_counter() - start,
        }
        print(f"AutoAttack ({args.autoattack}) at eps_g: {accuracy:.2f}")
    plot_accuracy_vs_eps({args.model: result}, out / "accuracy_vs_eps.png")
    write_json(out / "results.json", results)
    print(f"wrote {out / 'results.json'} and {out / 'accuracy_vs_eps.png'}")
    return results


def run_margins(args: argparse.Namespace) -> dict:
    from tta.robust.consistency import margin_consistency
    from tta.robust.models import fmnist_images, load_named_model
    from tta.robust.plots import plot_margin_scatter, plot_roc

    model, info = load_named_model(args.model, args.data_root)
    x, y = fmnist_images("test", args.n, args.data_root)
    heldout = None
    if args.pseudo != "none" and args.n_heldout > 0:
        heldout = fmnist_images("train", args.n_heldout, args.data_root, last=True)[0]
    options = {"iters": args.bisection_iters} if args.method == "bisection" else {}
    result = margin_consistency(
        model,
        x,
        y,
        eps=args.eps,
        n_subset=args.n_subset,
        norm=args.norm,
        method=args.method,
        heldout_images=heldout,
        pseudo=None if args.pseudo == "none" else args.pseudo,
        truth_steps=args.truth_steps,
        truth_restarts=args.truth_restarts,
        batch_size=args.batch_size,
        seed=args.seed,
        min_norm_options=options,
    )
    print(result.table())
    out = out_dir(args, "margins")
    plot_margin_scatter(result, out / "margins_scatter.png")
    plot_roc(result, out / "roc.png")
    results = {"model": info, "data": "fashion-mnist test", **result.to_dict()}
    write_json(out / "results.json", results)
    print(f"wrote {out / 'results.json'}, {out / 'margins_scatter.png'} and {out / 'roc.png'}")
    return results


def run_train(args: argparse.Namespace) -> dict:
    from tta.robust.train import RobustTrainConfig, robust_model

    config = RobustTrainConfig(
        method=args.method,
        eps=args.eps,
        init=args.init,
        epochs=args.epochs,
        n_train=args.n_train,
        lr=args.lr,
        seed=args.seed,
    )
    _, checkpoint = robust_model(config, args.data_root, retrain=args.retrain)
    if args.ship:
        from tta.robust.train import SHIPPED_DIR

        SHIPPED_DIR.mkdir(parents=True, exist_ok=True)
        torch.save(checkpoint, SHIPPED_DIR / f"{config.key()}.pt")
    print(
        f"{config.key()}: clean accuracy {checkpoint['clean_accuracy']:.2f}%, "
        f"trained in {checkpoint['train_time_s']:.0f} s"
    )
    return checkpoint


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tta-robust",
        description="Adversarial robustness: expected robustness, margin consistency, a robust model.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    eval_parser(sub)
    margins_parser(sub)
    train_parser(sub)
    from tta.robust.finetune.command import add_parser as finetune_parser

    finetune_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from tta.robust.finetune.command import run as run_finetune

    commands = {"eval": run_eval, "margins": run_margins, "train-robust": run_train}
    commands["finetune"] = run_finetune
    try:
        commands[args.command](args)
    except USER_ERRORS as error:
        print(f"tta-robust {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
