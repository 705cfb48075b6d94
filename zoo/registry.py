"""One small Registry class; every pluggable component of the zoo is looked up by name in one of them."""

from __future__ import annotations

import difflib
import importlib
import importlib.machinery
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

from zoo.errors import ConfigError

T = TypeVar("T")


def nearest(name: str, choices: list[str] | tuple[str, ...], n: int = 3) -> str:
    """Format the closest valid names to ``name`` for an error message."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.4)
    shown = close or sorted(choices)[:8]
    return ", ".join(shown)


ALLOW_IMPORTS_ENV = "ZOO_ALLOW_IMPORTS"  # comma-separated modules / packages a recipe may name as "module:Object"
ZOO_PACKAGES = ("zoo",)
_allowed: set[str] = set()


def allow_imports(modules) -> None:
    """Let ``"module:Object"`` names import these modules (and their submodules): a recipe's ``plugins:``."""
    _allowed.update(str(m) for m in modules if m)


def _under(module: str, packages) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _project_module(top: str) -> bool:
    """Whether the top-level package ``top`` is the user's own code in the working directory: located (without
    importing or running it) under the current directory, and neither standard library nor an installed one."""
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        return False
    spec = importlib.machinery.PathFinder.find_spec(top)  # searches sys.path; imports nothing
    origin = getattr(spec, "origin", None) or next(iter(getattr(spec, "submodule_search_locations", None) or []), None)
    if not origin:
        return False
    where = Path(origin).resolve()
    if any(part in ("site-packages", "dist-packages") for part in where.parts):
        return False
    return where.is_relative_to(Path.cwd().resolve())


def import_allowed(module: str) -> bool:
    """The rule of ``Registry.get("module:Object")``, checked BEFORE anything is imported: the zoo's own
    packages, the modules a recipe lists in ``plugins:`` (``allow_imports``), the modules listed in
    ``$ZOO_ALLOW_IMPORTS``, and the user's project code in the working directory (see ``_project_module``).
    Standard-library and installed third-party modules (``os``, ``subprocess``, ...) are refused unlisted."""
    listed = {m.strip() for m in os.environ.get(ALLOW_IMPORTS_ENV, "").split(",") if m.strip()}
    if _under(module, (*ZOO_PACKAGES, *_allowed, *listed)):
        return True
    return _project_module(module.split(".")[0])


class Registry(Generic[T]):
    """A name -> object table. ``@REG.register("name")`` adds an entry; duplicate names are an error.

    ``get`` also accepts ``"package.module:Object"`` so a user's own class can be named from a recipe
    without registering it first. With ``restricted`` (the zoo's model / loss / dataset registries) the
    module must pass ``import_allowed`` before it is imported, and the object must then be a subclass of
    ``base`` (``"module:Class"``, resolved lazily) when one is given: a recipe cannot name ``os:system``.
    """

    def __init__(self, kind: str, restricted: bool = False, base: str | None = None) -> None:
        self.kind = kind
        self.restricted = restricted
        self.base = base
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
            return self._import(name)
        raise ConfigError(f"unknown {self.kind} '{name}'; nearest: {nearest(name, self.names())}")

    def _import(self, name: str) -> T:
        module_name, _, attr = name.partition(":")
        if not module_name or not attr or not all(p.isidentifier() for p in (*module_name.split("."), attr)):
            raise ConfigError(f"{self.kind} '{name}' must look like package.module:Object")
        if self.restricted and not import_allowed(module_name):
            raise ConfigError(
                f"refusing to import {self.kind} '{name}': module '{module_name}' is not the zoo's, a plugin of the "
                f"recipe (plugins: [...]) or listed in ${ALLOW_IMPORTS_ENV}"
            )
        try:
            obj = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"cannot import {self.kind} '{name}': {err}") from err
        if self.base is not None:
            base_module, _, base_name = self.base.partition(":")
            base = getattr(importlib.import_module(base_module), base_name)
            if not (isinstance(obj, type) and issubclass(obj, base)):
                raise ConfigError(f"{self.kind} '{name}' is not a {base_name} subclass")
        return obj

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


MODELS: Registry[Any] = Registry("model", restricted=True, base="zoo.models.base:RecModel")
SOURCES: Registry[Any] = Registry("dataset", restricted=True)  # a source is a function (cfg) -> Corpus
LOSSES: Registry[Any] = Registry("loss", restricted=True, base="zoo.losses.base:Loss")


def populate() -> None:
    """Import the built-in components so that their ``register`` calls have run."""
    import zoo.data.sources  # noqa: F401
    import zoo.losses  # noqa: F401
    import zoo.models  # noqa: F401
    import zoo.stages  # noqa: F401
