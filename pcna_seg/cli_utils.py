"""Helpers shared by the thin tools: argument parsing, logging set-up, user errors → exit 1.

Every tool builds its parser as a :class:`ToolParser` (flags may stand before, between or after
the trailing ``KEY VALUE`` overrides; usage errors exit 1) and wraps its
``main`` in :func:`user_errors_exit`, so that any mistake a user can make ends in one
``error:`` line on stderr and exit code 1, never a traceback. ``PCNA_SEG_DEBUG=1`` shows the
traceback of an OS or value error for bug reports.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from pcna_seg.errors import PcnaSegError


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )


class ToolParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one ``error:`` line and exit code 1.

    ``parse_args`` accepts flags anywhere among positional ``KEY VALUE`` overrides
    (``train_net.py --config-file C SOLVER.MAX_ITER 10 --resume``).
    """

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        if self._subparsers is not None:
            return super().parse_args(args, namespace)
        return self.parse_intermixed_args(None if args is None else list(args), namespace)

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(1)


def tool_parser(doc: str | None, overrides: str | None = "config overrides as KEY VALUE pairs") -> ToolParser:
    """A tool's parser; with ``overrides`` it takes ``KEY VALUE`` pairs as ``args.opts``."""
    p = ToolParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if overrides:
        p.add_argument("opts", nargs="*", metavar="KEY VALUE", help=overrides)
    return p


def describe_os_error(exc: OSError) -> str:
    """One sentence for an OS error on a path: what went wrong and which path(s)."""
    what = exc.strerror or type(exc).__name__
    paths = [p for p in (exc.filename, getattr(exc, "filename2", None)) if p is not None]
    if not paths:
        return f"{what} ({exc})" if str(exc) and str(exc) != what else what
    hint = ""
    if isinstance(exc, PermissionError):
        hint = "; choose a folder you can write to"
    elif isinstance(exc, IsADirectoryError):
        hint = "; a file path was expected"
    elif isinstance(exc, NotADirectoryError):
        hint = "; a part of the path is a file, not a folder"
    return f"{what}: {' -> '.join(str(p) for p in paths)}{hint}"


def _fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def user_errors_exit(func: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``func``; a user error prints one ``error:`` line and exits with code 1.

    Caught: :class:`PcnaSegError` (the project's own), ``OSError`` (a path that cannot be read
    or written: the message names it) and ``ValueError`` (a value a library rejected).
    Ctrl-C exits 130 with one line.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = os.environ.get("PCNA_SEG_DEBUG", "") not in ("", "0")
        try:
            return func(*args, **kwargs)
        except PcnaSegError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading: no message
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except OSError as exc:
            if debug:
                raise
            _fail(describe_os_error(exc))
        except ValueError as exc:
            if debug:
                raise
            _fail(f"{exc} (set PCNA_SEG_DEBUG=1 for the traceback)")

    return wrapper


def add_launch_args(p: argparse.ArgumentParser) -> None:
    """The multi-process flags every training tool takes (as in detectron2)."""
    p.add_argument(
        "--num-gpus", type=int, default=1, help="processes per machine (GPUs; CPU processes w/o CUDA)"
    )
    p.add_argument("--num-machines", type=int, default=1)
    p.add_argument("--machine-rank", type=int, default=0, help="rank of this machine (0 .. num-machines-1)")
    p.add_argument("--dist-url", default="auto", help="tcp://HOST:PORT of machine 0; 'auto' on one machine")


def launch_from_args(main_func: Any, args: argparse.Namespace, main_args: tuple) -> Any:
    """``main_func(*main_args)`` in the processes :func:`add_launch_args`'s flags ask for."""
    from pcna_seg.engine.launch import launch

    return launch(
        main_func,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=main_args,
    )
