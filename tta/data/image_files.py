"""Images kept on disk as files, decoded per batch by a thread pool.

The stream indexes image sources like arrays: `images[index]` -> uint8 (B, H, W, 3). For
ImageNet-C (50000 JPEGs per domain) decoding everything up front would take gigabytes, so
`ImageFiles` decodes only the batch asked for. Threads rather than processes: Pillow releases
the GIL while it decodes, and threads need no pickling or process start-up.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


def decode_pool(workers: int) -> ThreadPoolExecutor:
    """One shared pool per size, so many domains (the mixed setting) do not multiply threads."""
    with _POOLS_LOCK:
        if workers not in _POOLS:
            _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="tta-decode")
        return _POOLS[workers]


class ImageFiles:
    """A lazy uint8 (N, size, size, 3) array backed by image files.

    `resize=False` (ImageNet-C): every image must already be `size` x `size`; anything else is
    an error naming the file, never a silent resize. `resize=True` (DomainBed): images are
    resized to `size` x `size` with bilinear interpolation, as DomainBed's `Resize((224, 224))`.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        size: int = 224,
        resize: bool = False,
        workers: int | None = None,
        note: str = "",
    ) -> None:
        self.paths = list(paths)
        self.size = size
        self.resize = resize
        self.workers = workers or default_workers()
        self.note = note

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), self.size, self.size, 3)

    def decode(self, path: Path) -> np.ndarray:
        try:
            with Image.open(path) as image:
                if not self.resize and image.size != (self.size, self.size):
                    raise RuntimeError(
                        f"{path} is {image.size[0]}x{image.size[1]}, expected "
                        f"{self.size}x{self.size}. {self.note}"
                    )
                image = image.convert("RGB")
                if self.resize and image.size != (self.size, self.size):
                    image = image.resize((self.size, self.size), Image.BILINEAR)
                return np.asarray(image, dtype=np.uint8)
        except (OSError, SyntaxError) as error:
            raise RuntimeError(f"cannot decode {path} ({error}). {self.note}") from error

    def __getitem__(self, index: int | slice | np.ndarray) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            return self.decode(self.paths[int(index)])
        chosen = [self.paths[i] for i in np.arange(len(self.paths))[index]]
        if len(chosen) <= 1 or self.workers <= 1:
            decoded = [self.decode(p) for p in chosen]
        else:
            decoded = list(decode_pool(self.workers).map(self.decode, chosen))
        if not decoded:
            return np.zeros((0, self.size, self.size, 3), dtype=np.uint8)
        return np.stack(decoded)


def concat_images(sources: Sequence):
    """One image source over several: file lists are merged (one decode pool per batch)."""
    files = [s for s in sources if isinstance(s, ImageFiles)]
    if sources and len(files) == len(sources):
        first = files[0]
        same = all(
            (f.size, f.resize, f.workers) == (first.size, first.resize, first.workers)
            for f in files
        )
        if same:
            paths = [p for f in files for p in f.paths]
            return ImageFiles(paths, first.size, first.resize, first.workers, first.note)
    return ConcatImages(sources)


class ConcatImages:
    """Several image sources seen as one (the `mixed` setting draws batches across domains)."""

    def __init__(self, sources: Sequence) -> None:
        self.sources = list(sources)
        self.offsets = np.cumsum([0] + [len(s) for s in self.sources])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index)
        which = np.searchsorted(self.offsets, index, side="right") - 1
        parts = {}
        for s in np.unique(which):
            rows = np.flatnonzero(which == s)
            parts[s] = (rows, self.sources[s][index[rows] - self.offsets[s]])
        first = next(iter(parts.values()))[1]
        out = np.empty((len(index), *first.shape[1:]), dtype=first.dtype)
        for rows, images in parts.values():
            out[rows] = images
        return out
