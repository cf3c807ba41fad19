"""The order of a test stream: within a domain, across domains, and of the domains themselves.

Every order is a pure function of the seed and the names, so a stream is reproducible from
its protocol card alone and does not depend on what ran before.

`dirichlet_order` follows RoTTA's `LabelDirichletDomainSequence` (Yuan et al., CVPR 2023,
github.com/BIT-DA/RoTTA, core/data/ttasampler.py), the label-correlated sampler that NOTE
(Gong et al., NeurIPS 2022) introduced: for each class, draw proportions over S slots from
Dir(delta) (S = number of classes, at most 100), split the class's samples among the slots
by those proportions, and within each slot emit its class chunks in a random order; slots
follow one another. Small delta puts a class in few slots, so long runs of one label; large
delta spreads every class over every slot (runs of about N / (K * S)). Default delta 0.1,
as RoTTA's and NOTE's defaults. One addition: each class's samples are shuffled before the
split (RoTTA splits them in file order, which for sorted file lists would tie slots to files).
"""

from __future__ import annotations

import zlib

import numpy as np

DEFAULT_DIRICHLET_DELTA = 0.1
MAX_SLOTS = 100


def name_key(name: str) -> int:
    return zlib.crc32(name.encode())


def domain_order(
    n: int, seed: int, corruption: str, severity: int | None, shuffle: bool
) -> np.ndarray:
    """A domain's image order depends on its own name and the seed, not on the domains before."""
    if not shuffle:
        return np.arange(n)
    key = [seed, name_key(corruption)] + ([severity] if severity is not None else [])
    return np.random.default_rng(key).permutation(n)


def dirichlet_order(
    labels: np.ndarray, delta: float, rng: np.random.Generator, max_slots: int = MAX_SLOTS
) -> np.ndarray:
    """Positions of `labels` in a label-correlated order (RoTTA's Dirichlet sampler)."""
    if delta <= 0:
        raise ValueError(f"dirichlet delta must be positive, got {delta}")
    labels = np.asarray(labels)
    classes = np.unique(labels)
    n_slots = min(len(classes), max_slots)
    proportions = rng.dirichlet([delta] * n_slots, len(classes))
    slots: list[list[np.ndarray]] = [[] for _ in range(n_slots)]
    for cls, partition in zip(classes, proportions, strict=True):
        members = rng.permutation(np.flatnonzero(labels == cls))
        cuts = (np.cumsum(partition)[:-1] * len(members)).astype(int)
        for slot, chunk in zip(slots, np.split(members, cuts), strict=True):
            slot.append(chunk)
    order = [chunk for slot in slots for chunk in (slot[i] for i in rng.permutation(len(slot)))]
    return np.concatenate(order)


def stream_order(
    labels: np.ndarray,
    seed: int,
    name: str,
    severity: int | None,
    shuffle: bool,
    dirichlet_delta: float | None,
) -> np.ndarray:
    """A domain's order: Dirichlet label-correlated if `dirichlet_delta`, else shuffled."""
    if dirichlet_delta is None:
        return domain_order(len(labels), seed, name, severity, shuffle)
    key = [seed, name_key(name)] + ([severity] if severity is not None else [])
    return dirichlet_order(labels, dirichlet_delta, np.random.default_rng(key + [1]))


def permuted(names: tuple[str, ...], order_seed: int | None) -> tuple[str, ...]:
    """The domain order for `order_seed` (None: as given), e.g. CoTTA/RoTTA's 10 orders."""
    if order_seed is None:
        return names
    return tuple(names[i] for i in np.random.default_rng([order_seed, 7]).permutation(len(names)))


def same_label_run_length(labels: np.ndarray) -> float:
    """Mean length of the runs of equal consecutive labels: ~1 for a shuffled stream."""
    labels = np.asarray(labels)
    if not len(labels):
        return 0.0
    runs = 1 + int((labels[1:] != labels[:-1]).sum())
    return len(labels) / runs
