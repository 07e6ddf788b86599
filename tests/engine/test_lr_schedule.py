"""LR schedules against hand-computed values, and optimizer parameter groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pcna_seg.config import get_default_config
from pcna_seg.engine.lr_scheduler import build_lr_scheduler, build_optimizer
from pcna_seg.errors import ConfigError


def _lrs(cfg, n: int) -> list[float]:
    model = nn.Linear(2, 2)
    opt = build_optimizer(cfg, model)
    sched = build_lr_scheduler(cfg, opt)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_multistep_matches_hand_computed() -> None:
    cfg = get_default_config()
    s = cfg.SOLVER
    s.BASE_LR, s.WARMUP_ITERS, s.WARMUP_FACTOR, s.STEPS, s.GAMMA, s.MAX_ITER = 0.01, 4, 0.001, (6, 8), 0.1, 10
    lrs = _lrs(cfg, 10)
    # linear warmup: factor*(1-i/4) + i/4 for i < 4
    expected = [0.01 * (0.001 * (1 - i / 4) + i / 4) for i in range(4)]
    expected += [0.01, 0.01, 0.001, 0.001, 0.0001, 0.0001]
    assert lrs == pytest.approx(expected, rel=1e-9)


def test_seed_report_stage1_schedule() -> None:
    """Stage 1 of the report: BASE_LR 0.01, STEPS (1000,), default 1000-iteration warmup."""
    cfg = get_default_config()
    cfg.SOLVER.BASE_LR, cfg.SOLVER.STEPS, cfg.SOLVER.MAX_ITER = 0.01, (1000,), 3000
    lrs = _lrs(cfg, 1002)
    assert lrs[0] == pytest.approx(1e-5)
    assert lrs[500] == pytest.approx(0.01 * (0.001 * 0.5 + 0.5))
    assert lrs[999] == pytest.approx(0.01 * (0.001 * 0.001 + 0.999))
    assert lrs[1000] == pytest.approx(0.001) and lrs[1001] == pytest.approx(0.001)


def test_cosine_and_constant_warmup() -> None:
    cfg = get_default_config()
    s = cfg.SOLVER
    s.LR_SCHEDULER_NAME, s.BASE_LR, s.WARMUP_ITERS, s.WARMUP_FACTOR, s.MAX_ITER = (
        "WarmupCosineLR",
        1.0,
        2,
        0.5,
        8,
    )
    s.WARMUP_METHOD = "constant"
    lrs = _lrs(cfg, 8)
    cos = [0.5 * (1 + math.cos(math.pi * i / 8)) for i in range(8)]
    assert lrs == pytest.approx([0.5 * cos[0], 0.5 * cos[1]] + cos[2:])


def test_bad_scheduler_name_is_config_error() -> None:
    cfg = get_default_config()
    cfg.SOLVER.LR_SCHEDULER_NAME = "Nope"
    with pytest.raises(ConfigError, match="LR_SCHEDULER_NAME"):
        _lrs(cfg, 1)


def test_norm_params_get_weight_decay_norm() -> None:
    cfg = get_default_config()
    cfg.SOLVER.WEIGHT_DECAY, cfg.SOLVER.WEIGHT_DECAY_NORM = 1e-4, 0.0
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.GroupNorm(1, 2), nn.Conv2d(2, 2, 1))
    model[3].weight.requires_grad_(False)
    opt = build_optimizer(cfg, model)
    by_wd = {g["weight_decay"]: g["params"] for g in opt.param_groups}
    norm_ids = {id(p) for m in (model[1], model[2]) for p in m.parameters()}
    assert {id(p) for p in by_wd[0.0]} == norm_ids
    assert {id(p) for p in by_wd[1e-4]} == {id(model[0].weight), id(model[0].bias), id(model[3].bias)}
    assert opt.param_groups[0]["momentum"] == 0.9 and isinstance(opt, torch.optim.SGD)
