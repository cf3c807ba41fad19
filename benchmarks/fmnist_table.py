"""Run a list of tta-run configurations on fmnist-c and write one per-corruption table.

    python benchmarks/fmnist_table.py --set core --out runs/table-core
    python benchmarks/fmnist_table.py --set gala-sweep --out runs/table-gala
    python benchmarks/fmnist_table.py --set zoo --out runs/table-zoo

Each configuration is an ordinary `tta-run` command (printed in the table), so any row can
be reproduced alone. Writes `table.md` (errors in %, source first) and `table.json`.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from tta.cli import run_main

COMMON = "--benchmark fmnist-c --severity 5 --setting continual --n-per-domain 1000 --seed 0"

SETS = {
    "core": ["--loss norm", "--loss tent --selector all", "--loss tent --selector gala"],
    "gala-sweep": [
        f"--loss entropy --params all --optimizer sgd --lr {lr} --selector {selector}"
        for lr in ("1e-4", "1e-3", "1e-2")
        for selector in ("all", "gala")
    ],
    # tent's preset is the core set's tent; cotta (up to 34 forwards a batch) runs last
    # tent's preset is the core set's tent; cotta (up to 34 forwards a batch) runs last
    "zoo": [
        f"--method {method} --selector {selector}"
        for method in ("eta", "eata", "sar", "pl", "shot-im", "shot", "deyo", "lame", "cotta")
        for selector in ("all", "gala")
    ],
}


def run_row(args: str, out: Path) -> dict:
    argv = [*shlex.split(COMMON), *shlex.split(args), "--out", str(out)]
    code = run_main(argv)
    if code != 0:
        raise SystemExit(f"tta-run {' '.join(argv)} exited with {code}")
    return json.loads((out / "results.json").read_text())


def markdown(rows: list[tuple[str, dict]]) -> str:
    first = rows[0][1]
    domains = [d["domain"] for d in first["per_domain"]]
    short = [d.replace("_", " ").split()[0][:6] for d in domains]
    lines = [
        "| run | " + " | ".join(short) + " | mean | img/s | skipped |",
        "|---|" + "---|" * (len(domains) + 3),
        "| source | "
        + " | ".join(f"{d['error']:.1f}" for d in first["source_per_domain"])
        + f" | **{first['source_mean_error']:.2f}** | | |",
    ]
    for label, result in rows:
        errors = " | ".join(f"{d['error']:.1f}" for d in result["per_domain"])
        lines.append(
            f"| `{label}` | {errors} | **{result['mean_error']:.2f}** | "
            f"{result['images_per_s']:.0f} | {result['n_skipped']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=sorted(SETS), default="core")
    parser.add_argument("--out", default=None)
    parser.add_argument("--only", nargs="*", default=None, help="substrings of rows to run")
    args = parser.parse_args()
    out = Path(args.out or f"runs/table-{args.set}")
    rows = []
    for index, config in enumerate(SETS[args.set]):
        if args.only and not any(s in config for s in args.only):
            continue
        rows.append((config, run_row(config, out / f"{index:02d}")))
        table = markdown(rows)
        (out / "table.md").write_text(f"Common flags: `{COMMON}`\n\n{table}\n")
        (out / "table.json").write_text(json.dumps([{"args": c, **r} for c, r in rows], indent=1))
    print(table)


if __name__ == "__main__":
    main()
