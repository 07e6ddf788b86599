"""Optimisers and per-epoch learning-rate schedulers for the U-Net branch.

``CosineAnnealingWithKicks`` (``UNET.SOLVER.SCHEDULER: cosine_kicks``) combines cosine
annealing with plateau detection. Its state is a *cycle*: start epoch ``s``, start LR ``L``,
minimum ``m`` and length ``T`` (epochs). In epoch ``e`` of a cycle the LR is

    lr(e) = m + (L − m) · (1 + cos(π · min(e − s, T) / T)) / 2

i.e. a cosine from ``L`` down to ``m`` over ``T`` epochs, then flat at ``m``. The first cycle
starts at epoch 0 with ``L = BASE_LR``, ``m = ETA_MIN``, ``T = T_0``. ``step(metric)`` is
called once at the end of every epoch with the monitored validation value; plateau
detection is exactly torch's ``ReduceLROnPlateau`` (mode min/max, relative or absolute
threshold, patience, cooldown). When it fires at the end of epoch ``e`` (more than
``PATIENCE`` bad epochs), the LR is *kicked*: a new cycle starts at epoch ``e + 1`` with

    L' = lr(e) + KICK · L,   m' = FACTOR · m,   T' = T · T_MULT

so the LR jumps up by ``KICK`` × the previous cycle's start LR and decays along a cosine to
a new, lower minimum. Every counter lives in ``state_dict()``, so a resumed run is exact.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler
from yacs.config import CfgNode

from pcna_seg.errors import ConfigError

SCHEDULERS = ("cosine_restarts", "plateau", "cosine_kicks", "none")


class CosineAnnealingWithKicks(LRScheduler):
    """Cosine decay per cycle; a plateau of the monitored metric kicks the LR up (see module doc).

    Call ``step(metric)`` once per epoch after validation (``step()`` without a metric only
    advances the cosine, with no plateau bookkeeping).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        T_0: int = 10,
        eta_min: float = 1e-5,
        kick: float = 0.5,
        factor: float = 0.5,
        patience: int = 5,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        mode: str = "min",
        T_mult: float = 1.0,
        last_epoch: int = -1,
    ) -> None:
        if T_0 < 1:
            raise ConfigError(f"UNET.SOLVER.T_0 must be >= 1 epoch, got {T_0}")
        if not 0.0 < factor <= 1.0:
            raise ConfigError(f"UNET.SOLVER.FACTOR must be in (0, 1], got {factor}")
        if kick < 0:
            raise ConfigError(f"UNET.SOLVER.KICK must be >= 0, got {kick}")
        if mode not in ("min", "max") or threshold_mode not in ("rel", "abs"):
            raise ConfigError(f"kick scheduler mode must be min/max and rel/abs, got {mode}/{threshold_mode}")
        self.mode = mode
        self.threshold = float(threshold)
        self.threshold_mode = threshold_mode
        self.patience = int(patience)
        self.cooldown = int(cooldown)
        self.kick = float(kick)
        self.factor = float(factor)
        self.T_mult = float(T_mult)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.num_kicks = 0
        self.kick_epochs: list[int] = []
        self.cycle_start_epoch = 0
        self.cycle_len = float(T_0)
        self.cycle_start_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.cycle_min_lrs = [float(eta_min)] * len(optimizer.param_groups)
        super().__init__(optimizer, last_epoch)

    def _lr_at(self, epoch: int) -> list[float]:
        t = min(max(epoch - self.cycle_start_epoch, 0), self.cycle_len)
        c = (1 + math.cos(math.pi * t / self.cycle_len)) / 2
        return [m + (s - m) * c for s, m in zip(self.cycle_start_lrs, self.cycle_min_lrs)]

    def get_lr(self) -> list[float]:
        return self._lr_at(self.last_epoch)

    def _is_better(self, a: float, best: float) -> bool:
        if self.mode == "min":
            ref = best * (1 - self.threshold) if self.threshold_mode == "rel" else best - self.threshold
            return a < ref
        ref = best * (1 + self.threshold) if self.threshold_mode == "rel" else best + self.threshold
        return a > ref

    def step(self, metrics: float | None = None) -> None:  # type: ignore[override]
        """End of epoch ``last_epoch``: update the plateau state with ``metrics``, then advance."""
        if metrics is not None:
            current = float(metrics)
            if self._is_better(current, self.best):
                self.best = current
                self.num_bad_epochs = 0
            else:
                self.num_bad_epochs += 1
            if self.cooldown_counter > 0:
                self.cooldown_counter -= 1
                self.num_bad_epochs = 0
            if self.num_bad_epochs > self.patience:
                self._kick()
                self.cooldown_counter = self.cooldown
                self.num_bad_epochs = 0
        super().step()

    def _kick(self) -> None:
        now = self._lr_at(self.last_epoch)
        self.cycle_start_lrs = [lr + self.kick * s for lr, s in zip(now, self.cycle_start_lrs)]
        self.cycle_min_lrs = [self.factor * m for m in self.cycle_min_lrs]
        self.cycle_start_epoch = self.last_epoch + 1
        self.cycle_len = self.cycle_len * self.T_mult
        self.num_kicks += 1
        self.kick_epochs.append(self.last_epoch + 1)


def monitor_mode(monitor: str) -> str:
    """ "min" for a loss-like monitored key (``val_loss``), "max" for scores (PR-AUC, SEG, …)."""
    return "min" if "loss" in monitor or "mae" in monitor else "max"


def build_optimizer(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Adam or SGD (momentum, weight decay) from ``UNET.SOLVER``."""
    s = cfg.UNET.SOLVER
    params = [p for p in model.parameters() if p.requires_grad]
    if s.OPTIMIZER == "sgd":
        return torch.optim.SGD(params, lr=s.BASE_LR, momentum=s.MOMENTUM, weight_decay=s.WEIGHT_DECAY)
    if s.OPTIMIZER == "adam":
        return torch.optim.Adam(params, lr=s.BASE_LR, weight_decay=s.WEIGHT_DECAY)
    raise ConfigError(f"UNET.SOLVER.OPTIMIZER must be 'sgd' or 'adam', got {s.OPTIMIZER!r}")


def build_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer) -> Any:
    """Per-epoch scheduler from ``UNET.SOLVER.SCHEDULER`` (None for "none").

    Use :func:`scheduler_step` to advance it: the plateau and kicks schedulers take the
    monitored value (``UNET.SOLVER.MONITOR``), cosine restarts does not.
    """
    s = cfg.UNET.SOLVER
    mode = monitor_mode(s.MONITOR)
    if s.SCHEDULER == "none":
        return None
    if s.SCHEDULER == "cosine_restarts":
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=s.T_0, T_mult=s.T_MULT, eta_min=s.ETA_MIN
        )
    if s.SCHEDULER == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=mode, factor=s.FACTOR, patience=s.PATIENCE, threshold=s.THRESHOLD,
            threshold_mode="rel", cooldown=s.COOLDOWN, min_lr=s.ETA_MIN,
        )  # fmt: skip
    if s.SCHEDULER == "cosine_kicks":
        return CosineAnnealingWithKicks(
            optimizer, T_0=s.T_0, eta_min=s.ETA_MIN, kick=s.KICK, factor=s.FACTOR, patience=s.PATIENCE,
            threshold=s.THRESHOLD, threshold_mode="rel", cooldown=s.COOLDOWN, mode=mode, T_mult=s.T_MULT,
        )  # fmt: skip
    raise ConfigError(f"UNET.SOLVER.SCHEDULER must be one of {SCHEDULERS}, got {s.SCHEDULER!r}")


def scheduler_step(scheduler: Any, metric: float | None) -> None:
    """Advance a per-epoch scheduler once; plateau-type schedulers get ``metric``."""
    if scheduler is None:
        return
    if isinstance(scheduler, (torch.optim.lr_scheduler.ReduceLROnPlateau, CosineAnnealingWithKicks)):
        if metric is None or not math.isfinite(metric):
            raise ConfigError("UNET.SOLVER.MONITOR gave no finite validation value for the LR scheduler")
        scheduler.step(metric)
    else:
        scheduler.step()


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """LR of the first parameter group."""
    return float(optimizer.param_groups[0]["lr"])


def simulate_schedules(cfg: CfgNode, metrics: list[float]) -> dict[str, list[float]]:
    """LR per epoch of cosine restarts, plateau and kicks (``UNET.SOLVER`` settings) fed ``metrics``.

    ``metrics[e]`` is the monitored value after epoch e; returns name → LR used in each epoch.
    """
    out: dict[str, list[float]] = {}
    for name in ("cosine_restarts", "plateau", "cosine_kicks"):
        c = cfg.clone()
        c.defrost()
        c.UNET.SOLVER.SCHEDULER = name
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=c.UNET.SOLVER.BASE_LR)
        sched = build_scheduler(c, opt)
        lrs = []
        for m in metrics:
            lrs.append(current_lr(opt))
            opt.step()
            scheduler_step(sched, m)
        out[name] = lrs
    return out
