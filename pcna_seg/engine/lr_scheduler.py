"""SGD optimizer with norm/non-norm parameter groups and iteration-based warmup LR schedules.

Schedules follow detectron2's definitions so that a seed report's ``cfg.SOLVER`` block gives
the same learning rates: the LR used at (0-based) iteration ``i`` is

    BASE_LR × warmup(i) × GAMMA ** (number of STEPS ≤ i)            (WarmupMultiStepLR)
    BASE_LR × warmup(i) × 0.5 × (1 + cos(π i / MAX_ITER))            (WarmupCosineLR)

with ``warmup(i) = WARMUP_FACTOR × (1 − i/WARMUP_ITERS) + i/WARMUP_ITERS`` ("linear") or
``WARMUP_FACTOR`` ("constant") for ``i < WARMUP_ITERS``, else 1.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import torch
from torch import nn
from yacs.config import CfgNode

from pcna_seg.errors import ConfigError

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    nn.modules.instancenorm._InstanceNorm,
)


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, _NORM_TYPES) or "norm" in type(module).__name__.lower()


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum; norm-layer parameters use ``SOLVER.WEIGHT_DECAY_NORM``.

    Only parameters with ``requires_grad`` are optimised; shared parameters appear once.
    """
    if cfg.SOLVER.OPTIMIZER.upper() != "SGD":
        raise ConfigError(f"SOLVER.OPTIMIZER must be 'SGD', got {cfg.SOLVER.OPTIMIZER!r}")
    norm_params: list[nn.Parameter] = []
    other_params: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (norm_params if _is_norm(module) else other_params).append(param)
    groups = []
    if other_params:
        groups.append({"params": other_params, "weight_decay": cfg.SOLVER.WEIGHT_DECAY})
    if norm_params:
        groups.append({"params": norm_params, "weight_decay": cfg.SOLVER.WEIGHT_DECAY_NORM})
    if not groups:
        raise ConfigError("The model has no trainable parameters (check MODEL.BACKBONE.FREEZE_AT)")
    return torch.optim.SGD(
        groups, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM, nesterov=cfg.SOLVER.NESTEROV
    )


def warmup_factor(method: str, it: int, warmup_iters: int, factor: float) -> float:
    """Multiplier applied to the LR during warmup (1.0 once ``it >= warmup_iters``)."""
    if it >= warmup_iters:
        return 1.0
    if method == "constant":
        return factor
    if method == "linear":
        alpha = it / warmup_iters
        return factor * (1 - alpha) + alpha
    raise ConfigError(f"SOLVER.WARMUP_METHOD must be 'linear' or 'constant', got {method!r}")


class _WarmupLR(torch.optim.lr_scheduler.LRScheduler):
    """Base: ``last_epoch`` counts iterations; ``step()`` is called once after every iteration."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        warmup_factor: float = 0.001,
        warmup_iters: int = 1000,
        warmup_method: str = "linear",
        last_epoch: int = -1,
    ) -> None:
        self.warmup_factor = warmup_factor
        self.warmup_iters = warmup_iters
        self.warmup_method = warmup_method
        super().__init__(optimizer, last_epoch)

    def _multiplier(self, it: int) -> float:
        raise NotImplementedError

    def get_lr(self) -> list[float]:
        it = self.last_epoch
        mult = warmup_factor(self.warmup_method, it, self.warmup_iters, self.warmup_factor)
        mult *= self._multiplier(it)
        return [base * mult for base in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()


class WarmupMultiStepLR(_WarmupLR):
    """Warmup, then multiply by ``gamma`` at each iteration in ``milestones``."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        milestones: Sequence[int],
        gamma: float = 0.1,
        warmup_factor: float = 0.001,
        warmup_iters: int = 1000,
        warmup_method: str = "linear",
        last_epoch: int = -1,
    ) -> None:
        if list(milestones) != sorted(milestones):
            raise ConfigError(f"SOLVER.STEPS must be increasing, got {list(milestones)}")
        self.milestones = list(milestones)
        self.gamma = gamma
        super().__init__(optimizer, warmup_factor, warmup_iters, warmup_method, last_epoch)

    def _multiplier(self, it: int) -> float:
        return self.gamma ** bisect.bisect_right(self.milestones, it)


class WarmupCosineLR(_WarmupLR):
    """Warmup, then half-cosine decay from BASE_LR to 0 at ``max_iters``."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        max_iters: int,
        warmup_factor: float = 0.001,
        warmup_iters: int = 1000,
        warmup_method: str = "linear",
        last_epoch: int = -1,
    ) -> None:
        self.max_iters = max_iters
        super().__init__(optimizer, warmup_factor, warmup_iters, warmup_method, last_epoch)

    def _multiplier(self, it: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(it, self.max_iters) / self.max_iters))


def build_lr_scheduler(
    cfg: CfgNode, optimizer: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.LRScheduler:
    """The schedule named by ``SOLVER.LR_SCHEDULER_NAME`` (WarmupMultiStepLR or WarmupCosineLR)."""
    s = cfg.SOLVER
    name = s.LR_SCHEDULER_NAME
    common = dict(warmup_factor=s.WARMUP_FACTOR, warmup_iters=s.WARMUP_ITERS, warmup_method=s.WARMUP_METHOD)
    warmup_factor(s.WARMUP_METHOD, 0, 1, s.WARMUP_FACTOR)  # validates the method name
    if name == "WarmupMultiStepLR":
        steps = [int(x) for x in s.STEPS if int(x) <= s.MAX_ITER]
        return WarmupMultiStepLR(optimizer, steps, s.GAMMA, **common)
    if name == "WarmupCosineLR":
        return WarmupCosineLR(optimizer, s.MAX_ITER, **common)
    raise ConfigError(
        f"SOLVER.LR_SCHEDULER_NAME must be 'WarmupMultiStepLR' or 'WarmupCosineLR', got {name!r}"
    )
