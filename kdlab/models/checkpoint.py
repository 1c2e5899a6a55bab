"""Load model weights safely from mdistiller, torchvision, bare and kdlab checkpoint files.

Every file is read with `torch.load(..., weights_only=True)`: a file that needs arbitrary
unpickling is refused and none of its code runs.
"""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from kdlab.errors import CheckpointError, TeacherCheckpointNotFound

# Keys under which known checkpoint formats keep the weights, in lookup order.
_WEIGHT_KEYS = ("student", "model", "state_dict", "model_state_dict", "net")


def safe_torch_load(path: str, what: str = "checkpoint") -> Any:
    """torch.load with weights_only=True and errors that say what to do."""
    if not os.path.isfile(path):
        raise TeacherCheckpointNotFound(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refusing to load {what} {path}: it holds more than weights and loading it could run code "
            f"({_unpickler_reason(str(exc))}); only load such a file with plain torch.load if you trust it"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"cannot read {what} {path}: the file is corrupt or not a PyTorch checkpoint "
            f"({str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__})"
        ) from None


def _unpickler_reason(message: str) -> str:
    """The informative line of torch's weights_only error (e.g. 'Unsupported global: GLOBAL builtins.open')."""
    for line in message.splitlines():
        if "Unsupported" in line or "WeightsUnpickler error" in line:
            return line.split("error:", 1)[-1].strip()[:160]
    return "weights_only=True rejected it"


def strip_prefix(state: Mapping[str, Any], prefix: str) -> OrderedDict[str, Any]:
    """Drop `prefix` from every key that has it (e.g. DataParallel's 'module.')."""
    return OrderedDict((k[len(prefix):] if k.startswith(prefix) else k, v) for k, v in state.items())


def extract_state_dict(obj: Any, source: str = "checkpoint") -> OrderedDict[str, torch.Tensor]:
    """Find the model state dict inside a loaded checkpoint object of any known layout."""
    state = obj
    if isinstance(obj, Mapping) and not _is_state_dict(obj):
        for key in _WEIGHT_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                state = obj[key]
                break
        else:
            raise CheckpointError(
                f"{source}: no weights found (looked for a state dict or one of the keys "
                f"{', '.join(_WEIGHT_KEYS)}; found keys {', '.join(map(str, list(obj)[:8]))})"
            )
    if not isinstance(state, Mapping) or not _is_state_dict(state):
        raise CheckpointError(f"{source}: does not contain a state dict of tensors")
    state = strip_prefix(state, "module.")
    if any(k.startswith("student.") for k in state):
        # a whole distiller's state (mdistiller's latest/best): keep the student part
        state = OrderedDict((k[len("student."):], v) for k, v in state.items() if k.startswith("student."))
    return OrderedDict(state)


def _is_state_dict(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(k, str) for k in obj) and all(
        isinstance(v, torch.Tensor) for v in obj.values()
    )


def load_state_dict_file(path: str, what: str = "checkpoint") -> OrderedDict[str, torch.Tensor]:
    """Read a weights file and return the model's state dict."""
    return extract_state_dict(safe_torch_load(path, what), f"{what} {path}")


def check_compatible(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise CheckpointError naming the first missing/unexpected key or shape mismatch."""
    own = model.state_dict()
    for key, tensor in own.items():
        if key not in state:
            raise CheckpointError(
                f"{source} does not fit {type(model).__name__}: missing key {key!r} "
                f"(expected shape {tuple(tensor.shape)}); is it a checkpoint of another architecture?"
            )
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{source} does not fit {type(model).__name__}: {key!r} has shape "
                f"{tuple(state[key].shape)} in the file but {tuple(tensor.shape)} in the model "
                "(another architecture or number of classes?)"
            )
    extra = [k for k in state if k not in own]
    if extra:
        raise CheckpointError(
            f"{source} does not fit {type(model).__name__}: unexpected key {extra[0]!r} "
            f"({len(extra)} unexpected in all)"
        )


def load_weights(model: nn.Module, source: str | Mapping[str, torch.Tensor], what: str = "checkpoint") -> nn.Module:
    """Load weights strictly into model from a file path or a state dict; return the model."""
    if isinstance(source, (str, os.PathLike)):
        label = f"{what} {source}"
        state = load_state_dict_file(str(source), what)
    else:
        label = what
        state = extract_state_dict(source, what)
    check_compatible(model, state, label)
    model.load_state_dict(state, strict=True)
    return model
