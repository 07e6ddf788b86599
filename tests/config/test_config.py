from pathlib import Path

import pytest

from pcna_seg.config import config_to_dict, load_config, save_config
from pcna_seg.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_and_frozen():
    cfg = load_config()
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 1
    assert cfg.is_frozen()
    with pytest.raises(AttributeError):
        cfg.SOLVER.BASE_LR = 1.0


def test_seed_blocks_verbatim(tmp_path):
    # The seed report's settings, word for word (tuples written as Python literals).
    f = write(
        tmp_path / "s.yaml",
        "SOLVER:\n  IMS_PER_BATCH: 2\n  BASE_LR: 0.01\n  WEIGHT_DECAY: 0.0001\n  WEIGHT_DECAY_NORM: 0.0\n"
        "  GAMMA: 0.1\n  STEPS: (1000,)\n"
        "MODEL:\n  ROI_HEADS:\n    BATCH_SIZE_PER_IMAGE: 256\n    NUM_CLASSES: 1\n"
        "INPUT:\n  SCALE:\n    MODE: short_edge\n  MIN_SIZE_TRAIN: 1000\n  MAX_SIZE_TRAIN: 1200\n"
        "  MIN_SIZE_TRAIN_SAMPLING: 'choice'\n"
        "  CROP:\n    ENABLED: True\n    TYPE: 'relative'\n    SIZE: [0.9,0.9]\n",
    )
    cfg = load_config(f)
    assert cfg.SOLVER.STEPS == (1000,)
    assert cfg.SOLVER.BASE_LR == 0.01
    assert cfg.INPUT.MIN_SIZE_TRAIN == (1000,)  # scalar where a sequence is expected
    assert cfg.INPUT.CROP.SIZE == [0.9, 0.9]


def test_base_inheritance_and_overrides(tmp_path):
    (tmp_path / "sub").mkdir()
    write(
        tmp_path / "base.yaml",
        "SOLVER:\n  BASE_LR: 0.5\n  MAX_ITER: 10\n  STEPS: (5,)\nOUTPUT_DIR: base_out\n",
    )
    child = write(tmp_path / "sub" / "child.yaml", "_BASE_: ../base.yaml\nSOLVER:\n  MAX_ITER: 20\n")
    cfg = load_config(child, ["SOLVER.MAX_ITER", "30", "INPUT.CHANNELS", "['pcna','dic','otsu_mask']"])
    assert cfg.SOLVER.BASE_LR == 0.5  # from base
    assert cfg.SOLVER.MAX_ITER == 30  # override beats child beats base
    assert cfg.OUTPUT_DIR == "base_out"
    assert cfg.INPUT.CHANNELS == ["pcna", "dic", "otsu_mask"]


def test_unknown_key_suggests_closest(tmp_path):
    f = write(tmp_path / "bad.yaml", "SOLVER:\n  BASE_LRR: 0.1\n")
    with pytest.raises(ConfigError, match=r"SOLVER\.BASE_LRR.*did you mean SOLVER\.BASE_LR"):
        load_config(f)
    with pytest.raises(ConfigError, match=r"MODEL\.ROI_HEAD .*did you mean MODEL\.ROI_HEADS"):
        load_config(None, ["MODEL.ROI_HEAD.NUM_CLASSES", "3"])


def test_wrong_type(tmp_path):
    f = write(tmp_path / "bad.yaml", "SOLVER:\n  MAX_ITER: lots\n")
    with pytest.raises(ConfigError, match=r"SOLVER\.MAX_ITER expects int"):
        load_config(f)
    with pytest.raises(ConfigError, match="MODEL.MASK_ON expects bool"):
        load_config(None, ["MODEL.MASK_ON", "3"])


def test_missing_base_and_malformed_yaml(tmp_path):
    f = write(tmp_path / "a.yaml", "_BASE_: nothere.yaml\n")
    with pytest.raises(ConfigError, match="nothere.yaml"):
        load_config(f)
    g = write(tmp_path / "b.yaml", "SOLVER:\n  BASE_LR: 0.1\n   MAX_ITER: [1, 2\n")
    with pytest.raises(ConfigError, match=r"Malformed YAML in .*b\.yaml at line \d+"):
        load_config(g)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_cross_key_validation():
    with pytest.raises(ConfigError, match="PIXEL_MEAN"):
        load_config(None, ["INPUT.CHANNELS", "['gray']"])
    with pytest.raises(ConfigError, match="RESNETS.DEPTH"):
        load_config(None, ["MODEL.RESNETS.DEPTH", "42"])


def test_dump_roundtrip(tmp_path):
    cfg = load_config(None, ["SOLVER.STEPS", "(5, 9)", "SOLVER.BASE_LR", "0.02"])
    path = save_config(cfg, tmp_path / "out" / "config.yaml")
    again = load_config(path)
    assert config_to_dict(again) == config_to_dict(cfg)


@pytest.mark.parametrize(
    ("key", "value", "interval"),
    [
        ("SOLVER.MAX_ITER", "-5", "[1, inf)"),
        ("SOLVER.IMS_PER_BATCH", "0", "[1, inf)"),
        ("SOLVER.BASE_LR", "0.0", "(0, inf)"),
        ("SOLVER.CHECKPOINT_PERIOD", "0", "[1, inf)"),
        ("SOLVER.WARMUP_ITERS", "-1", "[0, inf)"),
        ("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "1.5", "[0, 1]"),
        ("MODEL.ROI_HEADS.NMS_THRESH_TEST", "-0.1", "[0, 1]"),
        ("TEST.DETECTIONS_PER_IMAGE", "0", "[1, inf)"),
        ("DATALOADER.NUM_WORKERS", "-2", "[0, inf)"),
        ("UNET.SOLVER.EPOCHS", "0", "[1, inf)"),
        ("UNET.TILING.VAL_FRACTION", "1.0", "[0, 1)"),
        ("TEST.MAX_DETS", "[1, 0, 100]", "[1, inf)"),  # element-wise for sequences
        ("MODEL.ROI_HEADS.NUM_CLASSES", "0", "[1, inf)"),
    ],
)
def test_values_that_can_only_be_mistakes_are_refused(key, value, interval):
    """One table (defaults.VALUE_RANGES), one check: the message names key, value and interval."""
    with pytest.raises(ConfigError) as info:
        load_config(None, [key, value])
    msg = str(info.value)
    assert key in msg and interval in msg and value.strip("[]").split(",")[0].strip() in msg, msg


@pytest.mark.parametrize("steps", ["(5, 3)", "(5, 5)", "(10,)", "(3, 12)"])
def test_steps_ascending_and_below_max_iter(steps):
    with pytest.raises(ConfigError, match=r"SOLVER\.STEPS .*< SOLVER\.MAX_ITER \(10\)"):
        load_config(None, ["SOLVER.MAX_ITER", "10", "SOLVER.STEPS", steps])
    assert load_config(None, ["SOLVER.MAX_ITER", "10", "SOLVER.STEPS", "(3, 9)"]).SOLVER.STEPS == (3, 9)


def test_every_shipped_config_loads():
    """Every YAML under configs/ (stage, quick, U-Net, campaign and sweep files) passes the checks."""
    from pcna_seg.campaign.staged import plan_campaign
    from pcna_seg.config.defaults import VALUE_RANGES

    root = Path(__file__).resolve().parents[2] / "configs"
    files = sorted(root.rglob("*.yaml"))
    assert len(files) >= 15
    for f in files:
        if f.parent.name == "sweeps":  # sweep specs, not configs: they load as sweeps
            from pcna_seg.campaign.sweep import expand_trials, load_sweep

            assert expand_trials(load_sweep(f))
            continue
        cfg = load_config(f)
        if f.parent.name == "campaigns":
            assert len(plan_campaign(f)[1]) >= 1  # each stage with its STAGE_OPTS loads too
    defaults = load_config()
    for key in VALUE_RANGES:  # the table names existing keys only
        node = defaults
        for part in key.split("."):
            node = node[part]
    assert cfg is not None


def test_unreadable_config_files_are_one_line_naming_the_file(tmp_path):
    cases = {
        "latin1.yaml": (b"SOLVER:\n  BASE_LR: 0.1  # caf\xe9\n", "is not UTF-8"),
        "empty.yaml": (b"", "is empty"),
        "dup.yaml": (b"SOLVER:\n  MAX_ITER: 2\n  MAX_ITER: 3\n", "key 'MAX_ITER' is given twice"),
    }
    for name, (content, match) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ConfigError, match=match) as info:
            load_config(tmp_path / name)
        assert name in str(info.value)
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(tmp_path)
