"""DatasetMapper: records → tensors, augmentations, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from pcna_seg.config.defaults import get_default_config
from pcna_seg.data import transforms as T
from pcna_seg.data.boxes import boxes_from_masks
from pcna_seg.data.mapper import DatasetMapper
from pcna_seg.data.structures import labels_to_masks, make_annotation, mask_to_polygons
from pcna_seg.data.synthetic.nuclei import DEFAULT_PHASES, make_pcna_frame
from pcna_seg.errors import ConfigError, DataError

RECIPE = ["pcna", "dic", "otsu_mask"]


def write_record(tmp_path, seed=0, h=96, w=128, n=10, blank=False, name="img"):
    """A stage-3-like record (PCNA + DIC TIFFs); one annotation stored as polygons."""
    frame = make_pcna_frame(np.random.default_rng(seed), h, w, n_nuclei=n, blank=blank)
    pcna, dic = tmp_path / f"{name}_pcna.tif", tmp_path / f"{name}_dic.tif"
    tifffile.imwrite(pcna, frame.channels["pcna"])
    tifffile.imwrite(dic, frame.channels["dic"])
    ids, masks = labels_to_masks(frame.labels)
    anns = [make_annotation(m, DEFAULT_PHASES.index(frame.phases[int(i)])) for i, m in zip(ids, masks)]
    if anns:
        anns[0]["segmentation"] = mask_to_polygons(masks[0])
    rec = {"file_name": str(pcna), "height": h, "width": w, "image_id": seed, "annotations": anns,
           "channels": {"pcna": str(pcna), "dic": str(dic)}}  # fmt: skip
    return rec, frame


def _mapper(is_train=True, **kw):
    base = dict(channels=RECIPE, flip="none", seed=0)
    base.update(kw)
    return DatasetMapper(is_train=is_train, **base)


def _check_contract(out, n_classes=3):
    img, inst = out["image"], out["instances"]
    c, h, w = img.shape
    assert img.dtype == torch.float32 and c == 3
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    n = inst["labels"].shape[0]
    assert inst["boxes"].shape == (n, 4) and inst["boxes"].dtype == torch.float32
    assert inst["labels"].dtype == torch.int64 and inst["masks"].shape == (n, h, w)
    assert inst["masks"].dtype == torch.uint8
    if n:
        assert int(inst["labels"].min()) >= 1 and int(inst["labels"].max()) <= n_classes
        masks = inst["masks"].numpy()
        assert masks.reshape(n, -1).any(axis=1).all()  # no empty instance survives
        assert np.array_equal(inst["boxes"].numpy(), boxes_from_masks(masks))  # boxes from masks
        assert (inst["boxes"][:, 2] > inst["boxes"][:, 0]).all()
    return n


def _alignment(out) -> float:
    """Mean normalised PCNA inside instance masks minus outside: > 0 when masks sit on nuclei."""
    img, masks = out["image"].numpy(), out["instances"]["masks"].numpy()
    fg = masks.any(axis=0)
    return float(img[0][fg].mean() - img[0][~fg].mean())


def test_test_mode_contract_and_labels(tmp_path):
    rec, frame = write_record(tmp_path, seed=1)
    out = _mapper(is_train=False)(rec)
    n = _check_contract(out)
    assert n == frame.n_instances  # nothing dropped without augmentation
    assert out["height"] == 96 and out["width"] == 128 and out["image"].shape[1:] == (96, 128)
    expected = sorted(DEFAULT_PHASES.index(p) + 1 for p in frame.phases.values())
    assert sorted(out["instances"]["labels"].tolist()) == expected
    masks = out["instances"]["masks"].numpy().astype(bool)
    for i in range(1, n):  # RLE annotations come back exactly, in order
        assert np.array_equal(masks[i], frame.labels == i + 1)
    first = frame.labels == 1  # stored as polygons: close, not exact
    assert (masks[0] & first).sum() / (masks[0] | first).sum() > 0.7
    assert out["file_name"] == rec["file_name"] and out["image_id"] == 1


def test_test_resize_keeps_original_size_fields(tmp_path):
    rec, _ = write_record(tmp_path, seed=2)
    out = _mapper(is_train=False, min_size_test=48, max_size_test=1000)(rec)
    assert out["image"].shape[1:] == (48, 64) and (out["height"], out["width"]) == (96, 128)
    _check_contract(out)
    assert _alignment(out) > 0.2


def test_blank_image_gives_empty_tensors(tmp_path):
    rec, _ = write_record(tmp_path, blank=True)
    out = _mapper(crop_enabled=True, crop_type="absolute", crop_size=[64, 64], flip="both")(rec)
    assert _check_contract(out) == 0
    assert out["instances"]["masks"].shape == (0, 64, 64) and out["instances"]["boxes"].shape == (0, 4)


def test_train_augmentations_keep_masks_on_nuclei(tmp_path):
    rec, _ = write_record(tmp_path, seed=3, n=14)
    mapper = _mapper(
        min_size_train=(64, 112),
        min_size_sampling="range",
        max_size_train=150,
        crop_enabled=True,
        crop_type="relative_range",
        crop_size=[0.5, 0.5],
        flip="both",
        rotate90=True,
    )
    shapes = set()
    for _ in range(6):
        out = mapper(rec)
        _check_contract(out)
        assert _alignment(out) > 0.2
        assert set(np.unique(out["image"][2].numpy())) <= {0.0, 1.0}  # otsu stays binary
        shapes.add(tuple(out["image"].shape[1:]))
    assert len(shapes) > 1  # random sizes / rotations


def test_crop_drops_emptied_instances(tmp_path):
    rec, frame = write_record(tmp_path, seed=4, n=20)
    out = _mapper(crop_enabled=True, crop_type="absolute", crop_size=[32, 32])(rec)
    n = _check_contract(out)
    assert 0 <= n < frame.n_instances
    assert out["image"].shape[1:] == (32, 32)


def test_absolute_crop_larger_than_image_names_file_and_key(tmp_path):
    rec, _ = write_record(tmp_path, seed=5)
    with pytest.raises(DataError) as err:
        _mapper(crop_enabled=True, crop_type="absolute", crop_size=[200, 200])(rec)
    assert "INPUT.CROP.SIZE" in str(err.value) and "img_pcna.tif" in str(err.value)


def test_intensity_jitter_touches_fluorescence_only(tmp_path):
    rec, _ = write_record(tmp_path, seed=6)
    kw = dict(channels=["pcna", "pcna", "dic", "otsu_mask"], flip="both", rotate90=True)
    plain = _mapper(**kw)(rec)["image"]
    jit = _mapper(intensity_enabled=True, intensity_brightness=0.2, intensity_contrast=0.3, **kw)(rec)[
        "image"
    ]
    assert torch.equal(plain[2:], jit[2:])  # DIC and the Otsu mask untouched
    assert not torch.equal(plain[0], jit[0])
    assert torch.equal(jit[0], jit[1])  # both PCNA copies jittered alike
    with pytest.raises(ConfigError, match="INPUT.INTENSITY.CHANNELS"):
        _mapper(intensity_channels=["pcna", "dic"])


def test_resize_plans():
    assert T.sample_resize_shape(100, 200, [50], "choice", 1000, None) == (50, 100)
    assert T.sample_resize_shape(100, 200, [80], "choice", 120, None) == (60, 120)  # long edge capped
    assert T.sample_resize_shape(100, 200, [0], "choice", 0, None) == (100, 200)
    rng = np.random.default_rng(0)
    shorts = {T.sample_resize_shape(100, 200, [60, 70], "range", 0, rng)[0] for _ in range(50)}
    assert shorts <= set(range(60, 71)) and len(shorts) > 3
    with pytest.raises(ConfigError, match="MIN_SIZE_TRAIN"):
        T.sample_resize_shape(100, 200, [60], "range", 0, rng)


def test_seeded_and_per_worker_streams(tmp_path, monkeypatch):
    rec, _ = write_record(tmp_path, seed=7)
    kw = dict(crop_enabled=True, crop_type="relative_range", crop_size=[0.3, 0.3], flip="both", rotate90=True)
    a = [_mapper(**kw)(rec)["image"] for _ in range(2)]
    assert torch.equal(a[0], a[1])  # same seed, same augmentation

    class Info:
        def __init__(self, seed):
            self.seed, self.id = seed, 0

    draws = []
    for worker_seed in (11, 12):
        mapper = _mapper(**kw)
        monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda s=worker_seed: Info(s))
        draws.append(
            [tuple(mapper(rec)["image"].shape) + (float(mapper(rec)["image"].sum()),) for _ in range(3)]
        )
    assert draws[0] != draws[1]


def test_category_outside_num_classes_and_from_config(tmp_path):
    rec, _ = write_record(tmp_path, seed=8)
    with pytest.raises(DataError, match="NUM_CLASSES"):
        _mapper(num_classes=1)(rec)
    cfg = get_default_config()
    cfg.INPUT.CHANNELS = RECIPE
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    native = DatasetMapper.from_config(cfg, is_train=False)  # default: fixed scale, factor 1
    assert tuple(native(rec)["image"].shape[1:]) == (rec["height"], rec["width"])
    cfg.INPUT.SCALE.MODE = "short_edge"
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.CROP.ENABLED = True
    mapper = DatasetMapper.from_config(cfg, is_train=True)
    assert mapper.channels == RECIPE and mapper.num_classes == 3 and mapper.crop_enabled
    out = mapper(rec)
    _check_contract(out)
    assert min(out["image"].shape[1:]) <= 64
    test_mapper = DatasetMapper.from_config(cfg, is_train=False)
    assert tuple(test_mapper(rec)["image"].shape[1:]) == (800, 1067)  # MIN_SIZE_TEST 800 default


def test_bbox_restricted_resample_equals_full_resample():
    rng = np.random.default_rng(9)
    for _ in range(20):
        mask = np.zeros((57, 83), bool)
        y, x = rng.integers(0, 50), rng.integers(0, 75)
        mask[y : y + rng.integers(1, 9), x : x + rng.integers(1, 9)] = True
        new_h, new_w = int(rng.integers(20, 120)), int(rng.integers(20, 160))
        y0, x0 = int(rng.integers(0, new_h // 3)), int(rng.integers(0, new_w // 3))
        rows = T.nearest_indices(57, new_h)[y0 : y0 + new_h // 2]
        cols = T.nearest_indices(83, new_w)[x0 : x0 + new_w // 2]
        out = np.zeros((rows.size, cols.size), np.uint8)
        T.resample_mask_into(out, mask, rows, cols)
        assert np.array_equal(out, mask[np.ix_(rows, cols)].astype(np.uint8))


def test_photometric_augment_contract_and_channels(tmp_path):
    rec, frame = write_record(tmp_path, seed=10, n=12)
    aug = T.PhotometricAugment(
        enabled=True, gamma=(0.5, 2.0), contrast=(0.5, 1.5), brightness=0.1, blur_prob=1.0,
        blur_sigma=(0.5, 2.0), noise_prob=1.0, noise_std=0.05,
    )  # fmt: skip
    kw = dict(channels=["pcna", "pcna", "dic", "otsu_mask"], flip="both", rotate90=True, seed=3)
    plain = _mapper(**kw)(rec)
    outs = [_mapper(augment=aug, **kw)(rec) for _ in range(2)]
    assert torch.equal(outs[0]["image"], outs[1]["image"])  # seeded: reproducible
    img = outs[0]["image"]
    assert img.shape[0] == 4 and float(img.min()) >= 0 and float(img.max()) <= 1
    assert torch.equal(plain["image"][2:], img[2:])  # DIC and the Otsu mask untouched
    assert not torch.equal(plain["image"][0], img[0]) and torch.equal(img[0], img[1])
    for key in ("boxes", "labels", "masks"):  # geometry is not photometry
        assert torch.equal(plain["instances"][key], outs[0]["instances"][key])
    test_out = _mapper(is_train=False, augment=aug, **kw)(rec)  # never at test time
    assert torch.equal(test_out["image"], _mapper(is_train=False, **kw)(rec)["image"])


def test_augment_from_quick_config_keeps_contract(tmp_path):
    from pcna_seg.config.config import load_config

    rec, _ = write_record(tmp_path, seed=11, n=14)
    # the nucleus stages train with augmentation; stage 3 (phases from PCNA texture) without
    stage3 = Path(__file__).resolve().parents[2] / "configs/quick_schedules/quick_stage3_pcna.yaml"
    assert not DatasetMapper.from_config(load_config(str(stage3)), is_train=True).augment.enabled
    quick = Path(__file__).resolve().parents[2] / "configs/quick_schedules/quick_stage1_kaggle.yaml"
    cfg = load_config(str(quick), ["INPUT.CHANNELS", str(RECIPE), "MODEL.ROI_HEADS.NUM_CLASSES", "3"])
    mapper = DatasetMapper.from_config(cfg, is_train=True, seed=0)
    assert mapper.augment.enabled
    for _ in range(4):
        out = mapper(rec)
        _check_contract(out, n_classes=int(cfg.MODEL.ROI_HEADS.NUM_CLASSES))
        assert set(np.unique(out["image"][2].numpy())) <= {0.0, 1.0}  # otsu stays binary
        assert _alignment(out) > 0.1
