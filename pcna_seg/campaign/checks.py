"""Checks of a planned campaign that need its data, made before any stage trains.

:func:`check_campaign` resolves every stage's datasets (a missing one is a ConfigError naming the
stage, the dataset and the datasets root), refuses a stage that starts from an earlier stage's
weights while training on fewer classes than that stage learned (its class-specific layers
would be re-initialised and classes silently dropped), and returns what each stage trains and
tests on, for the campaign report.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from pcna_seg.config import load_config
from pcna_seg.errors import ConfigError, PcnaSegError

logger = logging.getLogger(__name__)


def describe_dataset(name: str, root: str | None) -> dict[str, Any]:
    """``{"name", "json_file", "images", "instances", "per_class", "classes", "split_by"}`` of a
    resolvable dataset (``split_by`` from the converter's ``dataset_card.json`` when present)."""
    from pcna_seg.data.catalog import get_dataset, get_metadata

    records = get_dataset(name, root)
    meta = get_metadata(name, root)
    classes = list(meta.get("thing_classes") or [])
    counts = Counter(a["category_id"] for r in records for a in r["annotations"])
    out: dict[str, Any] = {
        "name": name,
        "json_file": meta.get("json_file"),
        "images": len(records),
        "instances": int(sum(counts.values())),
        "per_class": {c: int(counts.get(i, 0)) for i, c in enumerate(classes)},
        "classes": classes,
        "sequences": len({r.get("sequence") for r in records if r.get("sequence") is not None}),
    }
    card = Path(meta["json_file"]).parent / "dataset_card.json" if meta.get("json_file") else None
    if card is not None and card.is_file():
        try:
            out["split_by"] = (json.loads(card.read_text(encoding="utf-8")).get("split") or {}).get("by")
        except (OSError, ValueError):
            pass
    return out


def _stage_data(stage: Any) -> dict[str, Any]:
    cfg = load_config(stage.config_file, list(stage.opts))
    root = cfg.DATASETS.ROOT or None
    out: dict[str, Any] = {"train": [], "test": [], "iterations": int(cfg.SOLVER.MAX_ITER)}
    for role, names in (("train", cfg.DATASETS.TRAIN), ("test", cfg.DATASETS.TEST)):
        for name in names:
            try:
                out[role].append(describe_dataset(name, root))
            except PcnaSegError as exc:
                raise ConfigError(
                    f"Stage {stage.label} ({stage.config_file.name}) DATASETS.{role.upper()} names "
                    f"{name!r}, which cannot be loaded: {exc}"
                ) from None
    sets = out["train"] or out["test"]
    out["classes"] = sets[0]["classes"] if sets else []
    return out


def check_campaign(stages: list[Any], strict: bool = True) -> dict[str, dict[str, Any]]:
    """Per stage label, the data it trains/tests on (:func:`describe_dataset`) and its class list.

    ConfigError (with ``strict``; a logged warning otherwise, e.g. for ``--dry-run``) for a
    dataset that does not resolve and for a chained stage whose class list is shorter than the
    one of the stage whose weights it starts from.
    """
    data: dict[str, dict[str, Any]] = {}
    by_weights = {str(st.final_weights): st for st in stages}
    for st in stages:
        try:
            data[st.label] = _stage_data(st)
            parent = by_weights.get(st.start_weights)
            if parent is None or parent.label not in data:
                continue
            old, new = data[parent.label]["classes"], data[st.label]["classes"]
            if len(new) < len(old):
                dropped = [c for c in old if c not in new]
                raise ConfigError(
                    f"Stage {st.label} trains on {len(new)} classes {new} but starts from stage "
                    f"{parent.label}'s weights, trained on {len(old)} classes {old}: the class list shrinks "
                    f"(dropping {dropped or 'class slots'}) with no mapping; start it from other weights "
                    "(CAMPAIGN.START_FROM 'none' or a weights file) or train it on the earlier classes"
                )
        except ConfigError as exc:
            if strict:
                raise
            logger.warning("%s", exc)
    return data
