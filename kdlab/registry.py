"""One small registry used for models, distillers, datasets, optimizers and schedulers."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any

from kdlab.errors import UnknownNameError


def closest_names(name: str, candidates: list[str], n: int = 3) -> list[str]:
    """Return up to n candidates closest to name (case-insensitive)."""
    lowered = {c.lower(): c for c in candidates}
    hits = difflib.get_close_matches(str(name).lower(), list(lowered), n=n, cutoff=0.4)
    return [lowered[h] for h in hits]


class Registry:
    """Map names to objects; `get` fails with the closest registered names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._objects: dict[str, Any] = {}

    def register(self, name: str | None = None, obj: Any = None) -> Callable:
        """Register obj under name; usable as `@REG.register("name")` or `@REG.register()`."""

        def _add(o: Any) -> Any:
            key = name or o.__name__
            if key in self._objects:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._objects[key] = o
            return o

        return _add(obj) if obj is not None else _add

    def get(self, name: str) -> Any:
        if name in self._objects:
            return self._objects[name]
        near = closest_names(name, self.names())
        hint = f"; did you mean {', '.join(repr(n) for n in near)}?" if near else ""
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}{hint} (known: {', '.join(self.names())})"
        )

    def names(self) -> list[str]:
        return sorted(self._objects)

    def __contains__(self, name: object) -> bool:
        return name in self._objects

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._objects)
