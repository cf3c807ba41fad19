"""`fmnist-c`: Fashion-MNIST test images (padded to 32x32 RGB) under the 15 corruptions.

Generated on demand with CIFAR-10-C strengths (the images are 32x32) and cached in the
CIFAR-10-C layout under `<data-root>/FMNIST-C/`. Only the (corruption, severity, first n
images) a run needs are generated; `manifest.json` records what exists and is the only
thing trusted: an interrupted generation (Ctrl-C) leaves its domain unrecorded, and it is
redone; files of a corruption the manifest does not list are deleted and written afresh,
and `labels.npy` is written to a temporary name and renamed. Every image has its own seed,
so the bytes do not depend on how much was generated before or on the number of workers.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from tta.data.base import Benchmark, Domain
from tta.data.cifar_c_layout import N_SEVERITIES, create_files, read_domain
from tta.data.corruptions import ALL_CORRUPTIONS, corrupt
from tta.data.fmnist import HOW_TO_GET, find_dir, load_fmnist
from tta.paths import data_roots
from tta.progress import progress

CHUNK = 250


def benchmark_root(data_root: str | os.PathLike | None, seed: int) -> Path:
    return data_roots(data_root)[0] / "FMNIST-C" / f"seed{seed}"


def image_seed(seed: int, corruption: str, severity: int, index: int) -> int:
    key = [seed, ALL_CORRUPTIONS.index(corruption), severity, index]
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def _corrupt_chunk(args: tuple[np.ndarray, str, int, int, int]) -> np.ndarray:
    images, corruption, severity, seed, offset = args
    return np.stack(
        [
            corrupt(image, corruption, severity, image_seed(seed, corruption, severity, offset + i))
            for i, image in enumerate(images)
        ]
    )


class Manifest:
    """Which (corruption, severity) rows exist: `{"gaussian_noise": {"5": 1000}}`."""

    def __init__(self, root: Path) -> None:
        self.path = root / "manifest.json"
        self.done: dict[str, dict[str, int]] = {}
        if self.path.exists():
            try:
                self.done = json.loads(self.path.read_text())["generated"]
            except (ValueError, KeyError):
                self.done = {}

    def count(self, corruption: str, severity: int) -> int:
        return self.done.get(corruption, {}).get(str(severity), 0)

    def lists(self, corruption: str) -> bool:
        return bool(self.done.get(corruption))

    def record(self, corruption: str, severity: int, n: int) -> None:
        self.done.setdefault(corruption, {})[str(severity)] = n
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"strengths": "cifar10-c", "generated": self.done}, indent=1))
        tmp.replace(self.path)


def ensure_generated(
    domains: list[tuple[str, int]],
    n: int,
    seed: int = 0,
    data_root: str | os.PathLike | None = None,
    workers: int | None = None,
) -> Path:
    """Generate whatever of `domains` x first `n` images is missing; return the layout root."""
    root = benchmark_root(data_root, seed)
    manifest = Manifest(root)
    missing = [(c, s) for c, s in domains if manifest.count(c, s) < n]
    if not missing:
        return root
    clean, labels = load_fmnist("test", data_root)
    if n > len(clean):
        raise ValueError(f"fmnist-c has {len(clean)} images per domain; asked for {n}")
    workers = workers or min(2, os.cpu_count() or 1)
    if len(missing) * n <= 2 * CHUNK:
        workers = 1  # not worth starting processes
    bar = progress(total=len(missing) * n, desc="generating fmnist-c", unit="img")
    pool = (
        ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        if workers > 1
        else None
    )
    try:
        for corruption, severity in missing:
            array = _open_domain_file(root, manifest, corruption, clean.shape, labels)
            start = (severity - 1) * len(clean)
            jobs = [
                (clean[i : min(i + CHUNK, n)], corruption, severity, seed, i)
                for i in range(0, n, CHUNK)
            ]
            outputs = pool.map(_corrupt_chunk, jobs) if pool else map(_corrupt_chunk, jobs)
            for (_, _, _, _, offset), out in zip(jobs, outputs, strict=True):
                array[start + offset : start + offset + len(out)] = out
                bar.update(len(out))
            array.flush()
            del array
            manifest.record(corruption, severity, n)
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
        bar.close()
    return root


def _open_domain_file(
    root: Path, manifest: Manifest, corruption: str, shape: tuple[int, ...], labels: np.ndarray
) -> np.memmap:
    """`<corruption>.npy` for writing; leftovers of an interrupted generation are discarded.

    Rows the manifest does not list are never read, so only files it lists nothing of are
    deleted (they may be truncated); labels.npy is written whole or not at all.
    """
    root.mkdir(parents=True, exist_ok=True)
    if not manifest.done:
        (root / "labels.npy").unlink(missing_ok=True)
    if not manifest.lists(corruption):
        (root / f"{corruption}.npy").unlink(missing_ok=True)
    labels_path = root / "labels.npy"
    if not labels_path.exists():
        tmp = root / "labels.tmp.npy"
        np.save(tmp, np.tile(labels.astype(np.int64), N_SEVERITIES))
        tmp.replace(labels_path)
    return create_files(root, corruption, shape, labels)


def load_domain(
    corruption: str, severity: int, n: int, seed: int = 0, data_root: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    root = ensure_generated([(corruption, severity)], n, seed, data_root)
    return read_domain(root, corruption, severity, n, how_to_get=HOW_TO_GET)


FMNIST_TEST_SIZE = 10000  # n_per_domain=None: every test image


class FashionMnistC(Benchmark):
    """Fashion-MNIST-C, generated offline with CIFAR-10-C strengths; ResNet-20 source model."""

    def __init__(self, data_root: str | None = None, download: bool = False) -> None:
        super().__init__("fmnist-c", 10, data_root=data_root)
        self._generated: Path | None = None
        if download:  # fetch Fashion-MNIST now if it is nowhere on disk
            find_dir(data_root, download=True)

    def prepare(self, domains: list[Domain], n: int | None, seed: int) -> None:
        self._generated = ensure_generated(domains, n or FMNIST_TEST_SIZE, seed, self.data_root)

    def describe(self) -> dict[str, Any]:
        """Adds where the Fashion-MNIST files were read and where the corrupted data lives."""
        info = super().describe()
        try:
            info["fashion_mnist_dir"] = str(find_dir(self.data_root))
        except FileNotFoundError:
            info["fashion_mnist_dir"] = None
        generated = self._generated or data_roots(self.data_root)[0] / "FMNIST-C"
        info["generated_dir"] = str(generated)
        return info

    def load(
        self, corruption: str, severity: int, n: int | None, seed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        return load_domain(corruption, severity, n or FMNIST_TEST_SIZE, seed, self.data_root)

    def source_samples(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        images, labels = load_fmnist("train", self.data_root)
        index = np.random.default_rng(seed).choice(len(images), min(n, len(images)), replace=False)
        return images[index], labels[index]

    def clean_samples(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """`n` clean Fashion-MNIST test images, padded to 32x32 RGB as the corrupted ones are
        before their corruption (a seeded choice; all of them when `n` exceeds the split)."""
        images, labels = load_fmnist("test", self.data_root)
        index = np.random.default_rng(seed).choice(len(images), min(n, len(images)), replace=False)
        return images[np.sort(index)], labels[np.sort(index)]
