"""Synthetic DeepCell data: ``.npz`` frame stacks and tracked ``.trks`` / ``.trk`` archives.

Layouts written (as DeepCell distributes them):

- ``OUT/<name>.npz`` with ``X`` (N, H, W, C) float32 or uint16 intensities (channels last) and
  ``y`` (N, H, W, 1) int32 instance labels, 0 = background. Frames are consecutive movies of
  ``frames_per_movie`` frames each (movie k = frames ``k*F … k*F+F-1``).
- ``OUT/<name>.trks``: a tar archive holding ``raw.npy`` (B, T, H, W, 1), ``tracked.npy``
  (B, T, H, W, 1) int32 labels that keep their id over time (the track id) and
  ``lineages.json`` (list of B dicts ``{"<id>": {"label", "frames", "daughters", "parent",
  "capped", "frame_div"}}``). Shorter movies are zero-padded at the end, as in DeepCell.
- ``OUT/<name>.trk``: one movie, ``raw.npy`` (T, H, W, 1), ``tracked.npy``, ``lineage.json``.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pcna_seg.data.synthetic.base import GroundTruth, single_class_image
from pcna_seg.data.synthetic.nuclei import image_style, place_nuclei, rasterize, render_pcna
from pcna_seg.data.synthetic.realism import Realism, render_frame, resolve
from pcna_seg.data.synthetic.realism import place_nuclei as place_realistic
from pcna_seg.utils_io import atomic_path

CLASS_NAMES = ["nucleus"]


@dataclass
class TrackedMovie:
    """A movie whose label ids are track ids.

    ``raw``: (T, H, W) uint16. ``tracks``: (T, H, W) int32, id k = the same cell in every frame.
    ``lineage``: track id → {"label", "frames", "daughters", "parent", "capped", "frame_div"}
    (DeepCell's lineage fields; ``parent`` is None for roots, frames are the frames present).
    """

    raw: np.ndarray
    tracks: np.ndarray
    lineage: dict[int, dict]


def make_tracked_movie(
    rng: np.random.Generator,
    n_frames: int = 4,
    height: int = 128,
    width: int = 128,
    n_nuclei: int = 10,
    drift: float = 1.5,
    divide: bool = True,
    blank_first: bool = False,
    realism: Any = None,
) -> TrackedMovie:
    """Nuclei drifting over ``n_frames`` frames; one nucleus divides half-way when ``divide``.

    ``blank_first`` leaves frame 0 empty (cells appear at frame 1), giving a blank image.
    Track ids are the nuclei's indices + 1 (daughters get new ids), stable across frames even
    though :func:`rasterize` renumbers labels per frame. ``realism``: None (clean) or the
    ranges one acquisition style is drawn from for the whole movie.
    """
    shape = (height, width)
    style = image_style(rng, realism)
    if style is not None:
        placed = place_realistic(rng, shape, n_nuclei, ("G1/G2",), style)
    else:
        placed = place_nuclei(rng, shape, n_nuclei, ("G1/G2",))
    nuclei = {i + 1: n for i, n in enumerate(placed)}
    next_id = len(nuclei) + 1
    t_div = n_frames // 2 if divide and n_frames >= 2 and nuclei else None
    div_id = int(rng.choice(sorted(nuclei))) if t_div is not None else None
    parent_of: dict[int, int] = {}
    raws, tracks = [], []
    for t in range(n_frames):
        if t == t_div and div_id in nuclei:
            p = nuclei.pop(div_id)
            off_y, off_x = (
                0.55 * p.ry * np.sin(p.angle + np.pi / 2),
                0.55 * p.ry * np.cos(p.angle + np.pi / 2),
            )
            for sign in (-1.0, 1.0):
                cy = float(np.clip(p.cy + sign * off_y, p.ry, height - p.ry))
                cx = float(np.clip(p.cx + sign * off_x, p.rx, width - p.rx))
                nuclei[next_id] = replace(p, cy=cy, cx=cx, ry=p.ry * 0.7, rx=p.rx * 0.7)
                parent_of[next_id] = div_id
                next_id += 1
        ids = sorted(nuclei) if not (blank_first and t == 0) else []
        present = [nuclei[i] for i in ids]
        lab, kept = rasterize(shape, present)
        to_track = np.zeros(len(kept) + 1, dtype=np.int32)
        to_track[1:] = [ids[k] for k in kept]
        phases = {lab_id: "G1/G2" for lab_id in range(1, len(kept) + 1)}
        if style is not None:
            raws.append(render_frame(rng, shape, present, style, "gray", with_dic=False).channels["gray"])
        else:
            raws.append(render_pcna(rng, lab, present, phases))
        tracks.append(to_track[lab])
        nuclei = {
            i: replace(
                n,
                cy=float(np.clip(n.cy + rng.normal(0, drift), n.ry, height - n.ry)),
                cx=float(np.clip(n.cx + rng.normal(0, drift), n.rx, width - n.rx)),
                angle=n.angle + rng.normal(0, 0.05),
            )
            for i, n in nuclei.items()
        }
    tracks_arr = np.stack(tracks)
    frames_of: dict[int, list[int]] = {}
    for t in range(n_frames):
        for i in np.unique(tracks_arr[t]).tolist():
            if i:
                frames_of.setdefault(int(i), []).append(t)
    lineage: dict[int, dict] = {}
    for i, frames in sorted(frames_of.items()):
        daughters = sorted(d for d, p in parent_of.items() if p == i and d in frames_of)
        lineage[i] = {
            "label": i,
            "frames": frames,
            "daughters": daughters,
            "parent": parent_of.get(i) if parent_of.get(i) in frames_of else None,
            "capped": bool(daughters),
            "frame_div": t_div if daughters else None,
        }
    return TrackedMovie(raw=np.stack(raws), tracks=tracks_arr, lineage=lineage)


def _as_dtype(raw: np.ndarray, dtype: str) -> np.ndarray:
    if dtype not in ("float32", "uint16"):
        raise ValueError(f"dtype must be 'float32' or 'uint16', got {dtype!r}")
    return raw.astype(np.float32) if dtype == "float32" else raw.astype(np.uint16)


def write_npz(
    out: str | Path,
    *,
    seed: int = 0,
    n_images: int = 8,
    height: int = 128,
    width: int = 128,
    frames_per_movie: int = 4,
    n_nuclei: int = 10,
    n_channels: int = 1,
    dtype: str = "float32",
    name: str = "nuclear",
    style: str | Realism = "clean",
) -> GroundTruth:
    """Write ``OUT/<name>.npz`` with ``n_images`` frames in movies of ``frames_per_movie``.

    ``X``: (N, H, W, n_channels) ``dtype``; channel 0 is the nuclear signal, further channels
    are unrelated noise (to test channel selection). ``y``: (N, H, W, 1) int32 labels. The
    first frame of the first movie is blank. Keys ``<name>_<index:05d>``, sequences
    ``<name>_m<k>`` (what ``convert_npz(..., frames_per_movie=F)`` produces).
    ``style``: "clean" (default) or "realistic" / a ``Realism`` (acquisition simulator).
    """
    if n_images % frames_per_movie:
        raise ValueError(f"n_images={n_images} is not a multiple of frames_per_movie={frames_per_movie}")
    realism = resolve(style)
    rng = np.random.default_rng(seed)
    xs, ys, gt = [], [], GroundTruth(format="deepcell_npz", class_names=list(CLASS_NAMES))
    for k in range(n_images // frames_per_movie):
        movie = make_tracked_movie(
            rng,
            frames_per_movie,
            height,
            width,
            n_nuclei,
            divide=False,
            blank_first=(k == 0),
            realism=realism,
        )
        for t in range(frames_per_movie):
            idx = len(xs)
            chans = [movie.raw[t]] + [
                rng.integers(0, 1000, size=(height, width)).astype(np.uint16) for _ in range(n_channels - 1)
            ]
            xs.append(np.stack(chans, axis=-1))
            ys.append(movie.tracks[t][..., None])
            gt.images.append(
                single_class_image(f"{name}_{idx:05d}", movie.tracks[t], "nucleus", f"{name}_m{k}")
            )
    path = Path(out) / f"{name}.npz"
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, X=_as_dtype(np.stack(xs), dtype), y=np.stack(ys).astype(np.int32))
    return gt


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def write_trks(
    out: str | Path,
    *,
    seed: int = 0,
    n_images: int = 4,
    height: int = 128,
    width: int = 128,
    n_batches: int = 2,
    n_nuclei: int = 10,
    pad_frames: int = 1,
    dtype: str = "uint16",
    single: bool = False,
    name: str = "tracked",
    style: str | Realism = "clean",
) -> GroundTruth:
    """Write ``OUT/<name>.trks`` (``n_batches`` movies of ``n_images`` frames) or a ``.trk``.

    The last batch has ``pad_frames`` fewer real frames, zero-padded at the end (DeepCell pads
    shorter movies); padding frames are not in the ground truth. Each movie has one division;
    the first movie starts with a blank frame. ``single=True`` writes ``OUT/<name>.trk`` with
    one movie (raw (T, H, W, 1), ``lineage.json``). Keys ``<name>_b<batch>_t<frame:03d>``,
    sequences ``<name>_b<batch>``; label ids in the ground truth are the track ids.
    ``style``: "clean" (default) or "realistic" / a ``Realism`` (acquisition simulator).
    """
    rng = np.random.default_rng(seed)
    n_b = 1 if single else n_batches
    gt = GroundTruth(format="deepcell_trks", class_names=list(CLASS_NAMES))
    raw = np.zeros((n_b, n_images, height, width, 1), dtype=np.uint16)
    tracked = np.zeros((n_b, n_images, height, width, 1), dtype=np.int32)
    lineages = []
    for b in range(n_b):
        n_real = n_images - (pad_frames if (b == n_b - 1 and not single) else 0)
        movie = make_tracked_movie(
            rng, n_real, height, width, n_nuclei, blank_first=(b == 0), realism=resolve(style)
        )
        raw[b, :n_real, ..., 0] = movie.raw
        tracked[b, :n_real, ..., 0] = movie.tracks
        lineages.append({str(k): v for k, v in movie.lineage.items()})
        for t in range(n_real):
            gt.images.append(
                single_class_image(f"{name}_b{b}_t{t:03d}", movie.tracks[t], "nucleus", f"{name}_b{b}")
            )
    raw_out = _as_dtype(raw, dtype)
    path = Path(out) / f"{name}.{'trk' if single else 'trks'}"
    with atomic_path(path) as tmp, tarfile.open(tmp, "w") as tar:
        _add_member(tar, "raw.npy", _npy_bytes(raw_out[0] if single else raw_out))
        _add_member(tar, "tracked.npy", _npy_bytes(tracked[0] if single else tracked))
        lineage_name, lineage_obj = ("lineage.json", lineages[0]) if single else ("lineages.json", lineages)
        _add_member(tar, lineage_name, json.dumps(lineage_obj).encode("utf-8"))
    return gt
