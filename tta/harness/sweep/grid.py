"""The grid file: fixed `tta-run` options, axes to sweep, a `select:` stage and an executor.

    name: fmnist_zoo                 # default: the file's stem
    out: runs/sweeps/fmnist_zoo      # the sweep directory; default runs/sweeps/<name>
    fixed: {benchmark: fmnist-c, n_per_domain: 200}
    axes:                            # lists; the cells are their product (file order)
      method: [tent, eta]
      selector: [all, gala]
      lr: [1.0e-4, 1.0e-3]
      seed: [0, 1]
      variant:                       # an axis whose values are option bundles
        - {norm: batch}
        - {norm: alpha, norm_options: {prior: 16}}
    exclude: [{method: eta, selector: all}]   # partial assignments to leave out
    select: {axes: [lr], validation: {corruptions: heldout}, oracle: true}
    executor: {kind: local, parallel: 2, threads: 1, cells_per_job: 1}

Option names are `RunConfig` fields (`tta-run` flags with `_` or `-`). Everything is checked
here, before any cell runs, with the file and key named in the error. YAML 1.1 reads `1e-3`
as text, so numeric options are converted by their field's type.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from tta.harness.config import RunConfig

# Options a grid may not set: the sweep owns run directories, and seeds are an axis.
RESERVED = {"out": "the sweep names each cell's directory"}
OPTIONS = tuple(f.name for f in dataclasses.fields(RunConfig) if f.name not in RESERVED)
FLOAT_OPTIONS = {"lr", "momentum", "dirichlet_delta"}
INT_OPTIONS = {"steps", "severity", "seed", "order_seed", "batch_size", "forgetting", "threads"}
DICT_OPTIONS = {"loss_options", "selector_options", "sample_filter_options", "norm_options"}
NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
EXECUTORS = ("local", "slurm", "debug")
TOP_KEYS = ("name", "out", "fixed", "axes", "exclude", "select", "executor")


class GridError(ValueError):
    """A grid file that cannot be run; the message names the file, the key and the fix."""


@dataclass(frozen=True)
class SelectSpec:
    """Tune `axes` on the validation stream (`validation` overrides the test cell's options)."""

    axes: tuple[str, ...]
    validation: dict[str, Any]
    oracle: bool = True  # also run every candidate on the test stream, reported as the oracle


@dataclass(frozen=True)
class ExecutorSpec:
    """How cells run. `time_min` is one job's limit (SLURM --time; the local job timeout)."""

    kind: str = "local"
    parallel: int = 1  # local: jobs at a time; slurm: array parallelism
    threads: int | None = None  # torch threads per job (local: cores / parallel)
    cells_per_job: int = 1
    time_min: int = 24 * 60
    poll_s: float = 2.0  # how often the driver looks at its jobs (slurm: 60)
    heartbeat_s: float = 30.0
    partition: str | None = None
    cpus: int | None = None
    gpus: int | None = None
    mem: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    setup: tuple[str, ...] = ()  # shell lines before each SLURM job (module load, ...)
    slurm_extra: dict[str, Any] = field(default_factory=dict)  # any other sbatch option


@dataclass(frozen=True)
class Grid:
    kind: ClassVar[str] = "run"  # `tta.harness.sweep.kinds`: run (tta-run cells) or finetune
    name: str
    out: Path
    fixed: dict[str, Any]
    axes: dict[str, list[Any]]
    exclude: list[dict[str, Any]] = field(default_factory=list)
    select: SelectSpec | None = None
    executor: ExecutorSpec = field(default_factory=ExecutorSpec)
    source: str = "<grid>"

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-able), read back by `parse_grid` (the sweep keeps a copy)."""
        data = dataclasses.asdict(self)
        data["out"] = str(self.out)
        data.pop("source")
        if self.select is None:
            data.pop("select")
        data["executor"]["time"] = data["executor"].pop("time_min")
        return data


def option_name(key: str, where: str) -> str:
    """'n-per-domain' -> 'n_per_domain'; an unknown or reserved name is a GridError."""
    name = str(key).replace("-", "_")
    if name in RESERVED:
        raise GridError(f"{where}: option {key!r} cannot be set in a grid: {RESERVED[name]}")
    if name == "seeds":
        raise GridError(f"{where}: use an axis `seed: [0, 1, 2]` instead of `seeds`")
    if name not in OPTIONS:
        raise GridError(f"{where}: unknown option {key!r}; tta-run options: {', '.join(OPTIONS)}")
    return name


def number(value: Any) -> Any:
    """'1e-3' -> 0.001, '3' -> 3; anything else unchanged."""
    if isinstance(value, str) and NUMBER.match(value.strip()):
        text = value.strip()
        return int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)
    return value


def coerce(name: str, value: Any, where: str) -> Any:
    """An option value converted to its field's type (numbers, option dicts)."""
    if value is None:
        return None
    if name in DICT_OPTIONS:
        if not isinstance(value, dict):
            raise GridError(f"{where}: {name} takes a mapping, e.g. {{d_margin: 0.4}}")
        return {str(k).replace("-", "_"): number(v) for k, v in value.items()}
    if name in FLOAT_OPTIONS or name in INT_OPTIONS:
        converted = number(value)
        kind = float if name in FLOAT_OPTIONS else int
        if isinstance(converted, bool) or not isinstance(converted, int | float):
            raise GridError(f"{where}: {name} takes a number, got {value!r}")
        if kind is int and converted != int(converted):
            raise GridError(f"{where}: {name} takes an integer, got {value!r}")
        return kind(converted)
    if name == "n_per_domain":
        return number(value)
    if name == "corruptions" and isinstance(value, list):
        return tuple(str(v) for v in value)
    return value


@dataclass(frozen=True)
class OptionKind:
    """The options of one grid kind, so every kind checks `fixed:`, axes and `--set` alike.

    The wording defaults are tta-run's."""

    names: tuple[str, ...]
    name: Callable[[Any, str], str]  # a key -> its option name, or a GridError
    coerce: Callable[[str, Any, str], Any]  # (name, value, where) -> the converted value
    noun: str = "tta-run"  # who owns the options, in messages
    bundle: str = "{norm: alpha}"  # an example option bundle, in messages
    single: str = ", e.g. {key}: [a, b]; put a single value under fixed:"  # one-value axis


RUN_OPTIONS = OptionKind(OPTIONS, option_name, coerce)


def options(mapping: Any, where: str, kind: OptionKind = RUN_OPTIONS) -> dict[str, Any]:
    """A mapping of `kind`'s options (tta-run by default), names and values checked."""
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise GridError(f"{where}: expected a mapping of {kind.noun} options, got {mapping!r}")
    out = {}
    for key, value in mapping.items():
        name = kind.name(key, where)
        out[name] = kind.coerce(name, value, f"{where}.{key}")
    return out


def parse_axes(data: Any, where: str, kind: OptionKind = RUN_OPTIONS) -> dict[str, list[Any]]:
    """Axis name -> checked values: options of `kind`, or option bundles under any name."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise GridError(f"{where}: axes is a mapping of option -> list of values")
    axes = {}
    for key, values in data.items():
        if not isinstance(values, list) or not values:
            advice = kind.single.format(key=key)
            raise GridError(f"{where}.{key}: an axis is a non-empty list{advice}")
        is_option = str(key).replace("-", "_") in kind.names
        name = kind.name(key, where) if is_option else str(key)
        parsed = []
        for k, value in enumerate(values):
            at = f"{where}.{key}[{k}]"
            if isinstance(value, dict):
                parsed.append(options(value, at, kind))
            elif is_option:
                parsed.append(kind.coerce(name, value, at))
            else:
                raise GridError(
                    f"{at}: {key!r} is not a {kind.noun} option, so its values must be option "
                    f"bundles (mappings such as {kind.bundle}); got {value!r}"
                )
        labels = [label(v) for v in parsed]
        if len(set(labels)) != len(labels):
            raise GridError(f"{where}.{key}: repeated values {labels}")
        axes[name] = parsed
    return axes


def label(value: Any) -> str:
    """How an axis value is shown: '0.001', 'tent', or 'norm=alpha,norm_options={...}'."""
    if isinstance(value, dict):
        return ",".join(f"{k}={label(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ",".join(label(v) for v in value)
    return str(value)


def parse_time(value: Any, where: str) -> int:
    """Minutes from SLURM's time formats: 90, 'M:S', 'H:M:S', 'D-H', 'D-H:M', 'D-H:M:S'.

    Seconds round up to the next minute.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    text = str(value).strip()
    try:
        if "-" in text:
            days, rest = text.split("-", 1)
            h, m, s = ([int(p) for p in rest.split(":")] + [0, 0])[:3]
            if rest.count(":") > 2:
                raise ValueError
            return int(days) * 24 * 60 + h * 60 + m + (s > 0)
        parts = [int(p) for p in text.split(":")]
        if len(parts) == 1:
            return parts[0]
        if len(parts) == 2:
            return parts[0] + (parts[1] > 0)
        if len(parts) == 3:
            return parts[0] * 60 + parts[1] + (parts[2] > 0)
    except ValueError:
        pass
    raise GridError(f"{where}: time takes minutes or SLURM's [D-]H:M:S forms, got {value!r}")


def parse_executor(data: Any, where: str) -> ExecutorSpec:
    if data is None:
        return ExecutorSpec()
    if isinstance(data, str):
        data = {"kind": data}
    if not isinstance(data, dict):
        raise GridError(f"{where}: executor is local, slurm, debug, or a mapping with kind:")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    kind = data.pop("kind", data.pop("name", "local"))
    if kind not in EXECUTORS:
        raise GridError(f"{where}.kind: unknown executor {kind!r}; one of {', '.join(EXECUTORS)}")
    known = {f.name for f in dataclasses.fields(ExecutorSpec)} - {"kind", "time_min"}
    values: dict[str, Any] = {"kind": kind}
    if kind == "slurm":
        values["poll_s"] = 60.0  # sacct is a shared service: ask it once a minute
    if "array_parallelism" in data:
        data["parallel"] = data.pop("array_parallelism")
    if "time" in data:
        values["time_min"] = parse_time(data.pop("time"), f"{where}.time")
    for key, value in data.items():
        if key not in known:
            raise GridError(
                f"{where}: unknown executor option {key!r}; known: "
                f"{', '.join(sorted(known | {'kind', 'time', 'array_parallelism'}))}"
            )
        values[key] = value
    for key in ("parallel", "cells_per_job"):
        if key in values and (not isinstance(values[key], int) or values[key] < 1):
            raise GridError(f"{where}.{key} takes a positive integer, got {values[key]!r}")
    if values.get("mem") is not None:
        values["mem"] = mem_text(values["mem"])
    if isinstance(values.get("setup"), str):
        values["setup"] = (values["setup"],)
    values["setup"] = tuple(values.get("setup", ()))
    return ExecutorSpec(**values)


def mem_text(value: Any) -> str:
    """16 -> '16GB'; '16G', '16000M' kept (SLURM's own units)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:g}GB"
    return str(value)


def parse_select(data: Any, axes: dict[str, list[Any]], where: str) -> SelectSpec | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise GridError(f"{where}: select is a mapping: {{axes: [lr], validation: {{...}}}}")
    unknown = set(data) - {"axes", "validation", "oracle"}
    if unknown:
        raise GridError(f"{where}: unknown keys {sorted(unknown)}; use axes, validation, oracle")
    names = data.get("axes")
    names = [names] if isinstance(names, str) else names
    if not names:
        raise GridError(f"{where}.axes: name the axes to tune, e.g. axes: [lr]")
    for name in names:
        if name not in axes:
            raise GridError(f"{where}.axes: {name!r} is not an axis of the grid ({list(axes)})")
        if name == "seed":
            raise GridError(f"{where}.axes: seeds are averaged over, not selected")
    validation = options(data.get("validation"), f"{where}.validation")
    if not validation:
        raise GridError(
            f"{where}.validation: say how the validation stream differs from the test "
            "stream, e.g. validation: {corruptions: heldout}"
        )
    return SelectSpec(tuple(names), validation, bool(data.get("oracle", True)))


def parse_exclude(data: Any, axes: dict[str, list[Any]], where: str) -> list[dict[str, Any]]:
    if data is None:
        return []
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise GridError(f"{where}: exclude is a list of partial assignments, e.g. [{{lr: 0.1}}]")
    for item in data:
        for key, value in item.items():
            if key not in axes:
                raise GridError(f"{where}: {key!r} is not an axis of the grid ({list(axes)})")
            if label(value) not in {label(v) for v in axes[key]}:
                raise GridError(f"{where}: {key}={value!r} is not a value of that axis")
    return [dict(item) for item in data]


def parse_grid(data: Any, name: str, where: str = "<grid>") -> Grid:
    """A `Grid` from parsed YAML (or `Grid.to_dict`); every name and type checked."""
    if not isinstance(data, dict):
        raise GridError(f"{where}: a grid file is a mapping with fixed:, axes:, ...")
    unknown = set(data) - set(TOP_KEYS)
    if unknown:
        raise GridError(
            f"{where}: unknown keys {sorted(unknown)}; a grid has {', '.join(TOP_KEYS)}"
        )
    fields = common_fields(data, name, where, RUN_OPTIONS)
    return Grid(
        **fields,
        exclude=parse_exclude(data.get("exclude"), fields["axes"], f"{where}: exclude"),
        select=parse_select(data.get("select"), fields["axes"], f"{where}: select"),
        executor=parse_executor(data.get("executor"), f"{where}: executor"),
        source=where,
    )


def common_fields(data: dict[str, Any], name: str, where: str, kind: OptionKind) -> dict[str, Any]:
    """`name`, `out`, `fixed` and `axes` of a grid of any kind, checked in that kind's options."""
    axes = parse_axes(data.get("axes"), f"{where}: axes", kind)
    fixed = options(data.get("fixed"), f"{where}: fixed", kind)
    overlap = set(fixed) & set(axes)
    if overlap:
        raise GridError(f"{where}: {sorted(overlap)} both fixed and an axis; keep one")
    name = str(data.get("name") or name)
    return {
        "name": name,
        "out": Path(data.get("out") or f"runs/sweeps/{name}"),
        "fixed": fixed,
        "axes": axes,
    }


def load_grid(path: str | Path, parse: Callable[[Any, str, str], Grid] = parse_grid) -> Grid:
    """Read a YAML grid file and check it with `parse` (needs PyYAML: pip install 'tta[sweep]')."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"grid file {str(path)!r} does not exist")
    try:
        import yaml
    except ImportError as error:  # pragma: no cover - the sweep extra installs it
        raise RuntimeError("tta-sweep reads YAML with PyYAML: pip install 'tta[sweep]'") from error
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise GridError(f"{path}: not valid YAML: {error}") from error
    return parse(data, path.stem, str(path))


G = TypeVar("G", bound=Grid)


def with_overrides(
    grid: G, fixed: dict[str, Any], executor: dict[str, Any], kind: OptionKind = RUN_OPTIONS
) -> G:
    """The grid with command-line overrides: fixed options (`--set`, `kind`'s) and executor flags."""
    new_fixed = {**grid.fixed, **options(fixed, "--set", kind)}
    overlap = set(new_fixed) & set(grid.axes)
    if overlap:
        raise GridError(f"--set {sorted(overlap)}: those are axes of the grid")
    spec = grid.executor
    if executor:
        merged = {k: v for k, v in dataclasses.asdict(spec).items() if k != "time_min"}
        merged.update({"time": spec.time_min, **executor})
        spec = parse_executor(merged, "command line")
    return dataclasses.replace(grid, fixed=new_fixed, executor=spec)
