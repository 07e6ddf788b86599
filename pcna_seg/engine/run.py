"""What every training entry point does around its trainer, written once for both branches.

- :func:`main_decides`: a decision (e.g. checking OUTPUT_DIR) made on the main process only,
  its result or its error given to every process;
- :func:`training_folder`: the output-folder rule for a training run across processes
  (refuse / resume / ``--overwrite`` into a staging folder swapped in at the end), as a context
  manager yielding the folder every process writes into;
- :func:`log_to_folder`: ``folder/log.txt`` for the run's duration (main process), removed
  afterwards so a later run in the same process (a campaign stage) never logs into it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pcna_seg.engine.launch import broadcast_object, get_world_size, is_main_process, synchronize
from pcna_seg.errors import PcnaSegError
from pcna_seg.utils_io import STAGING, check_output_folder, output_folder

logger = logging.getLogger("pcna_seg.engine")


def main_decides(decide: Callable[[], Any]) -> Any:
    """Run ``decide`` on the main process only and give every process its result (or its error)."""
    result, error = None, None
    if is_main_process():
        try:
            result = decide()
        except PcnaSegError as exc:
            error = exc
    result, error = broadcast_object((result, error))
    if error is not None:
        raise error
    return result


@contextlib.contextmanager
def training_folder(
    out: str | Path, resume: bool, overwrite: bool, keep_partial: Callable[[Path], bool]
) -> Iterator[tuple[Path, str]]:
    """Apply the output-folder rule to a training run's ``out``; yields ``(folder, mode)``.

    ``mode`` is what :func:`pcna_seg.utils_io.check_output_folder` decided ("new", "resume",
    "replace"); ``folder`` is ``out`` or, for "replace", the hidden staging folder that is
    swapped in when the block ends without error. ``keep_partial(folder)`` says whether a
    failed run's folder is kept (it holds a checkpoint to resume from). Only the main process
    touches the folder; the others wait until it is ready.
    """
    out = Path(out)
    mode = main_decides(lambda: check_output_folder(out, overwrite=overwrite, resume=resume, can_resume=True))
    staging = out.parent / STAGING.format(name=out.name)
    place = (
        output_folder(out, overwrite=overwrite, resume=resume, can_resume=True, keep_partial=keep_partial)
        if is_main_process()
        else contextlib.nullcontext(staging if mode == "replace" else out)
    )
    with place as folder:
        synchronize()  # the folder is ready before any process reads or writes in it
        if mode == "replace":
            logger.info("--overwrite: building the new run in %s; it replaces %s when it ends", folder, out)
        yield Path(folder), mode


@contextlib.contextmanager
def log_to_folder(folder: str | Path, final: str | Path | None = None) -> Iterator[None]:
    """Log the ``pcna_seg`` loggers to ``folder/log.txt`` while the block runs (main process;
    other processes log warnings only). ``final``: the folder named in the first line."""
    if not is_main_process():
        logging.getLogger("pcna_seg").setLevel(logging.WARNING)
        yield
        return
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger("pcna_seg")
    log_file = str((out / "log.txt").resolve())
    if any(getattr(h, "baseFilename", None) == log_file for h in root.handlers):
        yield
        return
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logger.info("Output folder %s; world size %d", final or folder, get_world_size())
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
