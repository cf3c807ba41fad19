"""One progress-bar helper, so every long loop shows rate and ETA the same way."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def progress(iterable: Iterable | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr with rate and ETA; silent when `TTA_QUIET` is set."""
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("disable", bool(os.environ.get("TTA_QUIET")))
    return tqdm(iterable, **kwargs)
