"""Load, merge, validate and freeze configs, with errors a user can act on."""

from __future__ import annotations

import ast
import os
from collections.abc import Iterable
from typing import Any

import yaml
from yacs.config import CfgNode as CN

from kdlab.config import hooks
from kdlab.config.defaults import get_cfg
from kdlab.errors import ConfigError
from kdlab.registry import closest_names


def _type_name(value: Any) -> str:
    return type(value).__name__


# Keys that take True, False or "auto" (resolved for the machine at start-up: kdlab/engine/precision.py).
AUTO_BOOL_KEYS = ("SOLVER.AMP", "SOLVER.CHANNELS_LAST")


def _coerce_auto_bool(key: str, value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "auto"):
        return "auto" if value.lower() == "auto" else value.lower() == "true"
    raise ConfigError(f"{key}: expected True, False or auto, got {_type_name(value)} {value!r}")


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Return value converted to the default's type, or raise ConfigError naming the key."""
    if key in AUTO_BOOL_KEYS:
        return _coerce_auto_bool(key, value)
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif isinstance(default, int) and not isinstance(value, bool):
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
        if value is None:
            return ""
    elif isinstance(default, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return type(default)(value)
    elif default is None:
        return value
    raise ConfigError(
        f"{key}: expected {_type_name(default)} like {default!r}, got {_type_name(value)} {value!r}"
    )


def _parse_cli_value(text: str) -> Any:
    """Parse a command-line override the way yacs does (Python literal, else string)."""
    if not isinstance(text, str):
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        return text


def _unknown_key(full_key: str, node: CN) -> ConfigError:
    parent, _, leaf = full_key.rpartition(".")
    near = closest_names(leaf, list(node.keys()))
    near = [f"{parent + '.' if parent else ''}{n}" for n in near]
    hint = f"; did you mean {', '.join(near)}?" if near else ""
    return ConfigError(f"unknown config key {full_key}{hint}")


def merge_dict(cfg: CN, data: dict, prefix: str = "") -> None:
    """Merge a nested dict into cfg, checking every key exists and every type fits."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {_type_name(data)}")
    for raw_key, value in data.items():
        key = str(raw_key)
        full_key = f"{prefix}{key}"
        if key not in cfg:
            if cfg.is_new_allowed():
                cfg[key] = CN(value) if isinstance(value, dict) else value
                continue
            raise _unknown_key(full_key, cfg)
        default = cfg[key]
        if isinstance(default, CN):
            if value is None:
                continue
            merge_dict(default, value, full_key + ".")
        else:
            cfg[key] = _coerce(full_key, value, default)


def merge_opts(cfg: CN, opts: Iterable[str]) -> None:
    """Merge `KEY VALUE` pairs (command line) into cfg."""
    opts = list(opts)
    if len(opts) % 2:
        raise ConfigError(
            f"overrides must be KEY VALUE pairs; {opts[-1]!r} has no value "
            "(example: SOLVER.LR 0.1)"
        )
    for key, text in zip(opts[0::2], opts[1::2]):
        node, parts = cfg, key.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, CN) or part not in node:
                here = node if isinstance(node, CN) else CN()
                if isinstance(node, CN) and node.is_new_allowed() and i == len(parts) - 1:
                    node[part] = _parse_cli_value(text)
                    break
                raise _unknown_key(".".join(parts[: i + 1]), here)
            if i == len(parts) - 1:
                if isinstance(node[part], CN):
                    raise ConfigError(f"{key} is a group; set one of its keys, e.g. {key}.{next(iter(node[part]))}")
                node[part] = _coerce(key, _parse_cli_value(text), node[part])
            else:
                node = node[part]


def read_yaml(path: str, _chain: tuple = ()) -> dict:
    """Read a YAML config file (safe loader) with a clear error when it is missing or broken.

    A `_BASE_: other.yaml` key (a path relative to this file) names a file merged first, whose values
    this file's own values then update (as in detectron2); bases may have bases. A missing base or a
    cycle of bases is a one-line ConfigError naming the files.
    """
    if not os.path.isfile(path):
        where = f" (the _BASE_ of {_chain[-1]})" if _chain else ""
        raise ConfigError(f"config file not found: {path}{where}")
    chain = _chain + (path,)
    real = [os.path.realpath(p) for p in chain]
    if real[-1] in real[:-1]:
        loop = chain[real.index(real[-1]):]
        raise ConfigError(f"_BASE_ cycle: {' -> '.join(loop)}; a config cannot include itself")
    data = _load_mapping(path)
    base = data.pop("_BASE_", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: _BASE_ must be a file name relative to this file, got {base!r}")
    merged = read_yaml(os.path.join(os.path.dirname(path), base), chain)
    _deep_update(merged, data)
    return merged


def _load_mapping(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of config groups")
    return data


def _deep_update(into: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _deep_update(into[k], v)
        elif v is not None or not isinstance(into.get(k), dict):  # an empty group keeps the base's keys
            into[k] = v


def apply_logit_stand(cfg: CN, base_temp: float, kd_weight: float) -> None:
    """Apply --logit-stand exactly as logit-standardization-KD's tools/train.py does.

    What it sets is declared by the method's class (`Distiller.apply_logit_stand`); a method that
    does not declare it refuses the flag.
    """
    method = hooks.method_class(cfg.DISTILLER.TYPE)
    if method is None or not method.supports_logit_stand:
        able = [n for n in hooks.method_names() if hooks.method_class(n).supports_logit_stand]
        raise ConfigError(
            f"--logit-stand is not supported for DISTILLER.TYPE {cfg.DISTILLER.TYPE!r}; "
            f"it applies to {', '.join(able)}"
        )
    cfg.EXPERIMENT.LOGIT_STAND = True
    method.apply_logit_stand(cfg, base_temp, kd_weight)


def load_cfg(
    path: str | None = None,
    opts: Iterable[str] = (),
    logit_stand: bool = False,
    base_temp: float = 2.0,
    kd_weight: float = 9.0,
    validate: bool = True,
) -> CN:
    """Return the defaults merged with the YAML file, the overrides and --logit-stand, frozen."""
    cfg = get_cfg()
    if path:
        merge_dict(cfg, read_yaml(path))
    merge_opts(cfg, opts)
    if logit_stand:
        apply_logit_stand(cfg, base_temp, kd_weight)
    if validate:
        from kdlab.config.validate import validate_cfg

        validate_cfg(cfg)
    cfg.freeze()
    return cfg


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"A": {"B": 1}} (a dict, a CfgNode or YAML read as dicts) -> {"A.B": 1}."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def run_name(cfg: CN) -> str:
    """The run folder name: EXPERIMENT.NAME, else EXPERIMENT.TAG."""
    return cfg.EXPERIMENT.NAME or cfg.EXPERIMENT.TAG


def run_dir(cfg: CN) -> str:
    """LOG.PREFIX/EXPERIMENT.PROJECT/<NAME or TAG>."""
    return os.path.join(cfg.LOG.PREFIX, cfg.EXPERIMENT.PROJECT, run_name(cfg))
