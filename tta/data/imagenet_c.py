"""`imagenet-c`: Hendrycks & Dietterich's ImageNet-C, read from its JPEG tree.

Layout: `<root>/ImageNet-C/<corruption>/<severity 1..5>/<wnid>/*.JPEG` (`--data-root` may
also point at the `ImageNet-C` folder itself). The images are already 224x224 (the release
resized to 256 and centre-cropped before corrupting), so they are used as they are: no
resize, no crop; an image of another size is an error naming the file. Labels are the
position of the wnid among the 1000 sorted wnids (torchvision's, timm's and RobustBench's
ImageNet class order).

Which images: `n_per_domain <= 5000` takes the first n of RobustBench's fixed list of 5000
validation images (`helper_files/imagenet_test_image_ids.txt`, used by RobustBench, TENT's
and CoTTA's ImageNet-C evaluations) when robustbench is installed; without it, a
deterministic class-balanced stand-in: 5 images per class drawn with seed 0 from the sorted
file names. The protocol card says which (`imagenet_subset`). Larger n takes a seed-0 random
draw from all 50000 (all of them for n >= 50000). The same file names are used for every
corruption and severity; the stream seed only changes the order.

Decoding runs per batch in a thread pool (`ImageFiles`); the tree is checked in `prepare`
(missing corruptions or severities, class folders that are not the 1000 ImageNet wnids,
empty folders, missing listed files, and the size of one image per domain) before any
adaptation.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from tta.data.base import Benchmark, Domain
from tta.data.image_files import ImageFiles
from tta.data.robustbench_files import helper_file, package_dir
from tta.paths import data_roots

FOLDER = "ImageNet-C"
SUBSET_SIZE = 5000
PER_CLASS_FALLBACK = 5
N_CLASSES = 1000
WNID = re.compile(r"n\d{8}")
HOW_TO_GET = (
    "Get ImageNet-C from https://zenodo.org/records/2235448 (blur.tar, digital.tar, noise.tar, "
    "weather.tar, extra.tar) and unpack the archives into <data-root>/ImageNet-C/, so that "
    "<data-root>/ImageNet-C/<corruption>/<1..5>/<wnid>/*.JPEG exist."
)
SIZE_NOTE = (
    "ImageNet-C images are 224x224 as released; tta does not resize or crop them. Use the "
    "official release. " + HOW_TO_GET
)


def known_wnids() -> list[str] | None:
    """The 1000 ImageNet wnids from an installed package (robustbench or timm), else None."""
    mapping = helper_file("imagenet_class_to_id_map.json")
    if mapping is not None:
        return sorted(json.loads(mapping.read_text()))
    timm = package_dir("timm")
    synsets = timm / "data" / "_info" / "imagenet_synsets.txt" if timm else None
    if synsets is not None and synsets.is_file():
        return sorted(line.strip() for line in synsets.read_text().splitlines() if line.strip())
    return None


def robustbench_ids() -> list[str] | None:
    """RobustBench's 5000 `<wnid>/<file>` ids, in its order, if robustbench is installed."""
    path = helper_file("imagenet_test_image_ids.txt")
    if path is None:
        return None
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def find_dir(data_root: str | os.PathLike | None) -> Path:
    dirs = [root / FOLDER for root in data_roots(data_root)]
    if data_root and Path(data_root).name == FOLDER:
        dirs.insert(0, Path(data_root))
    for directory in dirs:
        if directory.is_dir():
            return directory
    looked = "\n  ".join(str(d) for d in dirs)
    raise FileNotFoundError(
        f"imagenet-c: no {FOLDER} folder found. Looked in:\n  {looked}\n{HOW_TO_GET}"
    )


def list_images(folder: Path) -> list[str]:
    return sorted(
        entry.name
        for entry in os.scandir(folder)
        if entry.is_file() and entry.name.lower().endswith((".jpeg", ".jpg", ".png"))
    )


def balanced_ids(listing: dict[str, list[str]], per_class: int = PER_CLASS_FALLBACK) -> list[str]:
    """`per_class` files per class, drawn with seed 0 from the sorted names, in a seeded order."""
    rng = np.random.default_rng(0)
    ids = []
    for wnid in sorted(listing):
        files = listing[wnid]
        chosen = rng.choice(len(files), min(per_class, len(files)), replace=False)
        ids.extend(f"{wnid}/{files[i]}" for i in sorted(chosen))
    return [ids[i] for i in rng.permutation(len(ids))]


class ImageNetC(Benchmark):
    """ImageNet-C from its JPEG tree (see the module docstring).

    `wnids` replaces the 1000 ImageNet classes (for trees with other classes, e.g. tests);
    `workers` is the number of decoding threads.
    """

    def __init__(
        self,
        data_root: str | None = None,
        download: bool = False,
        wnids: list[str] | None = None,
        workers: int | None = None,
    ) -> None:
        super().__init__("imagenet-c", N_CLASSES, data_root=data_root, image_size=224)
        if download:
            raise ValueError("imagenet-c cannot be downloaded by tta (about 70 GB); " + HOW_TO_GET)
        self.wnids = sorted(wnids) if wnids is not None else known_wnids()
        if wnids is not None:
            self.num_classes = len(self.wnids)
        self.workers = workers
        self._dir: Path | None = None
        official = wnids is None and robustbench_ids() is not None
        self._subset = "robustbench-5000" if official else "seeded-5-per-class"
        self._checked: dict[tuple[str, int, int | None], tuple[list[str], list[str]]] = {}

    @property
    def directory(self) -> Path:
        if self._dir is None:
            self._dir = find_dir(self.data_root)
        return self._dir

    def _domain_dir(self, corruption: str, severity: int) -> Path:
        folder = self.directory / corruption / str(severity)
        if folder.is_dir():
            return folder
        have = sorted(p.name for p in self.directory.iterdir() if p.is_dir())
        if not (self.directory / corruption).is_dir():
            raise FileNotFoundError(
                f"imagenet-c: missing corruption folder {self.directory / corruption} (found: "
                f"{', '.join(have) or 'nothing'}). {HOW_TO_GET}"
            )
        severities = sorted(p.name for p in (self.directory / corruption).iterdir() if p.is_dir())
        raise FileNotFoundError(
            f"imagenet-c: missing severity folder {folder} ({corruption} has severities "
            f"{', '.join(severities) or 'none'}; expected 1..5). {HOW_TO_GET}"
        )

    def _check_classes(self, folder: Path) -> list[str]:
        found = sorted(p.name for p in folder.iterdir() if p.is_dir())
        if self.wnids is not None:
            missing = sorted(set(self.wnids) - set(found))
            extra = sorted(set(found) - set(self.wnids))
            if missing or extra:
                raise RuntimeError(
                    f"{folder}: class folders do not match the {len(self.wnids)} ImageNet classes "
                    f"({len(missing)} missing, e.g. {missing[:3]}; {len(extra)} unexpected, e.g. "
                    f"{extra[:3]}). {HOW_TO_GET}"
                )
        else:
            bad = [name for name in found if not WNID.fullmatch(name)]
            if bad or len(found) != N_CLASSES:
                raise RuntimeError(
                    f"{folder}: expected {N_CLASSES} class folders named by wnid (n01440764, ...), "
                    f"found {len(found)}{f', e.g. {bad[:3]} are not wnids' if bad else ''}. "
                    f"{HOW_TO_GET}"
                )
        return found

    def _listing(self, folder: Path) -> dict[str, list[str]]:
        listing = {wnid: list_images(folder / wnid) for wnid in self._check_classes(folder)}
        empty = [wnid for wnid, files in listing.items() if not files]
        if empty:
            raise RuntimeError(
                f"{folder}: {len(empty)} empty class folder(s), e.g. {folder / empty[0]}. {HOW_TO_GET}"
            )
        return listing

    def _ids(self, listing: dict[str, list[str]], n: int | None) -> list[str]:
        total = sum(len(files) for files in listing.values())
        if n is not None and n <= SUBSET_SIZE:
            ids = (robustbench_ids() if self._subset == "robustbench-5000" else None) or (
                balanced_ids(listing)
            )
            if n > len(ids):
                raise ValueError(
                    f"asked for {n} images per domain but the {self._subset} subset of "
                    f"{self.directory} has {len(ids)}"
                )
            return ids[:n]
        everything = [f"{wnid}/{name}" for wnid in sorted(listing) for name in listing[wnid]]
        if n is None or n >= total:
            return everything
        chosen = np.random.default_rng(0).choice(total, n, replace=False)
        return [everything[i] for i in chosen]

    def _domain_ids(
        self, corruption: str, severity: int, n: int | None
    ) -> tuple[list[str], list[str]]:
        """The image ids of a domain and the sorted class folders, checked once."""
        key = (corruption, severity, n)
        if key not in self._checked:
            folder = self._domain_dir(corruption, severity)
            listing = self._listing(folder)
            ids = self._ids(listing, n)
            missing = [i for i in ids if not (folder / i).is_file()]
            if missing:
                raise FileNotFoundError(
                    f"imagenet-c: {len(missing)} of the {len(ids)} images of the {self._subset} "
                    f"subset are missing under {folder}, e.g. {missing[0]}. {HOW_TO_GET}"
                )
            ImageFiles([folder / ids[0]], note=SIZE_NOTE).decode(folder / ids[0])
            self._checked[key] = (ids, sorted(listing))
        return self._checked[key]

    def prepare(self, domains: list[Domain], n: int | None, seed: int) -> None:
        """Check the tree for every domain of the stream, before any adaptation."""
        self.check_domains(domains)
        for corruption, severity in domains:
            self._domain_ids(corruption, severity, n)

    def load(
        self, corruption: str, severity: int, n: int | None, seed: int
    ) -> tuple[ImageFiles, np.ndarray]:
        self.check_domains([(corruption, severity)])
        ids, classes = self._domain_ids(corruption, severity, n)
        index = {wnid: k for k, wnid in enumerate(classes)}
        folder = self.directory / corruption / str(severity)
        images = ImageFiles([folder / i for i in ids], 224, False, self.workers, SIZE_NOTE)
        labels = np.array([index[i.split("/")[0]] for i in ids], dtype=np.int64)
        return images, labels

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(imagenet_subset=self._subset, resize="none (already 224x224)")
        if self._dir is not None:
            info["data_dir"] = str(self._dir)
        return info
