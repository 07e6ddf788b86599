"""Tile geometry: where square tiles start along one axis, and the cores that partition it.

Two placements are used, both covering ``[0, length)`` with tiles of ``tile`` pixels:

- :func:`tile_starts` (``spacing="fixed"``): 0, stride, 2·stride, … and one last tile flush
  with the end at ``length - tile`` (it overlaps its neighbour by more than ``tile - stride``).
  Used for training tiles (``UNET.TILING``) and Mask R-CNN tiled prediction.
- ``spacing="even"``: the fewest tiles with spacing <= ``stride``, spread evenly from 0 to
  ``length - tile``, so every tile edge lies near a neighbour's centre. Used by the U-Net's
  blended whole-frame inference.

:func:`axis_windows` adds the core of each tile (overlaps split at their middle), so that
each pixel belongs to exactly one core.
"""

from __future__ import annotations

import numpy as np

from pcna_seg.errors import ConfigError

SPACINGS = ("fixed", "even")


def check_overlap(tile: int, overlap: int, tile_key: str, overlap_key: str) -> None:
    """ConfigError unless ``tile > 0`` and ``0 <= overlap < tile`` (keys named in the message)."""
    if tile <= 0:
        raise ConfigError(f"{tile_key} must be > 0, got {tile}")
    if not 0 <= overlap < tile:
        raise ConfigError(f"{overlap_key} must be >= 0 and smaller than {tile_key} ({tile}), got {overlap}")


def tile_starts(length: int, tile: int, stride: int, spacing: str = "fixed") -> np.ndarray:
    """(n,) int64 start offsets of tiles along an axis of ``length`` pixels (see module doc).

    An axis no longer than one tile has the single start 0 (the tile then runs past the end;
    callers pad or shorten it). ``stride`` must be > 0.
    """
    if stride <= 0:
        raise ValueError(f"tile stride must be > 0, got {stride}")
    if spacing not in SPACINGS:
        raise ValueError(f"tile spacing must be one of {SPACINGS}, got {spacing!r}")
    if length <= tile:
        return np.zeros(1, np.int64)
    if spacing == "even":
        n = -(-(length - tile) // stride) + 1
        return np.round(np.linspace(0, length - tile, n)).astype(np.int64)
    pos = list(range(0, length - tile + 1, stride))
    if pos[-1] != length - tile:
        pos.append(length - tile)
    return np.asarray(pos, dtype=np.int64)


def axis_windows(length: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(start, end, core_start, core_end) of the fixed-spacing tiles (stride ``tile - overlap``).

    Cores split each overlap at its middle, so they partition ``[0, length)``; an axis no
    longer than a tile gives the one window ``(0, length, 0, length)``.
    """
    if length <= tile:
        return [(0, length, 0, length)]
    starts = tile_starts(length, tile, tile - overlap).tolist()
    bounds = [0] + [(starts[i + 1] + starts[i] + tile) // 2 for i in range(len(starts) - 1)] + [length]
    return [(s, s + tile, bounds[i], bounds[i + 1]) for i, s in enumerate(starts)]
