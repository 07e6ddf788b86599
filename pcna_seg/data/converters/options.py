"""``--option KEY=VALUE`` for the data tools: names and values checked against the function.

A converter's (or synthetic writer's) keyword-only parameters are its options. Each value is
converted to the type the parameter's annotation names (else the type of its default):
``int``, ``float``, ``bool`` (True/False, yes/no, 1/0), ``str`` or ``list`` (a Python list or
comma-separated names). A wrong name lists the valid ones; a wrong value says what was
expected (``--option workers expects an integer, got 'two'``). Both are :class:`ConfigError`.
"""

from __future__ import annotations

import ast
import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any

from pcna_seg.errors import ConfigError

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_EXPECTS = {
    "int": "an integer",
    "float": "a number",
    "bool": "True or False",
    "str": "a string",
    "list": "a list",
}


def split_option(item: str) -> tuple[str, str]:
    """``"KEY=VALUE"`` → (key, raw value); ConfigError when there is no ``=``."""
    if "=" not in item:
        raise ConfigError(f"--option expects KEY=VALUE, got {item!r}")
    key, value = item.split("=", 1)
    return key.strip(), value


def _literal(raw: str) -> Any:
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return raw


def _kind_of_annotation(annotation: Any) -> tuple[str | None, bool]:
    """(kind, None allowed) from an annotation (a string under ``from __future__ import annotations``)."""
    if annotation is inspect.Parameter.empty:
        return None, True
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    parts = [p.strip() for p in text.split("|")]
    allow_none = _allows_none(annotation)
    for kind, names in (
        ("bool", ("bool",)),
        ("int", ("int",)),
        ("float", ("float",)),
        ("list", ("list", "tuple", "Iterable", "Sequence")),
        ("str", ("str", "os.PathLike", "PathLike", "Path")),
    ):
        if any(p == n or p.startswith(n + "[") for p in parts for n in names):
            return kind, allow_none
    return None, True


def _allows_none(annotation: Any) -> bool:
    text = annotation if isinstance(annotation, str) else str(annotation)
    return "None" in [p.strip() for p in text.split("|")] or text.startswith("Optional")


def option_kind(param: inspect.Parameter) -> tuple[str | None, bool]:
    """(kind of value the parameter takes, whether None is allowed); kind None = not checked.

    The annotation decides when it names a plain type (``int | None``, ``Iterable[str]``);
    otherwise the type of the default (a tuple default with an alias annotation such as
    ``SizeSpec`` is left unchecked: it may take a number too).
    """
    kind, allow_none = _kind_of_annotation(param.annotation)
    default = param.default
    if kind is not None or default is None or default is inspect.Parameter.empty:
        return kind, allow_none or default is None
    for types, dkind in ((bool, "bool"), (int, "int"), (float, "float"), (str, "str"), (os.PathLike, "str")):
        if isinstance(default, types):
            return dkind, allow_none
    return None, True


def coerce_option(key: str, raw: str, kind: str | None, allow_none: bool = False) -> Any:
    """The value of ``--option key=raw`` as ``kind``; ConfigError saying what was expected."""
    value = _literal(raw)
    if allow_none and value is None:
        return None
    bad = ConfigError(f"--option {key} expects {_EXPECTS.get(kind or '', kind)}, got {raw!r}")
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = raw.strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise bad
    if kind == "str":
        return value if isinstance(value, str) else raw
    if kind == "list":
        if isinstance(value, (list, tuple)):
            return value
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        raise bad
    return value


def parse_options(
    items: list[str],
    func: Callable[..., Any],
    what: str,
    reserved: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """``--option KEY=VALUE`` strings → keyword arguments for ``func``, names and values checked.

    ``what`` names the format in messages. ``reserved`` maps parameters the tool sets itself
    to the flag that sets them (``{"seed": "--seed"}``): giving them as an option is an error.
    A function taking ``**kwargs`` accepts any name (values of unknown names are Python
    literals when they parse as one, else strings).
    """
    params = inspect.signature(func).parameters
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    reserved = dict(reserved or {})
    valid = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY and n not in reserved]
    out: dict[str, Any] = {}
    for item in items:
        key, raw = split_option(item)
        if key in reserved:
            raise ConfigError(f"--option {key} is set by {reserved[key]}, not by --option")
        if key not in params or params[key].kind is not inspect.Parameter.KEYWORD_ONLY:
            if not open_ended:
                raise ConfigError(f"Unknown --option {key!r} for {what}; valid options: {', '.join(valid)}")
            out[key] = _literal(raw)
            continue
        kind, allow_none = option_kind(params[key])
        out[key] = coerce_option(key, raw, kind, allow_none)
    return out
