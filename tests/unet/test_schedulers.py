"""CosineAnnealingWithKicks: hand-derived LR curve, plateau semantics, exact resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pcna_seg.config import load_config
from pcna_seg.unet.schedulers import (
    CosineAnnealingWithKicks,
    build_optimizer,
    build_scheduler,
    scheduler_step,
)


def _opt(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _run(sched: CosineAnnealingWithKicks, metrics: list[float]) -> list[float]:
    lrs = []
    for m in metrics:
        lrs.append(sched.optimizer.param_groups[0]["lr"])
        sched.optimizer.step()
        sched.step(m)
    return lrs


def test_kicks_curve_matches_hand_derivation() -> None:
    # base 1.0, T=2, min 0.1, kick 0.5, factor 0.5, patience 1, threshold 0, mode min.
    # Cycle 1 (s=0): e0 1.0, e1 0.1+0.9*0.5=0.55, e2 0.1, e3 0.1 (flat at the minimum).
    # Metrics 1.0, .9 improve; .9 (not < .9) bad=1; .95 bad=2 > 1 -> kick at end of e3:
    #   L' = 0.1 + 0.5*1.0 = 0.6, m' = 0.05, s' = 4: e4 0.6, e5 0.05+0.55*0.5=0.325, e6 0.05.
    # Metrics .8 better; .85 bad 1; .85 bad 2 -> kick at end of e6:
    #   L'' = 0.05 + 0.5*0.6 = 0.35, m'' = 0.025, s'' = 7: e7 0.35, e8 0.1875, e9 0.025.
    expected = [1.0, 0.55, 0.1, 0.1, 0.6, 0.325, 0.05, 0.35, 0.1875, 0.025]
    metrics = [1.0, 0.9, 0.9, 0.95, 0.8, 0.85, 0.85, 0.7, 0.6, 0.5]
    s = CosineAnnealingWithKicks(_opt(), T_0=2, eta_min=0.1, kick=0.5, factor=0.5, patience=1, threshold=0.0)
    lrs = _run(s, metrics)
    assert lrs == pytest.approx(expected, abs=1e-12)
    assert s.kick_epochs == [4, 7]
    assert s.num_kicks == 2


def test_kicks_cooldown_and_max_mode() -> None:
    # mode max, patience 0, cooldown 2, T=1, min 0.2, base 1: e0 1.0, then flat 0.2.
    # e0 m=1 best. e1 m=1 bad 1 > 0 -> kick (end e1): L'=0.2+0.5=0.7, m'=0.1, s'=2, cooldown 2.
    # e2 lr .7: m=1 bad 1, cooldown 2->1, bad reset 0. e3 lr .1: m=1 bad 1, cooldown 1->0, bad 0.
    # e4 lr .1: m=1 bad 1 > 0 -> kick: L''=0.1+0.5*0.7=0.45, m''=0.05, s''=5. e5 .45, e6 .05.
    expected = [1.0, 0.2, 0.7, 0.1, 0.1, 0.45, 0.05]
    s = CosineAnnealingWithKicks(
        _opt(), T_0=1, eta_min=0.2, kick=0.5, factor=0.5, patience=0, threshold=0.0, cooldown=2, mode="max"
    )
    assert _run(s, [1.0] * 7) == pytest.approx(expected, abs=1e-12)


def test_threshold_rel_counts_small_gains_as_bad() -> None:
    s = CosineAnnealingWithKicks(_opt(), T_0=5, patience=1, threshold=0.1)
    _run(s, [1.0, 0.95, 0.95])  # 0.95 is not < 1.0 * 0.9: two bad epochs
    assert s.num_kicks == 1 and s.best == 1.0


def test_state_dict_resume_is_exact() -> None:
    metrics = [1.0, 0.9, 0.9, 0.95, 0.8, 0.85, 0.85, 0.7, 0.9, 0.9, 0.9, 0.5]
    kw = dict(T_0=3, eta_min=0.01, kick=0.4, factor=0.5, patience=1, cooldown=1)
    full = CosineAnnealingWithKicks(_opt(), **kw)
    ref = _run(full, metrics)
    a = CosineAnnealingWithKicks(_opt(), **kw)
    first = _run(a, metrics[:5])
    state = a.state_dict()
    for key in ("best", "num_bad_epochs", "cooldown_counter", "cycle_start_epoch", "cycle_start_lrs",
                "cycle_min_lrs", "cycle_len", "last_epoch"):  # fmt: skip
        assert key in state
    opt_b = _opt()
    opt_b.load_state_dict(a.optimizer.state_dict())
    b = CosineAnnealingWithKicks(opt_b, **kw)
    b.load_state_dict(state)
    opt_b.param_groups[0]["lr"] = b.get_last_lr()[0]
    rest = _run(b, metrics[5:])
    assert first + rest == ref
    assert b.state_dict()["kick_epochs"] == full.state_dict()["kick_epochs"]


@pytest.mark.parametrize("name", ["cosine_restarts", "plateau", "cosine_kicks", "none"])
def test_build_from_config(name: str) -> None:
    cfg = load_config(opts=["UNET.SOLVER.SCHEDULER", name, "UNET.SOLVER.OPTIMIZER", "adam"])
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.Adam)
    sched = build_scheduler(cfg, opt)
    for _ in range(3):
        opt.step()
        scheduler_step(sched, 1.0)
    lr = opt.param_groups[0]["lr"]
    assert math.isfinite(lr) and 0 < lr <= cfg.UNET.SOLVER.BASE_LR


def test_simulate_and_plot_three_schedules(tmp_path) -> None:
    from pcna_seg.unet.schedulers import simulate_schedules
    from pcna_seg.unet.viz import plot_lr_curves

    rng = np.random.default_rng(0)
    metric = (0.5 * np.exp(-np.arange(60) / 12) + 0.1 + 0.01 * rng.standard_normal(60)).tolist()
    cfg = load_config(opts=["UNET.SOLVER.T_0", "10", "UNET.SOLVER.PATIENCE", "4"])
    curves = simulate_schedules(cfg, metric)
    assert set(curves) == {"cosine_restarts", "plateau", "cosine_kicks"}
    assert all(len(v) == 60 for v in curves.values())
    assert curves["cosine_restarts"][10] == pytest.approx(cfg.UNET.SOLVER.BASE_LR)  # warm restart
    assert min(curves["plateau"]) < cfg.UNET.SOLVER.BASE_LR  # plateaus were detected
    kicks = curves["cosine_kicks"]
    assert any(b > a for a, b in zip(kicks[10:], kicks[11:]))  # at least one kick up after cycle 1
    path = plot_lr_curves(curves, metric, tmp_path / "lr_schedules.png")
    assert path.stat().st_size > 10_000
