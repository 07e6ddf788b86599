"""Pixel scale end to end: the model sees nuclei at one size whatever the field size or tiling.

An "oracle" model stands in for a trained Mask R-CNN: it returns the connected components of
its input's first channel as detections, in the model's own output format (boxes in the input
frame, (N, 1, 28, 28) box-frame mask probabilities). The real Predictor, input pipeline,
postprocess and tiling run around it, so what is checked is exactly what the pipeline does
with sizes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from pcna_seg.data.scale import equivalent_diameter, estimate_diameter
from pcna_seg.evaluation.cell_metrics import compute_overlaps, match_at
from pcna_seg.inference.predictor import Predictor
from pcna_seg.inference.tiled import predict_tiled

ROOT = Path(__file__).resolve().parents[2]
RADIUS = 8  # nuclei of ~16 px diameter, like the quick configs' training data


class OracleModel(torch.nn.Module):
    """Detects the connected components of channel 0 > 0.5; records every input size it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[tuple[int, int]] = []

    def forward(self, images):
        out = []
        for img in images:
            self.seen.append(tuple(img.shape[-2:]))
            lab, n = ndimage.label(img[0].numpy() > 0.5)
            boxes, masks = [], []
            for k, sl in enumerate(ndimage.find_objects(lab), start=1):
                crop = torch.from_numpy((lab[sl] == k).astype(np.float32))[None, None]
                masks.append(F.interpolate(crop, size=(28, 28), mode="bilinear", align_corners=False)[0])
                boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])  # pixel edges, as trained
            n = len(boxes)
            out.append(
                {
                    "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(n, 4),
                    "labels": torch.ones(n, dtype=torch.int64),
                    "scores": torch.linspace(0.99, 0.9, n) if n else torch.zeros(0),
                    "masks": torch.stack(masks) if n else torch.zeros(0, 1, 28, 28),
                    "class_probs": torch.tensor([[0.0, 1.0, 0.0, 0.0]]).repeat(n, 1),
                }
            )
        return out


def field(h: int, w: int, seed: int = 0, spacing: int = 40) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Bright discs of radius RADIUS on a dim, noisy background: (channels, true label image)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    labels = np.zeros((h, w), np.int32)
    k = 0
    for cy in range(spacing // 2, h - RADIUS, spacing):
        for cx in range(spacing // 2, w - RADIUS, spacing):
            k += 1
            y, x = cy + rng.integers(-6, 7), cx + rng.integers(-6, 7)
            labels[(yy - y) ** 2 + (xx - x) ** 2 <= RADIUS**2] = k
    img = (labels > 0) * rng.uniform(800, 3000) + rng.normal(200, 20, (h, w))
    pcna = np.clip(img, 0, 65535).astype(np.uint16)
    return {"pcna": pcna, "dic": rng.integers(0, 1000, (h, w)).astype(np.uint16)}, labels


@pytest.fixture()
def make_predictor(tmp_path: Path, monkeypatch):
    from test_predictor import OPTS, make_checkpoint

    def make(*opts: str) -> Predictor:
        weights = make_checkpoint(tmp_path / "run", [*OPTS, *opts])
        pred = Predictor.from_checkpoint(weights)
        pred.model = OracleModel()
        return pred

    return make


def _diameters(pred) -> np.ndarray:
    return equivalent_diameter(pred.areas())


def _true_diameter(labels: np.ndarray) -> float:
    return float(np.median(equivalent_diameter(np.bincount(labels.ravel())[1:])))


def test_fixed_scale_model_sees_native_pixels_at_any_field_size(make_predictor):
    predictor = make_predictor()  # quick config: INPUT.SCALE fixed, FACTOR 1
    for h, w in ((512, 256), (1024, 1024), (96, 80)):
        ch, truth = field(h, w)
        pred = predictor.predict_arrays(ch)
        assert predictor.model.seen[-1] == (h, w)  # nothing resized
        assert len(pred) == truth.max()
        assert abs(np.median(_diameters(pred)) - _true_diameter(truth)) <= 1.0


def test_short_edge_resizes_every_field_differently(make_predictor):
    predictor = make_predictor(
        "INPUT.SCALE.MODE", "short_edge", "INPUT.MIN_SIZE_TEST", "256", "INPUT.MAX_SIZE_TEST", "1024"
    )
    ch, _ = field(1024, 1024)
    predictor.predict_arrays(ch)
    assert predictor.model.seen[-1] == (256, 256)  # detectron2's behaviour: nuclei shrunk 4x for the model


def test_factor_scales_the_model_input_and_outputs_come_back_at_native_size(make_predictor):
    predictor = make_predictor("INPUT.SCALE.FACTOR", "0.5")
    ch, truth = field(512, 256)
    pred = predictor.predict_arrays(ch)
    assert predictor.model.seen[-1] == (256, 128)
    assert pred.image_size == (512, 256) and len(pred) == truth.max()
    assert abs(np.median(_diameters(pred)) - _true_diameter(truth)) <= 1.5


@pytest.mark.parametrize("factor", ["1.0", "0.5"])
def test_tiled_and_whole_predictions_agree(make_predictor, factor):
    predictor = make_predictor("INPUT.SCALE.FACTOR", factor)
    ch, truth = field(640, 512, seed=3)
    whole = predictor.predict_arrays(ch)
    n_seen = len(predictor.model.seen)
    tiled = predict_tiled(predictor, ch, tile=160, overlap=48)
    tiles = predictor.model.seen[n_seen:]
    assert len(tiles) > 4 and all(max(s) <= 160 for s in tiles)  # tiles at model scale, not resized
    assert len(tiled) == len(whole) == truth.max()
    ov = compute_overlaps(whole.to_label_image(), tiled.to_label_image())
    pairs, iou = match_at(ov, 0.5)
    assert len(pairs) == len(whole) and iou.min() >= 0.95


def test_object_size_scales_by_the_given_or_estimated_diameter(make_predictor):
    predictor = make_predictor("INPUT.SCALE.MODE", "object_size", "INPUT.SCALE.DIAMETER", "8.5")
    ch, truth = field(400, 400)
    predictor.diameter = 17.0  # --diameter: the user's nuclei are 17 px across, the model wants 8.5
    pred = predictor.predict_arrays(ch)
    assert predictor.model.seen[-1] == (200, 200) and len(pred) == truth.max()
    predictor.diameter = 0.0  # estimated from the lowered-Otsu mask instead
    predictor.predict_arrays(ch)
    h, w = predictor.model.seen[-1]
    assert 170 <= h <= 230 and h == w


def test_diameter_estimate_survives_touching_nuclei():
    yy, xx = np.mgrid[0:200, 0:200]
    fg = np.zeros((200, 200), bool)
    for cy, cx in [(50, 50), (50, 64), (64, 57), (150, 150), (120, 40)]:  # a clump of three + two alone
        fg |= (yy - cy) ** 2 + (xx - cx) ** 2 <= 9**2
    disc = equivalent_diameter(np.sum((yy - 150) ** 2 + (xx - 150) ** 2 <= 9**2))
    assert abs(estimate_diameter(fg) - disc) <= 1.0  # one nucleus wide, not the clump's size
    assert estimate_diameter(np.zeros((10, 10), bool)) == 0.0


def test_bad_scale_values_are_one_clear_error(make_predictor, tmp_path):
    from pcna_seg.config.config import load_config
    from pcna_seg.errors import ConfigError

    cfg = ROOT / "configs/quick_schedules/quick_stage3_pcna.yaml"
    with pytest.raises(
        ConfigError, match="INPUT.MIN_SIZE_TEST is set .* applies only with INPUT.SCALE.MODE short_edge"
    ):
        load_config(cfg, ["INPUT.MIN_SIZE_TEST", "512"])
    with pytest.raises(ConfigError, match="INPUT.SCALE.FACTOR"):
        load_config(cfg, ["INPUT.SCALE.FACTOR", "0"])
    with pytest.raises(ConfigError, match="needs INPUT.SCALE.DIAMETER"):
        load_config(cfg, ["INPUT.SCALE.MODE", "object_size"])
    with pytest.raises(ConfigError, match="INPUT.SCALE.MODE must be one of"):
        load_config(cfg, ["INPUT.SCALE.MODE", "pixels"])
    predictor = make_predictor("INPUT.SCALE.MAX_PIXELS", "10000")
    ch, _ = field(200, 200)
    with pytest.raises(ConfigError, match="MAX_PIXELS"):
        predictor.predict_arrays(ch)
    with pytest.raises(ConfigError, match="--diameter must be > 0"):
        Predictor(predictor.cfg, tmp_path / "run/model_final.pth", diameter=-3)


def test_detections_at_a_limit_are_warned_once(make_predictor, caplog):
    predictor = make_predictor()  # TEST.DETECTIONS_PER_IMAGE 25 in these tests
    ch, truth = field(512, 256)
    assert truth.max() > 25
    with caplog.at_level("WARNING"):
        predictor.predict_arrays(ch)
        predictor.predict_arrays(ch)
    warned = [r for r in caplog.records if "TEST.DETECTIONS_PER_IMAGE 25" in r.getMessage()]
    assert len(warned) == 1 and "--tile" in warned[0].getMessage()


def test_tiles_too_small_for_the_nuclei_are_refused(make_predictor, caplog):
    import dataclasses

    from pcna_seg.errors import ConfigError

    predictor = make_predictor()
    predictor.pipeline.scale = dataclasses.replace(predictor.pipeline.scale, train_diameter=16.0)
    ch, _ = field(256, 256)
    with pytest.raises(ConfigError, match="--tile 8 is too small .*about 16 px"):
        predict_tiled(predictor, ch, tile=8, overlap=0)
    with caplog.at_level("WARNING"):
        predict_tiled(predictor, ch, tile=96, overlap=8)
    assert "--overlap 8 is smaller than the nuclei" in caplog.text
