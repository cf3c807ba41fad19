"""The margin-consistency analysis of one model on one data set (Ngnawé et al., NeurIPS 2024),
end to end: what `tta-robust margins` runs.

1. Logits (and penultimate features) of every sample; logit margins `d_out` on all.
2. Input margins `d_in` (FAB, eps = inf, or the APGD bisection; `tta.robust.margins`) on a
   random subset of `n_subset` samples (the paper: n = 500).
3. Kendall's tau-b between `d_in` and `d_out` on the subset.
4. Detection of non-robust samples (`d_in <= eps`) by `-d_out`: AUROC, AUPR, FPR@95.
5. Robust accuracy on the whole set estimated from the subset's 95%-TPR threshold, against
   the attacked truth: APGD-CE (`truth_steps`, `truth_restarts`) at eps on every sample
   (the paper compares with AutoAttack; `tta-robust eval --autoattack` gives it).
6. With held-out images: the learned pseudo-margin (`tta.robust.pseudo_margin`) trained
   on their input margins, evaluated (tau, detection) on the subset.
"""

from __future__ import annotations

import time
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
    """Per-sample margins of the subset and every number of the analysis."""

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
        lines = [
            f"{'score':<14}{'tau':>7}{'AUROC':>8}{'AUPR':>8}{'FPR@95':>8}",
            _row("logit margin", s["tau"], s["detection"]),
        ]
        if s.get("pseudo"):
            lines.append(_row("pseudo-margin", s["pseudo"]["tau"], s["pseudo"]["detection"]))
        e = s["estimate"]
        lines.append(
            f"robust accuracy at eps: estimate {e['estimate']:.2f} from {e['n_subset']} samples, "
            f"attacked truth {s['truth']:.2f} on {e['n_all']} (|diff| {abs(e['estimate'] - s['truth']):.2f}); "
            f"clean {s['clean']:.2f}; non-robust in subset {s['detection']['nonrobust']:.1f}%"
        )
        return "\n".join(lines)


def _row(name: str, tau: float, det: dict) -> str:
    return f"{name:<14}{tau:>7.3f}{det['auroc']:>8.2f}{det['aupr']:>8.2f}{det['fpr@95']:>8.2f}"


def margin_consistency(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float = 8 / 255,
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
    """Run the analysis of the module docstring on (`images`, `labels`)."""
    if pseudo is not None and pseudo not in PSEUDO_INPUTS:
        raise ValueError(f"pseudo must be one of {PSEUDO_INPUTS} or None, got {pseudo!r}")
    if not 2 <= n_subset <= len(images):
        raise ValueError(f"n_subset must be in [2, {len(images)}], got {n_subset}")
    options = dict(min_norm_options or {})
    seconds: dict[str, float] = {}
    with attack_state(model) as net:
        tick = time.perf_counter()
        logits, features = logits_and_features(net, images, batch_size, pseudo == "features")
        d_out_all = logit_margin(logits)
        correct = logits.argmax(1) == labels
        seconds["clean_pass"] = time.perf_counter() - tick

        generator = torch.Generator().manual_seed(seed)
        subset = torch.randperm(len(images), generator=generator)[:n_subset].sort().values
        tick = time.perf_counter()
        margins = input_margins(net, images[subset], norm, method, batch_size, seed, **options)
        seconds["input_margins"] = time.perf_counter() - tick
        d_in = margins.margins.numpy()
        d_out = d_out_all[subset].numpy()

        tick = time.perf_counter()
        fooled = torch.zeros(len(images), dtype=torch.bool)
        for b in range(0, len(images), batch_size):
            result = apgd_ce(
                net,
                images[b : b + batch_size],
                labels[b : b + batch_size],
                eps,
                norm,
                truth_steps,
                truth_restarts,
                seed=seed,
            )
            fooled[b : b + batch_size] = result.fooled
        seconds["truth_attack"] = time.perf_counter() - tick

        summary = {
            "clean": 100.0 * float(correct.float().mean()),
            "tau": kendall_tau(d_in, d_out),
            "detection": detection_metrics(d_in, d_out, eps, tpr),
            "estimate": subset_estimate(d_in, d_out, eps, d_out_all, correct, tpr),
            "truth": 100.0 * float((~fooled).float().mean()),
            "subset_robust_by_margin": 100.0
            * float((correct[subset].numpy() & (d_in > eps)).mean()),
            "n_failed_min_norm": margins.n_failed,
        }
        summary["estimate_error"] = summary["estimate"]["estimate"] - summary["truth"]
        summary["roc"] = dict(zip(("fpr", "tpr"), roc_points(d_in, d_out, eps), strict=True))

        pseudo_scores = None
        if pseudo is not None and heldout_images is not None:
            tick = time.perf_counter()
            held_logits, held_features = logits_and_features(
                net, heldout_images, batch_size, pseudo == "features"
            )
            held = input_margins(net, heldout_images, norm, method, batch_size, seed + 1, **options)
            inputs = held_logits if pseudo == "logits" else held_features
            regressor = fit_pseudo_margin(inputs, held.margins, epochs=pseudo_epochs, seed=seed)
            test_inputs = (logits if pseudo == "logits" else features)[subset]
            with torch.no_grad():
                pseudo_scores = regressor(test_inputs.float()).numpy()
            summary["pseudo"] = {
                "input": pseudo,
                "n_heldout": len(heldout_images),
                "tau": kendall_tau(d_in, pseudo_scores),
                "detection": detection_metrics(d_in, pseudo_scores, eps, tpr),
                "roc": dict(zip(("fpr", "tpr"), roc_points(d_in, pseudo_scores, eps), strict=True)),
            }
            seconds["pseudo_margin"] = time.perf_counter() - tick
    protocol = {
        "eps": eps,
        "norm": norm,
        "min_norm": {"method": method, **margins.options},
        "n_all": len(images),
        "n_subset": n_subset,
        "subset": f"random, seed {seed}",
        "tpr": tpr,
        "truth": {"attack": "apgd-ce", "steps": truth_steps, "restarts": truth_restarts},
        "pseudo": {
            "input": pseudo,
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
