"""Helpers shared by the thin tools: logging set-up and user errors → exit code 1."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

from pcna_seg.errors import PcnaSegError


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )


def user_errors_exit(func: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``func``; a PcnaSegError (or a bad-argument ValueError) prints one line, exit 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except PcnaSegError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper
