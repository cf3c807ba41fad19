"""Read and write the CIFAR-10-C on-disk layout, used by CIFAR-10/100-C and generated benchmarks.

`<root>/<corruption>.npy`: uint8 (N*5, H, W, 3), rows `(s-1)*N : s*N` hold severity s;
`<root>/labels.npy`: (N*5,) integer labels, the same N labels repeated per severity.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

N_SEVERITIES = 5


def _load(path: Path, how_to_get: str) -> np.ndarray:
    if not path.exists():
        raise FileNotFoundError(f"missing {path}. {how_to_get}")
    try:
        return np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as error:
        raise RuntimeError(
            f"{path} is corrupt or truncated ({error}); delete it and get it again. {how_to_get}"
        ) from error


def read_domain(
    root: Path, corruption: str, severity: int, n: int | None = None, how_to_get: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, H, W, 3) uint8 and labels (n,) int64 of one corruption at one severity."""
    if severity not in range(1, N_SEVERITIES + 1):
        raise ValueError(f"severity must be 1..5, got {severity}")
    images = _load(root / f"{corruption}.npy", how_to_get)
    labels = _load(root / "labels.npy", how_to_get)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise RuntimeError(
            f"{root / f'{corruption}.npy'} holds {images.dtype} {images.shape}; expected uint8 "
            f"(N*5, H, W, 3) in the CIFAR-10-C layout. {how_to_get}"
        )
    if images.shape[0] % N_SEVERITIES or labels.shape != (images.shape[0],):
        raise RuntimeError(
            f"{root}: {corruption}.npy has {images.shape[0]} rows and labels.npy has shape "
            f"{labels.shape}; both must have N*5 rows (5 severities). {how_to_get}"
        )
    per_severity = images.shape[0] // N_SEVERITIES
    n = per_severity if n is None else n
    if n > per_severity:
        raise ValueError(f"asked for {n} images per domain but {root} holds {per_severity}")
    start = (severity - 1) * per_severity
    return np.ascontiguousarray(images[start : start + n]), labels[start : start + n].astype(
        np.int64
    )


def create_files(
    root: Path, corruption: str, shape: tuple[int, ...], labels: np.ndarray
) -> np.memmap:
    """Open (creating if needed) `<corruption>.npy` for writing, and write `labels.npy`."""
    root.mkdir(parents=True, exist_ok=True)
    n = shape[0]
    labels_path = root / "labels.npy"
    if not labels_path.exists():
        np.save(labels_path, np.tile(labels.astype(np.int64), N_SEVERITIES))
    path = root / f"{corruption}.npy"
    full_shape = (n * N_SEVERITIES, *shape[1:])
    if path.exists():
        array = np.load(path, mmap_mode="r+")
        if array.shape == full_shape and array.dtype == np.uint8:
            return array
        path.unlink()
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=full_shape)
