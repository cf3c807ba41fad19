"""GALA's continual protocol on fmnist-c, laid out like the paper's Table 2.

Sahoo et al., "A Layer Selection Approach to Test Time Adaptation" (AAAI 2025): continual
stream, severity 5, batch 200, standard corruption order; PL and SHOT update every layer
with Adam 1e-3, with and without a layer selector, under BatchNorm on the source running
statistics (`--norm source`) and on the test batch's (`--norm batch`).

    python benchmarks/gala_paper.py --part claim --jobs 2       # full length, 8 runs
    python benchmarks/gala_paper.py --part selectors --jobs 2   # 1000 images/corruption
    python benchmarks/gala_paper.py --part ablations --jobs 2   # 1000 images/corruption
    python benchmarks/gala_paper.py --report                    # table.md, plots

Parts:
- `claim`: the rows that carry the paper's claim, at its stream length (10000 images per
  corruption, 750 steps): {pl, shot} x {all, gala} x {source, batch}.
- `selectors`: the other layer selectors at 1000 images per corruption (labelled so),
  norm batch: auto-rgn, auto-snr, random, and every fixed block (the best one is the
  oracle row).
- `ablations`: SHOT + GALA, norm batch, 1000 images per corruption: window 5 / 20 / inf,
  threshold 0.5 / 0.75 / 0.99, granularity layer / block / multiple layers, damping, SGD
  instead of Adam, and batch size 1 (100 images per corruption, norm window).

Each row is a plain `tta-run` command, run in its own process (`--jobs N` at a time, one
thread each) into `--out/<row>/`; a row whose results.json is complete is not run again,
so the script can be stopped and resumed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

# --no-all-layers: the `all` rows are runs of their own here (no second all-layers pass).
PROTOCOL = (
    "--benchmark fmnist-c --severity 5 --setting continual --batch-size 200 --seed 0 "
    "--no-all-layers"
)
METHOD = "--params all --optimizer adam --lr 1e-3"
BLOCKS = ("stem", "layer1", "layer2", "layer3", "head")


def claim_rows() -> dict[str, str]:
    return {
        f"{loss}-{selector}-{norm}": f"--loss {loss} --selector {selector} --norm {norm} "
        f"{METHOD} --n-per-domain 10000"
        for norm in ("source", "batch")
        for loss in ("pl", "shot")
        for selector in ("all", "gala")
    }


def selector_rows() -> dict[str, str]:
    """Norm batch only: with Adam 1e-3 under source statistics every row collapses (claim)."""
    rows = {}
    for norm in ("batch",):
        for loss in ("pl", "shot"):
            short = f"{METHOD} --norm {norm} --n-per-domain 1000 --loss {loss}"
            for selector in ("all", "gala", "auto-rgn", "auto-snr", "random"):
                rows[f"{loss}-{selector}-{norm}-short"] = f"{short} --selector {selector}"
            for block in BLOCKS:
                rows[f"{loss}-fixed-{block}-{norm}-short"] = (
                    f"{short} --selector fixed --selector-option granularity=block "
                    f"--selector-option layers={block}"
                )
    return rows


def ablation_rows() -> dict[str, str]:
    base = f"--loss shot {METHOD} --norm batch --n-per-domain 1000 --selector gala"
    rows = {
        "window-5": f"{base} --selector-option window=5",
        "window-20": base,
        "window-inf": f"{base} --selector-option window=inf",
        "threshold-0.5": f"{base} --selector-option threshold=0.5",
        "threshold-0.99": f"{base} --selector-option threshold=0.99",
        "granularity-block": f"{base} --selector-option granularity=block",
        "granularity-multi": f"{base} --selector-option variant=multi",
        "damping-0.5": f"{base} --selector-option damping=0.5",
        "sgd-1e-3": base.replace("--optimizer adam", "--optimizer sgd"),
        "all-sgd-1e-3": base.replace("--optimizer adam", "--optimizer sgd").replace(
            "--selector gala", "--selector all"
        ),
        "batch1-gala": base.replace("--norm batch", "--norm window").replace(
            "--n-per-domain 1000", "--n-per-domain 100"
        )
        + " --batch-size 1",
        "batch1-all": base.replace("--norm batch", "--norm window")
        .replace("--n-per-domain 1000", "--n-per-domain 100")
        .replace("--selector gala", "--selector all")
        + " --batch-size 1",
    }
    return {f"ablation-{name}": args for name, args in rows.items()}


PARTS = {"claim": claim_rows, "selectors": selector_rows, "ablations": ablation_rows}


def finished(out: Path) -> bool:
    path = out / "results.json"
    if not path.exists():
        return False
    try:
        return not json.loads(path.read_text()).get("interrupted", True)
    except json.JSONDecodeError:
        return False


def run_row(name: str, args: str, root: Path) -> tuple[str, float, int]:
    """One tta-run in its own process with one thread; returns (name, seconds, exit code)."""
    out = root / name
    if finished(out):
        return name, 0.0, 0
    argv = [*shlex.split(PROTOCOL), *shlex.split(args), "--out", str(out)]
    if "--batch-size 1" in args:
        argv.remove("200")
        argv.remove("--batch-size")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TTA_QUIET": "1"}
    command = [sys.executable, "-m", "tta.cli", *argv]
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(out / "log.txt", "w") as log:
        log.write("tta-run " + shlex.join(argv) + "\n")
        log.flush()
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    if code == 0 and not finished(out):
        code = 1  # exited without complete results: count it as a failure
    return name, time.perf_counter() - start, code


def run_part(part: str, root: Path, jobs: int) -> None:
    rows = PARTS[part]()
    with ThreadPoolExecutor(jobs) as pool:
        futures = [pool.submit(run_row, name, args, root) for name, args in rows.items()]
        for future in futures:
            name, seconds, code = future.result()
            status = "ok" if code == 0 else f"exit {code}"
            print(f"{name}: {status} ({seconds / 60:.1f} min)", flush=True)


def load(root: Path) -> dict[str, dict]:
    runs = {}
    for path in sorted(root.glob("*/results.json")):
        result = json.loads(path.read_text())
        if not result.get("interrupted"):
            runs[path.parent.name] = result
    return runs


def table(runs: dict[str, dict], names: list[str]) -> str:
    """Per-corruption error, then mean +- std over the corruptions (the paper's Table 2)."""
    present = [n for n in names if n in runs]
    if not present:
        return "(no finished runs)"
    domains = [d["domain"] for d in runs[present[0]]["per_domain"]]
    short = [d.split("_")[0][:6] for d in domains]
    lines = [
        "| run | " + " | ".join(short) + " | mean +- std | time |",
        "|---|" + "---|" * (len(domains) + 2),
    ]
    source = runs[present[0]].get("source_per_domain")
    if source:
        errors = [d["error"] for d in source]
        lines.append(
            "| source | "
            + " | ".join(f"{e:.1f}" for e in errors)
            + f" | {np.mean(errors):.2f} +- {np.std(errors):.2f} | |"
        )
    for name in present:
        errors = [d["error"] for d in runs[name]["per_domain"]]
        minutes = runs[name]["time_s"] / 60
        lines.append(
            f"| {name} | "
            + " | ".join(f"{e:.1f}" for e in errors)
            + f" | **{np.mean(errors):.2f}** +- {np.std(errors):.2f} | {minutes:.1f} min |"
        )
    return "\n".join(lines)


def oracle_block(runs: dict[str, dict], loss: str, norm: str) -> str | None:
    """The fixed block with the lowest mean error on the test stream (an oracle choice)."""
    names = [f"{loss}-fixed-{b}-{norm}-short" for b in BLOCKS]
    done = [n for n in names if n in runs]
    return min(done, key=lambda n: runs[n]["mean_error"]) if done else None


def report(root: Path) -> str:
    runs = load(root)
    sections = [f"Protocol: `{PROTOCOL} {METHOD}` (see each run's protocol card).\n"]
    sections.append("## Claim rows (10000 images per corruption)\n")
    sections.append(table(runs, list(claim_rows())))
    names = [n for n in selector_rows() if "-fixed-" not in n]
    for loss in ("pl", "shot"):
        for norm in ("batch",):
            best = oracle_block(runs, loss, norm)
            if best:
                names.append(best)
    sections.append("\n## Layer selectors (1000 images per corruption; fixed block: oracle)\n")
    sections.append(table(runs, names))
    sections.append("\n## Ablations of SHOT + GALA, norm batch (1000 images per corruption)\n")
    sections.append(table(runs, list(ablation_rows())))
    text = "\n".join(sections) + "\n"
    (root / "table.md").write_text(text)
    plot_curves(runs, list(claim_rows()), root / "error_over_stream.png")
    return text


def plot_curves(runs: dict[str, dict], names: list[str], path: Path) -> None:
    """Error per window of batches along the stream, domain boundaries marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {n: runs[n]["stream"] for n in names if n in runs and runs[n].get("stream")}
    if not curves:
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    for ax, norm in zip(axes, ("source", "batch"), strict=True):
        for name, stream in curves.items():
            if name.endswith(norm):
                ax.plot(stream["images"], stream["error"], label=name.rsplit("-", 1)[0], lw=1)
        first = next(iter(curves.values()))
        for start in first.get("domain_starts_images", [])[1:]:
            ax.axvline(start, color="#cccccc", lw=0.5)
        ax.set_title(f"norm {norm}")
        ax.set_xlabel("images seen")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("error (%) per window")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=sorted(PARTS), action="append", default=[])
    parser.add_argument("--jobs", type=int, default=1, help="rows at a time (one thread each)")
    parser.add_argument("--out", default="runs/gala-paper")
    parser.add_argument("--report", action="store_true", help="write table.md and the plots")
    args = parser.parse_args()
    root = Path(args.out)
    for part in args.part:
        run_part(part, root, args.jobs)
    if args.report or args.part:
        print(report(root))


if __name__ == "__main__":
    main()
