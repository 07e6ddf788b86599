"""Tile geometry (pcna_seg.data.tiles): both spacings cover the axis; cores partition it."""

from __future__ import annotations

import numpy as np
import pytest

from pcna_seg.data.tiles import axis_windows, check_overlap, tile_starts
from pcna_seg.errors import ConfigError


def test_fixed_spacing_shifts_the_last_tile_inward():
    assert tile_starts(2700, 160, 80).tolist()[-2:] == [2480, 2540]
    assert len(tile_starts(2700, 160, 80)) * len(tile_starts(3600, 160, 80)) == 33 * 44
    assert tile_starts(400, 160, 80).tolist() == [0, 80, 160, 240]  # flush end: no extra tile
    assert tile_starts(160, 160, 80).tolist() == [0]
    assert tile_starts(100, 160, 80).tolist() == [0]  # short axis: one tile, the caller pads


def test_even_spacing_is_the_fewest_tiles_within_the_stride():
    for length, tile, stride in [(1000, 256, 192), (257, 256, 200), (2048, 256, 128), (300, 64, 50)]:
        s = tile_starts(length, tile, stride, "even")
        assert s[0] == 0 and s[-1] == length - tile
        assert np.diff(s).max() <= stride
        assert len(s) <= len(tile_starts(length, tile, stride))
        assert len(s) == int(np.ceil((length - tile) / stride)) + 1
    assert tile_starts(1000, 256, 192, "even").tolist() == [0, 186, 372, 558, 744]
    with pytest.raises(ValueError, match="spacing"):
        tile_starts(1000, 256, 192, "odd")
    with pytest.raises(ValueError, match="stride"):
        tile_starts(1000, 256, 0)


@pytest.mark.parametrize(
    "length,tile,overlap", [(300, 128, 48), (128, 128, 32), (50, 256, 64), (257, 256, 0)]
)
def test_axis_cores_partition_the_axis(length, tile, overlap):
    wins = axis_windows(length, tile, overlap)
    cover = np.zeros(length, np.int32)
    core = np.zeros(length, np.int32)
    for s, e, cs, ce in wins:
        assert 0 <= s <= cs < ce <= e <= length and e - s <= tile
        cover[s:e] += 1
        core[cs:ce] += 1
    assert (core == 1).all() and (cover >= 1).all()
    if length > tile:
        assert [w[0] for w in wins] == tile_starts(length, tile, tile - overlap).tolist()


def test_check_overlap_names_the_keys():
    check_overlap(64, 0, "A", "B")
    with pytest.raises(ConfigError, match=r"B must be >= 0 and smaller than A \(64\), got 64"):
        check_overlap(64, 64, "A", "B")
    with pytest.raises(ConfigError, match="A must be > 0"):
        check_overlap(0, 0, "A", "B")
