"""PCNA converters ("pcna_via", "pcna_masks"): round trips from the synthetic writers and bad input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
from pycocotools.coco import COCO

from pcna_seg.data.converters import get_converter
from pcna_seg.data.converters.pcna import discover
from pcna_seg.data.converters.pcna_via import frame_for_name
from pcna_seg.data.structures import mask_to_bbox
from pcna_seg.data.synthetic import get_writer
from pcna_seg.errors import DataError

H = W = 96
SMALL = {"n_movies": 2, "n_frames": 3, "height": H, "width": W, "n_nuclei": 8}


def _n_touching(labels: np.ndarray) -> int:
    """Number of distinct pairs of instances with 4-adjacent pixels."""
    pairs = set()
    for a, b in ((labels[:, 1:], labels[:, :-1]), (labels[1:, :], labels[:-1, :])):
        m = (a > 0) & (b > 0) & (a != b)
        pairs |= {tuple(sorted(p)) for p in zip(a[m].tolist(), b[m].tolist())}
    return len(pairs)


def _check_round_trip(out: Path, gt) -> COCO:
    """COCO loads; per image the set of decoded masks, classes, sequence and boxes equal the GT."""
    coco = COCO(str(out / "annotations.json"))
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    assert [names[k] for k in sorted(names)] == gt.class_names
    truth = gt.by_key()
    assert set(coco.imgs) == set(truth)
    for img_id, img in coco.imgs.items():
        g = truth[img_id]
        assert img["sequence"] == g.sequence
        assert (img["height"], img["width"]) == g.labels.shape
        assert set(img["channels"]) == {"pcna", "dic"}
        assert img["file_name"] == img["channels"]["pcna"]
        expected = {(g.labels == k).tobytes(): cls for k, cls in g.classes.items()}
        got = {}
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[img_id])):
            m = coco.annToMask(ann).astype(bool)
            assert ann["bbox"] == mask_to_bbox(m) and ann["area"] == float(m.sum())
            got[m.tobytes()] = names[ann["category_id"]]
        assert got == expected, img_id
    split = json.loads((out / "split.json").read_text())
    seqs = {k: {coco.imgs[i]["sequence"] for i in split[k]} for k in ("train", "val")}
    assert seqs["train"] and seqs["val"] and not seqs["train"] & seqs["val"]
    assert sorted(split["train"] + split["val"]) == sorted(truth)
    return coco


@pytest.mark.parametrize("stacked", [True, False])
def test_via_round_trip(tmp_path, stacked):
    gt = get_writer("pcna_via")(tmp_path / "src", seed=1, stacked=stacked, mixed_spellings=True, **SMALL)
    assert any(not g.classes for g in gt.images)  # a blank frame
    assert {c for g in gt.images for c in g.classes.values()} == {"G1/G2", "S", "M"}
    assert sum(_n_touching(g.labels) for g in gt.images) > 0
    card = get_converter("pcna_via")(tmp_path / "src", tmp_path / "out", progress=False)
    coco = _check_round_trip(tmp_path / "out", gt)
    assert any("given to the smallest region" in n for n in card["notes"])  # touching outlines overlap
    assert card["images"] == len(gt.images) and card["blank_images"] >= 1 and card["sequences"] == 2
    # frame t of the movie is copied exactly (stack page / per-frame file → out/images)
    src_name = "mcf10a_s02_mcy.tif" if stacked else "mcf10a_s02_t0002_mcy.tif"
    src = tifffile.imread(tmp_path / "src" / src_name)
    copied = tifffile.imread(tmp_path / "out" / coco.imgs["mcf10a_s02_0002"]["file_name"])
    assert copied.dtype == np.uint16 and np.array_equal(copied, src[2] if stacked else src)


@pytest.mark.parametrize(("stacked", "csv_key"), [(True, "movie"), (False, "file")])
def test_masks_round_trip(tmp_path, stacked, csv_key):
    gt = get_writer("pcna_masks")(tmp_path / "src", seed=2, stacked=stacked, csv_key=csv_key, **SMALL)
    assert sum(_n_touching(g.labels) for g in gt.images) > 0
    card = get_converter("pcna_masks")(tmp_path / "src", tmp_path / "out", progress=False)
    _check_round_trip(tmp_path / "out", gt)
    assert card["instances"] == sum(len(g.classes) for g in gt.images)
    assert any("blank" in n for n in card["notes"])


def test_e_phase_round_trip_and_rejected_when_not_configured(tmp_path):
    phases = ("G1/G2", "S", "M", "E")
    gt = get_writer("pcna_via")(tmp_path / "src", seed=3, phases=phases, **SMALL)
    assert "E" in {c for g in gt.images for c in g.classes.values()}
    card = get_converter("pcna_via")(tmp_path / "src", tmp_path / "out", phases=phases, progress=False)
    assert card["classes"] == list(phases) and card["instances_per_class"]["E"] > 0
    _check_round_trip(tmp_path / "out", gt)
    with pytest.raises(DataError, match=r"via_project\.json.*allowed phases: G1/G2, S, M$"):
        get_converter("pcna_via")(tmp_path / "src", tmp_path / "out3", progress=False)
    assert not (tmp_path / "out3" / "annotations.json").exists()


# ---------------------------------------------------------------- hand-made VIA projects


def _tiny(tmp_path: Path, regions: list[dict], *, shape=(2, 40, 30), dic_shape=None) -> Path:
    """One stacked movie "mov" and a VIA project annotating frame 1 (``mov-0001.png``)."""
    src = tmp_path / "src"
    src.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    tifffile.imwrite(src / "mov_mcy.tif", rng.integers(100, 4000, shape, dtype=np.uint16))
    tifffile.imwrite(src / "mov_dic.tif", rng.integers(100, 4000, dic_shape or shape, dtype=np.uint16))
    meta = {
        "mov-0001.png-1": {"filename": "mov-0001.png", "size": -1, "regions": regions, "file_attributes": {}}
    }
    (src / "project.json").write_text(json.dumps({"_via_settings": {}, "_via_img_metadata": meta}))
    return src


def _poly(xs, ys, phase="G1/G2"):
    return {
        "shape_attributes": {"name": "polygon", "all_points_x": xs, "all_points_y": ys},
        "region_attributes": {"phase": phase},
    }


def _masks(out: Path):
    coco = COCO(str(out / "annotations.json"))
    anns = coco.loadAnns(coco.getAnnIds())
    return coco, [coco.annToMask(a).astype(bool) for a in anns], anns


def test_tall_thin_polygon_box_from_mask(tmp_path):
    src = _tiny(tmp_path, [_poly([10, 12, 12, 10], [2, 2, 38, 38], "S")])
    get_converter("pcna_via")(src, tmp_path / "out", progress=False)
    coco, masks, anns = _masks(tmp_path / "out")
    assert len(anns) == 1 and coco.imgs["mov_0001"]["frame"] == 1
    # a box from min(y) for ymax would have height 0; the box must span the whole mask
    assert anns[0]["bbox"] == mask_to_bbox(masks[0]) == [10.0, 2.0, 2.0, 36.0]
    assert coco.cats[anns[0]["category_id"]]["name"] == "S"


def test_other_shapes(tmp_path):
    def region(phase, **shape):
        return {"shape_attributes": shape, "region_attributes": {"phase": phase}}

    regions = [
        region("M", name="rect", x=2, y=3, width=5, height=7),
        region("S", name="circle", cx=20, cy=10, r=5),
        region("g1", name="ellipse", cx=15, cy=28, rx=9, ry=4, theta=np.pi / 2),
    ]
    get_converter("pcna_via")(_tiny(tmp_path, regions), tmp_path / "out", progress=False)
    _, masks, anns = _masks(tmp_path / "out")
    assert len(masks) == 3
    assert anns[0]["bbox"] == [2.0, 3.0, 5.0, 7.0] and masks[0].sum() == 35  # rect: exactly w×h pixels
    assert abs(masks[1].sum() - np.pi * 25) < 0.15 * np.pi * 25
    x, y, w, h = anns[2]["bbox"]  # rotated 90°: the long axis is vertical
    assert h > w and abs(masks[2].sum() - np.pi * 36) < 0.15 * np.pi * 36


def test_overlapping_polygons_smallest_keeps_pixels(tmp_path, caplog):
    big = _poly([2, 20, 20, 2], [2, 2, 20, 20])
    small = _poly([15, 25, 25, 15], [15, 15, 25, 25], "S")
    with caplog.at_level(logging.WARNING):
        card = get_converter("pcna_via")(_tiny(tmp_path, [big, small]), tmp_path / "out", progress=False)
    _, masks, anns = _masks(tmp_path / "out")
    assert not (masks[0] & masks[1]).any()
    assert masks[1].sum() == 100 and masks[0].sum() == 18 * 18 - 25  # small keeps the 5×5 overlap
    assert any("overlapping" in r.message for r in caplog.records)
    assert any("25 pixels" in n for n in card["notes"])


def test_degenerate_and_outside_regions_skipped(tmp_path, caplog):
    regions = [
        _poly([1, 5], [1, 5]),  # 2 vertices
        _poly([3, 8, 13], [3, 3, 3]),  # zero area
        _poly([100, 120, 120], [100, 100, 120]),  # wholly outside the 30×40 image
        _poly([20, 40, 40, 20], [30, 30, 50, 50], "M"),  # partly outside: clipped
    ]
    with caplog.at_level(logging.WARNING):
        card = get_converter("pcna_via")(_tiny(tmp_path, regions), tmp_path / "out", progress=False)
    _, masks, anns = _masks(tmp_path / "out")
    assert len(anns) == 1 and anns[0]["bbox"] == [20.0, 30.0, 10.0, 10.0]  # clipped at W=30, H=40
    assert any("3 empty VIA region" in n for n in card["notes"])
    assert any("skipped 3 empty" in r.message for r in caplog.records)


def test_unannotated_frames_left_out_and_blank_entry_kept(tmp_path):
    card = get_converter("pcna_via")(_tiny(tmp_path, []), tmp_path / "out", progress=False)
    assert card["images"] == 1 and card["blank_images"] == 1
    assert any("without a VIA entry" in n for n in card["notes"])


def test_frame_name_mapping(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    img = np.zeros((8, 8), np.uint16)
    tifffile.imwrite(src / "mov_mcy.tif", np.zeros((3, 8, 8), np.uint16))
    for t in (1, 2):
        tifffile.imwrite(src / f"pos-7_t{t:04d}_mcy.tif", img)
    layout = discover(src, require_dic=False)
    j = src / "p.json"
    from pcna_seg.data.converters.pcna import DEFAULT_FRAME_REGEX as rx

    assert frame_for_name("mov-0002.png", layout, rx, 0, "mcy", j).image_id == "mov_0002"
    assert frame_for_name("C:\\x\\mov_t0001.tif", layout, rx, 0, "mcy", j).image_id == "mov_0001"
    assert frame_for_name("pos-7_t0002_mcy.tif", layout, rx, 0, "mcy", j).pcna.name == "pos-7_t0002_mcy.tif"
    assert frame_for_name("pos-7_t0001.png", layout, rx, 0, "mcy", j).image_id == "pos-7_0001"
    assert frame_for_name("mov-0003.png", layout, rx, 1, "mcy", j).image_id == "mov_0002"  # 1-based names
    with pytest.raises(DataError, match=r"p\.json.*'mov-0009\.png'"):
        frame_for_name("mov-0009.png", layout, rx, 0, "mcy", j)


# ---------------------------------------------------------------- bad input: DataError names the file


def _fails(src, out, match, fmt="pcna_via", **opts):
    with pytest.raises(DataError, match=match):
        get_converter(fmt)(src, out, progress=False, **opts)
    assert not (Path(out) / "annotations.json").exists()


def test_unknown_phase_lists_allowed(tmp_path):
    src = _tiny(tmp_path, [_poly([2, 9, 9], [2, 2, 9], "G0")])
    _fails(src, tmp_path / "out", r"'G0'.*project\.json.*allowed phases: G1/G2, S, M")


def test_missing_phase_attribute_and_default(tmp_path):
    region = {"shape_attributes": {"name": "polygon", "all_points_x": [2, 9, 9], "all_points_y": [2, 2, 9]}}
    src = _tiny(tmp_path, [region])
    _fails(src, tmp_path / "out", r"project\.json.*no 'phase'")
    card = get_converter("pcna_via")(src, tmp_path / "ok", progress=False, default_phase="G1")
    assert card["instances_per_class"] == {"G1/G2": 1, "S": 0, "M": 0}


def test_malformed_via_json(tmp_path):
    src = _tiny(tmp_path, [])
    (src / "project.json").write_text('{"a": [1, 2,')
    _fails(src, tmp_path / "out", r"Malformed JSON.*project\.json")
    (src / "project.json").write_text('{"x": {"regions": []}}')
    _fails(src, tmp_path / "out", r"project\.json.*no 'filename'")


def test_unsupported_shape(tmp_path):
    region = {"shape_attributes": {"name": "polyline", "all_points_x": [1, 5], "all_points_y": [1, 5]}}
    _fails(_tiny(tmp_path, [region]), tmp_path / "out", r"project\.json.*unsupported region shape 'polyline'")


def test_missing_dic_file(tmp_path):
    src = _tiny(tmp_path, [_poly([2, 9, 9], [2, 2, 9])])
    (src / "mov_dic.tif").unlink()
    _fails(src, tmp_path / "out", r"DIC file not found: .*mov_dic\.tif")
    card = get_converter("pcna_via")(src, tmp_path / "ok", progress=False, require_dic=False)
    img = json.loads((tmp_path / "ok" / "annotations.json").read_text())["images"][0]
    assert card["images"] == 1 and set(img["channels"]) == {"pcna"}


def test_pcna_dic_size_mismatch(tmp_path):
    src = _tiny(tmp_path, [], dic_shape=(2, 40, 31))
    _fails(src, tmp_path / "out", r"mov_dic\.tif.*mov_mcy\.tif")


def test_corrupt_tiff_and_nan_pixels(tmp_path):
    src = _tiny(tmp_path, [])
    (src / "mov_dic.tif").write_bytes(b"II*\x00garbage")
    _fails(src, tmp_path / "out", r"mov_dic\.tif")
    tifffile.imwrite(src / "mov_dic.tif", np.zeros((2, 40, 30), np.uint16))
    tifffile.imwrite(src / "mov_mcy.tif", np.full((2, 40, 30), np.nan, np.float32))
    _fails(src, tmp_path / "out", r"NaN.*mov_mcy\.tif|mov_mcy\.tif.*NaN")


def test_unmatched_via_filename(tmp_path):
    src = _tiny(tmp_path, [])
    data = json.loads((src / "project.json").read_text())
    data["_via_img_metadata"]["mov-0001.png-1"]["filename"] = "other-0001.png"
    (src / "project.json").write_text(json.dumps(data))
    _fails(src, tmp_path / "out", r"project\.json.*'other-0001\.png' matches no PCNA frame")


# ---------------------------------------------------------------- masks + CSV


def _masks_src(tmp_path, **opts) -> Path:
    get_writer("pcna_masks")(tmp_path / "src", seed=4, **(SMALL | opts))
    return tmp_path / "src"


def _rewrite_csv(src: Path, keep) -> None:
    lines = (src / "phases.csv").read_text().splitlines()
    (src / "phases.csv").write_text("\n".join([lines[0]] + [ln for ln in lines[1:] if keep(ln)]) + "\n")


def test_masks_missing_phase_row_and_default(tmp_path):
    src = _masks_src(tmp_path)
    _rewrite_csv(src, lambda ln: not ln.startswith("mcf10a_s02,2,3,"))
    _fails(src, tmp_path / "out", r"phases\.csv has no row for frame 2, label 3", fmt="pcna_masks")
    card = get_converter("pcna_masks")(src, tmp_path / "ok", progress=False, default_phase="M")
    assert card["instances_per_class"]["M"] >= 1


def test_masks_extra_row_warns(tmp_path, caplog):
    src = _masks_src(tmp_path)
    with open(src / "phases.csv", "a") as fh:
        fh.write("mcf10a_s01,0,999,S\n")
    with caplog.at_level(logging.WARNING):
        card = get_converter("pcna_masks")(src, tmp_path / "out", progress=False)
    assert any("1 phase CSV row(s)" in n for n in card["notes"])
    assert any("absent from the masks" in r.message for r in caplog.records)


def test_masks_unknown_phase_and_missing_movie_column(tmp_path):
    src = _masks_src(tmp_path)
    text = (src / "phases.csv").read_text()
    (src / "phases.csv").write_text(text.replace(",S\n", ",Q\n", 1))
    _fails(src, tmp_path / "out", r"'Q'.*phases\.csv line \d+.*allowed phases", fmt="pcna_masks")
    (src / "phases.csv").write_text("frame,label,phase\n0,1,S\n")
    _fails(src, tmp_path / "out", r"phases\.csv has no 'movie' or 'file' column", fmt="pcna_masks")
    (src / "phases.csv").write_text("frame;label;phase\n")
    _fails(src, tmp_path / "out", r"phases\.csv lacks column", fmt="pcna_masks")


def test_masks_size_mismatch_missing_and_dtype(tmp_path):
    src = _masks_src(tmp_path)
    good = tifffile.imread(src / "mcf10a_s01_mask.tif")
    tifffile.imwrite(src / "mcf10a_s01_mask.tif", good[:, :-1])
    _fails(src, tmp_path / "out", r"Mask .*mcf10a_s01_mask\.tif has shape", fmt="pcna_masks")
    tifffile.imwrite(src / "mcf10a_s01_mask.tif", good.astype(np.float32))
    _fails(src, tmp_path / "out", r"Mask .*mcf10a_s01_mask\.tif holds float32", fmt="pcna_masks")
    (src / "mcf10a_s01_mask.tif").unlink()
    _fails(src, tmp_path / "out", r"Mask file not found: .*mcf10a_s01_mask\.tif", fmt="pcna_masks")


def test_duplicate_frame_files(tmp_path):
    src = _masks_src(tmp_path, stacked=False, n_movies=1, csv_key=None)
    sub = src / "again"
    sub.mkdir()
    for tag in ("mcy", "dic", "mask"):
        name = f"mcf10a_s01_t0001_{tag}.tif"
        (sub / name).write_bytes((src / name).read_bytes())
    _fails(src, tmp_path / "out", r"both hold frame 1 of movie 'mcf10a_s01'", fmt="pcna_masks")
