"""What made a campaign stage, and what changed since: ``stage_fingerprint.json`` per stage folder.

A stage's fingerprint holds the fully resolved stage config (``cfg.dump()``: every override,
``MODEL.WEIGHTS`` and ``OUTPUT_DIR`` included), the content digest of the weights it starts
from (:func:`~pcna_seg.utils_io.file_digest`; the upstream stage's ``model_final.pth`` when
weights are chained), ``[path, size, mtime_ns]`` of the COCO JSON of every dataset it trains
or tests on (:func:`~pcna_seg.utils_io.file_stats`) and one hash of the sizes and mtimes of
every image file those JSONs name (so edited pixels count as a change too). A finished stage
is reused only while its fingerprint equals the one the current campaign would give it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml

from pcna_seg.config import load_config
from pcna_seg.errors import PcnaSegError
from pcna_seg.utils_io import file_digest, file_stats, fingerprint, write_json_atomic

logger = logging.getLogger(__name__)
FINGERPRINT = "stage_fingerprint.json"
_MISSING = object()


def _dataset_file(name: str, root: str | None) -> str | None:
    from pcna_seg.data.catalog import get_metadata

    try:
        return get_metadata(name, root).get("json_file")
    except PcnaSegError:  # unknown dataset: the stage's training says so itself
        return None


def _images_hash(json_file: str) -> str | None:
    """One hash over ``[path, size, mtime_ns]`` of every image / channel file a COCO JSON names."""
    from pcna_seg.data.coco_io import load_coco

    try:
        records, _ = load_coco(json_file)
        files = sorted({f for r in records for f in [r["file_name"], *(r.get("channels") or {}).values()]})
        return fingerprint(file_stats(f for f in files if Path(f).is_file()))
    except (PcnaSegError, OSError):  # unreadable: training reports it
        return None


def stage_fingerprint(config_file: str | Path, opts: list[str]) -> dict[str, Any]:
    """The fingerprint of a stage run as ``train_net --config-file config_file opts`` (JSON-able)."""
    cfg = load_config(config_file, list(opts))
    weights = str(cfg.MODEL.WEIGHTS or "")
    digest = file_digest(weights) if weights and Path(weights).is_file() else None
    datasets: dict[str, Any] = {}
    images: dict[str, Any] = {}
    for name in dict.fromkeys([*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST]):
        path = _dataset_file(name, cfg.DATASETS.ROOT or None)
        datasets[name] = file_stats([path])[0] if path and Path(path).is_file() else None
        images[name] = _images_hash(path) if path and Path(path).is_file() else None
    fp = {
        "config": yaml.safe_load(cfg.dump()),
        "weights": {"path": weights, "digest": digest},
        "datasets": datasets,
        "images": images,
    }
    return json.loads(json.dumps(fp, default=str))  # the form it has once written and read back


def read_fingerprint(folder: Path) -> dict[str, Any] | None:
    """The fingerprint saved in a stage folder, or None when missing or unreadable."""
    path = Path(folder) / FINGERPRINT
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("Cannot read %s (%s); the stage counts as changed", path, exc)
        return None
    return data if isinstance(data, dict) else None


def write_fingerprint(folder: Path, fp: dict[str, Any]) -> Path:
    """Save ``fp`` as ``folder/stage_fingerprint.json`` (atomically)."""
    return write_json_atomic(Path(folder) / FINGERPRINT, fp, indent=1)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def describe_changes(old: dict[str, Any], new: dict[str, Any], max_keys: int = 4) -> list[str]:
    """What differs between two fingerprints, one phrase per kind (config keys, weights, data)."""
    changes = []
    a, b = _flatten(old.get("config", {})), _flatten(new.get("config", {}))
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k, _MISSING) != b.get(k, _MISSING))
    if keys:
        shown = ", ".join(f"{k} {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}" for k in keys[:max_keys])
        more = f" and {len(keys) - max_keys} more" if len(keys) > max_keys else ""
        changes.append(f"config changed: {shown}{more}")
    ow, nw = old.get("weights", {}), new.get("weights", {})
    if ow.get("path") == nw.get("path") and ow.get("digest") != nw.get("digest"):
        changes.append(f"the weights it starts from ({nw.get('path')}) changed")
    od, nd = old.get("datasets", {}), new.get("datasets", {})
    for name in sorted(od.keys() & nd.keys()):
        if od[name] != nd[name]:
            path = (nd[name] or od[name] or ["?"])[0]
            changes.append(f"dataset file {path} ({name}) changed")
    oi, ni = old.get("images", {}), new.get("images", {})
    for name in sorted(oi.keys() & ni.keys()):
        if oi[name] != ni[name] and od.get(name) == nd.get(name):
            changes.append(f"image files of dataset {name} changed")
    return changes
