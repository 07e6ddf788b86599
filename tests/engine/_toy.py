"""Tiny stand-ins for engine tests: a toy detector with the torchvision loss contract, a toy
mapper, an in-memory dataset, and a tiny real Mask R-CNN config."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pcna_seg.config import get_default_config
from pcna_seg.data.catalog import register_dataset


class ToyDetector(nn.Module):
    """conv → BN → pooled linear; losses regress the number of instances of each image.

    ``nan_at``: from this forward call on (0-based, training only), the losses are NaN.
    ``dropout`` > 0: dropout on the pooled features and loss weights drawn from python's and
    numpy's global RNGs, so every global random stream shapes the weights (as the RPN/ROI
    samplers of a real Mask R-CNN do).
    """

    def __init__(self, nan_at: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = dropout
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 1)
        self.nan_at = nan_at
        self.calls = 0

    def forward(
        self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None
    ) -> Any:
        x = torch.stack(images)
        feat = self.bn(self.conv(x)).mean(dim=(2, 3))
        if self.dropout:
            feat = nn.functional.dropout(feat, self.dropout, self.training)
        pred = self.head(feat)[:, 0]
        if not self.training:
            empty = {
                "boxes": torch.zeros(0, 4),
                "labels": torch.zeros(0, dtype=torch.int64),
                "scores": torch.zeros(0),
            }
            return [dict(empty) for _ in images]
        assert targets is not None
        n = torch.tensor([float(len(t["boxes"])) for t in targets])
        losses = {"loss_count": ((pred - n) ** 2).mean(), "loss_l1": 0.1 * pred.abs().mean()}
        if self.dropout:
            losses["loss_l1"] = losses["loss_l1"] * (1.0 + random.random() + float(np.random.rand()))
        if self.nan_at is not None and self.calls >= self.nan_at:
            losses["loss_count"] = losses["loss_count"] * float("nan")
        self.calls += 1
        return losses


def toy_mapper(record: dict[str, Any]) -> dict[str, Any]:
    """Image (3, 8, 8) whose intensity encodes the record plus random noise (uses numpy's RNG)."""
    k = int(record["image_id"])
    img = (
        torch.full((3, 8, 8), k / 10.0) + torch.from_numpy(np.random.rand(3, 8, 8).astype(np.float32)) * 0.01
    )
    n = len(record["annotations"])
    return {
        "image": img,
        "instances": {
            "boxes": torch.tensor([[0.0, 0.0, 2.0, 2.0]] * n).reshape(-1, 4),
            "labels": torch.ones(n, dtype=torch.int64),
            "masks": torch.zeros(n, 8, 8, dtype=torch.uint8),
        },
        "image_id": k,
        "height": 8,
        "width": 8,
    }


def toy_records(n: int = 6) -> list[dict[str, Any]]:
    ann = {"bbox": [0, 0, 2, 2], "bbox_mode": "XYWH_ABS", "category_id": 0, "iscrowd": 0, "segmentation": []}
    return [
        {
            "file_name": f"img{i}.png",
            "height": 8,
            "width": 8 + (i % 2),
            "image_id": i,
            "annotations": [ann] * (i % 3),
        }
        for i in range(n)
    ]


def register_toy(name: str = "toy_train", n: int = 6) -> None:
    records = toy_records(n)
    register_dataset(name, lambda: [dict(r) for r in records], {"thing_classes": ["nucleus"]})


def toy_cfg(out: Path, **solver: Any) -> Any:
    cfg = get_default_config()
    cfg.MODEL.DEVICE = "cpu"
    cfg.DATASETS.TRAIN = ("toy_train",)
    cfg.DATASETS.TEST = ()
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.OUTPUT_DIR = str(out)
    cfg.SEED = 3
    s = cfg.SOLVER
    s.IMS_PER_BATCH, s.BASE_LR, s.MAX_ITER, s.STEPS = 2, 0.05, 8, (5,)
    s.WARMUP_ITERS, s.WARMUP_FACTOR, s.CHECKPOINT_PERIOD, s.LOG_PERIOD = 3, 0.1, 3, 2
    for key, value in solver.items():
        s[key] = value
    return cfg


def ddp_main(out: str, max_iter: int) -> None:
    """Body of each DDP worker: train the toy model, then dump this rank's parameters."""
    from pcna_seg.engine.launch import get_rank
    from pcna_seg.engine.trainer import Trainer

    register_toy()
    torch.manual_seed(get_rank())  # different init per rank: DDP must broadcast rank 0's
    cfg = toy_cfg(Path(out), MAX_ITER=max_iter, CHECKPOINT_PERIOD=2)
    cfg.SOLVER.IMS_PER_BATCH = 4
    trainer = Trainer(cfg, model=ToyDetector(), train_mapper=toy_mapper)
    trainer.train()
    params = {k: v.detach().clone() for k, v in trainer.model.module.named_parameters()}
    torch.save(params, Path(out).parent / f"params_rank{get_rank()}.pt")


def tiny_maskrcnn_cfg(out: Path, num_classes: int = 1) -> Any:
    """A very small real Mask R-CNN (R18, FPN 32) for 64×64 images."""
    from pcna_seg.config import load_config

    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "configs/quick_schedules/quick_stage1_kaggle.yaml", freeze=False)
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 32
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[8], [16], [32], [64]]
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.OUTPUT_DIR = str(out)
    return cfg


class Stop(Exception):
    """Raised by :class:`StopAt`: stands for a run killed at the start of an iteration."""


class StopAt:
    """A hook that raises :class:`Stop` before iteration ``it`` (imported lazily: a HookBase)."""

    def __new__(cls, it: int) -> Any:
        from pcna_seg.engine.hooks import HookBase

        class _StopAt(HookBase):
            def before_step(self) -> None:
                if self.trainer.iter == it:
                    raise Stop

        return _StopAt()


def ddp_exact_main(base: str, phase: str) -> None:
    """DDP worker for the exact-resume test (toy model with dropout, 6 iterations, 4 images).

    ``phase`` "first": train ``full`` uninterrupted, then ``split`` stopped before iteration 4
    (last checkpoint after iteration 2); "resume": resume ``split``. Dumps this rank's parameters.
    """
    from pcna_seg.engine.launch import get_rank
    from pcna_seg.engine.trainer import Trainer

    register_toy()
    runs = [("full", None, False), ("split", 4, False)] if phase == "first" else [("split", None, True)]
    for name, stop, resume in runs:
        torch.manual_seed(get_rank())
        cfg = toy_cfg(Path(base) / name, MAX_ITER=6)
        cfg.SOLVER.IMS_PER_BATCH = 4
        hooks = [StopAt(stop)] if stop is not None else []
        trainer = Trainer(
            cfg, model=ToyDetector(dropout=0.5), train_mapper=toy_mapper, resume=resume, extra_hooks=hooks
        )
        try:
            trainer.train()
        except Stop:
            continue
        params = {k: v.detach().clone() for k, v in trainer.model.module.named_parameters()}
        torch.save(params, Path(base) / f"{name}_rank{get_rank()}.pt")
