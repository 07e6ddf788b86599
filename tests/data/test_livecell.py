"""LIVECell converter: polygons (dict-keyed annotations) round-trip; sequences; bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from _roundtrip import assert_roundtrip

from pcna_seg.data.converters import get_converter
from pcna_seg.data.converters.base import resolve_rle_overlaps
from pcna_seg.data.converters.livecell import (
    convert,
    recommended_max_dets,
    sequence_of,
)
from pcna_seg.data.image_io import read_image, write_image
from pcna_seg.data.structures import mask_to_rle, resolve_overlaps, rle_to_mask
from pcna_seg.data.synthetic import get_writer
from pcna_seg.data.synthetic.write_livecell import write
from pcna_seg.errors import DataError

JSON = Path("annotations") / "LIVECell" / "livecell_coco_train.json"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory):
    src = tmp_path_factory.mktemp("live_src")
    return src, write(src, seed=2, n_images=7)


def test_registered() -> None:
    assert get_converter("livecell") is convert
    assert get_writer("livecell") is write


def test_helpers() -> None:
    assert sequence_of("A172_Phase_C7_1_00d04h00m_3") == "A172_C7_1"
    assert sequence_of("odd_name") == "odd_name"
    assert recommended_max_dets(300) == [100, 500, 2000]
    assert recommended_max_dets(3001) == [100, 500, 4000]


def test_rle_overlaps_match_structures_rule() -> None:
    rng = np.random.default_rng(0)
    masks = []
    for _ in range(12):
        m = np.zeros((40, 50), dtype=bool)
        y, x, h, w = rng.integers(0, 30), rng.integers(0, 40), rng.integers(2, 12), rng.integers(2, 12)
        m[y : y + h, x : x + w] = True
        masks.append(m)
    masks.append(masks[0].copy())  # an exact duplicate: equal areas, later one wins
    expected, n_exp = resolve_overlaps(masks)
    rles = [{"size": [40, 50], "counts": mask_to_rle(m)["counts"].encode()} for m in masks]
    got, n_got = resolve_rle_overlaps(rles, 40, 50)
    assert n_got == n_exp > 0
    for e, g in zip(expected, got):
        if g is None:
            assert not e.any()
        else:
            assert np.array_equal(rle_to_mask({"size": g["size"], "counts": g["counts"].decode()}), e)


def test_writer_layout(live) -> None:
    src, gt = live
    data = json.loads((src / JSON).read_text())
    assert isinstance(data["annotations"], dict) and isinstance(
        next(iter(data["annotations"].values()))["segmentation"], list
    )
    img = read_image(src / "images" / "livecell_train_val_images" / "A172" / f"{gt.images[0].key}.tif")
    assert img.dtype == np.uint8 and img.shape == (120, 160)


def test_roundtrip_single_json(live, tmp_path: Path) -> None:
    src, gt = live
    card = convert(src / JSON, tmp_path / "out", progress=False, workers=2)
    assert_roundtrip(gt, tmp_path / "out")
    assert card["split"]["by"] == "sequence" and card["sequences"] == 3
    assert card["evaluation"]["TEST.MAX_DETS"] == [100, 500, 2000]
    assert card["blank_images"] == 1 and card["classes"] == ["cell"]
    assert any("overlapping pixels" in n for n in card["notes"]), "synthetic polygons should overlap"


def test_roundtrip_split_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    gt = write(src, seed=4, n_images=6, split_files=True)
    out = tmp_path / "out"
    card = convert(src, out, progress=False, workers=1)
    assert_roundtrip(gt, out)
    split = json.loads((out / "split.json").read_text())
    assert (
        split["by"] == "files" and all(k.startswith("BV2") for k in split["val"]) and len(split["val"]) == 2
    )
    assert card["split"] == {"train": 4, "val": 2, "by": "files"}


def _expect_error(src: Path, out: Path, needle: str, **kw) -> None:
    with pytest.raises(DataError) as exc:
        convert(src, out, progress=False, workers=1, **kw)
    assert needle in str(exc.value)
    assert not (out / "annotations.json").exists()


def test_missing_image(live, tmp_path: Path) -> None:
    src, gt = live
    img = tmp_path / "images"
    shutil.copytree(src / "images", img)
    victim = next(img.rglob(f"{gt.images[1].key}.tif"))
    victim.unlink()
    _expect_error(src / JSON, tmp_path / "out", victim.name, image_root=img)


def test_size_mismatch(live, tmp_path: Path) -> None:
    src, gt = live
    img = tmp_path / "images"
    shutil.copytree(src / "images", img)
    victim = next(img.rglob(f"{gt.images[0].key}.tif"))
    write_image(victim, np.zeros((50, 60), np.uint8))
    _expect_error(src / JSON, tmp_path / "out", victim.name, image_root=img)


def _edit_json(src: Path, tmp_path: Path, edit) -> Path:
    data = json.loads((src / JSON).read_text())
    edit(data)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    return path


def test_unknown_category(live, tmp_path: Path) -> None:
    src, _ = live
    path = _edit_json(src, tmp_path, lambda d: next(iter(d["annotations"].values())).update(category_id=7))
    _expect_error(path, tmp_path / "out", "edited.json", image_root=src / "images")


def test_rle_size_mismatch(live, tmp_path: Path) -> None:
    src, _ = live
    bad = {"size": [10, 10], "counts": mask_to_rle(np.ones((10, 10), bool))["counts"]}
    path = _edit_json(src, tmp_path, lambda d: next(iter(d["annotations"].values())).update(segmentation=bad))
    _expect_error(path, tmp_path / "out", "edited.json", image_root=src / "images")


def test_malformed_json(tmp_path: Path) -> None:
    path = tmp_path / "livecell_coco_train.json"
    path.write_text('{"images": [')
    _expect_error(path, tmp_path / "out", str(path))


def test_empty_polygon_skipped(live, tmp_path: Path) -> None:
    src, gt = live
    add = {
        "id": 99999,
        "image_id": 1000,
        "category_id": 1,
        "segmentation": [[1, 1, 1, 1, 1, 1]],
        "iscrowd": 0,
    }
    path = _edit_json(src, tmp_path, lambda d: d["annotations"].update({"99999": add}))
    card = convert(path, tmp_path / "out", image_root=src / "images", progress=False, workers=1)
    assert "1 empty instance masks were skipped" in card["notes"]
    assert card["instances"] == sum(int(g.labels.max()) for g in gt.images)
