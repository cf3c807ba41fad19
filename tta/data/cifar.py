"""Clean CIFAR-10/100 training images, the source data of the CIFAR-C benchmarks.

Methods that need clean source samples (EATA's Fisher information) read them from the
python-pickle release as torchvision unpacks it: `<root>/cifar-10-batches-py/data_batch_1..5`
or `<root>/cifar-100-python/train`. Missing, it is downloaded with torchvision when the user
allows downloads.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from tta.paths import data_roots

RELEASES = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], b"labels"),
    "cifar100": ("cifar-100-python", ["train"], b"fine_labels"),
}


def _download(dataset: str, root: Path) -> None:
    from torchvision import datasets

    cls = datasets.CIFAR10 if dataset == "cifar10" else datasets.CIFAR100
    cls(str(root), train=True, download=True)


def load_train(
    dataset: str, data_root: str | os.PathLike | None = None, download: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Training images uint8 (N, 32, 32, 3) and labels int64 (N,)."""
    folder, files, label_key = RELEASES[dataset]
    roots = data_roots(data_root)
    found = [r for r in roots if all((r / folder / f).is_file() for f in files)]
    if not found and download:
        _download(dataset, roots[0])
        found = [roots[0]]
    if not found:
        looked = "\n  ".join(str(r / folder) for r in roots)
        raise FileNotFoundError(
            f"clean {dataset} training data not found. Looked in:\n  {looked}\nPut the python "
            f"release ({folder}/) under your data root or run with --download."
        )
    images, labels = [], []
    for name in files:
        path = found[0] / folder / name
        try:
            with open(path, "rb") as handle:
                batch = pickle.load(handle, encoding="bytes")
            images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch[label_key], dtype=np.int64))
        except (OSError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as error:
            raise RuntimeError(f"{path} is not a CIFAR python batch ({error})") from error
    return np.concatenate(images).transpose(0, 2, 3, 1).copy(), np.concatenate(labels)
