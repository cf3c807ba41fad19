"""`cifar10-c`, `cifar100-c`: Hendrycks & Dietterich's CIFAR-C release, read from disk.

Layout (as released on Zenodo and as RobustBench unpacks it): `<root>/CIFAR-10-C/` holds
`<corruption>.npy`, uint8 (50000, 32, 32, 3) whose rows `(s-1)*10000 : s*10000` are severity
s, and `labels.npy` (50000,), the 10000 test labels repeated per severity. `<root>` is
`--data-root`, then `$TTA_DATA`, then tta's cache; `--data-root` may also point at the
`CIFAR-10-C` folder itself.

Files are memory-mapped: a domain is a view, and the stream converts each batch to float.
A domain of n images is the first n of a severity, as RobustBench's `load_cifar10c`.
Everything is checked in `prepare`, before any adaptation: missing files (with where they
were expected and how to get them), shapes and dtypes, labels that differ between
severities or do not fit the number of classes. With `download=True` and the folder missing,
robustbench's Zenodo downloader fetches and unpacks the release (2.9 GB / 2.9 GB).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from tta.data.base import Benchmark, Domain
from tta.data.cifar_c_layout import N_SEVERITIES
from tta.data.robustbench_files import zenodo_module
from tta.paths import data_roots

DATASETS: dict[str, dict[str, Any]] = {
    "cifar10-c": {"folder": "CIFAR-10-C", "classes": 10, "zenodo": "2535967"},
    "cifar100-c": {"folder": "CIFAR-100-C", "classes": 100, "zenodo": "3555552"},
}
PER_SEVERITY = 10000  # the CIFAR test set


def how_to_get(name: str) -> str:
    info = DATASETS[name]
    return (
        f"Get {info['folder']}.tar from https://zenodo.org/records/{info['zenodo']} and unpack it "
        f"under your data root (--data-root or $TTA_DATA), or run with internet access and "
        f"--download (robustbench's downloader; `pip install robustbench`)."
    )


def candidate_dirs(name: str, data_root: str | os.PathLike | None) -> list[Path]:
    folder = DATASETS[name]["folder"]
    dirs = [root / folder for root in data_roots(data_root)]
    if data_root and Path(data_root).name == folder:
        dirs.insert(0, Path(data_root))
    return dirs


def find_dir(name: str, data_root: str | os.PathLike | None, download: bool = False) -> Path:
    """The first candidate folder holding `labels.npy`; download into the first if asked."""
    dirs = candidate_dirs(name, data_root)
    for directory in dirs:
        if (directory / "labels.npy").is_file():
            return directory
    if download:
        return download_release(name, dirs[0].parent)
    searched = "\n  ".join(str(d) for d in dirs)
    raise FileNotFoundError(
        f"{name}: no {DATASETS[name]['folder']}/labels.npy found. Looked in:\n  {searched}\n"
        f"{how_to_get(name)}"
    )


def download_release(name: str, parent: Path) -> Path:
    """Fetch and unpack the Zenodo release with robustbench's downloader (needs internet)."""
    info = DATASETS[name]
    zenodo = zenodo_module()
    zenodo.zenodo_download(info["zenodo"], {f"{info['folder']}.tar"}, save_dir=parent)
    directory = parent / info["folder"]
    if not (directory / "labels.npy").is_file():
        raise RuntimeError(f"the download did not produce {directory / 'labels.npy'}")
    return directory


def open_array(path: Path, name: str) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"{name}: missing {path}. {how_to_get(name)}")
    try:
        return np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as error:
        raise RuntimeError(
            f"{path} is corrupt or truncated ({error}); delete it and get it again. "
            f"{how_to_get(name)}"
        ) from error


def check_labels(labels: np.ndarray, path: Path, name: str) -> int:
    """Labels (N*5,) of integers in [0, classes), the same N per severity; returns N."""
    classes = DATASETS[name]["classes"]
    if labels.ndim != 1 or labels.shape[0] % N_SEVERITIES or not labels.shape[0]:
        raise RuntimeError(
            f"{path} has shape {labels.shape}; expected ({N_SEVERITIES * PER_SEVERITY},): "
            f"{PER_SEVERITY} labels per severity, 5 severities. {how_to_get(name)}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise RuntimeError(f"{path} holds {labels.dtype}; expected integer class labels")
    per_severity = labels.shape[0] // N_SEVERITIES
    values = np.asarray(labels).reshape(N_SEVERITIES, per_severity)
    if (values != values[0]).any():
        severity = int(np.flatnonzero((values != values[0]).any(1))[0]) + 1
        raise RuntimeError(
            f"{path}: the labels of severity {severity} differ from those of severity 1; the "
            f"file must repeat the same {per_severity} labels for each severity"
        )
    low, high = int(values[0].min()), int(values[0].max())
    if low < 0 or high >= classes:
        raise RuntimeError(
            f"{path}: labels span {low}..{high} but {name} has {classes} classes (0..{classes - 1})"
        )
    if classes == 100 and high < 10:
        raise RuntimeError(
            f"{path}: labels only span 0..{high}: is this CIFAR-10-C, not CIFAR-100-C?"
        )
    return per_severity


def check_images(images: np.ndarray, path: Path, n_labels: int, name: str) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise RuntimeError(
            f"{path} holds {images.dtype} {images.shape}; expected uint8 "
            f"({N_SEVERITIES * PER_SEVERITY}, 32, 32, 3) in the CIFAR-C layout. {how_to_get(name)}"
        )
    if images.shape[0] != n_labels:
        raise RuntimeError(
            f"{path} has {images.shape[0]} rows but labels.npy has {n_labels}; both must hold "
            f"5 severities of the same images. {how_to_get(name)}"
        )


class CifarC(Benchmark):
    """CIFAR-10-C or CIFAR-100-C from disk (see the module docstring)."""

    def __init__(self, name: str, data_root: str | None = None, download: bool = False) -> None:
        if name not in DATASETS:
            raise ValueError(f"unknown CIFAR-C benchmark {name!r}; known: {', '.join(DATASETS)}")
        super().__init__(name, DATASETS[name]["classes"], data_root=data_root, image_size=32)
        self.download = download
        self._dir: Path | None = None
        self._per_severity: int | None = None
        self._checked: set[str] = set()

    @property
    def directory(self) -> Path:
        if self._dir is None:
            self._dir = find_dir(self.name, self.data_root, self.download)
        return self._dir

    def _labels(self) -> np.ndarray:
        path = self.directory / "labels.npy"
        labels = open_array(path, self.name)
        if self._per_severity is None:
            self._per_severity = check_labels(labels, path, self.name)
        return labels

    def _images(self, corruption: str) -> np.ndarray:
        path = self.directory / f"{corruption}.npy"
        images = open_array(path, self.name)
        if corruption not in self._checked:
            check_images(images, path, len(self._labels()), self.name)
            self._checked.add(corruption)
        return images

    def prepare(self, domains: list[Domain], n: int | None, seed: int) -> None:
        """Check every file the stream will read, before any adaptation."""
        self.check_domains(domains)
        self._labels()
        for corruption in dict.fromkeys(name for name, _ in domains):
            self._images(corruption)
        if n is not None and n > self._per_severity:
            raise ValueError(
                f"asked for {n} images per domain but {self.directory} holds "
                f"{self._per_severity} per severity"
            )

    def load(
        self, corruption: str, severity: int, n: int | None, seed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The first n images of a severity (a memory-mapped view) and their labels."""
        self.check_domains([(corruption, severity)])
        labels = self._labels()
        images = self._images(corruption)
        per_severity = self._per_severity
        n = per_severity if n is None else n
        if n > per_severity:
            raise ValueError(
                f"asked for {n} images per domain but {self.directory} holds {per_severity}"
            )
        start = (severity - 1) * per_severity
        return images[start : start + n], np.asarray(labels[start : start + n], dtype=np.int64)

    def source_samples(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """`n` clean CIFAR training images (seeded draw), e.g. for EATA's Fisher information."""
        from tta.data.cifar import load_train

        images, labels = load_train(self.name.removesuffix("-c"), self.data_root, self.download)
        index = np.random.default_rng(seed).choice(len(images), min(n, len(images)), replace=False)
        return images[index], labels[index]

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if self._dir is not None:
            info.update(data_dir=str(self._dir), images_per_severity=self._per_severity)
        return info
