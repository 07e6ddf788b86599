"""COCO bbox/segm evaluation with pycocotools, against the dataset's own COCO JSON.

Predictions come from the model in the *input* frame (at model scale); the one postprocess
(:func:`pcna_seg.modeling.postprocess.to_prediction`) maps them to the original image size
(record ``height``/``width``), each mask pasted into its own box crop, and the crops are
RLE-encoded. Model classes map to dataset categories by name. Metrics are fractions in
[0, 1] (AP, AP50, AP75, APs, APm, APl, AR, and ``AP-<class>``), computed from
``COCOeval.eval["precision"]`` at the *largest* ``TEST.MAX_DETS`` (COCOeval.summarize assumes
maxDets = 100, which undercounts dense nuclei).

Cell-level metrics (:mod:`pcna_seg.evaluation.cell_metrics`) come with AP: the detections
scoring at least ``confusion_score``, made one per nucleus by class-agnostic mask NMS (as the
prediction tool does), are painted into one label image per frame (a pixel claimed twice goes
to the higher score) and matched one-to-one to the ground truth:
``cells`` (F1 / PQ at IoU 0.5, DSB score, SEG, count MAE) and, for several classes, ``phases``
(balanced accuracy of the phase called on matched nuclei).

Outputs (main process) in ``output_dir``: ``results.json`` (all numbers, including the phase
confusion matrix for multi-class data and the full cell metrics),
``coco_instances_results.json`` (COCO results format with an extra ``class_probs`` list per
detection: the full softmax, background first) and ``phase_confusion.png``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from pcna_seg.data.catalog import get_metadata
from pcna_seg.engine.launch import all_gather, is_main_process
from pcna_seg.errors import DataError
from pcna_seg.evaluation.evaluator import DatasetEvaluator
from pcna_seg.utils_io import write_json_atomic

logger = logging.getLogger(__name__)
_AREAS = ("all", "small", "medium", "large")


def load_coco_gt(json_file: str | os.PathLike) -> COCO:
    """A pycocotools COCO object for ``json_file`` (missing iscrowd/area/info filled in)."""
    path = Path(json_file)
    if not path.is_file():
        raise DataError(f"Ground-truth COCO file not found: {path}")
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if isinstance(data.get("annotations"), dict):
        data["annotations"] = list(data["annotations"].values())
    data.setdefault("info", {})
    data.setdefault("annotations", [])
    for i, ann in enumerate(data["annotations"]):
        ann.setdefault("iscrowd", 0)
        ann.setdefault("id", i + 1)
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def prediction_to_coco(pred: Any, image_id: Any, cat_ids: Sequence[int]) -> list[dict[str, Any]]:
    """A :class:`~pcna_seg.modeling.instances.Prediction` → COCO result dicts (RLE from crops).

    ``cat_ids[k]`` is the dataset category id of the prediction's class ``k``.
    """
    from pcna_seg.data.rle_csv import crop_to_rle

    H, W = pred.image_size
    out = []
    probs = np.asarray(pred.probs_with_bg, np.float32).round(4).tolist()
    for i in range(len(pred)):
        y0, x0 = (int(v) for v in pred.mask_offsets[i])
        rle = crop_to_rle(pred.mask_crops[i], y0, x0, H, W)
        rle["counts"] = rle["counts"].decode("ascii")
        x_a, y_a, x_b, y_b = (float(v) for v in pred.boxes[i])
        out.append(
            {
                "image_id": image_id,
                "category_id": int(cat_ids[int(pred.labels[i])]),
                "bbox": [round(x_a, 2), round(y_a, 2), round(x_b - x_a, 2), round(y_b - y_a, 2)],
                "score": float(pred.scores[i]),
                "segmentation": rle,
                "class_probs": probs[i],
            }
        )
    return out


def category_ids_by_name(model_names: Sequence[str], coco_gt: COCO, dataset: str) -> list[int]:
    """Dataset category id of each model class, matched by NAME (never by position).

    DataError naming both lists when a model class is not a category of the dataset.
    """
    by_name = {c["name"]: int(c["id"]) for c in coco_gt.dataset["categories"]}
    missing = [n for n in model_names if n not in by_name]
    if missing:
        raise DataError(
            f"The model's classes {list(model_names)} are not the categories of {dataset} "
            f"({sorted(by_name, key=by_name.get)}): {missing} missing; evaluate on data with the "
            "model's classes"
        )
    return [by_name[n] for n in model_names]


def summarize(coco_eval: COCOeval, class_names: Sequence[str]) -> dict[str, float]:
    """AP/AP50/AP75/APs/APm/APl/AR and per-class AP at the largest maxDets (fractions; NaN if no GT)."""
    p = coco_eval.params
    prec = coco_eval.eval["precision"]  # (T iou, R recall, K cls, A area, M maxDets)
    rec = coco_eval.eval["recall"]  # (T, K, A, M)

    def _mean(arr: np.ndarray) -> float:
        arr = arr[arr > -1]
        return float(arr.mean()) if arr.size else float("nan")

    def _iou(t: float) -> int:
        return int(np.argmin(np.abs(np.asarray(p.iouThrs) - t)))

    stats = {
        "AP": _mean(prec[:, :, :, 0, -1]),
        "AP50": _mean(prec[_iou(0.5), :, :, 0, -1]),
        "AP75": _mean(prec[_iou(0.75), :, :, 0, -1]),
    }
    for short, area in zip(("APs", "APm", "APl"), _AREAS[1:]):
        stats[short] = _mean(prec[:, :, :, p.areaRngLbl.index(area), -1])
    stats[f"AR@{p.maxDets[-1]}"] = _mean(rec[:, :, 0, -1])
    for k, name in enumerate(class_names[: prec.shape[2]]):
        stats[f"AP-{name}"] = _mean(prec[:, :, k, 0, -1])
    return stats


def evaluate_predictions(
    coco_gt: COCO,
    results: list[dict[str, Any]],
    task: str,
    img_ids: Sequence[Any],
    max_dets: Sequence[int],
    class_names: Sequence[str],
    use_cats: bool = True,
) -> dict[str, float]:
    """Run COCOeval for ``task`` ("bbox" or "segm") on ``img_ids``; empty results give AP 0.

    ``use_cats=False`` ignores classes (pycocotools ``useCats=0``): how well nuclei are found
    and outlined whatever phase is called; a nucleus detected twice with two phases counts one
    false positive there.
    """
    if task == "segm":
        results = [{k: v for k, v in r.items() if k != "bbox"} for r in results if "segmentation" in r]
    if not results:
        zero = {k: 0.0 for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", f"AR@{max(max_dets)}")}
        zero.update({f"AP-{c}": 0.0 for c in class_names})
        return zero
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes([dict(r) for r in results])
        ev = COCOeval(coco_gt, coco_dt, iouType=task)
        ev.params.imgIds = list(img_ids)
        ev.params.maxDets = sorted(int(m) for m in max_dets)
        ev.params.useCats = int(use_cats)
        ev.evaluate()
        ev.accumulate()
    return summarize(ev, class_names)


def phase_confusion(
    coco_gt: COCO,
    results: list[dict[str, Any]],
    img_ids: Sequence[Any],
    class_names: Sequence[str],
    iou_thresh: float = 0.5,
    score_thresh: float = 0.5,
) -> dict[str, Any]:
    """GT class vs predicted class for detections matched one-to-one by mask IoU ≥ ``iou_thresh``.

    ``matrix`` is (K+1, K+1): rows = GT classes then "(none)" (unmatched predictions), columns
    = predicted classes then "(missed)" (unmatched GT). Greedy matching by decreasing IoU.
    """
    cat_ids = sorted(coco_gt.getCatIds())
    index = {c: i for i, c in enumerate(cat_ids)}
    k = len(cat_ids)
    mat = np.zeros((k + 1, k + 1), dtype=np.int64)
    by_img: dict[Any, list[dict[str, Any]]] = {}
    for r in results:
        if r["score"] >= score_thresh and "segmentation" in r:
            by_img.setdefault(r["image_id"], []).append(r)
    for img in img_ids:
        gts = [a for a in coco_gt.imgToAnns.get(img, []) if not a.get("iscrowd", 0)]
        dts = by_img.get(img, [])
        gt_rles = [coco_gt.annToRLE(a) for a in gts]
        dt_rles = [{"size": d["segmentation"]["size"], "counts": d["segmentation"]["counts"]} for d in dts]
        ious = np.zeros((len(dts), len(gts)))
        if dts and gts:
            ious = np.asarray(mask_utils.iou(dt_rles, gt_rles, [0] * len(gts))).reshape(len(dts), len(gts))
        used_d, used_g = set(), set()
        for flat in np.argsort(-ious, axis=None):
            d, g = np.unravel_index(flat, ious.shape)
            if ious[d, g] < iou_thresh:
                break
            if d in used_d or g in used_g:
                continue
            used_d.add(d)
            used_g.add(g)
            mat[index[gts[g]["category_id"]], index[dts[d]["category_id"]]] += 1
        for g, a in enumerate(gts):
            if g not in used_g:
                mat[index[a["category_id"]], k] += 1
        for d, r in enumerate(dts):
            if d not in used_d:
                mat[k, index[r["category_id"]]] += 1
    matched = int(mat[:k, :k].sum())
    return {
        "rows": list(class_names) + ["(none)"],
        "columns": list(class_names) + ["(missed)"],
        "matrix": mat.tolist(),
        "iou_thresh": iou_thresh,
        "score_thresh": score_thresh,
        "matched": matched,
        "accuracy": float(np.trace(mat[:k, :k]) / matched) if matched else float("nan"),
    }


def one_per_nucleus(dts: list[dict[str, Any]], iou_thresh: float = 0.5) -> list[dict[str, Any]]:
    """Class-agnostic mask NMS: drop a detection whose mask overlaps a better one by IoU > ``iou_thresh``.

    Per-class NMS (what COCO AP rewards) can keep one detection per phase on the same nucleus;
    cell counts and matching need one detection per nucleus, as the prediction tool gives.
    """
    order = sorted(dts, key=lambda r: -r["score"])
    if len(order) < 2:
        return order
    rles = [r["segmentation"] for r in order]
    ious = np.asarray(mask_utils.iou(rles, rles, [0] * len(rles)))
    keep: list[int] = []
    for i in range(len(order)):
        if not keep or ious[i, keep].max() <= iou_thresh:
            keep.append(i)
    return [order[i] for i in keep]


def label_images(
    coco_gt: COCO, dts: list[dict[str, Any]], img_id: Any, score_thresh: float
) -> tuple[np.ndarray, np.ndarray, dict[int, int], dict[int, int]]:
    """(gt labels, predicted labels, {gt label: class index}, {pred label: class index}) of one image.

    ``dts``: that image's COCO results, made one per nucleus (:func:`one_per_nucleus`). Labels
    are 1-based positions in the image's annotation / kept-detection lists; detections are
    painted by increasing score, so an overlap goes to the higher-scoring one.
    """
    info = coco_gt.imgs[img_id]
    h, w = int(info["height"]), int(info["width"])
    index = {c: i for i, c in enumerate(sorted(coco_gt.getCatIds()))}
    gt = np.zeros((h, w), dtype=np.int32)
    gt_cls: dict[int, int] = {}
    for k, ann in enumerate(a for a in coco_gt.imgToAnns.get(img_id, []) if not a.get("iscrowd", 0)):
        gt[mask_utils.decode(coco_gt.annToRLE(ann)).astype(bool)] = k + 1
        gt_cls[k + 1] = index[ann["category_id"]]
    pred = np.zeros((h, w), dtype=np.int32)
    pred_cls: dict[int, int] = {}
    kept = one_per_nucleus([r for r in dts if "segmentation" in r and r["score"] >= score_thresh])
    for k, r in enumerate(sorted(kept, key=lambda r: r["score"])):
        pred[mask_utils.decode(r["segmentation"]).astype(bool)] = k + 1
        pred_cls[k + 1] = index[r["category_id"]]
    return gt, pred, gt_cls, pred_cls


def cell_level(
    coco_gt: COCO,
    results: list[dict[str, Any]],
    img_ids: Sequence[Any],
    class_names: Sequence[str],
    score_thresh: float,
) -> dict[str, Any]:
    """Cell-level metrics of the detections on ``img_ids``: ``{"cells": ..., "phases": ...}``."""
    from pcna_seg.evaluation.cell_metrics import CellEvaluator

    ev = CellEvaluator(class_names=class_names if len(class_names) > 1 else ())
    by_img: dict[Any, list[dict[str, Any]]] = {}
    for r in results:
        by_img.setdefault(r["image_id"], []).append(r)
    for img in img_ids:
        gt, pred, gt_cls, pred_cls = label_images(coco_gt, by_img.get(img, []), img, score_thresh)
        ev.process(gt, pred, str(coco_gt.imgs[img].get("file_name", img)), gt_cls, pred_cls)
    return ev.evaluate()


CELL_HEADLINE = ("f1@0.5", "pq@0.5", "dsb_score", "seg", "count_mae")


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def format_table(results: dict[str, dict[str, float]]) -> str:
    """Plain-text table: one row per task, one column per metric."""
    tasks = [t for t in ("bbox", "segm", "segm_any_class") if t in results]
    if not tasks:
        return ""
    cols = list(results[tasks[0]])
    width = max(8, *(len(c) for c in cols))
    name_w = max(len(t) for t in tasks)
    lines = [f"{'task':<{name_w}} " + " ".join(f"{c:>{width}}" for c in cols)]
    for t in tasks:
        vals = [results[t].get(c, float("nan")) for c in cols]
        lines.append(f"{t:<{name_w}} " + " ".join(f"{v:>{width}.4f}" for v in vals))
    return "\n".join(lines)


class COCOEvaluator(DatasetEvaluator):
    """Collects predictions over a dataset (``process``) and scores them (``evaluate``).

    Works across processes: predictions are gathered to the main process, which alone computes
    metrics and writes files; other processes get an empty dict.
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: str | os.PathLike | None = None,
        max_dets: Sequence[int] = (1, 10, 100),
        root: str | None = None,
        tasks: Sequence[str] = ("bbox", "segm"),
        confusion_iou: float = 0.5,
        confusion_score: float = 0.5,
        model_class_names: Sequence[str] | None = None,
    ) -> None:
        meta = get_metadata(dataset_name, root or None)
        if "json_file" not in meta:
            raise DataError(
                f"Dataset {dataset_name!r} has no json_file in its metadata; cannot run COCO eval"
            )
        self.dataset_name = dataset_name
        self.json_file = meta["json_file"]
        self.output_dir = Path(output_dir) if output_dir else None
        self.max_dets = list(max_dets)
        self.tasks = list(tasks)
        self.confusion_iou, self.confusion_score = confusion_iou, confusion_score
        self.model_class_names = list(model_class_names) if model_class_names else None
        self._coco: COCO | None = None
        self.reset()

    @property
    def coco_gt(self) -> COCO:
        if self._coco is None:
            self._coco = load_coco_gt(self.json_file)
        return self._coco

    def reset(self) -> None:
        self._results: list[dict[str, Any]] = []
        self._img_ids: list[Any] = []

    def dataset_class_names(self) -> list[str]:
        return [c["name"] for c in sorted(self.coco_gt.dataset["categories"], key=lambda c: c["id"])]

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, torch.Tensor]]) -> None:
        """``inputs``: mapper dicts (``image`` (C, h, w), ``image_id``, original ``height``/``width``).

        Model classes map to the dataset's categories by name (``model_class_names``; when not
        given, the model is taken to predict the dataset's own classes in their order).
        """
        from pcna_seg.modeling.postprocess import to_prediction

        names = self.model_class_names or self.dataset_class_names()
        cat_ids = category_ids_by_name(names, self.coco_gt, self.dataset_name)
        for inp, out in zip(inputs, outputs):
            hw_in = tuple(inp["image"].shape[-2:])
            orig = (int(inp.get("height", hw_in[0])), int(inp.get("width", hw_in[1])))
            self._img_ids.append(inp["image_id"])
            pred = to_prediction(out, hw_in, orig, names, self.mask_paste)
            self._results.extend(prediction_to_coco(pred, inp["image_id"], cat_ids))

    def evaluate(self) -> dict[str, Any]:
        gathered = all_gather((self._img_ids, self._results))
        if not is_main_process():
            return {}
        img_ids = [i for ids, _ in gathered for i in ids]
        results = [r for _, res in gathered for r in res]
        coco = self.coco_gt
        class_names = [c["name"] for c in sorted(coco.dataset["categories"], key=lambda c: c["id"])]
        out: dict[str, Any] = {}
        for task in self.tasks:
            out[task] = evaluate_predictions(coco, results, task, img_ids, self.max_dets, class_names)
        if len(class_names) > 1 and "segm" in self.tasks:  # nuclei found, whatever the phase
            out["segm_any_class"] = evaluate_predictions(
                coco, results, "segm", img_ids, self.max_dets, ["any"], use_cats=False
            )
        extra: dict[str, Any] = {"n_images": len(img_ids), "n_detections": len(results)}
        if len(class_names) > 1 and "segm" in self.tasks:
            extra["phase_confusion"] = phase_confusion(
                coco, results, img_ids, class_names, self.confusion_iou, self.confusion_score
            )
        if "segm" in self.tasks:
            full = cell_level(coco, results, img_ids, class_names, self.confusion_score)
            extra.update(full)
            out["cells"] = {k: full["cells"][k] for k in CELL_HEADLINE}
            if "phases" in full:
                out["phases"] = {k: full["phases"][k] for k in ("accuracy", "balanced_accuracy")}
        logger.info("Evaluation of %s (%d images):\n%s", self.dataset_name, len(img_ids), format_table(out))
        if self.output_dir is not None:
            self._write(out, extra, results)
        return out | ({"phase_confusion": extra["phase_confusion"]} if "phase_confusion" in extra else {})

    def _write(self, metrics: dict[str, Any], extra: dict[str, Any], results: list[dict[str, Any]]) -> None:
        assert self.output_dir is not None
        payload = {"dataset": self.dataset_name, "json_file": self.json_file, "max_dets": self.max_dets}
        payload.update(metrics)
        payload.update(extra)  # full cell / phase metrics replace the headline copies
        write_json_atomic(self.output_dir / "results.json", _json_safe(payload), indent=2)
        write_json_atomic(self.output_dir / "coco_instances_results.json", results)
        if "phase_confusion" in extra:
            from pcna_seg.evaluation.report import plot_confusion

            plot_confusion(extra["phase_confusion"], self.output_dir / "phase_confusion.png")
        logger.info("Wrote evaluation results to %s", self.output_dir)
