"""Target tasks that need no download, as tensors in [0, 1] of the backbone's input shape.

- `digits`: scikit-learn's handwritten digits (1797 images, 8x8, 17 grey levels, shipped
  with scikit-learn), scaled to [0, 1], upsampled bilinearly to 28x28 and zero-padded to
  32x32 with 3 equal channels, exactly the layout of our Fashion-MNIST images
  (`tta.data.fmnist.to_32x32_rgb`). Split 60 / 20 / 20 (stratified) by `split_seed`.
- `fmnist-unseen`: the Fashion-MNIST classes 5-9 (sandal, shirt, sneaker, bag, ankle boot)
  relabelled 0-4, which the 5-class backbone (`fmnist5`, trained on classes 0-4) never
  saw. Train / validation from the training split (5000 validation images held out by
  `split_seed`), test = the test split's 5000 images of those classes.

Caps (`n_train`, `n_val`, `n_test`) keep the first images of each (shuffled) split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

UNSEEN_CLASSES = (5, 6, 7, 8, 9)
SEEN_CLASSES = (0, 1, 2, 3, 4)
Split = tuple[torch.Tensor, torch.Tensor]


@dataclass
class TaskData:
    """Images (N, 3, 32, 32) float in [0, 1] and int64 labels for each split."""

    name: str
    num_classes: int
    train: Split
    val: Split
    test: Split

    def split(self, name: str) -> Split:
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; known: train, val, test")
        return getattr(self, name)

    def sizes(self) -> dict[str, int]:
        return {s: int(len(self.split(s)[1])) for s in ("train", "val", "test")}


def load_task(
    name: str,
    split_seed: int = 0,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    data_root: str | None = None,
) -> TaskData:
    """The task `name` (`digits` or `fmnist-unseen`), split by `split_seed`, capped."""
    if name == "digits":
        train, val, test = _digits(split_seed)
        classes = 10
    elif name == "fmnist-unseen":
        train, val, test = _fmnist_unseen(split_seed, data_root)
        classes = len(UNSEEN_CLASSES)
    else:
        raise ValueError(f"unknown task {name!r}; known: digits, fmnist-unseen")
    return TaskData(name, classes, _cap(train, n_train), _cap(val, n_val), _cap(test, n_test))


def _cap(split: Split, n: int | None) -> Split:
    return split if n is None else (split[0][:n].contiguous(), split[1][:n].contiguous())


def digits_to_images(pixels: np.ndarray) -> torch.Tensor:
    """(N, 64) values 0..16 -> (N, 3, 32, 32) in [0, 1]: 8x8 -> 28x28 bilinear, pad 2."""
    x = torch.from_numpy(np.asarray(pixels, dtype=np.float32)).view(-1, 1, 8, 8) / 16.0
    x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False).clamp(0, 1)
    return F.pad(x, (2, 2, 2, 2)).expand(-1, 3, -1, -1).contiguous()


def _digits(split_seed: int) -> tuple[Split, Split, Split]:
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as error:
        raise ImportError(
            "the digits task needs scikit-learn: pip install 'tta[robust]'"
        ) from error
    data = load_digits()
    index = np.arange(len(data.target))
    train, rest = train_test_split(
        index, test_size=0.4, random_state=split_seed, stratify=data.target
    )
    val, test = train_test_split(
        rest, test_size=0.5, random_state=split_seed, stratify=data.target[rest]
    )
    images, labels = digits_to_images(data.data), torch.from_numpy(data.target.astype(np.int64))
    return tuple((images[i], labels[i]) for i in (train, val, test))


def _fmnist_unseen(split_seed: int, data_root: str | None) -> tuple[Split, Split, Split]:
    from tta.data.fmnist import load_fmnist

    out = []
    for split in ("train", "test"):
        images, labels = load_fmnist(split, data_root)
        keep = np.isin(labels, UNSEEN_CLASSES)
        x = torch.from_numpy(images[keep]).permute(0, 3, 1, 2).float() / 255
        y = torch.from_numpy(labels[keep] - UNSEEN_CLASSES[0])
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(split_seed))
        out.append((x[order], y[order]))
    (x, y), test = out
    n_val = 5000
    return (x[n_val:], y[n_val:]), (x[:n_val], y[:n_val]), test


def seen_classes_train(data_root: str | None = None) -> Split:
    """The Fashion-MNIST training images of classes 0-4 (what `fmnist5` is trained on)."""
    from tta.data.fmnist import load_fmnist

    images, labels = load_fmnist("train", data_root)
    keep = np.isin(labels, SEEN_CLASSES)
    x = torch.from_numpy(images[keep]).permute(0, 3, 1, 2)  # uint8, to save memory
    return x, torch.from_numpy(labels[keep])
