"""A cell's name: the hash of its resolved run config, the part that decides its results.

Two cells with the same identity are the same experiment, whichever grid or axis produced
them (the selected cell of a `select:` stage is the oracle's cell of the same value), so it
runs once. Where things live (`data_root`, `model_dir`), where they run (`device`, `threads`) and
whether data may be downloaded are not part of it: a study moved to another cluster
resumes. Options added to `RunConfig` later are left out while at their default
(`OMITTED_AT_DEFAULT`), so an upgrade keeps existing cells' names. Presets, defaults and named domain sets are resolved first, so `corruptions:
heldout` and the four names spelled out are one cell.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from tta.data.domain_sets import resolve_domains
from tta.harness.config import RunConfig, parse_n_per_domain, resolve

NOT_IDENTITY = ("out", "download", "data_root", "model_dir", "device", "threads")
# Options added after studies were first run: left out at their default, so the cells of an
# existing study keep their names (and resume) after an upgrade.
OMITTED_AT_DEFAULT = (
    "amp",
    "channels_last",
    "reset_every",
    "brittleness",
    "brittle_calibration",
    "robust_batches",
)
DEFAULTS = {f.name: f.default for f in dataclasses.fields(RunConfig)}
ID_LENGTH = 12


def run_config(options: dict[str, Any]) -> RunConfig:
    """The `RunConfig` of a cell's options (lists become tuples, as the CLI gives them)."""
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    return RunConfig(**values)


def identity(config: RunConfig) -> dict[str, Any]:
    """The resolved config without the fields that do not change results (JSON-able)."""
    resolved = resolve(config)
    data = dataclasses.asdict(resolved)
    for name in NOT_IDENTITY:
        data.pop(name, None)
    for name in OMITTED_AT_DEFAULT:
        if name in data and data[name] == DEFAULTS[name]:
            del data[name]
    if resolved.corruptions is not None:
        data["corruptions"] = list(resolve_domains(resolved.corruptions))
    data["n_per_domain"] = parse_n_per_domain(resolved.n_per_domain, resolved.benchmark)
    return json.loads(json.dumps(data, sort_keys=True, default=str))


def cell_id(config: RunConfig) -> str:
    """12 hex digits of the SHA-256 of `identity(config)`."""
    text = json.dumps(identity(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:ID_LENGTH]


def domains_of(config: RunConfig) -> tuple[str, ...] | None:
    """The config's domain names (None: the benchmark's default, the standard corruptions)."""
    return None if config.corruptions is None else resolve_domains(config.corruptions)
