"""Whole-frame blended inference: no seams, tiled == whole, bounded memory, outputs, counts."""

from __future__ import annotations

import csv
import tracemalloc

import numpy as np
import pytest
import tifffile
import torch
from torch import nn

from pcna_seg.config import load_config
from pcna_seg.data.synthetic.write_livedead import write as write_livedead
from pcna_seg.errors import ConfigError
from pcna_seg.unet.models import build_unet
from pcna_seg.unet.predict import (
    blend_window,
    find_frames,
    live_dead_counts,
    livedead_instances,
    predict_probs,
    predict_unet,
)


class _Const(nn.Module):
    divisor = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1).expand(x.shape[0], 3, *x.shape[2:])


@pytest.mark.parametrize("blend", ["gaussian", "cosine"])
def test_constant_model_gives_constant_map(blend: str) -> None:
    img = np.random.default_rng(0).random((2, 150, 223)).astype(np.float32)
    probs = predict_probs(_Const(), img, tile=64, overlap=16, blend=blend, batch_size=5)
    assert probs.shape == (3, 150, 223)
    expected = torch.softmax(torch.tensor([1.0, 2.0, 3.0]), 0).numpy()
    assert np.abs(probs - expected[:, None, None]).max() < 1e-6
    w = blend_window(64, blend)
    assert w.min() > 0 and w[32, 32] == w.max()


def test_tiled_equals_whole_for_equivariant_model() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    img = np.random.default_rng(1).random((2, 200, 260)).astype(np.float32)
    with torch.no_grad():
        whole = torch.softmax(conv(torch.from_numpy(img)[None]), 1)[0].numpy()
    tiled = predict_probs(conv, img, tile=64, overlap=32)
    interior = (slice(None), slice(8, -8), slice(8, -8))
    assert np.abs(tiled[interior] - whole[interior]).max() < 5e-4
    assert np.abs(tiled - whole).max() < 1e-3  # frame borders too: edge tiles end at the border
    pointwise = nn.Conv2d(2, 3, 1)
    with torch.no_grad():
        whole1 = torch.softmax(pointwise(torch.from_numpy(img)[None]), 1)[0].numpy()
    assert np.abs(predict_probs(pointwise, img, tile=64, overlap=16) - whole1).max() < 1e-5


def test_small_frame_is_padded_and_bad_tile_rejected() -> None:
    model = build_unet(load_config(opts=["UNET.DEPTH", "2", "UNET.BASE_WIDTH", "4"]))
    out = predict_probs(model, np.zeros((2, 30, 45), np.float32), tile=32, overlap=8)
    assert out.shape == (3, 30, 45) and np.allclose(out.sum(0), 1, atol=1e-5)
    with pytest.raises(ConfigError, match="UNET.INFER.TILE"):
        predict_probs(model, np.zeros((2, 64, 64), np.float32), tile=30, overlap=8)


def test_large_frame_memory_is_bounded() -> None:
    img = np.zeros((2, 2700, 3600), np.float32)
    tracemalloc.start()
    probs = predict_probs(nn.Conv2d(2, 3, 1), img, tile=512, overlap=64, batch_size=4)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    frame_bytes = 2700 * 3600 * 4
    assert probs.shape == (3, 2700, 3600)
    assert peak < 6 * frame_bytes  # (K, H, W) sum + weight map + per-batch tiles


def _disk(lab: np.ndarray, cy: int, cx: int, r: int, value: int) -> None:
    yy, xx = np.ogrid[: lab.shape[0], : lab.shape[1]]
    lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = value


def test_live_dead_counting() -> None:
    lab = np.zeros((100, 200), np.uint8)
    for i in range(4):
        _disk(lab, 25, 20 + 45 * i, 9, 1)  # 4 live
    for i in range(3):
        _disk(lab, 75, 20 + 45 * i, 9, 2)  # 3 dead
    _disk(lab, 75, 175, 9, 1)
    _disk(lab, 75, 189, 9, 1)  # two touching live nuclei
    lab[74:77, 150:153] = 2  # a 9-pixel Cy5 speck is below min_size and not counted
    for method, n_live in (("components", 5), ("watershed", 6)):
        inst = livedead_instances(lab, method, min_size=20)
        assert live_dead_counts(inst, lab) == (n_live, 3), method
    assert live_dead_counts(np.zeros_like(lab, np.int32), lab) == (0, 0)


@pytest.mark.slow
def test_predict_unet_outputs(tmp_path) -> None:
    write_livedead(tmp_path / "frames", wells=("A1",), timepoints=2, height=96, width=128, seed=0)
    cfg = load_config(opts=["MODEL.DEVICE", "cpu", "UNET.DEPTH", "2", "UNET.BASE_WIDTH", "4",
                            "UNET.INFER.TILE", "64", "UNET.INFER.OVERLAP", "16",
                            "UNET.INFER.SAVE_PROBS", "True"])  # fmt: skip
    torch.save({"model": build_unet(cfg).state_dict()}, tmp_path / "w.pth")
    rows = predict_unet(cfg, str(tmp_path / "frames"), tmp_path / "pred", str(tmp_path / "w.pth"))
    assert [r["frame"] for r in rows] == ["A1_t00", "A1_t01"]
    lab = tifffile.imread(tmp_path / "pred" / "A1_t00_labels.tif")
    assert lab.shape == (96, 128) and lab.dtype == np.uint8 and lab.max() <= 2
    probs = tifffile.imread(tmp_path / "pred" / "A1_t00_probs.tif")
    assert probs.shape == (3, 96, 128) and probs.dtype == np.float16
    assert (tmp_path / "pred" / "A1_t01_overlay.png").stat().st_size > 0
    table = list(csv.DictReader(open(tmp_path / "pred" / "counts.csv")))
    assert set(table[0]) >= {"frame", "n_nuclei", "n_live", "n_dead", "true_live", "true_dead"}
    assert int(table[0]["true_live"]) + int(table[0]["true_dead"]) > 0


def test_channel_pattern_pairs(tmp_path) -> None:
    for ch in ("hoechst", "draq7"):
        tifffile.imwrite(tmp_path / f"w1_{ch}.tif", np.zeros((8, 8), np.uint16))
    frames = find_frames(str(tmp_path / "*_{channel}.tif"), ["hoechst", "draq7"])
    assert len(frames) == 1 and frames[0].name == "w1" and frames[0].files[1].endswith("w1_draq7.tif")
