"""The margin-consistency analysis of one model on one data set (Ngnawé et al., NeurIPS 2024),
end to end: what `tta-robust margins` runs.

1. Logits (and penultimate features) of every sample; logit margins `d_out` on all.
2. Input margins `d_in` (FAB, eps = inf, or the APGD bisection; `tta.robust.margins`) on a
   random subset of `n_subset` samples (the paper: n = 500).
3. Kendall's tau-b between `d_in` and `d_out` on the subset (no budget involved).
4. For each budget eps (one or several; the margins are computed once): detection of
   non-robust samples (`d_in <= eps`) by `-d_out` (AUROC, AUPR, FPR@95), and robust
   accuracy on the whole set estimated from the subset's 95%-TPR threshold, against the
   attacked truth: APGD-CE (`truth_steps`, `truth_restarts`) at eps on every sample (the
   paper compares with AutoAttack; `tta-robust eval --autoattack` gives it).
5. With held-out images: the learned pseudo-margin (`tta.robust.pseudo_margin`) trained
   on their input margins, evaluated (tau, detection at each eps) on the subset.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from tta.robust.apgd import apgd_ce
from tta.robust.detection import detection_metrics, roc_points, subset_estimate
from tta.robust.margins import input_margins, kendall_tau, logit_margin
from tta.robust.pseudo_margin import fit_pseudo_margin, logits_and_features
from tta.robust.state import attack_state

PSEUDO_INPUTS = ("logits", "features")


@dataclass
class MarginConsistency:
    """Per-sample margins of the subset and every number of the analysis; `summary` holds
    clean, tau, pseudo_tau and `by_eps` (one entry per budget)."""

    d_in: np.ndarray  # input margins of the subset
    d_out: np.ndarray  # logit margins of the subset
    pseudo: np.ndarray | None  # pseudo-margins of the subset
    summary: dict
    protocol: dict
    seconds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            **self.summary,
            "protocol": self.protocol,
            "seconds": self.seconds,
            "margins": {"d_in": self.d_in, "d_out": self.d_out, "pseudo": self.pseudo},
        }

    def table(self) -> str:
        s = self.summary
        lines = [f"Kendall tau (input vs logit margin): {s['tau']:.3f}"]
        if s.get("pseudo_tau") is not None:
            lines[0] += f"; pseudo-margin: {s['pseudo_tau']:.3f}"
        lines.append(
            f"{'eps':>9} {'nonrob%':>8} {'AUROC':>7} {'AUPR':>7} {'FPR@95':>7} "
            f"{'pAUROC':>7} {'pFPR@95':>8} {'estimate':>9} {'truth':>7} {'diff':>6}"
        )
        for e in s["by_eps"]:
            det, pdet = e["detection"], e.get("pseudo_detection") or {}
            lines.append(
                f"{e['eps'] * 255:>5.2f}/255 {det['nonrobust']:>8.1f} {det['auroc']:>7.2f} "
                f"{det['aupr']:>7.2f} {det['fpr@95']:>7.2f} {pdet.get('auroc', np.nan):>7.2f} "
                f"{pdet.get('fpr@95', np.nan):>8.2f} {e['estimate']['estimate']:>9.2f} "
                f"{e['truth']:>7.2f} {e['estimate_error']:>+6.2f}"
            )
        lines.append(
            f"clean {s['clean']:.2f}; input margins of {self.protocol['n_subset']} samples, "
            f"robust accuracy estimated on {self.protocol['n_all']} (p = pseudo-margin)"
        )
        return "\n".join(lines)


def _truth(
    net: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    norm: str,
    steps: int,
    restarts: int,
    batch_size: int,
    seed: int,
) -> torch.Tensor:
    """Robust (not fooled) flags of every sample under APGD-CE at eps."""
    fooled = torch.zeros(len(images), dtype=torch.bool)
    for b in range(0, len(images), batch_size):
        chunk = slice(b, b + batch_size)
        result = apgd_ce(net, images[chunk], labels[chunk], eps, norm, steps, restarts, seed=seed)
        fooled[chunk] = result.fooled.cpu()
    return ~fooled


def _curve(d_in: np.ndarray, score: np.ndarray, eps: float) -> dict:
    fpr, tpr = roc_points(d_in, score, eps)
    return {"fpr": fpr, "tpr": tpr}


def margin_consistency(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float | Sequence[float] = 8 / 255,
    n_subset: int = 500,
    norm: str = "Linf",
    method: str = "fab",
    heldout_images: torch.Tensor | None = None,
    pseudo: str | None = "logits",
    truth_steps: int = 10,
    truth_restarts: int = 1,
    batch_size: int = 250,
    seed: int = 0,
    tpr: float = 0.95,
    min_norm_options: dict | None = None,
    pseudo_epochs: int = 500,
) -> MarginConsistency:
    """Run the analysis of the module docstring on (`images`, `labels`) at each `eps`."""
    if pseudo is not None and pseudo not in PSEUDO_INPUTS:
        raise ValueError(f"pseudo must be one of {PSEUDO_INPUTS} or None, got {pseudo!r}")
    if not 2 <= n_subset <= len(images):
        raise ValueError(f"n_subset must be in [2, {len(images)}], got {n_subset}")
    budgets = [float(eps)] if isinstance(eps, int | float) else [float(e) for e in eps]
    options = dict(min_norm_options or {})
    use_features = pseudo == "features"
    seconds: dict[str, float] = {}
    with attack_state(model) as net:
        tick = time.perf_counter()
        logits, features = logits_and_features(net, images, batch_size, use_features)
        d_out_all = logit_margin(logits).cpu()
        correct = (logits.argmax(1) == labels).cpu()
        seconds["clean_pass"] = time.perf_counter() - tick

        generator = torch.Generator().manual_seed(seed)
        subset = torch.randperm(len(images), generator=generator)[:n_subset].sort().values
        tick = time.perf_counter()
        margins = input_margins(net, images[subset], norm, method, batch_size, seed, **options)
        seconds["input_margins"] = time.perf_counter() - tick
        d_in = margins.margins.cpu().numpy()
        d_out = d_out_all[subset].numpy()

        pseudo_scores = None
        if pseudo is not None and heldout_images is not None:
            tick = time.perf_counter()
            held_logits, held_features = logits_and_features(
                net, heldout_images, batch_size, use_features
            )
            held = input_margins(net, heldout_images, norm, method, batch_size, seed + 1, **options)
            inputs = held_features if use_features else held_logits
            regressor = fit_pseudo_margin(
                inputs.cpu(), held.margins.cpu(), pseudo_epochs, seed=seed
            )
            test_inputs = (features if use_features else logits)[subset]
            with torch.no_grad():
                pseudo_scores = regressor(test_inputs.cpu().float()).numpy()
            seconds["pseudo_margin"] = time.perf_counter() - tick

        by_eps = []
        tick = time.perf_counter()
        for e in budgets:
            robust = _truth(
                net, images, labels, e, norm, truth_steps, truth_restarts, batch_size, seed
            )
            entry = {
                "eps": e,
                "eps_255": e * 255,
                "detection": detection_metrics(d_in, d_out, e, tpr),
                "estimate": subset_estimate(d_in, d_out, e, d_out_all, correct, tpr),
                "truth": 100.0 * float(robust.float().mean()),
                "subset_robust_by_margin": 100.0
                * float((correct[subset].numpy() & (d_in > e)).mean()),
                "roc": _curve(d_in, d_out, e),
            }
            entry["estimate_error"] = entry["estimate"]["estimate"] - entry["truth"]
            if pseudo_scores is not None:
                entry["pseudo_detection"] = detection_metrics(d_in, pseudo_scores, e, tpr)
                entry["pseudo_roc"] = _curve(d_in, pseudo_scores, e)
            by_eps.append(entry)
        seconds["truth_attacks"] = time.perf_counter() - tick
    summary = {
        "clean": 100.0 * float(correct.float().mean()),
        "tau": kendall_tau(d_in, d_out),
        "pseudo_tau": None if pseudo_scores is None else kendall_tau(d_in, pseudo_scores),
        "n_failed_min_norm": margins.n_failed,
        "by_eps": by_eps,
    }
    protocol = {
        "eps": budgets,
        "norm": norm,
        "min_norm": {"method": method, **margins.options},
        "n_all": len(images),
        "n_subset": n_subset,
        "subset": f"random, seed {seed}",
        "tpr": tpr,
        "truth": {"attack": "apgd-ce", "steps": truth_steps, "restarts": truth_restarts},
        "pseudo": {
            "input": pseudo if pseudo_scores is not None else None,
            "mlp": "d-512-512-1, ReLU, sigmoid",
            "loss": "MSE on d_in / max d_in",
            "optimizer": "Adam 1e-4",
            "epochs": pseudo_epochs,
            "heldout": None if heldout_images is None else len(heldout_images),
        },
        "seed": seed,
        "model_state": "eval, frozen (tta.robust.state)",
    }
    return MarginConsistency(d_in, d_out, pseudo_scores, summary, protocol, seconds)
