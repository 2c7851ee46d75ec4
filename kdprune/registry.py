"""One way to make a part swappable: a ``Registry`` of named entries.

Every kind of part a config chooses by name (importance criteria, KD terms, KD and pruning schedules, losses, budget
measures, export formats, report stages, NPU compilers, a target's operator rules) is a ``Registry``: entries are
added where they are defined (``@REG.register("name")`` or ``REG.register("name", entry)``), the config's name is
looked up with ``REG.lookup(name, "config.key")``, and an unknown name is the user's one-line error listing the valid
ones. A registry is a read-only mapping in registration order, so ``name in REG``, ``list(REG)`` and ``REG.items()``
work as they do on the dicts they replace. (timm's and mmengine's registries do this too; neither is a dependency, and
what is needed is 30 lines.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from kdprune.errors import UserError

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Named entries of one kind (``kind`` names them in errors, e.g. "importance criterion")."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T | None = None):
        """``register(name, entry)`` adds ``entry``; ``@register(name)`` adds the decorated function or class. A name
        registered twice is a bug (two definitions of one part)."""
        if entry is not None:
            self._add(name, entry)
            return entry

        def deco(obj: Callable) -> Callable:
            self._add(name, obj)
            return obj

        return deco

    def _add(self, name: str, entry: T) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry

    def problem(self, name, key: str) -> str | None:
        """The user's error for ``key=name`` (None when ``name`` is registered)."""
        if isinstance(name, str) and name in self._entries:
            return None
        return f"{key}={name}: unknown {self.kind}; choose one of {', '.join(self._entries)}"

    def lookup(self, name, key: str) -> T:
        """The entry called ``name`` (the config's ``key``); an unknown name: ``UserError`` naming the valid ones."""
        if (msg := self.problem(name, key)) is not None:
            raise UserError(msg)
        return self._entries[name]

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
