"""The online stream: a declarative description, and the predict-then-adapt loop over it."""

from __future__ import annotations

import resource
import time
import zlib
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from tta.benchmarks import Benchmark
from tta.data.corruptions import STANDARD_CORRUPTIONS
from tta.engine import AdaptedModel
from tta.progress import progress

SETTINGS = ("continual", "reset-each-shift", "episodic")


@dataclass
class StreamSpec:
    """Everything that fixes the order and content of the test stream (the protocol card)."""

    benchmark: str = "fmnist-c"
    corruptions: tuple[str, ...] = STANDARD_CORRUPTIONS
    severity: int = 5
    setting: str = "continual"
    batch_size: int = 200
    n_per_domain: int = 1000
    seed: int = 0
    shuffle: bool = True

    def __post_init__(self) -> None:
        if self.setting not in SETTINGS:
            raise ValueError(f"unknown setting {self.setting!r}; known: {', '.join(SETTINGS)}")
        if self.severity not in range(1, 6):
            raise ValueError(f"severity must be 1..5, got {self.severity}")
        if self.batch_size < 1 or self.n_per_domain < 1:
            raise ValueError("batch_size and n_per_domain must be positive")
        self.corruptions = tuple(self.corruptions)

    def domains(self) -> list[tuple[str, int]]:
        return [(c, self.severity) for c in self.corruptions]

    def card(self) -> dict:
        return asdict(self)


@dataclass
class StreamResult:
    per_domain: list[dict] = field(default_factory=list)
    time_s: float = 0.0
    n_images: int = 0
    interrupted: bool = False
    domain_starts: list[int] = field(default_factory=list)  # forward index of each domain
    counters: dict = field(default_factory=dict)

    @property
    def mean_error(self) -> float:
        errors = [d["error"] for d in self.per_domain]
        return float(np.mean(errors)) if errors else float("nan")


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory on CUDA, else the process's peak resident memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def to_batch(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [0, 1], converted per batch."""
    return torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div_(255)


def domain_order(n: int, seed: int, corruption: str, severity: int, shuffle: bool) -> np.ndarray:
    """A domain's image order depends on its own name and the seed, not on the domains before."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([seed, zlib.crc32(corruption.encode()), severity]).permutation(n)


def run_stream(
    adapted: AdaptedModel,
    spec: StreamSpec,
    benchmark: Benchmark,
    device: torch.device | str = "cpu",
    desc: str = "adapt",
) -> StreamResult:
    """Predict then adapt on every batch, domain after domain; Ctrl-C keeps finished domains."""
    device = torch.device(device)
    adapted.episodic = spec.setting == "episodic"
    result = StreamResult()
    total = len(spec.domains()) * spec.n_per_domain
    bar = progress(total=total, desc=desc, unit="img")
    start = time.perf_counter()
    try:
        for corruption, severity in spec.domains():
            result.domain_starts.append(adapted.counters.n_forward)
            images, labels = benchmark.load(corruption, severity, spec.n_per_domain, spec.seed)
            order = domain_order(len(images), spec.seed, corruption, severity, spec.shuffle)
            if spec.setting == "reset-each-shift":
                adapted.reset()
            wrong = 0
            for begin in range(0, len(order), spec.batch_size):
                index = np.sort(order[begin : begin + spec.batch_size])
                logits = adapted(to_batch(images[index], device))
                wrong += int((logits.argmax(1).cpu().numpy() != labels[index]).sum())
                bar.update(len(index))
            error = 100.0 * wrong / len(images)
            result.per_domain.append(
                {"domain": corruption, "severity": severity, "n": len(images), "error": error}
            )
            bar.set_postfix(last=f"{corruption} {error:.1f}%")
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        bar.close()
    result.time_s = time.perf_counter() - start
    result.n_images = sum(d["n"] for d in result.per_domain)
    result.counters = adapted.counters.as_dict()
    return result
