"""Training metrics: an in-memory store plus writers (metrics.json, TensorBoard, console).

``metrics.json`` holds one JSON object per line with detectron2-compatible keys:
``iteration``, ``total_loss``, ``loss_*`` (medians over the last ``window`` iterations),
``lr``, ``time``, ``data_time`` (seconds per iteration, medians) and evaluation results such
as ``segm/AP50`` on the lines of the iterations where evaluation ran (fractions in [0, 1]).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pcna_seg.utils_io import write_text_atomic

logger = logging.getLogger("pcna_seg.engine")

_SMOOTHED_PREFIXES = ("loss", "total_loss", "time", "data_time")


class EventStorage:
    """Scalars per iteration. ``put_scalar`` records at the current ``iter``."""

    def __init__(self, start_iter: int = 0, window: int = 20) -> None:
        self.iter = start_iter
        self.window = window
        self._history: dict[str, deque[tuple[int, float]]] = defaultdict(lambda: deque(maxlen=10000))
        self.lr_history: list[tuple[int, float]] = []

    def put_scalar(self, name: str, value: float) -> None:
        self._history[name].append((self.iter, float(value)))
        if name == "lr":
            self.lr_history.append((self.iter, float(value)))

    def put_scalars(self, **kwargs: float) -> None:
        for name, value in kwargs.items():
            self.put_scalar(name, value)

    def state_dict(self) -> dict[str, Any]:
        """The last ``window`` values of every scalar (enough for the medians and latest values
        the writers report), as plain lists, for the checkpoint."""
        return {
            "window": self.window,
            "history": {
                n: [[int(i), float(v)] for i, v in list(h)[-self.window :]] for n, h in self._history.items()
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put back what :meth:`state_dict` saved, so smoothed values after a resume are the
        uninterrupted run's."""
        for name, items in (state or {}).get("history", {}).items():
            self._history[name].extend((int(i), float(v)) for i, v in items)

    def history(self, name: str) -> list[tuple[int, float]]:
        return list(self._history.get(name, ()))

    def names(self) -> list[str]:
        return list(self._history)

    def latest(self, name: str) -> tuple[int, float] | None:
        hist = self._history.get(name)
        return hist[-1] if hist else None

    def median(self, name: str, window: int | None = None) -> float:
        hist = self._history.get(name)
        if not hist:
            return float("nan")
        values = [v for _, v in list(hist)[-(window or self.window) :]]
        return float(np.median(values))

    def smoothed(self, name: str) -> bool:
        return name.startswith(_SMOOTHED_PREFIXES)

    def values_since(self, last_iter: int) -> dict[str, tuple[int, float]]:
        """name → (iteration, value) for names whose newest value is after ``last_iter``.

        Losses and timings are reported as medians over the window, others as their latest value.
        """
        out = {}
        for name, hist in self._history.items():
            if not hist or hist[-1][0] <= last_iter:
                continue
            it, value = hist[-1]
            out[name] = (it, self.median(name) if self.smoothed(name) else value)
        return out


class JSONWriter:
    """Append one line per write to ``metrics.json``.

    On resume at ``start_iter`` the lines of later iterations (written after the checkpoint)
    are dropped first, and writing continues after the last kept line, so together with the
    restored :class:`EventStorage` the file matches an uninterrupted run's line for line.
    """

    def __init__(self, path: str | os.PathLike, start_iter: int = 0) -> None:
        self.path = Path(path)
        self._last = start_iter - 1
        if self.path.is_file():
            kept = []
            last = -1
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    it = json.loads(line).get("iteration", -1)
                except json.JSONDecodeError:
                    continue
                if it < start_iter:
                    kept.append(line)
                    last = max(last, it)
            if kept:
                self._last = last
            write_text_atomic(self.path, "".join(k + "\n" for k in kept))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open for the run)

    def write(self, storage: EventStorage) -> None:
        by_iter: dict[int, dict[str, Any]] = defaultdict(dict)
        for name, (it, value) in storage.values_since(self._last).items():
            by_iter[it][name] = value
        for it in sorted(by_iter):
            line = {"iteration": it, **by_iter[it]}
            self._fh.write(json.dumps(line, allow_nan=True) + "\n")
            self._last = max(self._last, it)
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


class TensorboardWriter:
    """Scalars to TensorBoard event files in ``log_dir`` (only when tensorboard is installed)."""

    def __init__(self, log_dir: str | os.PathLike, start_iter: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(log_dir), purge_step=start_iter or None)
        self._last = start_iter - 1

    @staticmethod
    def available() -> bool:
        try:
            import tensorboard  # noqa: F401
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError:
            return False
        return True

    def write(self, storage: EventStorage) -> None:
        for name, (it, value) in storage.values_since(self._last).items():
            self._writer.add_scalar(name, value, it)
            self._last = max(self._last, it)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class ConsoleWriter:
    """Log a progress line: ETA, iteration, losses, timings, LR and (CUDA) peak memory."""

    def __init__(self, max_iter: int) -> None:
        self.max_iter = max_iter

    def write(self, storage: EventStorage) -> None:
        it = storage.iter
        t = storage.median("time")
        eta = ""
        if np.isfinite(t):
            seconds = int(t * max(self.max_iter - it - 1, 0))
            eta = f"eta: {datetime.timedelta(seconds=seconds)}  "
        losses = "  ".join(
            f"{n}: {storage.median(n):.4g}"
            for n in sorted(storage.names())
            if n.startswith("loss") or n == "total_loss"
        )
        lr = storage.latest("lr")
        mem = ""
        if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
            mem = f"  max_mem: {torch.cuda.max_memory_allocated() / 2**20:.0f}M"
        logger.info(
            "%siter: %d/%d  %s  time: %.4f  data_time: %.4f  lr: %.3g%s",
            eta,
            it + 1,
            self.max_iter,
            losses,
            t,
            storage.median("data_time"),
            lr[1] if lr else float("nan"),
            mem,
        )

    def close(self) -> None:
        pass


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Parse ``metrics.json`` (one JSON object per line); malformed lines are skipped."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
