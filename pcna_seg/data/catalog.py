"""Explicit dataset catalog: ``register_dataset(name, loader, metadata)``, never at import.

Names that are not registered are resolved from prepared folders under the datasets root
(``DATASETS.ROOT``, else ``$PCNA_SEG_DATASETS``, else ``./datasets``):

- ``ROOT/registry.yaml`` mapping ``name: {json: path/to/coco.json}`` (paths relative to ROOT);
- ``ROOT/<folder>/<split>.json`` for names ``<folder>_<split>`` (e.g. ``pcna_stage3_train`` →
  ``ROOT/pcna_stage3/train.json``);
- ``ROOT/<name>/annotations.json`` for the whole dataset.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from pcna_seg.data.splits import SPLITS
from pcna_seg.errors import DataError, DatasetNotFoundError

Record = dict[str, Any]
_LOADERS: dict[str, Callable[[], list[Record]]] = {}
_METADATA: dict[str, dict[str, Any]] = {}
ENV_VAR = "PCNA_SEG_DATASETS"


def register_dataset(
    name: str, loader: Callable[[], list[Record]], metadata: dict[str, Any] | None = None
) -> None:
    """Register ``name``; ``loader()`` returns its records lazily. Re-registering replaces it."""
    if not callable(loader):
        raise TypeError("loader must be a callable returning a list of records")
    _LOADERS[name] = loader
    _METADATA[name] = dict(metadata or {})


def unregister_dataset(name: str) -> None:
    _LOADERS.pop(name, None)
    _METADATA.pop(name, None)


def list_datasets() -> list[str]:
    return sorted(_LOADERS)


def datasets_root(root: str | os.PathLike | None = None) -> Path:
    """The datasets root: the argument, else ``$PCNA_SEG_DATASETS``, else ``./datasets``."""
    if root:
        return Path(root)
    return Path(os.environ.get(ENV_VAR) or "datasets")


def register_coco(name: str, json_file: str | os.PathLike, metadata: dict[str, Any] | None = None) -> None:
    """Register a COCO JSON file; class names are read from its categories."""
    from pcna_seg.data.coco_io import load_coco

    json_file = Path(json_file)
    if not json_file.is_file():
        raise DataError(f"COCO file for dataset {name!r} not found: {json_file}")
    cache: dict[str, Any] = {}

    def _load() -> list[Record]:
        if "records" not in cache:
            records, meta = load_coco(json_file)
            cache["records"] = records
            _METADATA[name].update({k: v for k, v in meta.items() if k not in _METADATA[name]})
        return cache["records"]

    meta = {"json_file": str(json_file), "evaluator_type": "coco", "name": name}
    meta.update(metadata or {})
    register_dataset(name, _load, meta)


def register_prepared_folder(prefix: str, folder: str | os.PathLike) -> list[str]:
    """Register ``prefix`` (annotations.json) and ``prefix_train``/``prefix_val`` if present."""
    folder = Path(folder)
    names = []
    for split, fname in (("", "annotations.json"), ("_train", "train.json"), ("_val", "val.json")):
        if (folder / fname).is_file():
            register_coco(prefix + split, folder / fname)
            names.append(prefix + split)
    if not names:
        raise DataError(f"No annotations.json/train.json/val.json in {folder}")
    return names


def _resolve_from_root(name: str, root: Path) -> Path | None:
    registry = root / "registry.yaml"
    if registry.is_file():
        with open(registry, encoding="utf-8") as fh:
            entries = yaml.safe_load(fh) or {}
        entry = entries.get(name)
        if entry:
            json_path = Path(entry["json"] if isinstance(entry, dict) else entry)
            return json_path if json_path.is_absolute() else root / json_path
    if (root / name / "annotations.json").is_file():
        return root / name / "annotations.json"
    if "_" in name:
        folder, split = name.rsplit("_", 1)
        if (root / folder / f"{split}.json").is_file():
            return root / folder / f"{split}.json"
    return None


def _ensure(name: str, root: str | os.PathLike | None) -> None:
    base = datasets_root(root)
    if name in _LOADERS:
        resolved_in = _METADATA[name].get("resolved_in")
        if resolved_in is None or resolved_in == str(base.resolve()):
            return  # registered explicitly, or found under this same root before
    found = _resolve_from_root(name, base)
    if found is None:
        known = ", ".join(list_datasets()) or "none"
        raise DatasetNotFoundError(
            f"Dataset {name!r} is not registered (registered: {known}) and no prepared folder for it "
            f"was found under {base} (set DATASETS.ROOT or ${ENV_VAR}, or run tools/prepare_dataset.py)"
        )
    register_coco(name, found, {"resolved_in": str(base.resolve())})


def get_dataset(name: str, root: str | os.PathLike | None = None) -> list[Record]:
    """Records of a registered (or resolvable) dataset."""
    _ensure(name, root)
    return _LOADERS[name]()


def get_metadata(name: str, root: str | os.PathLike | None = None) -> dict[str, Any]:
    """Metadata of a dataset (``thing_classes``, ``json_file``, ...).

    For a COCO-backed dataset the class names come from the one parse of its JSON that also
    yields the records (cached), so asking for metadata and then records reads the file once.
    """
    _ensure(name, root)
    if "thing_classes" not in _METADATA[name] and "json_file" in _METADATA[name]:
        _LOADERS[name]()
    return _METADATA[name]


def discover(root: str | os.PathLike | None = None) -> list[str]:
    """Names resolvable under the datasets root (prepared folders and registry.yaml entries)."""
    base = datasets_root(root)
    names: set[str] = set()
    if (base / "registry.yaml").is_file():
        with open(base / "registry.yaml", encoding="utf-8") as fh:
            names.update((yaml.safe_load(fh) or {}).keys())
    if base.is_dir():
        for folder in sorted(p for p in base.iterdir() if p.is_dir()):
            if (folder / "annotations.json").is_file():
                names.add(folder.name)
            for split in SPLITS:
                if (folder / f"{split}.json").is_file():
                    names.add(f"{folder.name}_{split}")
    return sorted(names | set(_LOADERS))
