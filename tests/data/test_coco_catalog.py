import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from pcna_seg.data import catalog
from pcna_seg.data.coco_io import CardBuilder, load_coco, write_coco, write_prepared_dataset
from pcna_seg.data.converters.base import record_from_labels
from pcna_seg.data.splits import split_records
from pcna_seg.data.synthetic.nuclei import make_pcna_movie
from pcna_seg.errors import DataError, DatasetNotFoundError


def _records(tmp_path, n_movies=4, n_frames=3):
    rng = np.random.default_rng(0)
    recs = []
    names = ["G1/G2", "S", "M"]
    for m in range(n_movies):
        for t, fr in enumerate(make_pcna_movie(rng, n_frames, 64, 64, n_nuclei=5)):
            path = tmp_path / "images" / f"m{m}_t{t}.tif"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
            cls = {k: names.index(v) for k, v in fr.phases.items()}
            recs.append(record_from_labels(str(path), f"m{m}_t{t}", fr.labels, cls, sequence=f"m{m}"))
    return recs, names


def test_write_load_roundtrip_and_pycocotools(tmp_path):
    recs, names = _records(tmp_path)
    path = write_coco(tmp_path / "annotations.json", recs, names)
    coco = COCO(str(path))
    assert len(coco.getImgIds()) == len(recs)
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == names
    back, meta = load_coco(path)
    assert meta["thing_classes"] == names
    for a, b in zip(recs, back):
        assert a["file_name"] == b["file_name"] and a["sequence"] == b["sequence"]
        assert [x["category_id"] for x in a["annotations"]] == [x["category_id"] for x in b["annotations"]]
        assert [x["segmentation"] for x in a["annotations"]] == [x["segmentation"] for x in b["annotations"]]
    # paths are stored relative to the JSON folder
    raw = json.loads(path.read_text())
    assert raw["images"][0]["file_name"].startswith("images/")


def test_split_by_sequence_is_leak_free_and_seeded(tmp_path):
    recs, _ = _records(tmp_path, n_movies=5)
    s1 = split_records(recs, 0.2, seed=3)
    s2 = split_records(recs, 0.2, seed=3)
    assert s1 == s2 and s1["by"] == "sequence"
    seq = {r["image_id"]: r["sequence"] for r in recs}
    assert {seq[i] for i in s1["train"]}.isdisjoint({seq[i] for i in s1["val"]})
    assert len(s1["val"]) == 3 and len(s1["train"]) == 12
    no_seq = [{k: v for k, v in r.items() if k != "sequence"} for r in recs]
    assert split_records(no_seq, 0.2, seed=0)["by"] == "image"


def test_prepared_folder_resolves_by_name(tmp_path, monkeypatch):
    recs, names = _records(tmp_path / "pcna_stage3")
    card = CardBuilder("pcna_stage3", names, "test")
    for r in recs:
        card.add(r)
    write_prepared_dataset(tmp_path / "pcna_stage3", recs, names, card, val_fraction=0.25, seed=0)
    card_json = json.loads((tmp_path / "pcna_stage3" / "dataset_card.json").read_text())
    assert card_json["images"] == 12 and sum(card_json["instances_per_class"].values()) > 0
    monkeypatch.setenv(catalog.ENV_VAR, str(tmp_path))
    try:
        train = catalog.get_dataset("pcna_stage3_train")
        val = catalog.get_dataset("pcna_stage3_val")
        assert len(train) + len(val) == 12
        assert catalog.get_metadata("pcna_stage3_train")["thing_classes"] == names
        assert "pcna_stage3_train" in catalog.list_datasets()
        with pytest.raises(DatasetNotFoundError, match="nope.*registered: .*pcna_stage3_train"):
            catalog.get_dataset("nope")
    finally:
        for n in ("pcna_stage3_train", "pcna_stage3_val"):
            catalog.unregister_dataset(n)


def test_register_explicit_loader():
    catalog.register_dataset(
        "toy", lambda: [{"file_name": "x", "height": 1, "width": 1, "image_id": 0}], {"a": 1}
    )
    try:
        assert catalog.get_dataset("toy")[0]["file_name"] == "x"
        assert catalog.get_metadata("toy") == {"a": 1}
    finally:
        catalog.unregister_dataset("toy")


def test_load_coco_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match=r"Malformed JSON in .*bad\.json"):
        load_coco(bad)
    with pytest.raises(DataError, match="not found"):
        load_coco(tmp_path / "nothing.json")


def test_same_name_under_another_root_is_resolved_again(tmp_path, monkeypatch):
    for sub, n_movies in (("a", 2), ("b", 3)):
        recs, names = _records(tmp_path / sub / "toyset", n_movies=n_movies, n_frames=1)
        card = CardBuilder("toyset", names, "test")
        write_prepared_dataset(tmp_path / sub / "toyset", recs, names, card, val_fraction=0.0)
    assert len(catalog.get_dataset("toyset", tmp_path / "a")) == 2
    assert len(catalog.get_dataset("toyset", tmp_path / "b")) == 3
    catalog.register_dataset("toyset", lambda: [], {})  # explicit registration wins everywhere
    assert catalog.get_dataset("toyset", tmp_path / "a") == []


def test_broken_coco_entries_name_the_file_and_entry(tmp_path, caplog):
    import json

    from pcna_seg.data.coco_io import load_coco
    from pcna_seg.errors import DataError

    good = {
        "images": [{"id": 1, "file_name": "a.tif", "height": 8, "width": 8}],
        "categories": [{"id": 1, "name": "nucleus"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[0, 0, 4, 0, 4, 4]]}],
    }
    broken = {
        "no image_id": (
            "annotations",
            {"id": 7, "category_id": 1, "segmentation": []},
            "annotations entry 7 has no image_id",
        ),
        "no height": ("images", {"id": 2, "file_name": "b.tif", "width": 8}, "images entry 2 has no height"),
    }
    for section, entry, match in broken.values():
        data = json.loads(json.dumps(good))
        data[section].append(entry)
        (tmp_path / "c.json").write_text(json.dumps(data))
        with pytest.raises(DataError, match=match):
            load_coco(tmp_path / "c.json")
    data = json.loads(json.dumps(good))
    data["annotations"].append(
        {"id": 9, "image_id": 42, "category_id": 1, "segmentation": [[0, 0, 2, 0, 2, 2]]}
    )
    (tmp_path / "c.json").write_text(json.dumps(data))
    with caplog.at_level("WARNING"):
        records, _ = load_coco(tmp_path / "c.json")
    assert len(records[0]["annotations"]) == 1 and "image id(s) the file does not list" in caplog.text


def test_given_test_split_is_written_and_resolvable(tmp_path, monkeypatch):
    """A split naming test images (LIVECell, BBBC039 metadata) gives test.json; an empty one none."""
    recs, names = _records(tmp_path / "given")
    ids = [r["image_id"] for r in recs]
    split = {"train": ids[:8], "val": ids[8:10], "test": ids[10:], "by": "files"}
    card = CardBuilder("given", names, "test")
    paths = write_prepared_dataset(tmp_path / "given", recs, names, card, split=split)
    assert set(paths) >= {"train", "val", "test"}
    test = json.loads((tmp_path / "given" / "test.json").read_text())
    assert len(test["images"]) == 2
    assert json.loads((tmp_path / "given" / "dataset_card.json").read_text())["split"] == {
        "train": 8,
        "val": 2,
        "by": "files",
    }
    monkeypatch.setenv(catalog.ENV_VAR, str(tmp_path))
    assert len(catalog.get_dataset("given_test")) == 2
    recs2, _ = _records(tmp_path / "notest")
    split2 = {"train": [r["image_id"] for r in recs2], "val": [], "test": [], "by": "files"}
    write_prepared_dataset(
        tmp_path / "notest", recs2, names, CardBuilder("notest", names, "test"), split=split2
    )
    assert not (tmp_path / "notest" / "test.json").exists()
