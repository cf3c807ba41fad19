"""Where tta keeps generated data and trained models."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$TTA_CACHE`, else `~/.cache/tta`."""
    return Path(os.environ.get("TTA_CACHE", Path.home() / ".cache" / "tta"))


def data_roots(explicit: str | os.PathLike | None = None) -> list[Path]:
    """Roots searched for datasets, in order: `--data-root`, `$TTA_DATA`, the cache."""
    roots = [Path(explicit)] if explicit else []
    if os.environ.get("TTA_DATA"):
        roots.append(Path(os.environ["TTA_DATA"]))
    roots.append(cache_dir() / "data")
    return roots
