"""Does adaptation make decisions more brittle? A monitor on any `tta-run` stream (issue 11).

Margin consistency (Ngnawé et al., "Detecting Brittle Decisions for Free", NeurIPS 2024):
when a model's logit margin ranks samples like its input margin, a sample whose logit margin
is small is likely non-robust. The monitor:

1. calibrates, once per source model, eps and data, a logit-margin threshold on clean
   images of the source distribution (`Benchmark.clean_samples`, never adapted on): their
   input margins by minimum-norm attack, then the threshold flagging 95% of those
   non-robust at eps (`tta.robust.monitor.calibrate_threshold`; cached);
2. per batch, the share of samples at or below it, from the source model's logits
   (before adaptation: one extra forward pass of a frozen copy) and from the logits the
   adapted model returned (after), per domain and as a curve along the stream;
3. optionally (`robust_batches` = K > 0) the real robust accuracy: APGD-CE at eps on the
   last K batches of every domain, attacking the frozen source model and the adapted model
   in the state that predicts the batch (`tta.robust.state.attack_state`: eval, buffers
   frozen, nothing adapts), with clean accuracy on the same images for reference.

The threshold stays the source model's: an adapted model whose logits grow (entropy
minimization sharpens them) shows a lower brittle fraction without being more robust,
which is what the robust-accuracy batches check.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
import uuid
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

import tta
from tta.data.base import Benchmark
from tta.engine import AdaptedModel
from tta.harness.metrics import stream_curve
from tta.harness.stream import StreamObserver, to_batch
from tta.paths import cache_dir
from tta.robust.apgd import apgd_ce
from tta.robust.margins import logit_margin
from tta.robust.monitor import BrittlenessThreshold, calibrate_threshold
from tta.robust.state import attack_state

__all__ = ["BrittlenessMonitor", "BrittlenessOptions", "calibrated_threshold"]


@dataclass(frozen=True)
class BrittlenessOptions:
    """`eps`: L-inf budget; `calibration_images`: clean images the threshold is set on;
    `robust_batches`: batches per domain attacked for real (0: none); `steps`: APGD-CE steps."""

    eps: float
    calibration_images: int = 300
    robust_batches: int = 0
    steps: int = 10
    tpr: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.eps <= 1:
            raise ValueError(
                f"the brittleness budget must be in (0, 1], e.g. 2/255; got {self.eps}"
            )
        if self.calibration_images < 10:
            raise ValueError(
                "--brittle-calibration needs at least 10 clean images to set a threshold, "
                f"got {self.calibration_images}"
            )
        if self.robust_batches < 0 or self.steps < 1:
            raise ValueError(
                f"--robust-batches must be >= 0 and attack steps >= 1, got "
                f"{self.robust_batches} and {self.steps}"
            )


def calibrated_threshold(
    source: nn.Module,
    benchmark: Benchmark,
    options: BrittlenessOptions,
    model_info: dict,
    device: torch.device,
) -> BrittlenessThreshold:
    """The source model's threshold at `options.eps`, from the cache when set before."""
    identity = [
        model_info,
        benchmark.describe(),
        options.eps,
        options.calibration_images,
        options.tpr,
        options.seed,
        tta.__version__,
    ]
    key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
    path = cache_dir() / "brittleness" / f"{key[:16]}.json"
    if path.exists():
        return BrittlenessThreshold(**json.loads(path.read_text()))
    try:
        images, _ = benchmark.clean_samples(options.calibration_images, options.seed)
    except NotImplementedError as error:
        raise ValueError(
            f"the brittleness monitor calibrates on clean images, which {benchmark.name} "
            f"cannot give ({error}); run without --brittleness"
        ) from error
    threshold = calibrate_threshold(
        source, to_batch(images, device), options.eps, tpr=options.tpr, seed=options.seed
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp")  # unique: parallel sweep cells
    tmp.write_text(json.dumps(threshold.to_dict()))
    tmp.replace(path)
    return threshold


@dataclass
class _Domain:
    domain: str
    severity: int | None
    n: int = 0
    brittle_source: int = 0
    brittle_adapted: int = 0
    robust: dict = field(
        default_factory=lambda: {
            "n": 0,
            "clean_source": 0,
            "clean_adapted": 0,
            "robust_source": 0,
            "robust_adapted": 0,
        }
    )

    def row(self) -> dict:
        row = {
            "domain": self.domain,
            "severity": self.severity,
            "n": self.n,
            "brittle_source": 100.0 * self.brittle_source / self.n if self.n else None,
            "brittle_adapted": 100.0 * self.brittle_adapted / self.n if self.n else None,
        }
        n = self.robust["n"]
        for key in ("clean_source", "clean_adapted", "robust_source", "robust_adapted"):
            row[key] = 100.0 * self.robust[key] / n if n else None
        row["n_attacked"] = n
        return row


class BrittlenessMonitor(StreamObserver):
    """Brittle fractions per batch and domain, source vs adapted; see the module docstring.

    `source` is copied (eval mode, frozen), so the caller's model is never touched.
    """

    def __init__(
        self, source: nn.Module, threshold: BrittlenessThreshold, options: BrittlenessOptions
    ) -> None:
        self.source = copy.deepcopy(source).eval().requires_grad_(False)
        self.threshold = threshold
        self.options = options
        self.domains: list[_Domain] = []
        self.batch_n: list[int] = []
        self.batch_source: list[int] = []
        self.batch_adapted: list[int] = []
        self.domain_start_batches: list[int] = []
        self.attack_time_s = 0.0

    def start_domain(self, name: str, severity: int | None) -> None:
        self.domains.append(_Domain(name, severity))
        self.domain_start_batches.append(len(self.batch_n))

    def _brittle(self, logits: torch.Tensor) -> int:
        return int((logit_margin(logits.float()) <= self.threshold.threshold).sum())

    def before_batch(
        self, adapted: AdaptedModel, x: torch.Tensor, y: torch.Tensor, k: int, n_batches: int
    ) -> None:
        if k < n_batches - self.options.robust_batches:
            return
        start = time.perf_counter()
        counts = self.domains[-1].robust
        counts["n"] += len(y)
        for name, model in (("source", self.source), ("adapted", adapted)):
            result = apgd_ce(model, x, y, self.options.eps, steps=self.options.steps)
            with torch.no_grad():
                clean = _predict_frozen(model, x).argmax(1) == y
            counts[f"clean_{name}"] += int(clean.sum())
            counts[f"robust_{name}"] += int((clean & ~result.fooled).sum())
        self.attack_time_s += time.perf_counter() - start

    def after_batch(self, x: torch.Tensor, logits: torch.Tensor) -> None:
        with torch.no_grad():
            source = self._brittle(self.source(x))
        adapted = self._brittle(logits)
        domain = self.domains[-1]
        domain.n += len(x)
        domain.brittle_source += source
        domain.brittle_adapted += adapted
        self.batch_n.append(len(x))
        self.batch_source.append(source)
        self.batch_adapted.append(adapted)

    def per_domain(self, n_finished: int | None = None) -> list[dict]:
        """One row per domain (the first `n_finished`): brittle % source / adapted and,
        when attacked, clean and robust accuracy % of both on the attacked images."""
        return [d.row() for d in self.domains[:n_finished]]

    def results(self, n_finished: int | None = None) -> dict:
        """The `brittleness` part of results.json: threshold, options, per domain, curves."""
        rows = self.per_domain(n_finished)
        names = [(d.domain, d.severity) for d in self.domains]
        curves = {
            who: stream_curve(self.batch_n, counts, self.domain_start_batches, names)
            for who, counts in (("source", self.batch_source), ("adapted", self.batch_adapted))
        }
        return {
            "threshold": self.threshold.to_dict(),
            "options": asdict(self.options),
            "per_domain": rows,
            "mean_brittle_source": _mean(rows, "brittle_source"),
            "mean_brittle_adapted": _mean(rows, "brittle_adapted"),
            "mean_robust_source": _mean(rows, "robust_source"),
            "mean_robust_adapted": _mean(rows, "robust_adapted"),
            "attack_time_s": self.attack_time_s,
            # stream_curve's "error" is the brittle share (%) of each window here
            "curve_source": curves["source"],
            "curve_adapted": curves["adapted"],
        }


def _predict_frozen(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits of the state an attack sees (`attack_state`), for the clean accuracy."""
    with attack_state(model) as net:
        return net(x)


def _mean(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r[key] is not None]
    return float(np.mean(values)) if values else None
