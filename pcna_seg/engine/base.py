"""The training loop both branches share.

- :class:`TrainerBase`: iterations ``start_iter .. max_iter-1`` with hooks
  (``before_train`` / ``before_step`` / ``after_step`` / ``after_train``; ``after_train``
  runs in ``finally``), a metric store, hook states for checkpoints, and one translation of a
  diverged loss or a CUDA out-of-memory error into a one-line PcnaSegError.
- :class:`SimpleTrainer`: one optimisation step per iteration: next batch → ``losses(batch)``
  (a dict of scalar tensors, computed under autocast when AMP is on) → finite check (all
  processes agree) → backward (GradScaler with AMP) → optional gradient clipping → optimizer
  step → scalars (``total_loss``, each loss, ``data_time``) in the store.

The Mask R-CNN trainer (:mod:`pcna_seg.engine.trainer`) and the U-Net trainer
(:mod:`pcna_seg.unet.train`) subclass :class:`SimpleTrainer` and only build their model, data,
optimizer, hooks and ``losses``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from pcna_seg.engine import hooks as H
from pcna_seg.engine.checkpoint import set_rng_state
from pcna_seg.engine.launch import get_world_size
from pcna_seg.engine.writers import EventStorage
from pcna_seg.errors import ConfigError, PcnaSegError

logger = logging.getLogger("pcna_seg.engine")


class TrainerBase:
    """Hooks around ``run_step``; subclasses set ``start_iter``, ``max_iter`` and ``storage``.

    ``diverged_hint`` / ``oom_hint`` finish the error messages for a non-finite loss and for
    CUDA running out of memory (they name the config keys that help).
    """

    diverged_hint = "lower the learning rate"
    oom_hint = "GPU out of memory{where}; use smaller batches"

    def __init__(self) -> None:
        self._hooks: list[H.HookBase] = []
        self.iter = self.start_iter = self.max_iter = 0
        self.storage = EventStorage()
        self.completed = False
        self.resumed_rng: dict[str, Any] = {}

    @property
    def hooks(self) -> list[H.HookBase]:
        return list(self._hooks)

    def register_hooks(self, hooks: list[H.HookBase | None]) -> None:
        """Append hooks (None entries are skipped); each sees this trainer through a weak reference."""
        for h in hooks:
            if h is not None:
                h.trainer = self
                self._hooks.append(h)

    def hook_states(self) -> dict[str, dict[str, Any]]:
        """``{hook class name: state}`` of the hooks that have state (for the checkpoint)."""
        return {type(h).__name__: st for h in self._hooks if (st := h.state_dict())}

    def load_hook_states(self, states: dict[str, dict[str, Any]]) -> None:
        for h in self._hooks:
            if type(h).__name__ in (states or {}):
                h.load_state_dict(states[type(h).__name__])

    def checkpoint_extra(self) -> dict[str, Any]:
        """Entries a checkpoint stores besides model/optimizer/schedule/RNG (subclasses add theirs)."""
        return {"storage": self.storage.state_dict(), "hooks": self.hook_states()}

    def last_good_checkpoint(self) -> str:
        checkpointer = getattr(self, "checkpointer", None)
        last = checkpointer.last_checkpoint() if checkpointer is not None else None
        return f"the last good checkpoint is {last}" if last else "no checkpoint was written"

    def run_step(self) -> None:
        raise NotImplementedError

    def train(self) -> None:
        """Run iterations ``start_iter .. max_iter-1`` (a hook may lower ``max_iter``)."""
        self.completed = False
        try:
            for h in self._hooks:
                h.before_train()
            if self.resumed_rng:  # exactly the state at the end of the checkpoint's iteration
                set_rng_state(self.resumed_rng)
            it = self.start_iter
            while it < self.max_iter:
                self.iter = self.storage.iter = it
                for h in self._hooks:
                    h.before_step()
                self.run_step()
                for h in self._hooks:
                    h.after_step()
                it += 1
            self.completed = True
        except FloatingPointError as exc:
            raise PcnaSegError(
                f"Training diverged at iteration {self.iter}: {exc}; {self.last_good_checkpoint()}. "
                f"{self.diverged_hint}"
            ) from None
        except torch.cuda.OutOfMemoryError:
            raise PcnaSegError(self.oom_hint.format(where=f" at training iteration {self.iter}")) from None
        finally:
            for h in self._hooks:
                h.after_train()


class SimpleTrainer(TrainerBase):
    """One optimisation step per iteration; subclasses implement ``losses(batch)``.

    ``data``: an iterator of batches (its construction decides the order; the Mask R-CNN and
    U-Net loaders make it depend only on (seed, iteration) so resume is exact). ``clip``: the
    ``SOLVER.CLIP_GRADIENTS`` node, or None.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        amp: bool = False,
        clip: Any = None,
    ) -> None:
        super().__init__()
        self.model, self.optimizer, self.device, self.clip = model, optimizer, device, clip
        self.amp = bool(amp) and device.type == "cuda"
        if amp and not self.amp:
            logger.info("Mixed precision (AMP) is off on %s: it needs CUDA", device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp else None
        self._data_iter: Iterator[Any] | None = None

    def losses(self, batch: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def data_iterator(self) -> Iterator[Any]:
        raise NotImplementedError

    def next_batch(self) -> Any:
        if self._data_iter is None:
            self._data_iter = self.data_iterator()
        return next(self._data_iter)

    def train(self) -> None:
        try:
            super().train()
        finally:
            self._data_iter = None

    def run_step(self) -> None:
        t0 = time.perf_counter()
        batch = self.next_batch()
        data_time = time.perf_counter() - t0
        with torch.autocast(device_type=self.device.type, enabled=self.amp):
            loss_dict = self.losses(batch)
        losses = sum(loss_dict.values())
        names = sorted(loss_dict)
        values = torch.stack([loss_dict[n].detach().float() for n in names])
        if get_world_size() > 1:
            torch.distributed.all_reduce(values)
            values /= get_world_size()
        values = values.cpu().tolist()
        total = float(sum(values))
        if not np.isfinite(total):
            shown = ", ".join(f"{n}={v:.4g}" for n, v in zip(names, values))
            raise FloatingPointError(f"loss is not finite ({shown})")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(losses).backward()
            self.scaler.unscale_(self.optimizer)
            self._clip()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            losses.backward()
            self._clip()
            self.optimizer.step()
        self.storage.put_scalars(total_loss=total, data_time=data_time, **dict(zip(names, values)))

    def _clip(self) -> None:
        clip = self.clip
        if clip is None or not clip.ENABLED:
            return
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if clip.CLIP_TYPE == "value":
            nn.utils.clip_grad_value_(params, clip.CLIP_VALUE)
        elif clip.CLIP_TYPE == "norm":
            nn.utils.clip_grad_norm_(params, clip.CLIP_VALUE, clip.NORM_TYPE)
        else:
            raise ConfigError(
                f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE must be 'value' or 'norm', got {clip.CLIP_TYPE!r}"
            )
