"""Trainer hooks: one concern each (timing, LR schedule, checkpoints, evaluation, writers).

A hook sees the trainer (``trainer.iter``, ``trainer.max_iter``, ``trainer.storage``, ...) and
runs at ``before_train``, ``before_step``, ``after_step`` and ``after_train``. Iterations are
0-based; "period P" means after iterations P-1, 2P-1, ... and always after the last one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pcna_seg.engine.trainer import Trainer

from pcna_seg.engine.checkpoint import Checkpointer

logger = logging.getLogger(__name__)


class HookBase:
    trainer: Trainer

    def before_train(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    def _is_period(self, period: int) -> bool:
        nxt = self.trainer.iter + 1
        return nxt == self.trainer.max_iter or (period > 0 and nxt % period == 0)


class IterationTimer(HookBase):
    """Records ``time`` (seconds per iteration, including data loading) in the storage."""

    def __init__(self) -> None:
        self._start = 0.0
        self._train_start = 0.0

    def before_train(self) -> None:
        self._train_start = time.perf_counter()

    def before_step(self) -> None:
        self._start = time.perf_counter()

    def after_step(self) -> None:
        self.trainer.storage.put_scalar("time", time.perf_counter() - self._start)

    def after_train(self) -> None:
        n = self.trainer.iter + 1 - self.trainer.start_iter
        total = time.perf_counter() - self._train_start
        if n > 0:
            logger.info("Trained %d iterations in %.1f s (%.3f s/iter)", n, total, total / n)


class LRScheduler(HookBase):
    """Records the LR used in this iteration, then steps the schedule."""

    def __init__(self, optimizer: Any, scheduler: Any) -> None:
        self.optimizer = optimizer
        self.scheduler = scheduler

    def after_step(self) -> None:
        self.trainer.storage.put_scalar("lr", self.optimizer.param_groups[0]["lr"])
        self.scheduler.step()


class PeriodicCheckpointer(HookBase):
    """``model_{iter:07d}.pth`` every ``period`` iterations and ``model_final.pth`` at the end.

    The trainer runs it after every other hook, so a checkpoint holds the state at the very
    end of its iteration (evaluation scalars and metric windows included).
    """

    def __init__(self, checkpointer: Checkpointer, period: int) -> None:
        self.checkpointer = checkpointer
        self.period = period

    def after_step(self) -> None:
        it = self.trainer.iter
        if it + 1 < self.trainer.max_iter and not (self.period > 0 and (it + 1) % self.period == 0):
            return
        extra = {
            "seed": self.trainer.seed,
            "class_names": getattr(self.trainer, "class_names", []),
            "scale": self.trainer.scale.as_dict() if getattr(self.trainer, "scale", None) else {},
            "storage": self.trainer.storage.state_dict(),
        }
        if it + 1 >= self.trainer.max_iter:
            self.checkpointer.save("model_final", it, **extra)
        else:
            self.checkpointer.save(f"model_{it:07d}", it, **extra)


class EvalHook(HookBase):
    """Runs ``eval_fn() -> {task: {metric: value}}`` every ``period`` iterations and at the end.

    Results go to the storage as ``task/metric`` scalars (e.g. ``segm/AP50``).
    """

    def __init__(self, period: int, eval_fn: Callable[[], dict[str, Any]]) -> None:
        self.period = period
        self.eval_fn = eval_fn
        self.results: dict[str, Any] = {}

    def after_step(self) -> None:
        if not self._is_period(self.period):
            return
        self.results = self.eval_fn() or {}
        flat = flatten_results(self.results)
        if flat:
            self.trainer.storage.put_scalars(**flat)


class PeriodicWriter(HookBase):
    """Calls every writer's ``write(storage)`` every ``period`` iterations, after the first
    iteration of a new run and at the end (a resumed run writes where the uninterrupted one would)."""

    def __init__(self, writers: list[Any], period: int = 20) -> None:
        self.writers = writers
        self.period = period

    def after_step(self) -> None:
        if self._is_period(self.period) or self.trainer.iter == 0:
            for writer in self.writers:
                writer.write(self.trainer.storage)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


def flatten_results(results: dict[str, Any]) -> dict[str, float]:
    """``{"segm": {"AP50": 0.9}}`` → ``{"segm/AP50": 0.9}`` (numbers only, per-dataset nesting kept)."""
    out: dict[str, float] = {}

    def _walk(prefix: str, obj: Any) -> None:
        if isinstance(obj, dict):
            for key, value in obj.items():
                _walk(f"{prefix}/{key}" if prefix else str(key), value)
        elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
            out[prefix] = float(obj)

    _walk("", results)
    return out
