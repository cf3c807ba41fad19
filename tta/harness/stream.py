"""The online stream: a declarative description, and the predict-then-adapt loop over it.

Settings (`StreamSpec.setting`):

* `continual`: the domains one after another, never reset (TENT/CoTTA's continual protocol).
* `reset-each-shift`: back to the source weights at the start of every domain.
* `episodic`: back to the source weights before every batch.
* `gradual`: for each corruption, severities 1, 2, 3, 4, 5, 4, 3, 2, 1, then the next
  corruption, never reset: the gradual setting of CoTTA (Wang et al., CVPR 2022) as run by
  RMT's code (mariodoebler/test-time-adaptation, `severities = [1,2,3,4,5,4,3,2,1]` per
  domain). Every (corruption, severity) segment is reported; `severity` is not used.
* `mixed`: the images of all domains shuffled together into one stream (RMT's
  `mixed_domains`); errors are still reported per domain.
* `correlated`: continual, with the labels of each domain in a Dirichlet order
  (`dirichlet_delta`, default 0.1 as RoTTA/NOTE; see `tta.harness.order`).

`dirichlet_delta` also combines with the other settings (e.g. mixed + correlated labels).
`order_seed` permutes the domain order (the literature's "10 corruption orders").
"""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from tta.data.base import Benchmark
from tta.data.corruptions import STANDARD_CORRUPTIONS
from tta.data.domain_sets import resolve_domains
from tta.data.image_files import concat_images
from tta.engine import AdaptedModel
from tta.harness.metrics import expected_calibration_error
from tta.harness.order import DEFAULT_DIRICHLET_DELTA, domain_order, permuted, stream_order
from tta.progress import progress

__all__ = [
    "GRADUAL_SEVERITIES",
    "SETTINGS",
    "StreamObserver",
    "StreamResult",
    "StreamSpec",
    "domain_order",
    "peak_memory_mb",
    "run_stream",
    "to_batch",
]

SETTINGS = ("continual", "reset-each-shift", "episodic", "gradual", "mixed", "correlated")
GRADUAL_SEVERITIES = (1, 2, 3, 4, 5, 4, 3, 2, 1)


@dataclass
class StreamSpec:
    """Everything that fixes the order and content of the test stream (the protocol card).

    `corruptions`: domain names in order, or a named set ('standard', 'heldout', 'all'; comma
    lists allowed), resolved here; for DomainBed, the target domain(s). `severity`: 1..5, or
    None for benchmarks whose domains have none (DomainBed). `n_per_domain`: None takes every
    image of a domain. `dirichlet_delta`: label-correlated order (None: shuffled).
    `order_seed`: None keeps the domain order, an int permutes it.
    """

    benchmark: str = "fmnist-c"
    corruptions: tuple[str, ...] = STANDARD_CORRUPTIONS
    severity: int | None = 5
    setting: str = "continual"
    batch_size: int = 200
    n_per_domain: int | None = 1000
    seed: int = 0
    shuffle: bool = True
    dirichlet_delta: float | None = None
    order_seed: int | None = None

    def __post_init__(self) -> None:
        if self.setting not in SETTINGS:
            raise ValueError(f"unknown setting {self.setting!r}; known: {', '.join(SETTINGS)}")
        if self.severity is not None and self.severity not in range(1, 6):
            raise ValueError(f"severity must be 1..5, got {self.severity}")
        if self.batch_size < 1 or (self.n_per_domain is not None and self.n_per_domain < 1):
            raise ValueError("batch_size and n_per_domain must be positive")
        self.corruptions = resolve_domains(self.corruptions)
        if self.setting == "correlated" and self.dirichlet_delta is None:
            self.dirichlet_delta = DEFAULT_DIRICHLET_DELTA
        if self.dirichlet_delta is not None and not self.dirichlet_delta > 0:
            raise ValueError(f"dirichlet_delta must be positive, got {self.dirichlet_delta}")
        if self.setting == "gradual" and self.severity is None:
            raise ValueError(
                "the gradual setting sweeps corruption severities; this stream has none"
            )

    def order(self) -> tuple[str, ...]:
        """The domain names in stream order (permuted when `order_seed` is set)."""
        return permuted(self.corruptions, self.order_seed)

    def severities(self) -> tuple[int | None, ...]:
        return GRADUAL_SEVERITIES if self.setting == "gradual" else (self.severity,)

    def domains(self) -> list[tuple[str, int | None]]:
        """(domain, severity) in stream order; `gradual` has 9 segments per corruption."""
        return [(name, s) for name in self.order() for s in self.severities()]

    def card(self) -> dict:
        card = asdict(self)
        if self.setting == "gradual":
            card["severities"] = list(GRADUAL_SEVERITIES)
        if self.order_seed is not None:
            card["domain_order"] = list(self.order())
        return card


@dataclass
class StreamResult:
    """Per-domain errors (and ECE) of a stream, the work done, and what was seen per batch.

    `batch_n` / `batch_wrong`: images and wrong predictions of every batch predicted, in
    stream order (an interrupted domain's batches included); `domain_start_batches`: the
    batch index where each domain began. `confidence` / `correct`: per finished domain, the
    max softmax probability and correctness of each image (for the overall ECE; not saved).
    """

    per_domain: list[dict] = field(default_factory=list)
    time_s: float = 0.0
    n_images: int = 0
    interrupted: bool = False
    domain_starts: list[int] = field(default_factory=list)  # adaptation step of each domain
    counters: dict = field(default_factory=dict)
    batch_n: list[int] = field(default_factory=list)
    batch_wrong: list[int] = field(default_factory=list)
    domain_start_batches: list[int] = field(default_factory=list)
    confidence: list[np.ndarray] = field(default_factory=list, repr=False)
    correct: list[np.ndarray] = field(default_factory=list, repr=False)

    @property
    def mean_error(self) -> float:
        errors = [d["error"] for d in self.per_domain]
        return float(np.mean(errors)) if errors else float("nan")

    def overall_ece(self, n_domains: int | None = None) -> float | None:
        """ECE (%) over every image of the first `n_domains` finished domains (None: all)."""
        confidence = self.confidence[:n_domains]
        if not confidence or not any(len(c) for c in confidence):
            return None
        correct = np.concatenate(self.correct[:n_domains])
        return expected_calibration_error(np.concatenate(confidence), correct)


class StreamObserver:
    """Sees every batch of a stream without changing it (e.g. the brittleness monitor).

    `start_domain` before a domain's first batch (a mixed stream is one domain named after
    all of them); `before_batch` before the model predicts and adapts on the batch (the
    state that predicts it; `k` of `n_batches` in the domain); `after_batch` with the logits
    the model returned. Observers must not adapt the model.
    """

    def start_domain(self, name: str, severity: int | None) -> None:
        pass

    def before_batch(
        self, adapted: AdaptedModel, x: torch.Tensor, y: torch.Tensor, k: int, n_batches: int
    ) -> None:
        pass

    def after_batch(self, x: torch.Tensor, logits: torch.Tensor) -> None:
        pass


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory on CUDA, else the process's peak resident memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def to_batch(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [0, 1], converted per batch."""
    return torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div_(255)


def _batches(images, order: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, object]]:
    """(index, images[index]) per batch; the next batch is read in a thread meanwhile."""
    indices = [np.sort(order[b : b + batch_size]) for b in range(0, len(order), batch_size)]
    if not indices:
        return
    with ThreadPoolExecutor(1, thread_name_prefix="tta-prefetch") as pool:
        future = pool.submit(images.__getitem__, indices[0])
        for k, index in enumerate(indices):
            batch = future.result()
            if k + 1 < len(indices):
                future = pool.submit(images.__getitem__, indices[k + 1])
            yield index, batch


def _predict(
    adapted: AdaptedModel,
    images,
    labels: np.ndarray,
    order: np.ndarray,
    batch_size: int,
    device: torch.device,
    bar,
    result: StreamResult,
    observer: StreamObserver,
) -> tuple[np.ndarray, np.ndarray]:
    """Predict then adapt batch after batch in `order`: per image, 'was wrong' and the
    confidence (max softmax probability) of the same logits; per batch, into `result`."""
    wrong = np.zeros(len(labels), dtype=bool)
    confidence = np.zeros(len(labels), dtype=np.float64)
    n_batches = -(-len(order) // batch_size)
    for k, (index, batch) in enumerate(_batches(images, order, batch_size)):
        x = to_batch(np.asarray(batch), device)
        observer.before_batch(
            adapted, x, torch.as_tensor(labels[index], device=device), k, n_batches
        )
        logits = adapted(x).detach()
        observer.after_batch(x, logits)
        wrong[index] = logits.argmax(1).cpu().numpy() != labels[index]
        confidence[index] = logits.float().softmax(1).amax(1).cpu().numpy()
        result.batch_n.append(len(index))
        result.batch_wrong.append(int(wrong[index].sum()))
        bar.update(len(index))
    return wrong, confidence


def _record(
    result: StreamResult,
    name: str,
    severity: int | None,
    wrong: np.ndarray,
    confidence: np.ndarray,
) -> float:
    error = 100.0 * float(wrong.mean()) if len(wrong) else float("nan")
    result.per_domain.append(
        {
            "domain": name,
            "severity": severity,
            "n": len(wrong),
            "error": error,
            "ece": expected_calibration_error(confidence, ~wrong),
        }
    )
    result.confidence.append(confidence)
    result.correct.append(~wrong)
    return error


def _run_domains(adapted, spec, benchmark, domains, device, result, bar, observer) -> None:
    for name, severity in domains:
        result.domain_starts.append(adapted.counters.step_index)
        result.domain_start_batches.append(len(result.batch_n))
        images, labels = benchmark.load(name, severity, spec.n_per_domain, spec.seed)
        order = stream_order(labels, spec.seed, name, severity, spec.shuffle, spec.dirichlet_delta)
        if spec.setting == "reset-each-shift":
            adapted.reset()
        observer.start_domain(name, severity)
        wrong, confidence = _predict(
            adapted, images, labels, order, spec.batch_size, device, bar, result, observer
        )
        error = _record(result, name, severity, wrong, confidence)
        label = name if severity is None else f"{name}-{severity}"
        bar.set_postfix(last=f"{label} {error:.1f}%")


def _run_mixed(adapted, spec, benchmark, domains, device, result, bar, observer) -> None:
    sources, labels, owner = [], [], []
    for k, (name, severity) in enumerate(domains):
        images, domain_labels = benchmark.load(name, severity, spec.n_per_domain, spec.seed)
        sources.append(images)
        labels.append(np.asarray(domain_labels))
        owner.append(np.full(len(domain_labels), k))
    labels, owner = np.concatenate(labels), np.concatenate(owner)
    order = stream_order(labels, spec.seed, "mixed", None, spec.shuffle, spec.dirichlet_delta)
    result.domain_starts.append(adapted.counters.step_index)
    result.domain_start_batches.append(0)
    images = concat_images(sources)
    observer.start_domain(f"{len(domains)} domains mixed", None)
    wrong, confidence = _predict(
        adapted, images, labels, order, spec.batch_size, device, bar, result, observer
    )
    for k, (name, severity) in enumerate(domains):
        _record(result, name, severity, wrong[owner == k], confidence[owner == k])


def run_stream(
    adapted: AdaptedModel,
    spec: StreamSpec,
    benchmark: Benchmark,
    device: torch.device | str = "cpu",
    desc: str = "adapt",
    observer: StreamObserver | None = None,
) -> StreamResult:
    """Predict then adapt on every batch, domain after domain; Ctrl-C keeps finished domains.

    Domains are checked against the benchmark before the first batch. In `mixed`, all domains
    form one stream, so an interrupted run keeps none. `observer` sees every batch.
    """
    device = torch.device(device)
    domains = spec.domains()
    benchmark.check_domains(domains)
    adapted.episodic = spec.setting == "episodic"
    result = StreamResult()
    total = len(domains) * spec.n_per_domain if spec.n_per_domain else None
    bar = progress(total=total, desc=desc, unit="img")
    start = time.perf_counter()
    run = _run_mixed if spec.setting == "mixed" else _run_domains
    try:
        run(adapted, spec, benchmark, domains, device, result, bar, observer or StreamObserver())
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        bar.close()
    result.time_s = time.perf_counter() - start
    result.n_images = sum(d["n"] for d in result.per_domain)
    result.counters = adapted.counters.as_dict()
    return result
