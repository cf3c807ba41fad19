"""Name -> factory registries, so `--loss tent` and `tta.adapt(loss="tent")` resolve alike.

A registry also knows each factory's options (its constructor's keyword arguments), so a bad
option is refused with the valid ones listed, and a run can record every option that ran,
defaults included (`resolved_options`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any


class Registry:
    """A small name -> factory map whose lookup errors list the known names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._factories[name] = factory
            return factory

        return decorator

    def names(self) -> list[str]:
        return sorted(self._factories)

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._factories:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._factories[name]

    def options(self, name: str) -> dict[str, inspect.Parameter]:
        """The keyword options of `name`'s factory (a class: its `__init__`), in order."""
        parameters = inspect.signature(self.get(name)).parameters.values()
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return {p.name: p for p in parameters if p.kind in kinds}

    def _valid(self, name: str) -> str:
        names = list(self.options(name))
        return f"valid options: {', '.join(names)}" if names else "it takes no options"

    def create(self, name: str, **options: Any) -> Any:
        """Build `name` with `options`; an unknown option is refused with the valid ones."""
        factory = self.get(name)
        takes_any = any(
            p.kind == inspect.Parameter.VAR_KEYWORD
            for p in inspect.signature(factory).parameters.values()
        )
        unknown = [key for key in options if key not in self.options(name)]
        if unknown and not takes_any:
            raise ValueError(
                f"unknown option(s) {', '.join(map(repr, unknown))} for {self.kind} {name!r}; "
                f"{self._valid(name)}"
            )
        try:
            return factory(**options)
        except TypeError as error:
            raise ValueError(
                f"bad options for {self.kind} {name!r}: {error}; {self._valid(name)}"
            ) from error

    def resolved_options(self, name: str, given: Mapping[str, Any] | None = None) -> dict:
        """Every option of `name` as it ran: the given values over the defaults, described
        JSON-friendly (see `describe_value`)."""
        merged = {
            key: p.default
            for key, p in self.options(name).items()
            if p.default is not inspect.Parameter.empty
        }
        merged.update(given or {})
        return {key: describe_value(value) for key, value in merged.items()}

    def __contains__(self, name: object) -> bool:
        return name in self._factories


def describe_value(value: Any) -> Any:
    """`value` if JSON can hold it, else a short description: "<tensor (2000, 3, 32, 32)>"."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, list | tuple):
        if all(_plain(v) for v in value):
            return [describe_value(v) for v in value]
        return f"<{type(value).__name__} of {len(value)}>"  # e.g. batches of fisher_data
    if isinstance(value, Mapping):
        return {str(k): describe_value(v) for k, v in value.items()}
    shape = getattr(value, "shape", None)
    if shape is not None:
        name = "tensor" if type(value).__module__.startswith("torch") else type(value).__name__
        return f"<{name} {tuple(shape)}>"
    if isinstance(value, Iterable):
        return "<iterable>"
    return f"<{type(value).__name__}>"


def _plain(value: Any) -> bool:
    """True for what JSON holds as it is (numbers, strings, None, and lists/dicts of them)."""
    if value is None or isinstance(value, bool | int | float | str):
        return True
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    return isinstance(value, Mapping) and all(_plain(v) for v in value.values())


LOSSES = Registry("loss")
LAYER_SELECTORS = Registry("selector")
SAMPLE_FILTERS = Registry("sample filter")
NORMS = Registry("norm")
