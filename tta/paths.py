"""Where tta keeps generated data and trained models."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$TTA_CACHE`, else `~/.cache/tta`."""
    return Path(os.environ.get("TTA_CACHE", Path.home() / ".cache" / "tta"))


def check_data_root(explicit: str | os.PathLike) -> Path:
    """An explicitly given data root must exist: a typo must not silently use data elsewhere."""
    path = Path(explicit)
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise FileNotFoundError(
            f"data root {str(explicit)!r} (--data-root / data_root=) {what}. Create it "
            f"(mkdir -p {explicit}) to keep data there, or leave it out to use $TTA_DATA "
            f"and {cache_dir() / 'data'}"
        )
    return path


def data_roots(explicit: str | os.PathLike | None = None) -> list[Path]:
    """Roots searched for datasets, in order: `--data-root`, `$TTA_DATA`, the cache.

    An explicit root that does not exist is an error (FileNotFoundError naming it).
    """
    roots = [check_data_root(explicit)] if explicit else []
    if os.environ.get("TTA_DATA"):
        roots.append(Path(os.environ["TTA_DATA"]))
    roots.append(cache_dir() / "data")
    return roots
