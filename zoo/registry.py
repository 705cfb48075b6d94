"""One small Registry class; every pluggable component of the zoo is looked up by name in one of them."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from zoo.errors import ConfigError

T = TypeVar("T")


def nearest(name: str, choices: list[str] | tuple[str, ...], n: int = 3) -> str:
    """Format the closest valid names to ``name`` for an error message."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.4)
    shown = close or sorted(choices)[:8]
    return ", ".join(shown)


class Registry(Generic[T]):
    """A name -> object table. ``@REG.register("name")`` adds an entry; duplicate names are an error.

    ``get`` also accepts ``"package.module:Object"`` so a user's own class can be named from a recipe
    without registering it first.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is already registered ({self._entries[name]!r})")
            self._entries[name] = entry
            return entry

        return add(obj) if obj is not None else add

    def get(self, name: str) -> T:
        if name in self._entries:
            return self._entries[name]
        if ":" in name:
            module_name, _, attr = name.partition(":")
            try:
                return getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError) as err:
                raise ConfigError(f"cannot import {self.kind} '{name}': {err}") from err
        raise ConfigError(f"unknown {self.kind} '{name}'; nearest: {nearest(name, self.names())}")

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


MODELS: Registry[Any] = Registry("model")
SOURCES: Registry[Any] = Registry("dataset")
LOSSES: Registry[Any] = Registry("loss")


def populate() -> None:
    """Import the built-in components so that their ``register`` calls have run."""
    import zoo.data.sources  # noqa: F401
    import zoo.losses  # noqa: F401
    import zoo.models  # noqa: F401
    import zoo.stages  # noqa: F401
