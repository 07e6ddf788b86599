"""Lazily imported registries: a name → ``"module:function"`` table, resolved on first use.

Converters and synthetic writers are looked up this way so that a missing optional
dependency of one format never breaks the others.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_entry(table: Mapping[str, str], name: str, kind: str) -> Callable[..., Any]:
    """The function ``table[name]`` names (imported now); ValueError listing the known names.

    ``kind`` says what is looked up in the message, e.g. "dataset format".
    """
    if name not in table:
        raise ValueError(f"Unknown {kind} {name!r}; known: {', '.join(sorted(table))}")
    module, func = table[name].split(":")
    return getattr(importlib.import_module(module), func)
