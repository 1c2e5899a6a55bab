"""What kdlab.config needs to know from the packages that own names, registered by them.

kdlab.config imports nothing from data, models, distillers or engine: each of those registers
the names its config keys may take (`register_names`) and, for distillers, how to look a method
up (`register_methods`). `kdlab/__init__.py` installs a loader that imports those packages the
first time a config is validated, so `from kdlab.config import load_cfg` alone validates names
and applies --logit-stand.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Optional

_names: dict[str, tuple[Callable[[], Iterable[str]], tuple[str, ...]]] = {}
_method_lookup: Optional[Callable[[str], Optional[type]]] = None
_method_names: Callable[[], Iterable[str]] = tuple
_loader: Optional[Callable[[], None]] = None
_validators: list[Callable[[Any], None]] = []


def register_names(key: str, names: Callable[[], Iterable[str]], also_valid: Iterable[str] = ()) -> None:
    """Config key `key` must name one of `names()` (read at validation time) or of `also_valid`."""
    _names[key] = (names, tuple(also_valid))


def register_methods(lookup: Callable[[str], Optional[type]], names: Callable[[], Iterable[str]]) -> None:
    """lookup(DISTILLER.TYPE) -> the method's Distiller class (None if not implemented); names(): the implemented."""
    global _method_lookup, _method_names
    _method_lookup, _method_names = lookup, names


def register_validator(check: Callable[[Any], None]) -> None:
    """check(cfg) raises ConfigError for values only the registering package can judge (run by validate_cfg)."""
    _validators.append(check)


def validators() -> list[Callable[[Any], None]]:
    ensure_registered()
    return list(_validators)


def set_registry_loader(loader: Callable[[], None]) -> None:
    """A function that imports the packages that register here; run once, before the first validation."""
    global _loader
    _loader = loader


def ensure_registered() -> None:
    global _loader
    if _loader is not None:
        loader, _loader = _loader, None
        loader()


def valid_names(key: str) -> Optional[tuple[list[str], tuple[str, ...]]]:
    """(registered names, other accepted names) for key, or None when no package registered it."""
    ensure_registered()
    if key not in _names:
        return None
    names, also_valid = _names[key]
    return sorted(names()), also_valid


def method_class(name: str) -> Optional[Any]:
    """The Distiller class of DISTILLER.TYPE `name` (aliases resolved); None if unknown or not implemented."""
    ensure_registered()
    return _method_lookup(name) if _method_lookup is not None else None


def method_names() -> list[str]:
    """The implemented methods' registry names."""
    ensure_registered()
    return sorted(_method_names())
