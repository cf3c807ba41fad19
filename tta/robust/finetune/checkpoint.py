"""Files of a fine-tuning run: the per-epoch checkpoint it resumes from, the final model,
its card and results.json.

The epoch checkpoint (`checkpoint.pt`, replaced atomically after every epoch) holds the
weights, AdamW and learning-rate schedule state, the auto schedule's state and the history;
every random draw of an epoch comes from generators seeded by (seed, epoch, step), so a run
killed anywhere resumes at its last finished epoch and ends with the same weights.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
RESULTS = "results.json"
CARD = "card.md"


def save_epoch(out_dir: Path, state: dict) -> Path:
    """Write `state` to out_dir/checkpoint.pt atomically (a kill leaves the old one)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / CHECKPOINT
    tmp = out_dir / f".{CHECKPOINT}.{os.getpid()}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_epoch(out_dir: Path, config: dict) -> dict | None:
    """The last epoch checkpoint of this configuration in `out_dir`, or None."""
    path = Path(out_dir) / CHECKPOINT
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise RuntimeError(f"cannot read {path} ({error}); delete it to start over") from error
    if state.get("config") != config:
        changed = sorted(k for k in config if state.get("config", {}).get(k, object()) != config[k])
        raise ValueError(
            f"{out_dir} holds a run of another configuration (differs in {changed}); "
            "use another output folder or delete it"
        )
    return state


def save_model(out_dir: Path, model: torch.nn.Module, meta: dict) -> Path:
    path = Path(out_dir) / MODEL
    torch.save({"state_dict": model.state_dict(), **meta}, path)
    return path


def json_safe(value: object) -> object:
    """inf/nan -> None, tensors/numpy -> lists, so results.json is strict JSON."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist"):
        return json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_results(out_dir: Path, results: dict) -> Path:
    path = Path(out_dir) / RESULTS
    path.write_text(json.dumps(json_safe(results), indent=2, allow_nan=False) + "\n")
    return path


def write_card(out_dir: Path, results: dict) -> Path:
    """A short model card: what was trained from what, how, and how it scores."""
    c, t, s = results["config"], results["test"], results["schedule"]
    lines = [
        f"# Robust fine-tuning: {c['task']} from {results['backbone']['backbone']}",
        "",
        "Epsilon-Scheduling (Ngnawé et al., ICLR 2026, arXiv 2509.23325), `tta.robust.finetune`.",
        "",
        f"- backbone: {results['backbone']}",
        f"- task: {c['task']} ({results['data_sizes']}), {results['num_classes']} classes",
        f"- protocol: {c['protocol']}"
        + (f" (last {c['last_k']})" if c["protocol"] == "partial" else ""),
        f"- objective: {c['objective']}"
        + (f" (beta {c['trades_beta']})" if c["objective"] == "trades" else "")
        + f", training attack {c['attack']} {c['train_steps']} steps",
        f"- budget: eps_g = {c['eps'] * 255:.4g}/255, schedule {c['schedule']}, "
        f"T1 = {s['t1']:.4g}, T2 = {s['t2']:.4g} epochs",
        f"- AdamW lr {c['lr']}, weight decay {c['weight_decay']}, {c['epochs']} epochs, "
        f"batch {c['batch_size']}, warm-up {c['warmup_epochs']} epochs, cosine; seed {c['seed']}",
        f"- training time: {results['time_s']:.0f} s",
        "",
        f"Test ({t['n']} images, APGD-CE {c['eval_steps']} steps, L-inf): "
        f"clean {t['clean']:.2f} | adv@eps_g {t['adv']:.2f} | expected {t['expected']:.2f}",
        "",
    ]
    path = Path(out_dir) / CARD
    path.write_text("\n".join(lines))
    return path
