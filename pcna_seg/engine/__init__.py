"""Training engine: iteration-based trainer with hooks, checkpoints, LR schedules, writers, DDP launch."""

from pcna_seg.engine.checkpoint import Checkpointer, load_model_weights
from pcna_seg.engine.launch import get_rank, get_world_size, is_main_process, launch
from pcna_seg.engine.lr_scheduler import (
    WarmupCosineLR,
    WarmupMultiStepLR,
    build_lr_scheduler,
    build_optimizer,
)
from pcna_seg.engine.trainer import Trainer, run_train_net

__all__ = [
    "Checkpointer",
    "Trainer",
    "WarmupCosineLR",
    "WarmupMultiStepLR",
    "build_lr_scheduler",
    "build_optimizer",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "launch",
    "load_model_weights",
    "run_train_net",
]
