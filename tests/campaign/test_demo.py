"""The demo's pieces without its training: data reuse by recipe, the campaign command line it
runs (parsed by the real tool), and its tables."""

import json
from pathlib import Path

from pcna_seg.campaign.data import MADE_BY, prepare_campaign_data
from pcna_seg.demo import campaign_args, campaign_table, unet_table
from tests._cli import load_tool


def test_data_reused_only_while_its_recipe_is_unchanged(tmp_path):
    rows = prepare_campaign_data(tmp_path / "datasets", tmp_path / "raw", ["bbbc039"])
    assert rows[0]["reused"] is False and rows[0]["images"] > 0
    ann = tmp_path / "datasets" / "bbbc039" / "annotations.json"
    mtime = ann.stat().st_mtime_ns
    again = prepare_campaign_data(tmp_path / "datasets", tmp_path / "raw", ["bbbc039"])
    assert again[0]["reused"] is True and ann.stat().st_mtime_ns == mtime  # campaigns on it stay valid
    made = json.loads((ann.parent / MADE_BY).read_text())
    made["seed"] += 1  # as if another seed had made it
    (ann.parent / MADE_BY).write_text(json.dumps(made))
    stray = tmp_path / "raw" / "bbbc039" / "images" / "stray_from_an_older_recipe.tif"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"")
    remade = prepare_campaign_data(tmp_path / "datasets", tmp_path / "raw", ["bbbc039"])[0]
    assert remade["reused"] is False and remade["images"] == rows[0]["images"] and not stray.exists()


def test_demo_campaign_command_is_what_the_tool_accepts(tmp_path, monkeypatch):
    args = campaign_args(tmp_path, ["SOLVER.BASE_LR", "0.01"])
    seen = {}
    tool = load_tool("run_campaign")
    import pcna_seg.campaign as campaign

    monkeypatch.setattr(
        campaign, "run_campaign", lambda *a, **k: seen.update(a=a, k=k) or {"campaign": "c", "stages": []}
    )
    tool.main(args[1:])
    file, opts = seen["a"]
    assert file.endswith("quick_pcna_staged.yaml") and seen["k"]["overwrite"] is True
    assert opts[:2] == ["DATASETS.ROOT", str(tmp_path / "datasets")] and opts[-2:] == [
        "SOLVER.BASE_LR",
        "0.01",
    ]


def test_tables_show_reuse_and_metrics(tmp_path):
    summary = {"stages": [
        {"index": 1, "name": "kaggle", "action": "skip", "wall_s": 12.0, "iterations_done": 200,
         "metrics": {"v": {"segm/AP50": 0.61, "cells/f1@0.5": 0.7}}},
        {"index": 3, "name": "pcna", "action": "train", "wall_s": None, "iterations_done": 200,
         "metrics": {"v": {"segm/AP50": 0.5, "segm/AP-S": 0.25, "phases/balanced_accuracy": 0.8}}},
    ]}  # fmt: skip
    lines = campaign_table(summary).splitlines()
    assert lines[2].split()[:5] == ["1_kaggle", "reused", "200", "12", "0.610"]
    assert "S 0.25" in lines[3] and "0.800" in lines[3]
    csv = Path(tmp_path / "counts.csv")
    csv.write_text("frame,n_live,true_live,n_dead,true_dead\nA1_t00,3,4,1,1\n")
    table = unet_table({"metrics": {"pr_auc/DAPI": 0.9, "iou/DAPI": 0.8}, "counts_csv": str(csv)})
    assert "DAPI         0.900  0.800" in table and "A1_t00" in table
