"""Ours vs published: the comparison table a protocol run writes (markdown and JSON).

Every published number is listed with its source; the difference column is filled only when
the run followed the published protocol (model, images per domain, the 15 corruptions).
"""

from __future__ import annotations

from pathlib import Path

from tta.data.corruptions import STANDARD_CORRUPTIONS
from tta.harness.published import SOURCES, Protocol
from tta.harness.results import dump_json, versions
from tta.harness.stream import StreamSpec


def differences(proto: Protocol, spec: StreamSpec, model_spec: str) -> list[str]:
    """How this run departs from the published protocol (empty: comparable)."""
    found = []
    if model_spec != proto.model:
        found.append(f"model {model_spec} (published: {proto.model})")
    if spec.n_per_domain != proto.n_per_domain:
        found.append(f"{spec.n_per_domain} images per domain (published: {proto.n_per_domain})")
    if tuple(spec.corruptions) != STANDARD_CORRUPTIONS:
        found.append(f"corruptions {', '.join(spec.corruptions)} (published: the standard 15)")
    return found


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def comparison_rows(proto: Protocol, ours: dict[str, dict], comparable: bool = True) -> list[dict]:
    """One row per (method, published number), plus our methods with no published number.
    The difference is left out when the run departs from the published protocol."""
    rows = []
    methods = list(dict.fromkeys([*ours, *(p.method for p in proto.published)]))
    for method in methods:
        mine = ours.get(method, {}).get("mean_error")
        published = [p for p in proto.published if p.method == method] or [None]
        for p in published:
            rows.append(
                {
                    "method": method,
                    "ours": mine,
                    "published": p.error if p else None,
                    "difference": mine - p.error if comparable and p and mine is not None else None,
                    "source": p.source if p else None,
                    "where": p.where if p else None,
                }
            )
    return rows


def per_domain_table(proto: Protocol, ours: dict[str, dict]) -> list[str]:
    """Markdown: ours vs published per corruption, for methods with published per-domain rows."""
    columns = []
    for method, result in ours.items():
        published = next((p for p in proto.published if p.method == method and p.per_domain), None)
        if published is not None:
            columns.append(
                (method, {d["domain"]: d["error"] for d in result["per_domain"]}, published)
            )
    if not columns:
        return []
    head = "| corruption | " + " | ".join(f"{m} ours | {m} published" for m, _, _ in columns) + " |"
    lines = [head, "|---" * (1 + 2 * len(columns)) + "|"]
    for index, corruption in enumerate(STANDARD_CORRUPTIONS):
        cells = []
        for _, mine, published in columns:
            cells += [_fmt(mine.get(corruption)), _fmt(published.per_domain[index])]
        lines.append(f"| {corruption} | " + " | ".join(cells) + " |")
    sources = "; ".join(f"{m} from {p.source} ({p.where})" for m, _, p in columns)
    return ["", f"Per corruption, error % (published: {sources}):", "", *lines]


def comparison_markdown(
    proto: Protocol, card: dict, ours: dict[str, dict], notes: list[str]
) -> str:
    lines = [
        f"# {proto.title}",
        "",
        f"Protocol `{proto.name}`: top-1 error (%), severity "
        f"{proto.severity}, {proto.setting}, batch {proto.batch_size}, "
        f"{card['n_per_domain']} images per corruption, model {card['model']}, "
        f"device {card['device']}.",
    ]
    if notes:
        lines += ["", "**Not the published protocol**: " + "; ".join(notes) + "."]
    if proto.note:
        lines += ["", proto.note]
    lines += [
        "",
        "| method | ours | published | ours - published | source |",
        "|---|---|---|---|---|",
    ]
    for row in comparison_rows(proto, ours, comparable=not notes):
        where = f"{row['source']}: {row['where']}" if row["source"] else ""
        lines.append(
            f"| {row['method']} | {_fmt(row['ours'])} | {_fmt(row['published'])} | "
            f"{_fmt(row['difference'])} | {where} |"
        )
    lines += per_domain_table(proto, ours)
    used = sorted({p.source for p in proto.published})
    lines += ["", "Sources:", ""] + [f"- {key}: {SOURCES[key]}" for key in used]
    return "\n".join(lines) + "\n"


def write_comparison(
    out_dir: Path, proto: Protocol, card: dict, ours: dict[str, dict], notes: list[str]
) -> str:
    """Write comparison.md and comparison.json; return the markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = comparison_markdown(proto, card, ours, notes)
    (out_dir / "comparison.md").write_text(markdown)
    payload = {
        "protocol": card,
        "comparable": not notes,
        "differences": notes,
        "methods": ours,
        "comparison": comparison_rows(proto, ours, comparable=not notes),
        "published": [p.__dict__ for p in proto.published],
        "sources": SOURCES,
        "versions": versions(),
    }
    (out_dir / "comparison.json").write_text(dump_json(payload))
    return markdown
