"""Name -> factory registries, so `--loss tent` and `tta.adapt(loss="tent")` resolve alike."""

from __future__ import annotations

from collections.abc import Callable
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

    def create(self, name: str, **options: Any) -> Any:
        factory = self.get(name)
        try:
            return factory(**options)
        except TypeError as error:
            raise ValueError(f"bad options for {self.kind} {name!r}: {error}") from error

    def __contains__(self, name: object) -> bool:
        return name in self._factories


LOSSES = Registry("loss")
LAYER_SELECTORS = Registry("selector")
SAMPLE_FILTERS = Registry("sample filter")
NORMS = Registry("norm")
