"""Trainer hooks: one concern each (timing, LR schedule, checkpoints, evaluation, writers).

A hook sees the trainer it is registered with (``trainer.iter``, ``trainer.max_iter``,
``trainer.storage``, ...) through a weak reference, and runs at ``before_train``,
``before_step``, ``after_step`` and ``after_train`` (the last one also when training fails:
it is called from ``finally``; ``trainer.completed`` says whether the loop ran to its end).
A hook with state that a resumed run needs returns it from ``state_dict`` (plain values and
tensors); the checkpoint stores it under ``hooks`` and ``load_state_dict`` puts it back.
Iterations are 0-based; "period P" means after iterations P-1, 2P-1, ... and always after
the last one.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pcna_seg.engine.base import TrainerBase

from pcna_seg.engine.checkpoint import Checkpointer

logger = logging.getLogger(__name__)


class HookBase:
    _trainer_ref: weakref.ref | None = None

    @property
    def trainer(self) -> TrainerBase:
        trainer = self._trainer_ref() if self._trainer_ref is not None else None
        if trainer is None:
            raise RuntimeError(f"{type(self).__name__} is not registered with a live trainer")
        return trainer

    @trainer.setter
    def trainer(self, trainer: TrainerBase) -> None:
        self._trainer_ref = weakref.ref(trainer)

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs from this hook (empty: nothing)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

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
    """Records the LR used in this iteration, then steps a per-iteration schedule (``scheduler``
    None: the schedule is stepped elsewhere, e.g. once per epoch, and only the LR is recorded)."""

    def __init__(self, optimizer: Any, scheduler: Any = None) -> None:
        self.optimizer = optimizer
        self.scheduler = scheduler

    def after_step(self) -> None:
        self.trainer.storage.put_scalar("lr", self.optimizer.param_groups[0]["lr"])
        if self.scheduler is not None:
            self.scheduler.step()


class PeriodicCheckpointer(HookBase):
    """``model_{iter:07d}.pth`` every ``period`` iterations and ``model_final.pth`` at the end.

    The trainer runs it after every other hook, so a checkpoint holds the state at the very
    end of its iteration (evaluation scalars, metric windows and hook states included; the
    trainer adds its own entries through ``checkpoint_extra()``). ``max_to_keep`` > 0 deletes
    older periodic checkpoints once a newer one is written, and all of them once
    ``model_final.pth`` is.
    """

    def __init__(self, checkpointer: Checkpointer, period: int, max_to_keep: int = 0) -> None:
        self.checkpointer = checkpointer
        self.period = period
        self.max_to_keep = max_to_keep

    def after_step(self) -> None:
        it = self.trainer.iter
        if it + 1 < self.trainer.max_iter and not (self.period > 0 and (it + 1) % self.period == 0):
            return
        extra = self.trainer.checkpoint_extra()
        final = it + 1 >= self.trainer.max_iter
        self.checkpointer.save("model_final" if final else f"model_{it:07d}", it, **extra)
        if self.max_to_keep > 0:  # model_final.pth holds everything the periodic ones did
            self.checkpointer.prune(0 if final else self.max_to_keep)


class EvalHook(HookBase):
    """Runs ``eval_fn() -> {dataset: {task: {metric: value}}}`` every ``period`` iterations and
    at the end.

    Results go to the storage as ``task/metric`` scalars (e.g. ``segm/AP50``) for one dataset,
    ``dataset/task/metric`` for several.
    """

    def __init__(self, period: int, eval_fn: Callable[[], dict[str, Any]]) -> None:
        self.period = period
        self.eval_fn = eval_fn
        self.results: dict[str, Any] = {}

    def after_step(self) -> None:
        if not self._is_period(self.period):
            return
        self.results = self.eval_fn() or {}
        shown = next(iter(self.results.values())) if len(self.results) == 1 else self.results
        flat = flatten_results(shown)
        if flat:
            self.trainer.storage.put_scalars(**flat)


class PeriodicWriter(HookBase):
    """Calls every writer's ``write(storage)`` every ``period`` iterations, at the end and (with
    ``first``) after the first iteration of a new run, so a resumed run writes where the
    uninterrupted one would. The writers are closed after training, also when it failed."""

    def __init__(self, writers: list[Any], period: int = 20, first: bool = True) -> None:
        self.writers = writers
        self.period = period
        self.first = first

    def after_step(self) -> None:
        if self._is_period(self.period) or (self.first and self.trainer.iter == 0):
            for writer in self.writers:
                writer.write(self.trainer.storage)

    def after_train(self) -> None:
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


class TrainingCurves(HookBase):
    """After a completed run: loss, LR and evaluation metrics over iterations as ``curves.png``
    next to ``metrics.json`` (main process)."""

    def __init__(self, metrics_json: str | Path) -> None:
        self.metrics_json = Path(metrics_json)

    def after_train(self) -> None:
        if not self.trainer.completed or not self.metrics_json.is_file():
            return
        from pcna_seg.evaluation.report import plot_training_curves

        png = plot_training_curves(self.metrics_json, self.metrics_json.parent / "curves.png")
        logger.info("Training curves: %s", png)
