"""One registry type for methods, models and datasets: register, look up, build, list.

A registry maps a name to a factory (a class or a function) plus free-form metadata
(survey category, paper, venue, ...). Unknown names raise :class:`UnknownNameError`,
which suggests the closest registered names.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator


class UnknownNameError(KeyError):
    """Raised when a name is not registered; the message lists the closest names."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Entry:
    """A registered factory and what we know about it."""

    name: str
    factory: Callable[..., Any]
    meta: dict[str, Any] = field(default_factory=dict)


class Registry:
    """A named collection of factories of one kind ("method", "model", "dataset")."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, **meta: Any) -> Callable[[Callable], Callable]:
        """Decorator: ``@MODELS.register("cnn", family="cnn")``. Names are unique."""

        def decorate(factory: Callable) -> Callable:
            if name in self._entries and self._entries[name].factory is not factory:
                raise ValueError(f"{self.kind} {name!r} is already registered "
                                 f"(by {self._entries[name].factory!r})")
            self._entries[name] = Entry(name, factory, dict(meta))
            return factory

        return decorate

    def get(self, name: str) -> Entry:
        """The entry for ``name``; an unknown name raises with the closest suggestions."""
        if not isinstance(name, str):
            raise TypeError(f"{self.kind} name must be a string, got {name!r}")
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{hint} "
                f"Registered {self.kind}s: {', '.join(sorted(self._entries))}."
            ) from None

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the factory registered under ``name`` with the given arguments."""
        return self.get(name).factory(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def __len__(self) -> int:
        return len(self._entries)


METHODS = Registry("method")
MODELS = Registry("model")
DATASETS = Registry("dataset")
SCHEMES = Registry("scheme")
