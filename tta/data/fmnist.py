"""Fashion-MNIST from IDX files: Debian's `dataset-fashion-mnist`, `--data-root`, or a download.

Images are padded to 32x32 and replicated to 3 channels, so CIFAR-style models and the
CIFAR-10-C corruption strengths apply unchanged.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from tta.paths import data_roots

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
HOW_TO_GET = (
    "Install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or put the "
    "IDX .gz files in <data-root>/fashion-mnist/, or run with internet access and "
    "download=True (torchvision's downloader)."
)


def candidate_dirs(data_root: str | os.PathLike | None = None) -> list[Path]:
    dirs = [root / "fashion-mnist" for root in data_roots(data_root)]
    if data_root:
        dirs.insert(0, Path(data_root))
    dirs.append(DEBIAN_DIR)
    return dirs


def _read_idx(path: Path, item_shape: tuple[int, ...]) -> np.ndarray:
    """Read an IDX file whose items have `item_shape`; the item count comes from the header."""
    try:
        with gzip.open(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as error:
        raise RuntimeError(f"{path} is corrupt or truncated ({error}). {HOW_TO_GET}") from error
    ndim = 1 + len(item_shape)
    if len(raw) < 4 + 4 * ndim or raw[:3] != b"\x00\x00\x08" or raw[3] != ndim:
        raise RuntimeError(f"{path} is not a uint8 IDX file of {ndim} dims. {HOW_TO_GET}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if shape[1:] != item_shape or data.size != int(np.prod(shape)):
        raise RuntimeError(
            f"{path} declares shape {shape} but holds {data.size} values (expected items of "
            f"shape {item_shape}): the file is truncated or not Fashion-MNIST. {HOW_TO_GET}"
        )
    return data.reshape(shape)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file (the format Fashion-MNIST ships in)."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def _download(target: Path) -> Path:
    from torchvision.datasets import FashionMNIST

    FashionMNIST(str(target.parent / "_torchvision"), download=True)
    raw = target.parent / "_torchvision" / "FashionMNIST" / "raw"
    target.mkdir(parents=True, exist_ok=True)
    for images, labels in FILES.values():
        for name in (images, labels):
            (target / name).write_bytes((raw / name).read_bytes())
    return target


def find_dir(data_root: str | os.PathLike | None = None, download: bool = False) -> Path:
    """The first directory holding all four IDX files; download only when asked."""
    dirs = candidate_dirs(data_root)
    for directory in dirs:
        if all((directory / name).exists() for f in FILES.values() for name in f):
            return directory
    if download:
        return _download(dirs[1] if data_root else dirs[0])
    searched = "\n  ".join(str(d) for d in dirs)
    raise FileNotFoundError(f"Fashion-MNIST not found. Looked in:\n  {searched}\n{HOW_TO_GET}")


def to_32x32_rgb(images: np.ndarray) -> np.ndarray:
    """(N, 28, 28) uint8 -> (N, 32, 32, 3) uint8: zero-pad 2 pixels, replicate channels."""
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    return np.repeat(padded[..., None], 3, axis=-1)


def load_fmnist(
    split: str = "test", data_root: str | os.PathLike | None = None, download: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8 and labels (N,) int64 of a split ('train' or 'test')."""
    if split not in FILES:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(FILES)}")
    directory = find_dir(data_root, download)
    images_name, labels_name = FILES[split]
    images = _read_idx(directory / images_name, (28, 28))
    labels = _read_idx(directory / labels_name, ())
    if len(images) != len(labels):
        raise RuntimeError(
            f"{directory}: {len(images)} images but {len(labels)} labels in the {split} split. "
            f"{HOW_TO_GET}"
        )
    return to_32x32_rgb(images), labels.astype(np.int64)
