"""Name → entry registries: the one place each kind of thing (task, modality, runtime) is known.

An entry is registered under a name, either as an object or as a ``"module:attribute"`` string
that is imported on first use, so an optional backend (TensorRT, OpenVINO) costs nothing until a
recipe asks for it. A registered module may register variants of its entry itself when it is
imported (the text modality's ``text-pairs``): a name not registered yet imports the registered
modules before it is refused. A name that is not registered is a :class:`BadInputError` listing the known
names, the one line a user needs to fix a typo.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Generic, Iterator, TypeVar

from modelpress.errors import BadInputError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Any] = {}

    def register(self, name: str, entry: T | str | None = None) -> Any:
        """``register(name, entry)``, or ``@register(name)`` as a decorator; an entry may be a
        ``"module:attribute"`` string, imported lazily by :meth:`get`."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        if entry is not None:
            self._entries[name] = entry
            return entry

        def decorate(obj: T) -> T:
            self._entries[name] = obj
            return obj

        return decorate

    def get(self, name: str) -> T:
        if name not in self._entries:
            self._import_modules()  # a registered module may register its variants when imported
        if name not in self._entries:
            raise BadInputError(f"{self.kind} {name!r} is not known; known {self.kind}s: {', '.join(self.names())}")
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            entry = getattr(importlib.import_module(module), attr)
            self._entries[name] = entry
        return entry

    def _import_modules(self) -> None:
        """Import the modules of the lazily registered entries (each registers what it adds)."""
        for entry in list(self._entries.values()):
            if isinstance(entry, str):
                importlib.import_module(entry.partition(":")[0])

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)


def lazy(factory: Callable[[], T]) -> Callable[[], T]:
    """A zero-argument factory evaluated once (for registries whose entries import heavy code)."""
    cache: list[T] = []

    def get() -> T:
        if not cache:
            cache.append(factory())
        return cache[0]

    return get
