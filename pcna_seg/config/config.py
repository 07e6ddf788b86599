"""Load, merge, validate and save configs.

A config is a yacs ``CfgNode`` built from :mod:`pcna_seg.config.defaults`, then a YAML file
(with ``_BASE_`` inheritance, paths relative to the file that names them), then ``KEY VALUE``
overrides from the command line. Every key must exist in the defaults and every value must
have the default's type; the error names the key path, the file, and the closest valid key.
"""

from __future__ import annotations

import ast
import difflib
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from yacs.config import CfgNode as CN

from pcna_seg.config.defaults import VALUE_RANGES, get_default_config
from pcna_seg.errors import ConfigError
from pcna_seg.utils_io import write_text_atomic

BASE_KEY = "_BASE_"
_MAX_BASE_DEPTH = 16
_INTERVAL_RE = re.compile(r"^\s*([\[(])\s*([^,]+?)\s*,\s*([^\])]+?)\s*([\])])\s*$")


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice in one mapping (the last would win silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> dict[str, Any]:
    """Read one YAML mapping; malformed YAML raises ConfigError naming file and line."""
    if path.is_dir():
        raise ConfigError(f"Config file {path} is a folder; give the path of a .yaml file")
    if not path.is_file():
        raise ConfigError(f"Config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.load(fh, Loader=_UniqueKeyLoader)  # noqa: S506  (a SafeLoader subclass)
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"Config file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 YAML"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"Malformed YAML in {path}{where}: {problem}") from None
    if data is None:
        raise ConfigError(f"Config file {path} is empty; give at least one key (or _BASE_)")
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of keys, got {type(data).__name__}")
    return data


def _deep_update(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_update(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml_with_bases(path: str | os.PathLike, _depth: int = 0) -> dict[str, Any]:
    """Read a YAML config and recursively merge the files its ``_BASE_`` names under it."""
    path = Path(path)
    if _depth > _MAX_BASE_DEPTH:
        raise ConfigError(f"_BASE_ chain deeper than {_MAX_BASE_DEPTH} at {path} (a cycle?)")
    data = _read_yaml(path)
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    merged: dict[str, Any] = {}
    for base in bases:
        base_path = Path(os.path.expanduser(str(base)))
        if not base_path.is_absolute():
            base_path = path.parent / base_path
        if not base_path.is_file():
            raise ConfigError(f"_BASE_ file {base!r} named in {path} not found (looked at {base_path})")
        merged = _deep_update(merged, load_yaml_with_bases(base_path, _depth + 1))
    return _deep_update(merged, data)


def _decode(value: Any) -> Any:
    """Turn strings such as ``"(1000,)"`` or ``"0.01"`` into Python values; keep others."""
    if isinstance(value, str):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return value


def _coerce(default: Any, value: Any, key: str, source: str) -> Any:
    """Return ``value`` converted to the type of ``default`` or raise ConfigError."""
    if isinstance(default, CN):
        raise ConfigError(f"Config key {key} is a group of keys and cannot be set to a value ({source})")
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        raise ConfigError(f"Config key {key} expects a string, got {value!r} ({source})")
    value = _decode(value)
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return type(default)(_plain(v) for v in value)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            return type(default)([value])  # a scalar where a sequence is expected
    elif default is None:
        return value
    raise ConfigError(
        f"Config key {key} expects {type(default).__name__} like {default!r}, got {value!r} ({source})"
    )


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def _suggest(node: CN, name: str, prefix: str) -> str:
    close = difflib.get_close_matches(name, list(node.keys()), n=1, cutoff=0.5)
    if close:
        return f"; did you mean {prefix}{close[0]}?"
    return f"; valid keys here: {', '.join(sorted(node.keys()))}"


def _merge_dict(cfg: CN, data: dict[str, Any], prefix: str, source: str) -> None:
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in cfg:
            raise ConfigError(f"Unknown config key {key} ({source}){_suggest(cfg, name, prefix)}")
        current = cfg[name]
        if isinstance(current, CN):
            if not isinstance(value, dict):
                raise ConfigError(f"Config key {key} is a group; give it a mapping, not {value!r} ({source})")
            _merge_dict(current, value, f"{key}.", source)
        else:
            cfg[name] = _coerce(current, value, key, source)


def merge_overrides(cfg: CN, opts: Sequence[str]) -> None:
    """Apply command-line ``KEY VALUE`` pairs (``SOLVER.BASE_LR 0.01``) to a mutable config."""
    if len(opts) % 2:
        raise ConfigError(f"Overrides must be KEY VALUE pairs; got an odd number: {list(opts)}")
    for key, raw in zip(opts[0::2], opts[1::2]):
        parts = key.split(".")
        node = cfg
        for i, part in enumerate(parts):
            prefix = ".".join(parts[:i]) + ("." if i else "")
            if not isinstance(node, CN) or part not in node:
                hint = _suggest(node, part, prefix) if isinstance(node, CN) else ""
                bad = prefix + part
                where = f"{bad} (in {key}, command line)" if bad != key else f"{key} (command line)"
                raise ConfigError(f"Unknown config key {where}{hint}")
            if i < len(parts) - 1:
                node = node[part]
        default = node[parts[-1]]
        value = raw if isinstance(default, str) else _decode(raw)
        node[parts[-1]] = _coerce(default, value, key, "command line")


def load_config(
    config_file: str | os.PathLike | None = None,
    opts: Sequence[str] = (),
    freeze: bool = True,
) -> CN:
    """Build a config: defaults ← YAML file (with ``_BASE_``) ← ``KEY VALUE`` overrides.

    Raises ConfigError with the key path for unknown keys, wrong types, missing ``_BASE_``
    files and malformed YAML. The result is frozen unless ``freeze`` is False.
    """
    cfg = get_default_config()
    if config_file:
        data = load_yaml_with_bases(config_file)
        _merge_dict(cfg, data, "", str(config_file))
    merge_overrides(cfg, list(opts))
    validate_config(cfg)
    if freeze:
        cfg.freeze()
    return cfg


def _in_interval(value: float, interval: str) -> bool:
    """True when ``value`` lies in ``interval`` ("[1, inf)", "(0, 1]", ...)."""
    m = _INTERVAL_RE.match(interval)
    if not m:
        raise ValueError(f"bad interval {interval!r} in VALUE_RANGES")
    left, lo, hi, right = m.group(1), float(m.group(2)), float(m.group(3)), m.group(4)
    if math.isnan(value):
        return False
    low_ok = value >= lo if left == "[" else value > lo
    high_ok = value <= hi if right == "]" else value < hi
    return low_ok and high_ok


def _lookup(cfg: CN, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


def check_value_ranges(cfg: CN, ranges: dict[str, str] | None = None) -> None:
    """Refuse values outside :data:`pcna_seg.config.defaults.VALUE_RANGES` (element-wise for sequences).

    ConfigError names the key, the value and the allowed interval.
    """
    for key, interval in (VALUE_RANGES if ranges is None else ranges).items():
        value = _lookup(cfg, key)
        items = list(_flatten(value)) if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                continue
            if not _in_interval(float(item), interval):
                shown = f"{value!r} (element {item!r})" if items != [value] else repr(value)
                raise ConfigError(f"Config key {key} must be in {interval}, got {shown}")


def _flatten(value: Any) -> Any:
    for v in value:
        if isinstance(v, (list, tuple)):
            yield from _flatten(v)
        else:
            yield v


def check_scale_keys(cfg: CN) -> None:
    """INPUT.SCALE.MODE is known, and MIN/MAX_SIZE_* (short_edge keys) are not set in another mode."""
    from pcna_seg.config.defaults import get_default_config
    from pcna_seg.data.scale import MODES, SHORT_EDGE_KEYS

    mode = cfg.INPUT.SCALE.MODE
    if mode not in MODES:
        raise ConfigError(f"INPUT.SCALE.MODE must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "short_edge":
        return
    default = get_default_config().INPUT
    for key in SHORT_EDGE_KEYS:
        value, base = cfg.INPUT[key], default[key]
        if (list(value) if isinstance(value, (list, tuple)) else value) != (
            list(base) if isinstance(base, (list, tuple)) else base
        ):
            raise ConfigError(
                f"INPUT.{key} is set ({cfg.INPUT[key]}) but applies only with INPUT.SCALE.MODE short_edge "
                f"(the mode is {mode}: images are scaled by INPUT.SCALE.FACTOR / DIAMETER); "
                "remove it or set INPUT.SCALE.MODE short_edge"
            )
    if mode == "object_size" and not cfg.INPUT.SCALE.DIAMETER > 0:
        raise ConfigError(
            "INPUT.SCALE.MODE object_size needs INPUT.SCALE.DIAMETER > 0 (nucleus diameter, model px)"
        )
    jitter = list(cfg.INPUT.SCALE.TRAIN_JITTER)
    if len(jitter) != 2 or jitter[0] > jitter[1]:
        raise ConfigError(f"INPUT.SCALE.TRAIN_JITTER must be (lo, hi) with lo <= hi, got {tuple(jitter)}")


def validate_config(cfg: CN) -> None:
    """Value ranges (:func:`check_value_ranges`) and cross-key checks that single keys cannot make."""
    check_value_ranges(cfg)
    if cfg.MODEL.RESNETS.DEPTH not in (18, 34, 50, 101):
        raise ConfigError(f"MODEL.RESNETS.DEPTH must be 18, 34, 50 or 101, got {cfg.MODEL.RESNETS.DEPTH}")
    n_ch = len(cfg.INPUT.CHANNELS)
    for key in ("PIXEL_MEAN", "PIXEL_STD"):
        if len(cfg.MODEL[key]) != n_ch:
            raise ConfigError(
                f"MODEL.{key} has {len(cfg.MODEL[key])} values but INPUT.CHANNELS has {n_ch} channels"
            )
    check_scale_keys(cfg)
    if cfg.INPUT.FORMAT != "CHW":
        raise ConfigError(
            f"INPUT.FORMAT {cfg.INPUT.FORMAT!r} is not supported: inputs are (C, H, W) in the order of "
            "INPUT.CHANNELS (channel roles, not RGB/BGR); set INPUT.FORMAT CHW and order INPUT.CHANNELS, "
            "MODEL.PIXEL_MEAN and MODEL.PIXEL_STD as the weights expect"
        )
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        raise ConfigError(
            f"DATALOADER.SAMPLER_TRAIN {cfg.DATALOADER.SAMPLER_TRAIN!r} is not supported; the training "
            "loader is TrainingSampler (an endless, seeded shuffle of DATASETS.TRAIN)"
        )
    if cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING not in ("choice", "range"):
        raise ConfigError("INPUT.MIN_SIZE_TRAIN_SAMPLING must be 'choice' or 'range'")
    if cfg.INPUT.CROP.TYPE not in ("relative", "relative_range", "absolute"):
        raise ConfigError("INPUT.CROP.TYPE must be 'relative', 'relative_range' or 'absolute'")
    steps = list(cfg.SOLVER.STEPS)
    late = cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupMultiStepLR" and any(
        s >= cfg.SOLVER.MAX_ITER for s in steps
    )
    if any(b <= a for a, b in zip(steps, steps[1:])) or late:
        raise ConfigError(
            f"SOLVER.STEPS must be strictly increasing and each < SOLVER.MAX_ITER ({cfg.SOLVER.MAX_ITER}), "
            f"got {tuple(steps)}; a step at or after the last iteration never lowers the LR "
            "(set SOLVER.STEPS together with SOLVER.MAX_ITER)"
        )


def save_config(cfg: CN, path: str | os.PathLike) -> Path:
    """Write the merged config as YAML (atomically) and return the path."""
    return write_text_atomic(path, cfg.dump())


def config_to_dict(cfg: CN) -> dict[str, Any]:
    """A plain nested dict copy of a config (for JSON, checkpoints)."""
    return yaml.safe_load(cfg.dump())
