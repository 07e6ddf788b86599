"""The output-folder rule of every converter, values checked before any work, option types."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from pcna_seg.data.converters import get_converter
from pcna_seg.data.converters.options import parse_options
from pcna_seg.data.synthetic import get_writer, write_synthetic
from pcna_seg.errors import ConfigError, DataError, OutputExistsError


def _dsb(path: Path, n: int, seed: int = 0) -> Path:
    get_writer("dsb2018")(path, seed=seed, n_images=n, height=48, width=48, n_nuclei=3)
    return path


def _convert(src: Path, out: Path, **kw):
    return get_converter("dsb2018")(src, out, progress=False, workers=1, **kw)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_non_empty_output_refused_and_replaced_whole_with_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    _convert(_dsb(tmp_path / "a", 3), out)
    before = _snapshot(out)
    with pytest.raises(OutputExistsError, match=r"ds is not empty.*--overwrite"):
        _convert(_dsb(tmp_path / "b", 2, seed=1), out)
    assert _snapshot(out) == before  # refused before any work
    card = _convert(tmp_path / "b", out, overwrite=True)
    images = sorted(p.name for p in (out / "images").iterdir())
    coco = json.loads((out / "annotations.json").read_text())
    assert len(images) == 2 == card["images"]  # no stale image of the first dataset
    assert sorted(Path(i["file_name"]).name for i in coco["images"]) == images
    assert card["name"] == "ds" and json.loads((out / "dataset_card.json").read_text())["name"] == "ds"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left


def test_failed_overwrite_keeps_old_output_and_failed_new_output_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    _convert(_dsb(tmp_path / "a", 3), out)
    before = _snapshot(out)
    src = _dsb(tmp_path / "b", 4, seed=1)
    bad = sorted((src / "stage1_train").glob("*/images/*.png"))[-1]
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match=bad.name):
        _convert(src, out, overwrite=True)
    assert _snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(DataError, match=bad.name):
        _convert(src, tmp_path / "new")
    assert not (tmp_path / "new").exists()  # a re-run needs no --overwrite


@pytest.mark.parametrize("fraction", [1.5, 1.0, -0.1, float("nan")])
def test_val_fraction_checked_before_any_work(tmp_path: Path, fraction: float) -> None:
    with pytest.raises(ConfigError, match=r"--val-fraction must be in \[0, 1\)"):
        _convert(_dsb(tmp_path / "a", 2), tmp_path / "out", val_fraction=fraction)
    assert not (tmp_path / "out").exists()


def test_output_is_not_the_source_nor_inside_it(tmp_path: Path) -> None:
    src = _dsb(tmp_path / "a", 2)
    with pytest.raises(ConfigError, match="is the source folder"):
        _convert(src, src, overwrite=True)
    with pytest.raises(ConfigError, match="lies inside the source"):
        _convert(src, src / "prepared")
    with pytest.raises(ConfigError, match="which --overwrite would replace"):
        _convert(src, tmp_path, overwrite=True)
    assert not (src / "prepared").exists() and (src / "stage1_train").is_dir()


def test_livecell_annotation_of_unknown_image_warned_and_noted(tmp_path: Path, caplog) -> None:
    get_writer("livecell")(tmp_path / "src", seed=0, n_images=2, height=48, width=64, n_nuclei=4)
    jpath = next((tmp_path / "src").rglob("*.json"))
    data = json.loads(jpath.read_text())
    ann = dict(next(iter(data["annotations"].values())), id=999999, image_id=123456789)
    data["annotations"]["999999"] = ann
    jpath.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        card = get_converter("livecell")(jpath, tmp_path / "out", progress=False, workers=1)
    assert any("123456789" in r.getMessage() and "dropped" in r.getMessage() for r in caplog.records)
    assert any("1 annotation(s)" in n and "image_id" in n for n in card["notes"])


def test_option_values_checked_against_parameter_types() -> None:
    dsb, masks = get_converter("dsb2018"), get_converter("pcna_masks")
    with pytest.raises(ConfigError, match="--option workers expects an integer, got 'two'"):
        parse_options(["workers=two"], dsb, "format dsb2018")
    with pytest.raises(ConfigError, match="--option require_dic expects True or False, got 'maybe'"):
        parse_options(["require_dic=maybe"], masks, "format pcna_masks")
    with pytest.raises(ConfigError, match="valid options: .*workers"):
        parse_options(["wrokers=2"], dsb, "format dsb2018")
    with pytest.raises(ConfigError, match="set by --seed"):
        parse_options(["seed=2"], dsb, "format dsb2018", {"seed": "--seed"})
    got = parse_options(
        ["workers=3", "require_dic=false", "phases=G1/G2,S,M,E", "phase_csv=a b.csv", "default_phase=None"],
        masks,
        "format pcna_masks",
    )
    assert got == {
        "workers": 3,
        "require_dic": False,
        "phases": ["G1/G2", "S", "M", "E"],
        "phase_csv": "a b.csv",
        "default_phase": None,
    }
    assert parse_options(["workers=None", "usage=1"], dsb, "x") == {"workers": None, "usage": "1"}


def test_write_synthetic_follows_the_rule(tmp_path: Path) -> None:
    opts = {"n_images": 2, "height": 48, "width": 48, "n_nuclei": 3}
    write_synthetic(["dsb2018"], tmp_path / "raw", seed=0, **opts)
    with pytest.raises(OutputExistsError):
        write_synthetic(["dsb2018"], tmp_path / "raw", seed=1, **opts)
    (tmp_path / "raw" / "stale.txt").write_text("old")
    write_synthetic(["dsb2018"], tmp_path / "raw", overwrite=True, seed=1, **opts)
    assert not (tmp_path / "raw" / "stale.txt").exists() and (tmp_path / "raw" / "stage1_train").is_dir()
