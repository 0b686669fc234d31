"""One registration per extension kind: a read-only table of frozen entries, looked up by name.

Strategies, constraints and measurement backends each keep one `Registry`, built once at import
(`netopt.strategies.registry`, `netopt.constraints.registry`, `netopt.measure.registry`); the
config loader, the factory, the lazy exports and the contract tests read it. An entry names
its code by `Ref` ("package.module:Name"), imported only when asked for, so registering a
strategy that needs optuna or a backend that needs openvino imports neither.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Generic, Protocol, TypeVar

from netopt.errors import ConfigError

__all__ = ["Entry", "Ref", "Registry"]


class Entry(Protocol):
    """What a registry holds: a frozen dataclass with a `name`."""

    @property
    def name(self) -> str: ...


E = TypeVar("E", bound=Entry)


@dataclass(frozen=True)
class Ref:
    """Code named as "package.module:Name", imported when `load()`ed (not when registered).

    >>> Ref("netopt.errors:ConfigError").load().__name__
    'ConfigError'
    """

    path: str

    def __post_init__(self) -> None:
        module, _, attribute = self.path.partition(":")
        if not module or not attribute:
            raise ConfigError(f"reference {self.path!r} is not \"package.module:Name\"; give e.g. "
                              "\"netopt.measure.onnxrt:OnnxRuntimeCPU\"")

    @property
    def module(self) -> str:
        return self.path.partition(":")[0]

    @property
    def attribute(self) -> str:
        return self.path.partition(":")[2]

    def load(self) -> Any:
        """The named object, its module imported now."""
        target: Any = importlib.import_module(self.module)
        for part in self.attribute.split("."):
            target = getattr(target, part)
        return target


class Registry(Generic[E]):
    """Entries of one kind by name, fixed when built; an unknown name is one ConfigError line.

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Colour:
    ...     name: str
    >>> colours = Registry("colour", [Colour("red"), Colour("blue")], "register yours in colours.py")
    >>> colours["red"]
    Colour(name='red')
    >>> colours["green"]
    Traceback (most recent call last):
    ...
    netopt.errors.ConfigError: colour 'green' is unknown; known: 'blue', 'red'; give one of them, or \
register yours in colours.py
    """

    def __init__(self, kind: str, entries: Iterable[E], register: str) -> None:
        table: dict[str, E] = {}
        for entry in entries:
            if entry.name in table:
                raise ConfigError(f"{kind} {entry.name!r} is registered twice; give each {kind} one registration")
            table[entry.name] = entry
        self.kind = kind
        self.register = register
        """Where a new entry is registered: the fix an unknown name's message gives."""
        self._table = MappingProxyType(table)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._table)})"

    @property
    def names(self) -> tuple[str, ...]:
        """The registered names, sorted."""
        return tuple(sorted(self._table))

    def __getitem__(self, name: str) -> E:
        entry = self._table.get(name)
        if entry is None:
            raise self.unknown(name)
        return entry

    def unknown(self, name: object) -> ConfigError:
        """The error for a name not registered: the value, the names known, the fix."""
        return ConfigError(f"{self.kind} {name!r} is unknown; known: {', '.join(map(repr, self.names))}; give one of "
                           f"them, or {self.register}")

    def __contains__(self, name: object) -> bool:
        return name in self._table

    def __iter__(self) -> Iterator[E]:
        return iter(self._table.values())

    def __len__(self) -> int:
        return len(self._table)
