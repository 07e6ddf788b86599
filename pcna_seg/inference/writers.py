"""Prediction outputs and the prediction run: inputs → Predictor → label TIFFs, overlays, CSV.

Per frame ``<name>``, in the output folder:

- ``<name>_labels.tif``: (H, W) uint16 instance labels (0 = background; overlaps resolved,
  the higher score wins), the label of an object is its ``object`` id in the CSV;
- ``<name>_overlay.png``: the PCNA (else grey) image with each object's outline in the colour
  of its predicted phase, and a legend with the per-phase counts;

and one ``objects.csv`` for the whole run, one row per object present in a label image:
``frame, object, phase, score, prob_<class>... , area_px, centroid_y, centroid_x, bbox_x0,
bbox_y0, bbox_x1, bbox_y1``. ``prob_<class>`` are the classifier's foreground probabilities
renormalised to sum to 1; area, centroid and box (x1/y1 exclusive) are measured on the label
image with ``skimage.measure.regionprops_table``. Every file is written atomically.

Inputs (:func:`find_inputs`): a folder of PCNA movies (``*mcy*`` + DIC partner, stacked or per
frame), a folder/glob/file of single-channel images (channel ``"gray"``), or a prepared dataset
(COCO JSON path or catalog name).
"""

from __future__ import annotations

import csv
import glob
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from pcna_seg.data.image_io import TIFF_SUFFIXES, read_image, to_gray
from pcna_seg.data.intensity import display_stretch
from pcna_seg.data.visualize import class_colors
from pcna_seg.errors import DataError, DatasetNotFoundError
from pcna_seg.inference.predictor import Prediction, Predictor
from pcna_seg.utils_io import atomic_path, output_folder

logger = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_GREY_HINT = " (single-channel images only give 'gray'; PCNA movies need *mcy* files with *dic* partners)"


# ----------------------------------------------------------------------------------- writing
def outline_rgb(display: np.ndarray, labels: np.ndarray, pred: Prediction) -> np.ndarray:
    """(H, W, 3) float RGB in [0, 1]: ``display`` in grey, each object's outline in its phase colour."""
    from skimage.segmentation import find_boundaries

    rgb = np.repeat(display_stretch(display)[..., None], 3, axis=2)
    colors = np.asarray(class_colors(pred.class_names), dtype=np.float32).reshape(-1, 3)
    lut = np.zeros((len(pred) + 1, 3), np.float32)
    lut[1:] = colors[pred.labels] if len(pred) else lut[1:]
    edge = find_boundaries(labels, mode="inner") & (labels > 0)
    rgb[edge] = lut[labels[edge]]
    return rgb


def write_overlay(path: str | os.PathLike, display: np.ndarray, labels: np.ndarray, pred: Prediction) -> Path:
    """Write the outline overlay PNG with a legend ("<phase> (<count>)") atomically."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    rgb = outline_rgb(display, labels, pred)
    h, w = labels.shape
    scale = max(1, int(np.ceil(480 / max(w, 1))))  # small frames are enlarged (nearest) for reading
    if scale > 1:
        rgb = rgb.repeat(scale, axis=0).repeat(scale, axis=1)
    legend_px = 40
    fig = Figure(figsize=(w * scale / 100, (h * scale + legend_px) / 100), dpi=100)
    ax = fig.add_axes((0, legend_px / (h * scale + legend_px), 1, h * scale / (h * scale + legend_px)))
    ax.imshow(rgb, interpolation="nearest")
    ax.axis("off")
    present = set(np.unique(labels[labels > 0]) - 1)
    counts = Counter(pred.class_names[int(pred.labels[i])] for i in present)
    handles = [
        Patch(color=c, label=f"{name} ({counts.get(name, 0)})")
        for c, name in zip(class_colors(pred.class_names), pred.class_names)
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return path


def write_label_image(path: str | os.PathLike, labels: np.ndarray) -> Path:
    """Write an (H, W) uint16 label image as TIFF atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, np.asarray(labels, dtype=np.uint16))
    return path


def csv_columns(class_names: Sequence[str]) -> list[str]:
    """The header of ``objects.csv``."""
    probs = [f"prob_{name}" for name in class_names]
    tail = ["area_px", "centroid_y", "centroid_x", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"]
    return ["frame", "object", "phase", "score", *probs, *tail]


def object_rows(frame: str, pred: Prediction, labels: np.ndarray) -> list[dict[str, Any]]:
    """One CSV row per object present in ``labels`` (the label image of ``pred``)."""
    from skimage.measure import regionprops_table

    props = regionprops_table(labels.astype(np.int32), properties=("label", "area", "centroid", "bbox"))
    probs = pred.class_probs
    rows = []
    for j, lab in enumerate(props["label"]):
        i = int(lab) - 1
        row: dict[str, Any] = {
            "frame": frame,
            "object": int(lab),
            "phase": pred.class_names[int(pred.labels[i])],
            "score": f"{float(pred.scores[i]):.4f}",
        }
        for k, name in enumerate(pred.class_names):
            row[f"prob_{name}"] = f"{float(probs[i, k]):.4f}"
        row.update(
            area_px=int(props["area"][j]),
            centroid_y=f"{props['centroid-0'][j]:.2f}",
            centroid_x=f"{props['centroid-1'][j]:.2f}",
            bbox_x0=int(props["bbox-1"][j]),
            bbox_y0=int(props["bbox-0"][j]),
            bbox_x1=int(props["bbox-3"][j]),
            bbox_y1=int(props["bbox-2"][j]),
        )
        rows.append(row)
    return rows


class PredictionWriter:
    """Writes each frame's label TIFF and overlay as it comes; ``objects.csv`` on :meth:`close`."""

    def __init__(self, output_dir: str | os.PathLike, class_names: Sequence[str]) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names)
        self.rows: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()
        self.n_frames = 0

    def write_frame(self, name: str, pred: Prediction, display: np.ndarray) -> np.ndarray:
        """Write ``<name>_labels.tif`` and ``<name>_overlay.png``; return the label image."""
        labels = pred.to_label_image()
        write_label_image(self.output_dir / f"{name}_labels.tif", labels)
        write_overlay(self.output_dir / f"{name}_overlay.png", display, labels, pred)
        rows = object_rows(name, pred, labels)
        self.rows.extend(rows)
        self.counts.update(r["phase"] for r in rows)
        self.n_frames += 1
        return labels

    def close(self) -> Path:
        """Write ``objects.csv`` (all frames) atomically and return its path."""
        path = self.output_dir / "objects.csv"
        with atomic_path(path) as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                out = csv.DictWriter(fh, fieldnames=csv_columns(self.class_names))
                out.writeheader()
                out.writerows(self.rows)
        return path

    def count_table(self) -> str:
        """Plain-text table: objects per phase over the run, with percentages."""
        total = sum(self.counts.values())
        width = max(len("phase"), *(len(n) for n in self.class_names))
        lines = [f"{'phase'.ljust(width)}  objects  percent"]
        for name in self.class_names:
            n = self.counts.get(name, 0)
            lines.append(f"{name.ljust(width)}  {n:7d}  {100 * n / max(total, 1):6.1f}%")
        lines.append(f"{'total'.ljust(width)}  {total:7d}  ({self.n_frames} frames)")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------ inputs
@dataclass
class InputFrame:
    """One frame to predict: ``load(names)`` returns raw (H, W) arrays for those channel names."""

    name: str  # output file stem
    source: str  # file (and frame) it comes from, for messages
    channels: tuple[str, ...]  # raw channel names it offers
    load: Callable[[Sequence[str]], dict[str, np.ndarray]]
    missing_hint: str = ""  # appended to the missing-channel error


def _safe(name: str) -> str:
    return _SAFE.sub("_", str(name)).strip("_") or "frame"


def _stack_depth(path: Path) -> int:
    """T for a (T, H, W) TIFF stack, 0 for a single 2-D (or RGB) image; DataError naming the
    file for any other shape (4-D, 1-D)."""
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return 0
    try:
        with tifffile.TiffFile(path) as tf:
            shape = tuple(s for s in tf.series[0].shape if s != 1)
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise DataError(f"Cannot read TIFF {path}: {exc}") from None
    if not 2 <= len(shape) <= 3:
        raise DataError(
            f"TIFF {path} has shape {shape}; expected one image (H, W), an RGB image (H, W, 3) or a "
            "(T, H, W) stack of frames"
        )
    return shape[0] if len(shape) == 3 and shape[-1] not in (3, 4) else 0


def _image_frames(files: Sequence[Path]) -> list[InputFrame]:
    from pcna_seg.data.converters.pcna import file_stem, read_frame

    frames = []
    for path in files:
        depth = _stack_depth(path)
        for t in range(depth) if depth else [None]:

            def load(names: Sequence[str], path: Path = path, t: int | None = t) -> dict[str, np.ndarray]:
                arr = read_frame(path, t) if t is not None else to_gray(read_image(path))
                return {"gray": arr}

            stem = _safe(file_stem(path.name)) + (f"_{t:04d}" if t is not None else "")
            where = f"{path}" + (f" frame {t}" if t is not None else "")
            frames.append(InputFrame(stem, where, ("gray",), load, _GREY_HINT))
    return frames


def _pcna_frames(folder: Path) -> list[InputFrame]:
    from pcna_seg.data.converters.pcna import discover, read_frame

    layout = discover(folder, require_dic=False)
    frames = []
    for key in sorted(layout.frames):
        fs = layout.frames[key]

        def load(names: Sequence[str], fs: Any = fs) -> dict[str, np.ndarray]:
            out: dict[str, np.ndarray] = {}
            if {"gray", "pcna"} & set(names):
                out["pcna"] = out["gray"] = read_frame(fs.pcna, fs.index)
            if "dic" in names and fs.dic is not None:
                out["dic"] = read_frame(fs.dic, fs.index)
            return out

        chans = ("gray", "pcna", "dic") if fs.dic is not None else ("gray", "pcna")
        i = fs.pcna.name.rfind("mcy")
        dic_name = fs.pcna.name[:i] + "dic" + fs.pcna.name[i + 3 :]
        hint = "" if fs.dic is not None else f" (expected DIC file {fs.pcna.with_name(dic_name)})"
        where = f"{fs.pcna}" + (f" frame {fs.index}" if fs.index is not None else "")
        frames.append(InputFrame(_safe(fs.image_id), where, chans, load, hint))
    return frames


def frame_key(record: dict[str, Any]) -> str:
    """The output name of a dataset record's frame (``<key>_labels.tif``): its image id."""
    return _safe(str(record.get("image_id", Path(record["file_name"]).stem)))


def _record_frames(records: Sequence[dict[str, Any]]) -> list[InputFrame]:
    from pcna_seg.data.channels import ChannelLoader, available_channels

    frames = []
    for rec in records:

        def load(names: Sequence[str], rec: dict[str, Any] = rec) -> dict[str, np.ndarray]:
            loader = ChannelLoader(rec)
            return {n: loader.raw(n) for n in names}

        frames.append(InputFrame(frame_key(rec), str(rec["file_name"]), tuple(available_channels(rec)), load))
    return frames


def find_inputs(spec: str, datasets_root: str | None = None) -> list[InputFrame]:
    """Frames named by ``spec``: a PCNA movie folder, an image folder/glob/file, a COCO JSON or a
    prepared dataset name. DataError when it names nothing or holds no images."""
    from pcna_seg.data.catalog import get_dataset
    from pcna_seg.data.coco_io import load_coco

    path = Path(spec)
    if path.is_file() and path.suffix.lower() == ".json":
        frames = _record_frames(load_coco(path)[0])
    elif path.is_dir():
        if any(p.is_file() for p in path.rglob("*mcy*.tif*")):
            frames = _pcna_frames(path)
        else:
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            frames = _image_frames(files)
    elif path.is_file():
        frames = _image_frames([path])
    elif any(c in spec for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(spec) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
        frames = _image_frames(files)
    else:
        try:
            frames = _record_frames(get_dataset(spec, datasets_root))
        except DatasetNotFoundError:
            raise DataError(f"Input {spec!r} is not a file, folder, glob or prepared dataset name") from None
    if not frames:
        raise DataError(f"Input {spec} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return frames


def check_inputs(predictor: Predictor, frames: Sequence[InputFrame]) -> None:
    """DataError (before anything is written) when a frame lacks a channel the recipe needs."""
    for fr in frames:
        lacking = [c for c in predictor.required_channels(fr.channels) if c not in fr.channels]
        if lacking:
            raise DataError(
                f"The config wants channel {lacking[0]!r} (INPUT.CHANNELS {predictor.recipe}) but input "
                f"{fr.source} has none{fr.missing_hint}; it offers: {', '.join(fr.channels)}"
            )


def run_prediction(
    predictor: Predictor,
    frames: Sequence[InputFrame],
    output_dir: str | os.PathLike,
    tile: int = 0,
    overlap: int = 0,
    progress: bool = True,
    overwrite: bool = False,
) -> PredictionWriter:
    """Predict every frame (tiled when ``tile`` > 0) and write the outputs; returns the writer
    (``counts``, ``count_table()``) after ``objects.csv`` is written.

    ``output_dir`` follows the output-folder rule: missing or empty, or (``overwrite``)
    replaced as a whole by the new predictions when they are complete, so label TIFFs of an
    earlier run never sit beside a CSV that does not list them; a failed run keeps the old
    folder, or leaves no new one. Missing channels are reported before anything is written.
    """
    from tqdm import tqdm

    from pcna_seg.inference.tiled import predict_tiled

    check_inputs(predictor, frames)
    sources = sorted({str(fr.source) for fr in frames})  # an output holding an input is refused
    with output_folder(output_dir, overwrite=overwrite, inputs=sources) as target:
        writer = PredictionWriter(target, predictor.class_names)
        for fr in tqdm(frames, desc="predict", unit="frame", disable=not progress):
            need = predictor.required_channels(fr.channels)
            shown = "pcna" if "pcna" in fr.channels else "gray"
            chans = fr.load(list(dict.fromkeys([*need, shown])))
            if tile > 0:
                pred = predict_tiled(predictor, {k: chans[k] for k in need}, tile, overlap)
            else:
                pred = predictor.predict_arrays({k: chans[k] for k in need}, fr.source)
            writer.write_frame(fr.name, pred, chans[shown])
        writer.close()
    writer.output_dir = Path(output_dir)
    logger.info("Wrote %d frames and %s", writer.n_frames, Path(output_dir) / "objects.csv")
    return writer
