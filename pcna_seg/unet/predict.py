"""Whole-frame U-Net inference: overlapping tiles, smooth blending, label maps, live/dead counts.

A frame (C, H, W) is normalised like the training tiles (``UNET.TILING.NORMALIZATION``), cut
into ``UNET.INFER.TILE`` tiles overlapping by ``UNET.INFER.OVERLAP`` (the last tile of each
row/column ends at the frame edge and offsets are evenly spaced; frames smaller than a tile are
reflect-padded),
and each tile's class probabilities are accumulated with a smooth window ``w`` (Gaussian,
σ = tile/8, or a raised cosine, both > 0 everywhere) into a (K, H, W) float32 sum and an
(H, W) weight sum; the result is sum / weight, so the weights are normalised per pixel and no
seams appear. Memory is O(K·H·W) plus one batch of tiles, whatever the frame size.

Inputs (:func:`find_frames`): a folder in the ``write_livedead`` layout (``images/*.tif``,
optional ``labels/<stem>_semantic.tif`` / ``_instances.tif`` for true counts), a glob of
multi-channel TIFFs (C, H, W), or a glob with ``{channel}`` that is filled with every name of
``UNET.CHANNELS`` (one single-channel file per channel).

Every frame's files are checked from their headers before the model runs (same channel count
and size across a frame's ``{channel}`` files). The output folder follows the output-folder rule
(:func:`pcna_seg.utils_io.output_folder`): a non-empty folder is refused unless ``overwrite``,
which builds the new predictions aside and replaces the old folder as a whole, so label TIFFs
of an earlier run never sit beside a ``counts.csv`` that does not list them.
"""

from __future__ import annotations

import csv
import glob
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.segmentation import watershed
from tqdm import tqdm
from yacs.config import CfgNode

from pcna_seg.data.image_io import check_pixels, read_image, write_image
from pcna_seg.data.tiles import check_overlap, tile_starts
from pcna_seg.engine.checkpoint import read_checkpoint
from pcna_seg.engine.launch import resolve_device
from pcna_seg.errors import ConfigError, DataError, WeightsError
from pcna_seg.unet import viz
from pcna_seg.unet.counting import count_objects
from pcna_seg.unet.metrics import instances_from_contour, logits_to_probs
from pcna_seg.unet.models import UNet, build_unet, load_unet_state
from pcna_seg.unet.tiling import normalize_frame
from pcna_seg.utils_io import atomic_path, check_output_folder, output_folder

logger = logging.getLogger(__name__)


def blend_window(tile: int, kind: str = "gaussian") -> np.ndarray:
    """(tile, tile) float32 blending weights, largest in the centre and > 0 at the edges."""
    x = np.arange(tile, dtype=np.float64) + 0.5
    if kind == "gaussian":
        sigma = tile / 8.0
        w1 = np.exp(-((x - tile / 2) ** 2) / (2 * sigma**2))
    elif kind == "cosine":
        w1 = 0.5 * (1 - np.cos(2 * np.pi * x / tile))
    else:
        raise ConfigError(f"UNET.INFER.BLEND must be 'gaussian' or 'cosine', got {kind!r}")
    w1 = np.maximum(w1, 1e-6)
    return np.outer(w1, w1).astype(np.float32)


@torch.no_grad()
def predict_probs(
    model: torch.nn.Module,
    image: np.ndarray,
    tile: int = 256,
    overlap: int = 64,
    blend: str = "gaussian",
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    amp: bool = False,
    progress: bool = False,
) -> np.ndarray:
    """Blended class probabilities of one frame.

    ``image``: (C, H, W) float32, normalised like the training tiles. Returns (K, H, W)
    float32 probabilities (K = 2 for a one-logit count model: [1 − σ, σ]).
    """
    divisor = getattr(model, "divisor", 1)
    if tile % divisor:
        raise ConfigError(f"UNET.INFER.TILE {tile} must be divisible by {divisor} (2**UNET.DEPTH)")
    check_overlap(tile, overlap, "UNET.INFER.TILE", "UNET.INFER.OVERLAP")
    c, h, w = image.shape
    ph, pw = max(0, tile - h), max(0, tile - w)
    if ph or pw:
        image = np.pad(image, ((0, 0), (0, ph), (0, pw)), mode="reflect" if min(h, w) > 1 else "edge")
    hh, ww = image.shape[1:]
    stride = tile - overlap
    ys, xs = tile_starts(hh, tile, stride, "even"), tile_starts(ww, tile, stride, "even")
    positions = [(y, x) for y in ys for x in xs]
    win = blend_window(tile, blend)
    device = torch.device(device)
    win_t = torch.from_numpy(win).to(device)
    acc: np.ndarray | None = None
    weight = np.zeros((hh, ww), np.float32)
    model.eval()
    batches = range(0, len(positions), batch_size)
    for s in tqdm(batches, desc="tiles", leave=False, disable=not progress):
        pos = positions[s : s + batch_size]
        batch = np.stack([image[:, y : y + tile, x : x + tile] for y, x in pos]).astype(np.float32)
        with torch.autocast(
            device_type=device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"
        ):
            logits = model(torch.from_numpy(batch).to(device))
        probs = (logits_to_probs(logits) * win_t).cpu().numpy()
        if acc is None:
            acc = np.zeros((probs.shape[1], hh, ww), np.float32)
        for (y, x), p in zip(pos, probs):
            acc[:, y : y + tile, x : x + tile] += p
            weight[y : y + tile, x : x + tile] += win
    assert acc is not None
    acc /= weight[None]
    return acc[:, :h, :w]


def livedead_instances(
    labels: np.ndarray, method: str = "watershed", min_size: int = 10, min_distance: int = 5
) -> np.ndarray:
    """Nuclei of a live/dead class map: (H, W) int32 instances of the DAPI ∪ Cy5 foreground.

    ``components``: connected components. ``watershed``: splits touching nuclei at the
    ridges of the distance transform (markers = its local maxima ``min_distance`` apart).
    Objects smaller than ``min_size`` pixels are dropped.
    """
    fg = labels > 0
    if method == "components":
        inst, _ = ndimage.label(fg)
    elif method == "watershed":
        dist = ndimage.distance_transform_edt(fg)
        comps, _ = ndimage.label(fg)
        peaks = peak_local_max(dist, min_distance=min_distance, labels=comps, exclude_border=False)
        markers = np.zeros(labels.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        inst = watershed(-dist, markers, mask=fg)
        # components without a peak (tiny or flat) keep their own id
        missing = fg & (inst == 0)
        if missing.any():
            extra, _ = ndimage.label(missing)
            inst = np.where(missing, extra + inst.max(), inst)
    else:
        raise ConfigError(f"UNET.INFER.INSTANCES must be 'watershed' or 'components', got {method!r}")
    inst = inst.astype(np.int32)
    if min_size > 1 and inst.max() > 0:
        sizes = np.bincount(inst.ravel())
        small = sizes < min_size
        small[0] = False
        inst[small[inst]] = 0
    return inst


def live_dead_counts(instances: np.ndarray, labels: np.ndarray, dead_class: int = 2) -> tuple[int, int]:
    """(n_live, n_dead): an instance is dead when its majority foreground class is ``dead_class``."""
    n = int(instances.max())
    if n == 0:
        return 0, 0
    idx = instances.ravel()
    cls = labels.ravel()
    dead_px = np.bincount(idx, weights=(cls == dead_class), minlength=n + 1)
    fg_px = np.bincount(idx, weights=(cls > 0), minlength=n + 1)
    present = np.bincount(idx, minlength=n + 1) > 0
    present[0] = False
    dead = present & (dead_px * 2 > fg_px)
    return int(present.sum() - dead.sum()), int(dead.sum())


@dataclass
class FrameInput:
    """One frame to predict: its name, the file(s) per channel, and optional truth files."""

    name: str
    files: list[str]
    truth: dict[str, str] = field(default_factory=dict)


def find_frames(pattern: str, channels: list[str]) -> list[FrameInput]:
    """Frames named by ``pattern`` (folder layout, glob, or ``{channel}`` glob; see module doc)."""
    p = Path(pattern)
    if p.is_dir():
        img_dir = p / "images" if (p / "images").is_dir() else p
        out = []
        for f in sorted(img_dir.glob("*.tif*")):
            truth = {k: str(p / "labels" / f"{f.stem}_{k}{f.suffix}") for k in ("semantic", "instances")}
            truth = {k: v for k, v in truth.items() if Path(v).is_file()}
            out.append(FrameInput(f.stem, [str(f)], truth))
    elif "{channel}" in pattern:
        first = sorted(glob.glob(pattern.replace("{channel}", channels[0])))
        pre, post = pattern.split("{channel}", 1)
        out = []
        for f in first:
            files = [f]
            for ch in channels[1:]:
                other = f.replace(channels[0], ch) if channels[0] in f else ""
                if not Path(other).is_file():
                    raise DataError(f"No {ch!r} file for {f} (pattern {pattern}; expected {other})")
                files.append(other)
            out.append(FrameInput(Path(f).stem.replace(channels[0], "").strip("_-. "), files))
    else:
        out = [FrameInput(Path(f).stem, [f]) for f in sorted(glob.glob(pattern))]
    if not out:
        raise DataError(f"No input frames found for {pattern!r}")
    return out


def _header_shape(path: str) -> tuple[int, ...] | None:
    """(C, H, W) or (H, W) shape from a TIFF header; None for other formats (checked on read)."""
    if Path(path).suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        with tifffile.TiffFile(path) as tf:
            return tuple(int(v) for v in tf.series[0].shape)
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise DataError(f"Cannot read TIFF {path} (truncated or corrupt: {exc})") from None


def check_frames(frames: list[FrameInput]) -> None:
    """Before any prediction: the files of each frame must have the same height and width.

    DataError names both files and both shapes.
    """
    for frame in frames:
        shapes = [(f, _header_shape(f)) for f in frame.files]
        known = [(f, s) for f, s in shapes if s is not None]
        for f, s in known[1:]:
            f0, s0 = known[0]
            if s[-2:] != s0[-2:]:
                raise DataError(
                    f"Channel files of frame {frame.name} differ in size: {f0} is {s0} but {f} is {s}"
                )


def read_frame(frame: FrameInput, n_channels: int) -> np.ndarray:
    """(C, H, W) raw frame from one multi-channel TIFF or one file per channel."""
    arrays = []
    for f in frame.files:
        a = read_image(f)
        check_pixels(a, f)
        arrays.append(a[None] if a.ndim == 2 else a)
    for f, a in zip(frame.files[1:], arrays[1:]):
        if a.shape[-2:] != arrays[0].shape[-2:]:
            raise DataError(
                f"Channel files of frame {frame.name} differ in size: {frame.files[0]} is "
                f"{arrays[0].shape} but {f} is {a.shape}"
            )
    img = np.concatenate(arrays, axis=0) if len(arrays) > 1 else arrays[0]
    if img.ndim == 3 and img.shape[0] != n_channels and img.shape[-1] == n_channels:
        img = np.moveaxis(img, -1, 0)  # (H, W, C) → (C, H, W)
    if img.ndim != 3 or img.shape[0] != n_channels:
        raise DataError(
            f"Frame {frame.files[0]} has shape {img.shape}; expected {n_channels} channels (C, H, W)"
        )
    return img


def load_unet(cfg: CfgNode, weights: str, device: torch.device) -> UNet:
    """Build the configured U-Net and load ``weights`` (checkpoint with ``model`` or a state dict)."""
    if not weights:
        raise WeightsError("No weights given: pass --weights or set UNET.WEIGHTS to a trained checkpoint")
    state = read_checkpoint(weights)
    model = build_unet(cfg)
    load_unet_state(model, state.get("model", state), str(weights))
    return model.to(device).eval()


def _frame_counts(cfg: CfgNode, labels: np.ndarray) -> dict[str, Any]:
    inf = cfg.UNET.INFER
    if cfg.UNET.MODE == "livedead":
        inst = livedead_instances(labels, inf.INSTANCES, inf.MIN_SIZE)
        live, dead = live_dead_counts(inst, labels)
        return {"n_nuclei": live + dead, "n_live": live, "n_dead": dead}
    if cfg.UNET.MODE == "contour":
        inst = instances_from_contour(labels)
        sizes = np.bincount(inst.ravel())[1:]
        return {"n_nuclei": int(np.count_nonzero(sizes >= max(inf.MIN_SIZE, 1)))}
    return {"n_nuclei": count_objects(labels > 0, inf.MIN_SIZE)}


def _true_counts(frame: FrameInput) -> dict[str, Any]:
    if "semantic" not in frame.truth or "instances" not in frame.truth:
        return {}
    sem, inst = read_image(frame.truth["semantic"]), read_image(frame.truth["instances"])
    live, dead = live_dead_counts(inst.astype(np.int64), sem)
    return {"true_live": live, "true_dead": dead}


def predict_unet(
    cfg: CfgNode, inputs: str, output_dir: str | os.PathLike, weights: str = "", overwrite: bool = False
) -> list[dict]:
    """Predict every frame of ``inputs``; write label TIFFs, overlays, optional probabilities, counts.csv.

    Returns the per-frame count rows (also in ``<output_dir>/counts.csv``). The output folder is
    checked first, then the weights and every frame's headers, then frames are predicted (see
    the module docstring for ``overwrite``).
    """
    glob_parent = str(Path(inputs).parent) if any(c in str(inputs) for c in "*?[") else None
    sources = [inputs, glob_parent]
    check_output_folder(output_dir, overwrite=overwrite, inputs=sources)
    device = resolve_device(cfg.MODEL.DEVICE)
    model = load_unet(cfg, weights or cfg.UNET.WEIGHTS, device)
    frames = find_frames(inputs, list(cfg.UNET.CHANNELS))
    check_frames(frames)
    with output_folder(output_dir, overwrite=overwrite, inputs=sources) as out:
        return _predict_into(cfg, model, frames, out, device)


def _predict_into(
    cfg: CfgNode, model: UNet, frames: list[FrameInput], out: Path, device: torch.device
) -> list[dict]:
    inf, til = cfg.UNET.INFER, cfg.UNET.TILING
    rows = []
    for frame in tqdm(frames, desc="frames", disable=None):
        raw = read_frame(frame, len(cfg.UNET.CHANNELS))
        image = normalize_frame(raw, til.NORMALIZATION, til.PERCENTILES)
        probs = predict_probs(model, image, inf.TILE, inf.OVERLAP, inf.BLEND, inf.BATCH_SIZE, device,
                              amp=cfg.UNET.SOLVER.AMP)  # fmt: skip
        if cfg.UNET.MODE == "count":
            labels = (probs[1] >= inf.THRESHOLD).astype(np.uint8)
        else:
            labels = probs.argmax(0).astype(np.uint8)
        write_image(out / f"{frame.name}_labels.tif", labels)
        if inf.SAVE_PROBS:
            with atomic_path(out / f"{frame.name}_probs.tif") as tmp:
                tifffile.imwrite(tmp, probs.astype(np.float16), metadata={"axes": "CYX"})
        viz.write_png(out / f"{frame.name}_overlay.png", viz.frame_overlay(image, labels))
        row = {"frame": frame.name, **_frame_counts(cfg, labels), **_true_counts(frame)}
        rows.append(row)
        logger.info("%s: %s", frame.name, row)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_path(out / "counts.csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            wr = csv.DictWriter(fh, fieldnames=keys)
            wr.writeheader()
            wr.writerows(rows)
    return rows
