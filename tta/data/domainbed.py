"""`domainbed`: leave-one-domain-out streams over DomainBed's image-folder datasets.

Layout, as DomainBed's download script leaves it: `<root>/<dataset>/<domain>/<class>/*.jpg`
(or .png), e.g. `PACS/photo/dog/...`. Known datasets: PACS, VLCS, OfficeHome (folder
`OfficeHome` or `office_home`) and TerraIncognita (`TerraIncognita` or `terra_incognita`);
any other folder with the same layout works too. As in DomainBed, the domains are the
sub-folders (sorted) and the classes the sorted class folders, which must be the same in
every domain (an error otherwise: labels would silently mean different classes).

The stream runs over the target domain (`target=`), whole; the other domains are the source
domains a model is trained on (`tta.models.domainbed_train.train_source`). Images are resized
to 224x224 with bilinear interpolation, DomainBed's test transform (`Resize((224, 224))`,
which does not keep the aspect ratio) -- unlike ImageNet-C, these datasets come in many sizes.
A domain of n < its size images is a seed-0 random draw (files are sorted by class).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from tta.data.base import Benchmark, Domain
from tta.data.image_files import IMAGE_EXTENSIONS, ImageFiles
from tta.paths import data_roots

DATASETS: dict[str, dict[str, Any]] = {
    "PACS": {"folders": ("PACS",), "classes": 7},
    "VLCS": {"folders": ("VLCS",), "classes": 5},
    "OfficeHome": {"folders": ("OfficeHome", "office_home"), "classes": 65},
    "TerraIncognita": {"folders": ("TerraIncognita", "terra_incognita"), "classes": 10},
}
HOW_TO_GET = (
    "Download it with DomainBed (`python -m domainbed.scripts.download --data_dir <data-root>`, "
    "github.com/facebookresearch/DomainBed) or put it under <data-root> as "
    "<dataset>/<domain>/<class>/*.jpg."
)


def list_files(folder: Path) -> list[str]:
    return sorted(
        entry.name
        for entry in os.scandir(folder)
        if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS)
    )


class DomainBed(Benchmark):
    """One DomainBed dataset, with `target` the held-out domain the stream runs over."""

    def __init__(
        self,
        data_root: str | None = None,
        download: bool = False,
        dataset: str = "PACS",
        target: str | None = None,
        image_size: int = 224,
        workers: int | None = None,
    ) -> None:
        if download:
            raise ValueError(f"tta does not download DomainBed datasets. {HOW_TO_GET}")
        known = DATASETS.get(dataset, {})
        super().__init__(
            "domainbed",
            known.get("classes", 0),
            corruptions=(),
            data_root=data_root,
            image_size=image_size,
            uses_severity=False,
        )
        self.dataset = dataset
        self.target = target
        self.workers = workers
        self._dir: Path | None = None
        self._domains: dict[str, tuple[list[Path], np.ndarray]] | None = None
        self.classes: list[str] = []

    # -- the tree ---------------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        if self._dir is None:
            folders = DATASETS.get(self.dataset, {}).get("folders", (self.dataset,))
            candidates = [root / f for root in data_roots(self.data_root) for f in folders]
            if self.data_root and Path(self.data_root).name in folders:
                candidates.insert(0, Path(self.data_root))
            found = [c for c in candidates if c.is_dir()]
            if not found:
                looked = "\n  ".join(str(c) for c in candidates)
                raise FileNotFoundError(
                    f"domainbed: dataset {self.dataset} not found. Looked in:\n  {looked}\n"
                    f"{HOW_TO_GET}"
                )
            self._dir = found[0]
        return self._dir

    def scan(self) -> dict[str, tuple[list[Path], np.ndarray]]:
        """Every domain's image paths and labels; checks classes agree across domains."""
        if self._domains is not None:
            return self._domains
        root = self.directory
        domains = sorted(p.name for p in root.iterdir() if p.is_dir())
        if len(domains) < 2:
            raise RuntimeError(
                f"{root}: found {len(domains)} domain folder(s) ({', '.join(domains) or 'none'}); "
                f"leave-one-domain-out needs at least 2. {HOW_TO_GET}"
            )
        classes = {d: sorted(p.name for p in (root / d).iterdir() if p.is_dir()) for d in domains}
        reference = classes[domains[0]]
        for domain in domains[1:]:
            if classes[domain] != reference:
                missing = sorted(set(reference) - set(classes[domain]))
                extra = sorted(set(classes[domain]) - set(reference))
                raise RuntimeError(
                    f"{root}: the class folders of {domain!r} differ from those of "
                    f"{domains[0]!r} (missing {missing}, extra {extra}); every domain must have "
                    "the same classes, or labels would mean different classes per domain"
                )
        expected = DATASETS.get(self.dataset, {}).get("classes")
        if not reference or (expected and len(reference) != expected):
            raise RuntimeError(
                f"{root}: found {len(reference)} classes {reference[:8]}; {self.dataset} has "
                f"{expected or 'at least 1'}. {HOW_TO_GET}"
            )
        scanned = {}
        for domain in domains:
            paths, labels = [], []
            for k, name in enumerate(reference):
                files = list_files(root / domain / name)
                if not files:
                    raise RuntimeError(
                        f"{root / domain / name}: no images (.jpg, .jpeg, .png). {HOW_TO_GET}"
                    )
                paths.extend(root / domain / name / f for f in files)
                labels.extend([k] * len(files))
            scanned[domain] = (paths, np.array(labels, dtype=np.int64))
        self.classes = reference
        self.num_classes = len(reference)
        self._domains = scanned
        return scanned

    def domain_names(self) -> tuple[str, ...]:
        return tuple(self.scan())

    # -- the benchmark interface ------------------------------------------------------------

    def known_domains(self) -> tuple[str, ...]:
        return self.domain_names()

    def default_domains(self) -> tuple[str, ...]:
        """The target domain: the stream of a leave-one-domain-out run."""
        if self.target is None:
            raise ValueError(
                f"domainbed {self.dataset}: choose a target domain (target=...), one of: "
                f"{', '.join(self.domain_names())}"
            )
        return (self.target,)

    def source_domains(self) -> tuple[str, ...]:
        """Every domain but the target: what the source model trains on."""
        targets = set(self.default_domains())
        self.check_domains([(t, None) for t in targets])
        return tuple(d for d in self.domain_names() if d not in targets)

    def prepare(self, domains: list[Domain], n: int | None, seed: int) -> None:
        self.check_domains(domains)
        for name, _ in domains:
            paths, _ = self.scan()[name]
            ImageFiles(paths[:1], self.image_size, resize=True).decode(paths[0])

    def images(self, domain: str) -> tuple[ImageFiles, np.ndarray]:
        """All images of a domain (resized to `image_size`) and their labels."""
        paths, labels = self.scan()[domain]
        note = f"(DomainBed {self.dataset}, domain {domain})"
        return ImageFiles(paths, self.image_size, True, self.workers, note), labels

    def load(
        self, corruption: str, severity: int | None, n: int | None, seed: int
    ) -> tuple[ImageFiles, np.ndarray]:
        self.check_domains([(corruption, severity)])
        images, labels = self.images(corruption)
        if n is None or n >= len(labels):
            return images, labels
        chosen = np.sort(np.random.default_rng(0).choice(len(labels), n, replace=False))
        images.paths = [images.paths[i] for i in chosen]
        return images, labels[chosen]

    def check_model(self, model: Any) -> None:
        self.scan()
        super().check_model(model)

    def source_samples(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """`n` images drawn (seeded) from the source domains, e.g. for EATA's Fisher."""
        parts = [self.images(d) for d in self.source_domains()]
        sizes = np.cumsum([0] + [len(labels) for _, labels in parts])
        chosen = np.random.default_rng(seed).choice(sizes[-1], min(n, sizes[-1]), replace=False)
        images, labels = [], []
        for k, (domain_images, domain_labels) in enumerate(parts):
            rows = chosen[(chosen >= sizes[k]) & (chosen < sizes[k + 1])] - sizes[k]
            if len(rows):
                images.append(domain_images[rows])
                labels.append(domain_labels[rows])
        return np.concatenate(images), np.concatenate(labels)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(
            dataset=self.dataset,
            target=self.target,
            resize=f"{self.image_size}x{self.image_size} bilinear (DomainBed test transform)",
        )
        if self._domains is not None:
            info["data_dir"] = str(self._dir)
            if self.target is not None:
                info["source_domains"] = list(self.source_domains())
        return info
