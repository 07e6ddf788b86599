"""PCNA movies annotated in VGG Image Annotator 2 (VIA2) → prepared COCO folder ("pcna_via").

Image layout, frame naming and output: see :mod:`pcna_seg.data.converters.pcna`.

The annotations are one VIA2 project JSON (``via_json``, default the single ``*.json`` directly
in ``src``); each entry's file name maps to a frame by exact per-frame file name, by name
without channel tag, or by ``frame_regex`` (pcnaDeep style ``<movie>-0001.png`` for stacked
movies, frame number - ``frame_base`` = stack index). Only annotated frames become records;
an entry with no regions is a blank frame (kept, no objects). The JSON is either the
project export ``{"_via_settings": ..., "_via_img_metadata": {key: entry}, ...}`` or the bare
``{key: entry}`` dict, each entry ``{"filename": str, "size": int, "regions": [...],
"file_attributes": {}}`` (``regions`` may also be a dict, as VIA 1 wrote it). A region is
``{"shape_attributes": {"name": ..., ...}, "region_attributes": {"phase": "G1/G2"}}``.

Shapes (coordinates in image pixels, x to the right, y down):

- ``polygon``: ``all_points_x``, ``all_points_y``;
- ``rect``: ``x``, ``y``, ``width``, ``height``;
- ``circle``: ``cx``, ``cy``, ``r``;
- ``ellipse``: ``cx``, ``cy``, ``rx``, ``ry``, ``theta`` (radians, rotation of the ``rx`` axis).

Every shape becomes a polygon (ellipses and circles with :data:`ELLIPSE_VERTICES` vertices)
rasterised by :func:`pcna_seg.data.structures.polygons_to_mask`, i.e. with pycocotools'
polygon semantics. Vertices are clamped to the image rectangle ``[0, W] × [0, H]`` first,
which keeps exactly the part of the shape that lies inside the image. Other shapes
(``polyline``, ``point``) are rejected: they do not outline a nucleus.

Overlapping shapes are made disjoint with :func:`pcna_seg.data.structures.resolve_overlaps`
(the smallest keeps contested pixels); empty shapes (fewer than 3 vertices, zero area, wholly
outside the image, or emptied by the overlap rule) are skipped. Both are logged as warnings
and counted in the dataset card notes.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pcna_seg.data.coco_io import read_json
from pcna_seg.data.converters.base import Record, prepared_folder
from pcna_seg.data.converters.pcna import (
    DEFAULT_FRAME_REGEX,
    ConversionJob,
    FrameSource,
    Layout,
    file_stem,
    find_one,
    strip_tag,
)
from pcna_seg.data.phases import DEFAULT_PHASES, PhaseSet
from pcna_seg.data.structures import make_annotation, polygons_to_mask, resolve_overlaps
from pcna_seg.errors import DataError

logger = logging.getLogger(__name__)

SUPPORTED_SHAPES: tuple[str, ...] = ("polygon", "rect", "circle", "ellipse")
ELLIPSE_VERTICES = 64


@dataclass
class ViaRegion:
    """One parsed region: flat ``[x0, y0, x1, y1, ...]`` polygon and 0-based phase index."""

    polygon: list[float]
    category_id: int
    index: int  # position of the region in its VIA entry (for messages)


@dataclass
class ViaEntry:
    """One VIA image entry: the annotated file name and its parsed regions, in file order."""

    filename: str
    regions: list[ViaRegion] = field(default_factory=list)
    n_degenerate: int = 0  # regions with fewer than 3 vertices (skipped)


def _num(attrs: dict[str, Any], key: str, where: str) -> float:
    value = attrs.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{where}: shape attribute {key!r} must be a finite number, got {value!r}")
    return float(value)


def ellipse_polygon(
    cx: float, cy: float, rx: float, ry: float, theta: float = 0.0, n: int = ELLIPSE_VERTICES
) -> list[float]:
    """Flat polygon of ``n`` vertices on an ellipse centred at (cx, cy), ``rx`` axis rotated by theta."""
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    c, s = math.cos(theta), math.sin(theta)
    x = cx + rx * np.cos(t) * c - ry * np.sin(t) * s
    y = cy + rx * np.cos(t) * s + ry * np.sin(t) * c
    return np.stack([x, y], axis=1).ravel().tolist()


def shape_to_polygon(shape: dict[str, Any], where: str) -> list[float]:
    """VIA ``shape_attributes`` → flat polygon ``[x0, y0, ...]`` (may have < 3 vertices).

    DataError (naming ``where``) for unsupported shapes or missing/non-numeric attributes.
    """
    if not isinstance(shape, dict):
        raise DataError(f"{where}: 'shape_attributes' must be an object")
    name = shape.get("name")
    if name == "polygon":
        xs, ys = shape.get("all_points_x"), shape.get("all_points_y")
        if not isinstance(xs, list) or not isinstance(ys, list) or len(xs) != len(ys):
            raise DataError(f"{where}: polygon needs equally long 'all_points_x' and 'all_points_y' lists")
        flat: list[float] = []
        for x, y in zip(xs, ys):
            flat += [_coord(x, where), _coord(y, where)]
        return flat
    if name == "rect":
        x, y = _num(shape, "x", where), _num(shape, "y", where)
        w, h = _num(shape, "width", where), _num(shape, "height", where)
        return [x, y, x + w, y, x + w, y + h, x, y + h]
    if name == "circle":
        r = _num(shape, "r", where)
        return ellipse_polygon(_num(shape, "cx", where), _num(shape, "cy", where), r, r)
    if name == "ellipse":
        theta = _num(shape, "theta", where) if "theta" in shape else 0.0
        return ellipse_polygon(
            _num(shape, "cx", where), _num(shape, "cy", where), _num(shape, "rx", where),
            _num(shape, "ry", where), theta,
        )  # fmt: skip
    raise DataError(f"{where}: unsupported region shape {name!r}; supported: {', '.join(SUPPORTED_SHAPES)}")


def _coord(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{where}: polygon vertex {value!r} is not a finite number")
    return float(value)


def region_phase(attrs: Any, phase_key: str, phases: PhaseSet, default_phase: str | None, where: str) -> int:
    """0-based phase index from ``region_attributes[phase_key]``.

    Accepts a string (VIA text/radio/dropdown attribute) or a checkbox dict with exactly one
    true option. A missing/empty value uses ``default_phase`` when given, else DataError.
    """
    value = attrs.get(phase_key) if isinstance(attrs, dict) else None
    if isinstance(value, dict):  # checkbox attribute: {"S": true, "M": false}
        ticked = [k for k, v in value.items() if v]
        if len(ticked) != 1:
            raise DataError(f"{where}: phase checkbox {phase_key!r} must have exactly one option ticked")
        value = ticked[0]
    if value is None or (isinstance(value, str) and not value.strip()):
        if default_phase is None:
            raise DataError(
                f"{where} has no {phase_key!r} region attribute; allowed phases: {phases.allowed()}"
            )
        value = default_phase
    return phases.index(value, where)


def load_via_project(
    path: Path, phases: PhaseSet, phase_key: str = "phase", default_phase: str | None = None
) -> list[ViaEntry]:
    """Parse a VIA2 project (export or bare dict) into entries with polygons and phase ids.

    DataError naming ``path`` for unreadable/malformed JSON, a wrong structure, unsupported
    shapes or unknown phase labels. Regions with fewer than 3 vertices are counted in
    ``ViaEntry.n_degenerate`` and dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"VIA project JSON not found: {path}")
    data = read_json(path, "VIA project ")
    if isinstance(data, dict) and "_via_img_metadata" in data:
        data = data["_via_img_metadata"]
    if not isinstance(data, dict):
        raise DataError(f"{path} is not a VIA project: expected an object of image entries")
    entries = []
    for key, entry in data.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
            raise DataError(f"{path}: VIA entry {key!r} has no 'filename'; is this a VIA2 project?")
        regions = entry.get("regions", [])
        if isinstance(regions, dict):  # VIA 1 layout
            regions = list(regions.values())
        if not isinstance(regions, list):
            raise DataError(f"{path}: 'regions' of image {entry['filename']!r} must be a list")
        out = ViaEntry(entry["filename"])
        for i, region in enumerate(regions):
            where = f"{path} (image {entry['filename']!r}, region {i})"
            if not isinstance(region, dict):
                raise DataError(f"{where}: region must be an object")
            poly = shape_to_polygon(region.get("shape_attributes"), where)
            cid = region_phase(region.get("region_attributes"), phase_key, phases, default_phase, where)
            if len(poly) < 6:
                out.n_degenerate += 1
                continue
            out.regions.append(ViaRegion(poly, cid, i))
        entries.append(out)
    return entries


def clamp_polygon(polygon: list[float], height: int, width: int) -> list[float]:
    """Clamp x to [0, W] and y to [0, H]: keeps exactly the part of the shape inside the image."""
    arr = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    arr[:, 0] = np.clip(arr[:, 0], 0.0, float(width))
    arr[:, 1] = np.clip(arr[:, 1], 0.0, float(height))
    return arr.ravel().tolist()


def rasterize_polygons(
    polygons: list[list[float]], height: int, width: int
) -> tuple[list[np.ndarray], list[int], int, int]:
    """Polygons (in region order) → disjoint (H, W) bool masks.

    Each polygon is clamped to the image and rasterised with pycocotools; empty results
    (zero area, or wholly outside the image) are dropped; overlaps are resolved with
    :func:`~pcna_seg.data.structures.resolve_overlaps` (smallest keeps contested pixels) and
    masks emptied by that rule are dropped. Returns (masks, indices of the kept polygons,
    n_empty dropped, n_overlapping pixels).
    """
    masks, idx = [], []
    for i, poly in enumerate(polygons):
        m = polygons_to_mask([clamp_polygon(poly, height, width)], height, width)
        if m.any():
            masks.append(m)
            idx.append(i)
    n_empty = len(polygons) - len(masks)
    masks, n_overlap = resolve_overlaps(masks)
    keep = [k for k, m in enumerate(masks) if m.any()]
    n_empty += len(masks) - len(keep)
    return [masks[k] for k in keep], [idx[k] for k in keep], n_empty, n_overlap


def frame_for_name(
    name: str, layout: Layout, regex: str, frame_base: int, pcna_tag: str, source: Path
) -> FrameSource:
    """The frame a VIA entry file name refers to; DataError naming ``source`` when none does."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    key = strip_tag(file_stem(base), pcna_tag)
    for cand in (base, key):
        if cand in layout.by_name:
            return layout.by_name[cand]
    m = re.match(regex, key)
    if m and (m["movie"], int(m["frame"]) - frame_base) in layout.frames:
        return layout.frames[(m["movie"], int(m["frame"]) - frame_base)]
    movies = layout.movies()
    if key in movies and len(movies[key]) == 1:
        return layout.frames[(key, movies[key][0])]
    hint = f"movie {m['movie']!r} frame {m['frame']}" if m else "no movie/frame could be parsed"
    raise DataError(f"{source}: image {name!r} matches no PCNA frame under src ({hint}; see frame_regex)")


@prepared_folder
def convert_via(
    src: str | Path,
    out: str | Path,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    progress: bool = True,
    via_json: str | Path | None = None,
    phases: Iterable[str] = DEFAULT_PHASES,
    phase_key: str = "phase",
    default_phase: str | None = None,
    pcna_pattern: str = "*mcy*.tif*",
    pcna_tag: str = "mcy",
    dic_tag: str = "dic",
    require_dic: bool = True,
    frame_regex: str = DEFAULT_FRAME_REGEX,
    frame_base: int = 0,
    workers: int = 2,
    name: str | None = None,
) -> dict[str, Any]:
    """PCNA movies + a VIA2 project JSON → prepared COCO folder in ``out``; returns the card.

    See the module docstring for the layout and policies. Records hold (H, W) PCNA/DIC copies
    and one RLE annotation per kept VIA region, category = index of its phase in ``phases``.
    """
    job = ConversionJob(
        src, out, "pcna_via", phases, default_phase, name,
        pcna_pattern=pcna_pattern, pcna_tag=pcna_tag, dic_tag=dic_tag,
        require_dic=require_dic, frame_regex=frame_regex, frame_base=frame_base,
    )  # fmt: skip
    layout, card = job.layout, job.card
    json_path = find_one(job.src, via_json, "*.json", "VIA project JSON")
    entries = load_via_project(json_path, job.phases, phase_key, job.default_phase)
    planned: dict[tuple[str, int], tuple[FrameSource, Any]] = {}
    for entry in entries:
        fs = frame_for_name(entry.filename, layout, frame_regex, frame_base, pcna_tag, json_path)
        if (fs.movie, fs.t) in planned:
            first = planned[(fs.movie, fs.t)][1].filename
            raise DataError(
                f"{json_path}: images {first!r} and {entry.filename!r} both annotate {fs.image_id}"
            )
        planned[(fs.movie, fs.t)] = (fs, entry)
    if not planned:
        raise DataError(f"VIA project {json_path} annotates no images")

    def work(item: tuple[FrameSource, Any]) -> tuple[Record, dict[str, Any]]:
        fs, entry = item
        rec, pixels = job.base_record(fs)
        h, w = rec["height"], rec["width"]
        masks, kept, n_empty, n_overlap = rasterize_polygons([r.polygon for r in entry.regions], h, w)
        rec["annotations"] = [make_annotation(m, entry.regions[k].category_id) for m, k in zip(masks, kept)]
        job.add(rec, pixels)
        if n_empty + entry.n_degenerate:
            logger.warning(
                "%s: skipped %d empty region(s) of image %r (fewer than 3 vertices, zero area, "
                "outside the image, or covered by smaller regions)",
                json_path, n_empty + entry.n_degenerate, entry.filename,
            )  # fmt: skip
        return rec, {"empty": n_empty + entry.n_degenerate, "overlap": n_overlap}

    records, stats = job.run(list(planned.values()), work, progress, workers, "pcna_via")
    n_empty = sum(s["empty"] for s in stats)
    n_overlap = sum(s["overlap"] for s in stats)
    n_frames_overlap = sum(1 for s in stats if s["overlap"])
    if n_overlap:
        logger.warning(
            "%d overlapping pixels in %d frame(s) of %s given to the smallest region",
            n_overlap, n_frames_overlap, json_path,
        )  # fmt: skip
        card.note(
            f"{n_overlap} pixels claimed by several VIA regions in {n_frames_overlap} frame(s) "
            "were given to the smallest region"
        )
    if n_empty:
        card.note(
            f"{n_empty} empty VIA region(s) skipped (fewer than 3 vertices, zero area or outside the image)"
        )
    n_unannotated = len(layout.frames) - len(planned)
    if n_unannotated:
        card.note(f"{n_unannotated} frame(s) without a VIA entry were left out")
    return job.finish(records, val_fraction, seed)
