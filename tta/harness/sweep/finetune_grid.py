"""Grid files of kind `finetune`: a robust fine-tuning study (Heuillet et al. 2025's grid).

    kind: finetune
    name: robust_ft_offline
    fixed: {n_train: 300, eps: 4/255}          # FinetuneConfig fields
    axes:
      task: [digits, fmnist-unseen]
      objective: [at, trades]
      protocol:                                # bundles, as in tta-run grids
        - {protocol: full, epochs: 6}          # "FFT long"
        - {protocol: full, epochs: 2}          # "FFT short"
        - {protocol: linear, epochs: 6}        # "LP"
      schedule: [fixed]
    search:                                    # Optuna, per cell, on the validation split
      trials: 4
      sampler: random                          # ASHA's; or tpe
      pruner: {min_resource: 1, reduction_factor: 3}
      space:
        lr: {low: 1.0e-4, high: 1.0e-2, log: true}
        weight_decay: {low: 1.0e-4, high: 1.0e-1, log: true}
    evaluate: {linf: train, l2: 0.5, l1: 12, severity: 3}   # tta.robust.threats.ThreatSpec
    executor: {kind: local, parallel: 1}

Each cell is one configuration; its hyperparameters are searched by its own Optuna study
(`finetune_search`), the best trial's model is evaluated on the test split (`finetune_cell`).
Option names are `FinetuneConfig` fields; values are converted by the field's type
(`4/255` is read as a fraction). Everything is checked before any cell runs.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tta.harness.sweep.grid import (
    Grid,
    GridError,
    OptionKind,
    common_fields,
    number,
    parse_exclude,
    parse_executor,
)
from tta.robust.finetune.config import FinetuneConfig
from tta.robust.threats import ThreatSpec

TOP_KEYS = ("kind", "name", "out", "fixed", "axes", "exclude", "search", "evaluate", "executor")
NOT_OPTIONS: dict[str, str] = {}  # FinetuneConfig fields a grid may not set
FRACTION = re.compile(r"^\s*([+-]?\d+(?:\.\d*)?)\s*/\s*(\d+(?:\.\d*)?)\s*$")
SAMPLERS = ("tpe", "random")


def field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(FinetuneConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(FinetuneConfig)}


OPTION_TYPES = field_types()
OPTIONS = tuple(name for name in OPTION_TYPES if name not in NOT_OPTIONS)


@dataclass(frozen=True)
class SearchSpec:
    """Optuna settings of every cell: trials that finish (completed or pruned), the sampler,
    the successive-halving pruner (epochs are its resource) and the search space."""

    trials: int = 4
    sampler: str = "random"  # ASHA samples at random (Li et al. 2020); tpe: Optuna's TPE
    min_resource: int = 1
    reduction_factor: int = 3
    min_early_stopping_rate: int = 0
    space: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            "lr": {"low": 1e-4, "high": 1e-2, "log": True},
            "weight_decay": {"low": 1e-4, "high": 1e-1, "log": True},
        }
    )


@dataclass(frozen=True)
class FinetuneGrid(Grid):
    """A `Grid` whose cells are fine-tuning runs searched by Optuna (no `select:` stage)."""

    kind: ClassVar[str] = "finetune"
    search: SearchSpec = field(default_factory=SearchSpec)
    evaluate: dict[str, Any] = field(default_factory=dict)  # ThreatSpec fields; linf: "train"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **super().to_dict()}


def fraction(value: Any) -> Any:
    """'4/255' -> 0.0156..., '1e-3' -> 0.001; anything else unchanged."""
    if isinstance(value, str):
        match = FRACTION.match(value)
        if match:
            return float(match.group(1)) / float(match.group(2))
    return number(value)


def option_name(key: Any, where: str) -> str:
    name = str(key).replace("-", "_")
    if name in NOT_OPTIONS:
        raise GridError(f"{where}: option {key!r} cannot be set in a grid: {NOT_OPTIONS[name]}")
    if name not in OPTIONS:
        raise GridError(
            f"{where}: unknown option {key!r}; fine-tuning options (FinetuneConfig): "
            f"{', '.join(OPTIONS)}"
        )
    return name


def coerce(name: str, value: Any, where: str) -> Any:
    """`value` converted to the type of FinetuneConfig's field `name`."""
    kind = OPTION_TYPES[name]
    optional = type(None) in typing.get_args(kind)
    base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
    if value is None:
        if optional:
            return None
        raise GridError(f"{where}: {name} cannot be null")
    if base in (int, float):
        converted = fraction(value)
        if isinstance(converted, bool) or not isinstance(converted, int | float):
            raise GridError(f"{where}: {name} takes a number, got {value!r}")
        if base is int and converted != int(converted):
            raise GridError(f"{where}: {name} takes an integer, got {value!r}")
        return base(converted)
    if base is str:
        if not isinstance(value, str):
            raise GridError(f"{where}: {name} takes a name, got {value!r}")
        return value
    return value


FINETUNE_OPTIONS = OptionKind(
    OPTIONS,
    option_name,
    coerce,
    noun="FinetuneConfig",
    bundle="{protocol: full, epochs: 5}",
    single="; a single value: fixed:",
)


def parse_search(data: Any, where: str) -> SearchSpec:
    if data is None:
        return SearchSpec()
    if not isinstance(data, dict):
        raise GridError(f"{where}: search is a mapping: {{trials: 4, space: {{lr: ...}}}}")
    data = dict(data)
    pruner = data.pop("pruner", {}) or {}
    if not isinstance(pruner, dict):
        raise GridError(f"{where}.pruner: a mapping {{min_resource: 1, reduction_factor: 3}}")
    pruner_keys = {"min_resource", "reduction_factor", "min_early_stopping_rate"}
    pruner = {**{k: data.pop(k) for k in pruner_keys if k in data}, **pruner}  # to_dict's form
    known = {"trials", "sampler", "space"}
    unknown = set(data) - known
    if unknown:
        raise GridError(
            f"{where}: unknown keys {sorted(unknown)}; use trials, sampler, pruner, space"
        )
    values: dict[str, Any] = {}
    for key in ("trials",):
        if key in data:
            values[key] = _positive(data[key], f"{where}.{key}")
    if "sampler" in data:
        if data["sampler"] not in SAMPLERS:
            raise GridError(
                f"{where}.sampler: one of {', '.join(SAMPLERS)}, got {data['sampler']!r}"
            )
        values["sampler"] = data["sampler"]
    unknown = set(pruner) - pruner_keys
    if unknown:
        raise GridError(
            f"{where}.pruner: unknown keys {sorted(unknown)}; use {sorted(pruner_keys)}"
        )
    for key, value in pruner.items():
        low = 2 if key == "reduction_factor" else (0 if key == "min_early_stopping_rate" else 1)
        values[key] = _positive(value, f"{where}.pruner.{key}", low)
    if "space" in data:
        values["space"] = parse_space(data["space"], f"{where}.space")
    return SearchSpec(**values)


def parse_space(data: Any, where: str) -> dict[str, dict[str, Any]]:
    """{name: {low, high, log} | {choices: [...]}} over numeric or named FinetuneConfig fields."""
    if not isinstance(data, dict) or not data:
        raise GridError(
            f"{where}: a mapping such as {{lr: {{low: 1.0e-4, high: 1.0e-2, log: true}}}}"
        )
    space = {}
    for key, spec in data.items():
        name = option_name(key, where)
        at = f"{where}.{key}"
        if not isinstance(spec, dict):
            raise GridError(f"{at}: {{low: .., high: .., log: true}} or {{choices: [..]}}")
        if "choices" in spec:
            if (
                set(spec) != {"choices"}
                or not isinstance(spec["choices"], list)
                or not spec["choices"]
            ):
                raise GridError(f"{at}: choices is a non-empty list and stands alone")
            space[name] = {"choices": [coerce(name, v, at) for v in spec["choices"]]}
            continue
        if set(spec) - {"low", "high", "log"} or not {"low", "high"} <= set(spec):
            raise GridError(f"{at}: give low and high (and optionally log: true)")
        low, high = coerce(name, spec["low"], at), coerce(name, spec["high"], at)
        if not isinstance(low, int | float) or not low < high:
            raise GridError(f"{at}: a numeric range with low < high, got {low!r}..{high!r}")
        log = bool(spec.get("log", False))
        if log and low <= 0:
            raise GridError(f"{at}: a log range needs low > 0")
        space[name] = {"low": low, "high": high, "log": log}
    return space


def parse_evaluate(data: Any, where: str) -> dict[str, Any]:
    """ThreatSpec fields; `linf: train` (the default) uses each cell's training eps."""
    if data is None:
        return {"linf": "train"}
    if not isinstance(data, dict):
        raise GridError(f"{where}: evaluate is a mapping of budgets, e.g. {{l2: 0.5, l1: 12}}")
    known = {f.name for f in dataclasses.fields(ThreatSpec)}
    out: dict[str, Any] = {"linf": "train"}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise GridError(f"{where}: unknown key {key!r}; known: {', '.join(sorted(known))}")
        if name == "linf" and value == "train":
            out[name] = "train"
        elif name == "corruptions":
            out[name] = list(value) if isinstance(value, list) else value
        else:
            out[name] = fraction(value)
    try:
        threat_spec(out, eps=4 / 255)
    except (TypeError, ValueError) as error:
        raise GridError(f"{where}: {error}") from error
    return out


def threat_spec(evaluate: dict[str, Any], eps: float, seed: int = 0) -> ThreatSpec:
    """The ThreatSpec of a cell: `linf: train` is its training budget `eps`."""
    values = dict(evaluate)
    if values.get("linf", "train") == "train":
        values["linf"] = eps
    if values.get("corruptions") in ("standard", None):
        values.pop("corruptions", None)
    elif isinstance(values.get("corruptions"), list):
        values["corruptions"] = tuple(values["corruptions"])
    values.setdefault("seed", seed)
    return ThreatSpec(**values)


def _positive(value: Any, where: str, low: int = 1) -> int:
    value = number(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise GridError(f"{where}: an integer >= {low}, got {value!r}")
    return value


def parse_finetune_grid(data: Any, name: str, where: str = "<grid>") -> FinetuneGrid:
    """A `FinetuneGrid` from parsed YAML (or `to_dict`), every name and type checked."""
    if not isinstance(data, dict):
        raise GridError(f"{where}: a grid file is a mapping with kind:, fixed:, axes:, ...")
    unknown = set(data) - set(TOP_KEYS)
    if unknown:
        hint = (
            " (select: is for tta-run grids; Optuna searches each cell)" if "select" in data else ""
        )
        raise GridError(
            f"{where}: unknown keys {sorted(unknown)}{hint}; a finetune grid has {', '.join(TOP_KEYS)}"
        )
    fields = common_fields(data, name, where, FINETUNE_OPTIONS)
    search = parse_search(data.get("search"), f"{where}: search")
    return FinetuneGrid(
        **fields,
        exclude=parse_exclude(data.get("exclude"), fields["axes"], f"{where}: exclude"),
        select=None,
        executor=parse_executor(data.get("executor"), f"{where}: executor"),
        source=where,
        search=search,
        evaluate=parse_evaluate(data.get("evaluate"), f"{where}: evaluate"),
    )
