"""Predictor: original-size outputs, arrays == records, label image, config/weights checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pcna_seg.errors import DataError, WeightsError
from pcna_seg.inference.predictor import Prediction, Predictor, load_predict_config

ROOT = Path(__file__).resolve().parents[2]
CFG = ROOT / "configs/quick_schedules/quick_stage3_pcna.yaml"
NAMES = ["G1/G2", "S", "M"]
OPTS = ["MODEL.DEVICE", "cpu", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "25"]


def make_checkpoint(folder: Path, opts: list[str] = OPTS) -> Path:
    """A randomly initialised tiny model saved like the trainer does (weights + config.yaml)."""
    from pcna_seg.config.config import load_config, save_config
    from pcna_seg.modeling import build_model

    cfg = load_config(CFG, opts)
    torch.manual_seed(0)
    model = build_model(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model_final.pth"
    torch.save({"model": model.state_dict(), "config": cfg.dump(), "class_names": NAMES}, path)
    save_config(cfg, folder / "config.yaml")
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    from pcna_seg.data.coco_io import load_coco
    from pcna_seg.data.converters.pcna import convert_masks
    from pcna_seg.data.synthetic.write_pcna import write_masks

    tmp = tmp_path_factory.mktemp("pred")
    weights = make_checkpoint(tmp / "run")
    write_masks(tmp / "raw", seed=1, n_movies=1, n_frames=2, height=96, width=80, n_nuclei=5)
    convert_masks(tmp / "raw", tmp / "data", val_fraction=0.0, progress=False)
    records = load_coco(tmp / "data/annotations.json")[0]
    predictor = Predictor.from_checkpoint(weights)
    return predictor, records, weights


def _arrays(record: dict) -> dict[str, np.ndarray]:
    from pcna_seg.data.image_io import read_image

    return {k: read_image(v) for k, v in record["channels"].items()}


def test_record_prediction_is_at_original_size(setup) -> None:
    predictor, records, _ = setup
    rec = next(r for r in records if r["annotations"])
    pred = predictor.predict_record(rec)
    n, k = len(pred), len(NAMES)
    assert n > 0  # random weights with a 0 score threshold detect something
    assert pred.image_size == (96, 80)
    assert pred.masks.shape == (n, 96, 80) and pred.masks.dtype == bool
    assert pred.masks.reshape(n, -1).any(axis=1).all()  # empty masks are dropped
    assert pred.boxes.shape == (n, 4)
    assert (pred.boxes[:, [0, 2]] <= 80).all() and (pred.boxes[:, [1, 3]] <= 96).all()
    assert pred.labels.dtype == np.int64 and set(pred.labels.tolist()) <= set(range(k))
    assert np.all(np.diff(pred.scores) <= 0)  # sorted by decreasing score
    assert pred.probs_with_bg.shape == (n, k + 1)
    np.testing.assert_allclose(pred.probs_with_bg.sum(axis=1), 1, atol=1e-4)
    np.testing.assert_allclose(pred.class_probs.sum(axis=1), 1, atol=1e-4)
    # one class per box: the label is the best foreground class
    np.testing.assert_array_equal(pred.labels, pred.probs_with_bg[:, 1:].argmax(axis=1))
    assert pred.class_names == NAMES and len(pred.phases) == n


def test_arrays_give_the_same_prediction_as_the_record(setup) -> None:
    predictor, records, _ = setup
    rec = records[0]
    a = predictor.predict_record(rec)
    b = predictor.predict_arrays(_arrays(rec))
    assert len(a) == len(b) > 0
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_missing_channel_is_a_data_error(setup) -> None:
    predictor, records, _ = setup
    only_pcna = {"pcna": _arrays(records[0])["pcna"]}
    with pytest.raises(DataError, match="'dic'"):
        predictor.predict_arrays(only_pcna)
    assert predictor.required_channels(["gray", "pcna"]) == ["pcna", "dic"]


def test_label_image_matches_masks_and_higher_score_wins() -> None:
    masks = np.zeros((3, 20, 30), bool)
    masks[0, 2:10, 2:12] = True  # score 0.5
    masks[1, 5:15, 8:20] = True  # score 0.9, overlaps 0
    masks[2, 16:19, 25:29] = True  # score 0.7
    boxes = np.array([[2, 2, 12, 10], [8, 5, 20, 15], [25, 16, 29, 19]], np.float32)
    pred = Prediction.from_masks(masks, boxes, [0.5, 0.9, 0.7], [0, 1, 2], NAMES)
    assert pred.scores.tolist() == pytest.approx([0.9, 0.7, 0.5])
    lab = pred.to_label_image()
    assert lab.dtype == np.uint16 and lab.shape == (20, 30)
    dense = pred.masks
    np.testing.assert_array_equal(lab > 0, dense.any(axis=0))
    for i in range(len(pred)):
        assert dense[i][lab == i + 1].all()  # every label pixel lies in its mask
    assert lab[6, 9] == 1  # overlap: the 0.9 instance (now first) wins
    assert pred.labels.tolist() == [1, 2, 0]


def test_model_label_image_is_consistent(setup) -> None:
    predictor, records, _ = setup
    pred = predictor.predict_record(records[0])
    lab, dense = pred.to_label_image(), pred.masks
    np.testing.assert_array_equal(lab > 0, dense.any(axis=0))
    for i in np.unique(lab[lab > 0]):
        winner = np.argmax(np.where(dense[:, lab == i], pred.scores[:, None], -1), axis=0)
        assert (winner == i - 1).all()


def test_config_from_checkpoint_and_mismatch(setup, tmp_path: Path) -> None:
    _, _, weights = setup
    alone = tmp_path / "alone.pth"  # no config.yaml beside it: the stored config is used
    alone.write_bytes(weights.read_bytes())
    cfg = load_predict_config(alone, opts=["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.3"])
    assert list(cfg.INPUT.CHANNELS) == ["pcna", "dic", "otsu_mask"]
    assert cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST == pytest.approx(0.3)
    with pytest.raises(WeightsError, match="not found"):
        load_predict_config(tmp_path / "missing.pth")
    from pcna_seg.config.config import load_config

    two = load_config(CFG, [*OPTS, "MODEL.ROI_HEADS.NUM_CLASSES", "2"])
    with pytest.raises(WeightsError, match="names 3 classes"):
        Predictor(two, weights)
    with pytest.raises(WeightsError, match="does not fit the config"):  # heads would be random
        Predictor(two, weights, class_names=["a", "b"])


def test_model_output_is_rescaled_to_the_original_size() -> None:
    from pcna_seg.modeling.postprocess import to_prediction

    masks = torch.full((2, 1, 28, 28), 0.9)  # the mask head's box-frame probabilities
    masks[1] = 0.2  # below 0.5 everywhere: an empty mask, dropped
    out = {
        "boxes": torch.tensor([[8.0, 8.0, 24.0, 16.0], [0.0, 0.0, 2.0, 2.0]]),
        "labels": torch.tensor([3, 1]),
        "scores": torch.tensor([0.8, 0.7]),
        "masks": masks,
        "class_probs": torch.tensor([[0.1, 0.05, 0.05, 0.8], [0.3, 0.7, 0.0, 0.0]]),
    }
    pred = to_prediction(out, (32, 32), (64, 64), NAMES)  # model saw the image at half size
    assert len(pred) == 1 and pred.labels.tolist() == [2] and pred.phases == ["M"]
    np.testing.assert_allclose(pred.boxes[0], [16, 16, 48, 32])
    ys, xs = np.nonzero(pred.masks[0])  # pasted into the scaled box, within a pixel of its edges
    assert (
        abs(ys.min() - 16) <= 1
        and abs(ys.max() - 31) <= 1
        and abs(xs.min() - 16) <= 1
        and abs(xs.max() - 47) <= 1
    )
    assert pred.mask_crops[0].shape == (
        ys.max() - ys.min() + 1,
        xs.max() - xs.min() + 1,
    )  # crop, not a full image
    np.testing.assert_allclose(pred.class_probs[0], np.array([0.05, 0.05, 0.8]) / 0.9, rtol=1e-5)

    pasted = {k: v for k, v in out.items() if k != "masks"}  # an engine that pastes masks itself
    pasted["image_masks"] = torch.zeros((2, 1, 32, 32))
    pasted["image_masks"][0, 0, 8:16, 8:24] = 0.9
    two = to_prediction(pasted, (32, 32), (64, 64), NAMES)
    ys, xs = np.nonzero(two.masks[0])
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (16, 31, 16, 47)

    empty = {k: v[:0] for k, v in out.items()}
    none = to_prediction(empty, (32, 32), (64, 64), NAMES)
    assert len(none) == 0 and none.masks.shape == (0, 64, 64) and none.class_probs.shape == (0, 3)
    assert not none.to_label_image().any()
