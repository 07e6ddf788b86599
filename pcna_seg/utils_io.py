"""Safe outputs: atomic files, the output-folder rule, leftovers of killed runs, fingerprints.

The rules every tool follows (one implementation, here):

- **Files** are written to a hidden temporary name beside the target and renamed when complete
  (:func:`atomic_path`), so a crash never leaves a half file under the final name.
- **Folders** (:func:`output_folder`): a missing or empty output folder is used as is; a
  non-empty one is refused unless the tool resumes it (``--resume``) or replaces it
  (``--overwrite``). Replacing builds the new content in a hidden staging folder beside the old
  one and swaps it in only when the job finished, so a failed job leaves the old result intact
  and the two are never mixed.
- **Leftovers** of killed runs (hidden ``.*.tmp*`` files, staging folders) are removed by the
  next run in that place, with a log line (:func:`remove_leftovers`).
- **Fingerprints** (:func:`fingerprint`, :func:`file_stats`, :func:`file_digest`) say what made
  a reusable artefact; a mismatch means the artefact is stale.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from pcna_seg.errors import ConfigError, OutputExistsError

logger = logging.getLogger(__name__)

_UMASK = os.umask(0)
os.umask(_UMASK)

TMP_RE = re.compile(r"^\..+\.tmp(\.[A-Za-z0-9]+)?$")  # what atomic_path names its temporary files
STAGING = ".{name}.staging"  # a folder being built by --overwrite
REPLACED = ".{name}.replaced"  # the old folder during the swap
LOCK = ".{name}.lock"  # held while a run writes the folder


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    A crash or exception inside the block removes the temporary file, so no half-written
    file ever carries the final name. ``suffix`` defaults to the target's own suffix so that
    libraries that look at the extension (tifffile, cv2) still work. A kill -9 can leave the
    hidden ``.<stem>.<random>.tmp<suffix>`` file; :func:`remove_leftovers` removes it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sfx = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{sfx}", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs get the usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_json_atomic(
    path: str | os.PathLike, obj: Any, indent: int | None = None, default: Any = None
) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically and return the path (``default`` as in json.dump)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=indent, default=default)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return Path(path)


# ------------------------------------------------------------------------------------------------
# leftovers of killed runs
def is_leftover(path: Path) -> bool:
    """True for a temporary file of :func:`atomic_path` or a staging folder of :func:`output_folder`."""
    name = path.name
    return bool(TMP_RE.match(name)) or (name.startswith(".") and name.endswith(".staging"))


def remove_leftovers(folder: str | os.PathLike) -> list[Path]:
    """Remove what killed runs left in ``folder`` (not recursive); logs and returns each path."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in sorted(folder.iterdir()):
        if not is_leftover(p):
            continue
        size = p.stat().st_size if p.is_file() else 0
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
        logger.warning("Removed %s left by an interrupted run (%.1f MB)", p, size / 1e6)
        removed.append(p)
    return removed


def _visible_entries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not is_leftover(p))


def _recover_swap(path: Path) -> None:
    """Finish or undo a folder swap that a kill interrupted (see :func:`output_folder`)."""
    old = path.parent / REPLACED.format(name=path.name)
    if not old.exists():
        return
    if path.exists():  # the new folder was swapped in; only the old one's removal was missed
        shutil.rmtree(old)
        logger.warning("Removed %s, the output replaced by an earlier --overwrite run", old)
    else:  # killed between the two renames: the old result is still complete, put it back
        os.rename(old, path)
        logger.warning("Restored %s, which an interrupted --overwrite run had moved aside", path)


def check_not_input(path: str | os.PathLike, inputs: Iterable[str | os.PathLike | None]) -> None:
    """OutputExistsError when output ``path`` is one of ``inputs`` or holds one of them.

    Replacing such a folder (``--overwrite``) would delete the input; writing into it would mix
    results with the data they come from.
    """
    out = Path(path).resolve()
    for inp in inputs:
        if inp is None or str(inp) == "" or not Path(inp).exists():
            continue
        src = Path(inp).resolve()
        if src == out or out in src.parents:
            raise OutputExistsError(
                f"Output {path} is or holds the input {inp}; choose an output folder outside the inputs"
            )


def check_output_folder(
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    resume: bool = False,
    can_resume: bool = False,
    inputs: Iterable[str | os.PathLike | None] = (),
) -> str:
    """Decide what a tool may do with output folder ``path`` without touching it.

    Returns ``"new"`` (missing or empty), ``"resume"`` or ``"replace"``. Raises
    :class:`OutputExistsError` for a non-empty folder without ``resume``/``overwrite`` (naming
    the folder and the ways out), for an output that is or holds one of ``inputs``, and
    :class:`ConfigError` when both flags are given. Tools call it before any costly validation
    so that a refusal comes first.
    """
    path = Path(path)
    if overwrite and resume:
        raise ConfigError("--resume and --overwrite exclude each other: continue the run or replace it")
    check_not_input(path, inputs)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"Output {path} exists and is not a folder; choose another output path")
    _recover_swap(path)
    entries = _visible_entries(path) if path.is_dir() else []
    if not entries:
        return "new"
    if resume:
        return "resume"
    if overwrite:
        return "replace"
    ways = (
        "pass --resume to continue it or --overwrite to replace it"
        if can_resume
        else ("pass --overwrite to replace it or choose another folder")
    )
    shown = ", ".join(p.name for p in entries[:3]) + (", …" if len(entries) > 3 else "")
    raise OutputExistsError(f"Output folder {path} is not empty ({shown}); {ways}")


@contextlib.contextmanager
def output_folder(
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    resume: bool = False,
    can_resume: bool = False,
    keep_partial: bool | Callable[[Path], bool] = False,
    inputs: Iterable[str | os.PathLike | None] = (),
) -> Iterator[Path]:
    """Apply the output-folder rule to ``path`` and yield the folder to write into.

    - missing or empty, or ``resume``: ``path`` itself (created), leftovers removed. When the
      block fails, what it wrote into a new folder is removed again (nothing half-made is
      left to be mistaken for a result), unless ``keep_partial`` (or ``keep_partial(folder)``
      is true: training keeps a folder once it holds a checkpoint ``--resume`` can continue);
    - non-empty and ``overwrite``: a fresh hidden staging folder ``.<name>.staging`` beside it;
      when the block ends without an exception the old folder is moved aside, the staging
      folder renamed to ``path`` and the old one deleted. On an exception the staging folder
      is deleted and the old output stays as it was;
    - non-empty otherwise: :class:`OutputExistsError` (see :func:`check_output_folder`).
    """
    path = Path(path)
    inputs = list(inputs)
    check_output_folder(path, overwrite=overwrite, resume=resume, can_resume=can_resume, inputs=inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(path):  # a second run into the same output at the same time is refused
        yield from _output_folder(path, overwrite, resume, can_resume, keep_partial, inputs)


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``.<name>.lock`` beside ``path`` (released if the process dies)."""
    import fcntl

    lock = path.parent / LOCK.format(name=path.name)
    with open(lock, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputExistsError(
                f"Another run is writing {path} right now; wait for it to finish or choose another output"
            ) from None
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                lock.unlink()


def _output_folder(
    path: Path,
    overwrite: bool,
    resume: bool,
    can_resume: bool,
    keep_partial: bool | Callable[[Path], bool],
    inputs: list[Any],
) -> Iterator[Path]:
    # checked again under the lock: another run may have written here since the first check
    mode = check_output_folder(path, overwrite=overwrite, resume=resume, can_resume=can_resume, inputs=inputs)
    staging = path.parent / STAGING.format(name=path.name)
    if staging.exists():  # a killed --overwrite run's half-built folder
        shutil.rmtree(staging)
        logger.warning("Removed %s left by an interrupted --overwrite run", staging)
    if mode != "replace":
        existed = path.is_dir()
        path.mkdir(parents=True, exist_ok=True)
        remove_leftovers(path)
        try:
            yield path
        except BaseException:
            keep = keep_partial(path) if callable(keep_partial) else keep_partial
            if mode == "new" and not keep:
                _discard_new(path, keep_folder=existed)
            raise
        return
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_folder(staging, path)


def _discard_new(path: Path, keep_folder: bool) -> None:
    """Remove what a failed job wrote into the new output folder ``path``."""
    with contextlib.suppress(OSError):
        if not keep_folder:
            shutil.rmtree(path)
        else:
            for p in path.iterdir():
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        logger.info("Removed the partial output in %s", path)


def replace_folder(new: Path, path: Path) -> None:
    """Swap the complete folder ``new`` in for ``path`` (two renames; a kill between is recovered)."""
    old = path.parent / REPLACED.format(name=path.name)
    if old.exists():
        shutil.rmtree(old)
    if path.exists():
        os.rename(path, old)
    os.rename(new, path)
    if old.exists():
        shutil.rmtree(old)
    logger.info("Replaced %s with the new output", path)


# ------------------------------------------------------------------------------------------------
# fingerprints of what made an artefact
def fingerprint(obj: Any) -> str:
    """A short stable hash of a JSON-able description (config dump, file stats, digests)."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def file_stats(paths: Iterable[str | os.PathLike]) -> list[list[Any]]:
    """``[path, size, mtime_ns]`` per file: cheap evidence that an input changed."""
    out = []
    for p in paths:
        st = os.stat(p)
        out.append([str(p), int(st.st_size), int(st.st_mtime_ns)])
    return out


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's content (first 16 hex digits): for weights that chain stages."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]
