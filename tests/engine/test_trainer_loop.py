"""Trainer loop: exact resume, NaN stop, metrics files, and overfitting a tiny Mask R-CNN."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _toy import ToyDetector, register_toy, tiny_maskrcnn_cfg, toy_cfg, toy_mapper

from pcna_seg.data.catalog import register_dataset
from pcna_seg.engine.hooks import HookBase
from pcna_seg.engine.trainer import Trainer
from pcna_seg.errors import PcnaSegError


class _Stop(Exception):
    pass


class _StopAt(HookBase):
    def __init__(self, it: int) -> None:
        self.it = it

    def before_step(self) -> None:
        if self.trainer.iter == self.it:
            raise _Stop


def _trainer(cfg, resume: bool = False, hooks=None, **model_kw) -> Trainer:
    torch.manual_seed(0)
    return Trainer(
        cfg, model=ToyDetector(**model_kw), train_mapper=toy_mapper, resume=resume, extra_hooks=hooks
    )


def test_resume_continues_exactly(tmp_path: Path) -> None:
    register_toy()
    full = _trainer(toy_cfg(tmp_path / "full"))
    full.train()
    cfg = toy_cfg(tmp_path / "split")
    with pytest.raises(_Stop):
        _trainer(cfg, hooks=[_StopAt(4)]).train()  # checkpoint after iteration 2 only
    assert (tmp_path / "split/last_checkpoint").read_text() == "model_0000002.pth"
    resumed = _trainer(cfg, resume=True)
    assert resumed.start_iter == 3
    resumed.train()
    assert [i for i, _ in resumed.storage.lr_history] == list(range(3, 8))
    assert resumed.storage.lr_history == full.storage.lr_history[3:]
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    its = [
        json.loads(line)["iteration"] for line in (tmp_path / "split/metrics.json").read_text().splitlines()
    ]
    assert its == sorted(set(its)) and its[-1] == 7  # no duplicated iterations after resume


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    register_toy()
    cfg = toy_cfg(tmp_path)
    with pytest.raises(PcnaSegError, match=r"iteration 4: loss is not finite \(loss_count=nan") as info:
        _trainer(cfg, nan_at=4).train()
    assert "model_0000002.pth" in str(info.value)
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["model_0000002.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000002.pth"


def test_outputs_and_metrics_keys(tmp_path: Path) -> None:
    register_toy()
    cfg = toy_cfg(tmp_path)
    _trainer(cfg).train()
    names = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("events"))
    assert names == [
        "config.yaml",
        "curves.png",
        "last_checkpoint",
        "metrics.json",
        "model_0000002.pth",
        "model_0000005.pth",
        "model_final.pth",
    ]
    rows = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert {"iteration", "total_loss", "loss_count", "loss_l1", "lr", "time", "data_time"} <= set(rows[-1])
    assert rows[-1]["iteration"] == 7
    assert (
        "STEPS: (5,)" in (tmp_path / "config.yaml").read_text()
        or "- 5" in (tmp_path / "config.yaml").read_text()
    )


@pytest.mark.slow
def test_tiny_maskrcnn_overfits_one_batch(tmp_path: Path) -> None:
    from pcna_seg.data.structures import labels_to_masks, mask_to_bbox
    from pcna_seg.data.synthetic.nuclei import make_nuclei_image

    frame = make_nuclei_image(np.random.default_rng(0), 64, 64, n_nuclei=4)
    _, masks = labels_to_masks(frame.labels)
    img = frame.channels["gray"].astype(np.float32)
    img = (img - img.min()) / (img.max() - img.min())
    boxes = [mask_to_bbox(m) for m in masks]
    item = {
        "image": torch.from_numpy(np.repeat(img[None], 3, axis=0)),
        "instances": {
            "boxes": torch.tensor([[x, y, x + w, y + h] for x, y, w, h in boxes], dtype=torch.float32),
            "labels": torch.ones(len(masks), dtype=torch.int64),
            "masks": torch.from_numpy(np.stack(masks).astype(np.uint8)),
        },
        "image_id": 0,
        "height": 64,
        "width": 64,
    }
    ann = {"bbox": [0, 0, 1, 1], "category_id": 0, "segmentation": [], "iscrowd": 0}
    register_dataset(
        "one_image",
        lambda: [{"file_name": "x", "height": 64, "width": 64, "image_id": 0, "annotations": [ann]}],
        {"thing_classes": ["nucleus"]},
    )
    cfg = tiny_maskrcnn_cfg(tmp_path)
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("one_image",), ()
    s = cfg.SOLVER
    s.IMS_PER_BATCH, s.MAX_ITER, s.BASE_LR, s.WARMUP_ITERS, s.STEPS, s.CHECKPOINT_PERIOD = (
        1,
        30,
        0.02,
        5,
        (100,),
        0,
    )
    trainer = Trainer(cfg, train_mapper=lambda rec: item)
    trainer.train()
    losses = [v for _, v in trainer.storage.history("total_loss")]
    assert len(losses) == 30
    assert min(losses[-3:]) <= 0.5 * losses[0], losses
