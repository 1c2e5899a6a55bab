"""A restricted unpickler for dataset files (CIFAR's python batches).

Unpickling can call any importable function, so a tampered `data_batch_1` could run code.
`load_pickle` resolves only the globals that genuine CIFAR files (written by Python 2's
cPickle) and their Python 3 re-saves contain: numpy array and dtype reconstruction, and
`_codecs.encode` restricted to latin-1 (how protocol 2 stores `bytes` under Python 3).
Anything else is refused with a DatasetFormatError naming the file and the global.
"""

from __future__ import annotations

import codecs
import os
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np

from kdlab.errors import DatasetFormatError


def _numpy_attr(*candidates: tuple[str, str]) -> Callable | None:
    """Return the first importable numpy attribute (module paths moved in numpy 2)."""
    import importlib

    for module, name in candidates:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    return None


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """`_codecs.encode` as pickle protocol 2 uses it for bytes: latin-1 text only."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(
            f"_codecs.encode only allowed as encode(str, 'latin1'), got {encoding!r}"
        )
    return text.encode("latin1")


_RECONSTRUCT = _numpy_attr(
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct")
)
_FROMBUFFER = _numpy_attr(("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"))

ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,  # protocol 5 arrays
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        obj = ALLOWED_GLOBALS.get((module, name))
        if obj is None:
            raise _RefusedGlobal(f"{module}.{name}")
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise _RefusedGlobal(f"persistent id {pid!r}")


class _RefusedGlobal(pickle.UnpicklingError):
    pass


def load_pickle(path: str | os.PathLike, encoding: str = "latin1") -> Any:
    """Unpickle a dataset file allowing only plain containers and numpy arrays.

    encoding decodes Python 2 `str` objects: 'latin1' (the default, as torchvision reads
    CIFAR) gives `str` keys and keeps numpy's raw buffers intact; 'bytes' gives `bytes`.
    """
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, encoding=encoding).load()
    except _RefusedGlobal as e:
        raise DatasetFormatError(
            f"{path}: refused to unpickle global {e}; a genuine dataset file contains only "
            "dicts, lists, strings and numpy arrays. The file may be tampered with: replace it."
        ) from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        UnicodeDecodeError,
        LookupError,
    ) as e:
        raise DatasetFormatError(f"{path}: not a readable pickle file ({type(e).__name__}: {e})") from None
