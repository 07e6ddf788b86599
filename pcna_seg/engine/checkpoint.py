"""Atomic training checkpoints and exact resume.

Files in ``OUTPUT_DIR``:

- ``model_{iter:07d}.pth`` / ``model_final.pth``: a dict with ``model`` (state dict),
  ``optimizer``, ``scheduler``, ``scaler`` (AMP), ``iteration`` (0-based, the last finished
  iteration), ``seed``, ``class_names`` (the training dataset's thing_classes), ``rng``
  (rank 0's python, numpy, torch, cuda states), ``rng_per_rank`` (one such state per process),
  ``storage`` (the metric windows, see ``EventStorage.state_dict``) and ``config`` (the merged
  config as YAML text, ``cfg.dump()``). Only tensors and plain values:
  ``torch.load(weights_only=True)`` reads it;
- ``last_checkpoint``: text file naming the newest checkpoint, written after it is complete;
- ``config.yaml``: the merged config.

Both branches (Mask R-CNN and U-Net) use this one layout; the U-Net adds ``epoch`` and keeps
``model_best.pth`` (same content, not named by ``last_checkpoint``). Hook states (e.g. the
U-Net's per-epoch history and best value) travel under ``hooks``.

Every file is written to a temporary name and renamed, so a crash never leaves a half file.
Resuming uses the file ``last_checkpoint`` names; when that one is missing or unreadable the
newest readable ``model_*.pth`` is used instead (logged), and when checkpoints exist but none
can be read the run stops with an error naming them, so ``--resume`` never silently starts over.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from yacs.config import CfgNode

from pcna_seg.engine.launch import all_gather, get_rank, get_world_size, is_main_process
from pcna_seg.errors import WeightsError
from pcna_seg.utils_io import atomic_path, write_text_atomic

logger = logging.getLogger(__name__)
LAST_CHECKPOINT = "last_checkpoint"
CHECKPOINT_RE = re.compile(r"^model_(\d+|final)\.pth$")


def checkpoint_files(folder: str | os.PathLike) -> list[Path]:
    """``model_final.pth`` and ``model_{iter}.pth`` in ``folder``, newest first (by the name)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(m.group(1), p) for p in folder.iterdir() if (m := CHECKPOINT_RE.match(p.name)) and p.is_file()]
    return [
        p
        for key, p in sorted(
            found, key=lambda kp: float("inf") if kp[0] == "final" else int(kp[0]), reverse=True
        )
    ]


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DistributedDataParallel / DataParallel wrappers."""
    return (
        model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model
    )


def get_rng_state() -> dict[str, Any]:
    """python/numpy/torch(/cuda) RNG states as tensors and plain values (loadable with weights_only)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` captured (CUDA only when the device count matches)."""
    if not state:
        return
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_checkpoint(path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, Any]:
    """Load a checkpoint / state-dict file on CPU: the one reader of weights files.

    A project checkpoint or torch state dict is read with ``weights_only`` (unless
    ``allow_pickle``: trusted files holding other Python objects); a detectron2 model-zoo
    ``.pkl`` becomes ``{"model": state}`` (numpy arrays only, no code is run). WeightsError
    names the file when it is missing, corrupt, or holds no dict.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"Weights file not found: {path}")
    if path.suffix.lower() == ".pkl":
        from pcna_seg.modeling.d2_weights import read_d2_pickle

        return {"model": read_d2_pickle(path)}
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc).lower() or "unsupported global" in str(exc).lower():
            raise WeightsError(
                f"Weights file {path} holds Python objects besides tensors and was not unpickled for "
                "safety; re-save it as a plain state dict (or load it with allow_pickle=True if trusted)"
            ) from None
        raise WeightsError(f"Cannot read weights file {path}: it is corrupt or not a torch file") from None
    except Exception as exc:  # torch raises many types for truncated/corrupt files
        raise WeightsError(f"Cannot read weights file {path}: corrupt or not a torch file ({exc})") from None
    if isinstance(obj, nn.Module):
        obj = {"model": obj.state_dict()}
    if not isinstance(obj, dict):
        raise WeightsError(f"Weights file {path} does not hold a state dict (got {type(obj).__name__})")
    return obj


def read_training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """:func:`read_checkpoint` that also requires the ``model`` and ``iteration`` entries."""
    data = read_checkpoint(path)
    if "model" not in data or "iteration" not in data:
        raise WeightsError(f"{path} is not a training checkpoint (no 'model'/'iteration' entries)")
    return data


def load_model_weights(model: nn.Module, path: str | os.PathLike, strict: bool = False) -> Any:
    """Initialise ``model`` (DDP-unwrapped) from ``path``: a project checkpoint or a state dict.

    Delegates to :func:`pcna_seg.modeling.weights.load_weights`. For fine-tuning
    (``strict=False``) class-specific heads are re-initialised when the class count differs;
    ``strict=True`` (evaluation) makes every such parameter a WeightsError.
    """
    from pcna_seg.modeling.weights import load_weights

    return load_weights(unwrap(model), str(path), strict=strict)


def _load_state_strict(model: nn.Module, state: dict[str, Any], where: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = "; ".join(lines[1:3]) or lines[0]
        raise WeightsError(
            f"Model weights in {where} do not fit the model this config builds: {detail}; resume with the "
            "config that made it, or start again with --overwrite"
        ) from None


class Checkpointer:
    """Save/load the full training state in ``output_dir`` (files only from the main process)."""

    def __init__(
        self,
        model: nn.Module,
        output_dir: str | os.PathLike,
        cfg: CfgNode | None = None,
        model_loader: Callable[[nn.Module, dict[str, Any], str], Any] | None = None,
        **checkpointables: Any,
    ) -> None:
        """``model_loader(model, state, where)`` puts a checkpoint's model state into the model on
        resume (default: strict ``load_state_dict``, a mismatch is a WeightsError naming the file);
        ``checkpointables``: optimizer, scheduler, scaler, ... (``state_dict``/``load_state_dict``)."""
        self.model = model
        self.model_loader = model_loader or _load_state_strict
        self.output_dir = Path(output_dir)
        self.cfg = cfg
        self.checkpointables = {k: v for k, v in checkpointables.items() if v is not None}
        self.save_to_disk = is_main_process()
        self.resumed: dict[str, Any] = {}
        self.resumed_rng: dict[str, Any] = {}

    def save(self, name: str, iteration: int, mark_last: bool = True, **extra: Any) -> Path | None:
        """Write ``output_dir/name.pth`` atomically, then (``mark_last``) point ``last_checkpoint`` at it.

        Every process must call it: the RNG states of all processes are gathered into the file.
        """
        rng = all_gather(get_rng_state())
        if not self.save_to_disk:
            return None
        data: dict[str, Any] = {"model": unwrap(self.model).state_dict(), "iteration": int(iteration)}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data["rng"] = rng[0]
        data["rng_per_rank"] = rng
        if self.cfg is not None:
            data["config"] = self.cfg.dump()
        data.update(extra)
        path = self.output_dir / f"{name}.pth"
        with atomic_path(path) as tmp:
            torch.save(data, tmp)
        if mark_last:
            write_text_atomic(self.output_dir / LAST_CHECKPOINT, path.name)
        logger.info("Saved checkpoint %s (iteration %d)", path, iteration)
        return path

    def prune(self, keep: int) -> list[Path]:
        """Delete all but the ``keep`` newest ``model_{iter}.pth`` (never ``model_final.pth`` nor
        the file ``last_checkpoint`` names); main process only. Returns the deleted paths."""
        if not self.save_to_disk or keep < 0:
            return []
        named = self.last_checkpoint()
        periodic = [p for p in checkpoint_files(self.output_dir) if p.name != "model_final.pth"]
        gone = [p for p in periodic[keep:] if p != named]
        for p in gone:
            p.unlink(missing_ok=True)
        return gone

    def last_checkpoint(self) -> Path | None:
        """The checkpoint ``last_checkpoint`` names, or None when there is none."""
        marker = self.output_dir / LAST_CHECKPOINT
        if not marker.is_file():
            return None
        path = self.output_dir / marker.read_text(encoding="utf-8").strip()
        return path if path.is_file() else None

    def find_resumable(self) -> tuple[Path, dict[str, Any]] | None:
        """The checkpoint to resume from and its content, or None when the folder has none.

        ``last_checkpoint``'s file when it is readable; otherwise the newest readable
        ``model_*.pth`` (logged with the reason). WeightsError, naming the files, when
        checkpoints exist but none of them can be read.
        """
        marker = self.output_dir / LAST_CHECKPOINT
        named: Path | None = None
        reason = f"{marker} is missing"
        bad: list[str] = []
        if marker.is_file():
            named = self.output_dir / marker.read_text(encoding="utf-8").strip()
            if named.is_file():
                try:
                    return named, read_training_checkpoint(named)
                except WeightsError as exc:
                    reason = f"{named} named by {LAST_CHECKPOINT} cannot be read ({exc})"
                    bad.append(named.name)
            else:
                reason = f"{named} named by {LAST_CHECKPOINT} is missing"
        for path in checkpoint_files(self.output_dir):
            if named is not None and path == named:
                continue
            try:
                data = read_training_checkpoint(path)
            except WeightsError as exc:
                logger.warning("Skipping unreadable checkpoint %s: %s", path, exc)
                bad.append(path.name)
                continue
            logger.warning(
                "Resuming from %s (iteration %d), the newest readable checkpoint, because %s",
                path,
                data["iteration"],
                reason,
            )
            return path, data
        if bad:
            raise WeightsError(
                f"Cannot resume in {self.output_dir}: no checkpoint there can be read ({', '.join(bad)}); "
                "remove the damaged files to resume from an older one, or start again with --overwrite"
            )
        return None

    def resume(self, path: str | os.PathLike, data: dict[str, Any] | None = None) -> dict[str, Any]:
        """Restore model, optimizer, scheduler, scaler and this process's RNG from a checkpoint.

        Returns the remaining entries (``iteration``, ``seed``, ``storage``, ...); this process's
        RNG state is also kept as ``self.resumed_rng`` so the trainer can re-apply it right
        before the first resumed iteration.
        """
        data = dict(read_training_checkpoint(path) if data is None else data)
        self.model_loader(unwrap(self.model), data.pop("model"), f"{path} (--resume)")
        for key, obj in self.checkpointables.items():
            if key not in data:
                logger.warning("Checkpoint %s has no %r state; starting it fresh", path, key)
                continue
            try:
                obj.load_state_dict(data.pop(key))
            except (KeyError, RuntimeError, ValueError, TypeError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise WeightsError(
                    f"Checkpoint {path}: its {key} state does not match this config ({first}); resume with "
                    "the config that made it, or start again with --overwrite"
                ) from None
        per_rank, single = data.pop("rng_per_rank", None), data.pop("rng", {})
        world, rank = get_world_size(), get_rank()
        if per_rank and len(per_rank) == world:
            self.resumed_rng = per_rank[rank]
        else:
            written = len(per_rank) if per_rank else 1
            if written != world:
                logger.warning(
                    "Checkpoint %s was written by %d process(es), this run has %d: random states are not "
                    "restored per process, so the resumed run is not bit-identical to an uninterrupted one",
                    path,
                    written,
                    world,
                )
            self.resumed_rng = single if rank == 0 else {}
        set_rng_state(self.resumed_rng)
        logger.info("Resumed from %s (iteration %d)", path, data["iteration"])
        return data

    def resume_or_load(
        self, weights: str, resume: bool, load: Callable[[nn.Module, str], Any] | None = None
    ) -> int:
        """Resume from the newest readable checkpoint when ``resume``, else load ``weights``
        (with ``load(model, path)``, default :func:`load_model_weights`).

        Returns the iteration to start at (0 for a fresh run).
        """
        self.resumed_rng = {}
        if resume:
            found = self.find_resumable()
            if found is not None:
                self.resumed = self.resume(*found)
                return int(self.resumed["iteration"]) + 1
            logger.info("No checkpoint in %s to resume from; starting a new run", self.output_dir)
        self.resumed = {}
        if weights:
            (load or load_model_weights)(self.model, weights)
        return 0
