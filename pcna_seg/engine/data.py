"""Train/test data loaders for the iteration-based trainer.

Training: an infinite, seeded shuffle of record indices (identical on every process, each
process takes every ``world_size``-th index), grouped into batches of images with the same
orientation (landscape/portrait) when ``DATALOADER.ASPECT_RATIO_GROUPING``. Batches are made
in the main process and every sample carries its own seed, so the data order *and* the random
augmentations depend only on (SEED, iteration) — not on worker count — and a resumed run at
iteration k sees exactly the batches an uninterrupted run sees. Batches are lists of mapper
dicts (no stacking).
"""

from __future__ import annotations

import copy
import logging
import random
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from yacs.config import CfgNode

from pcna_seg.data.catalog import get_dataset, get_metadata
from pcna_seg.engine.launch import get_rank, get_world_size
from pcna_seg.errors import ConfigError, DataError, PcnaSegError

logger = logging.getLogger(__name__)
Record = dict[str, Any]
_BUILTIN_CHANNELS = ("gray", "otsu_mask")


def sample_seed(seed: int, rank: int, position: int) -> int:
    """Deterministic 32-bit seed for the ``position``-th sample a process draws."""
    return int(np.random.SeedSequence([seed, rank, position]).generate_state(1)[0])


class MapDataset(Dataset):
    """``records[i]`` through ``mapper``; keys are ``(index, seed)`` pairs or plain indices.

    With a seed, python/numpy/torch RNGs are seeded for the call (and restored afterwards in
    the main process), so augmentations are reproducible per sample.
    """

    def __init__(self, records: Sequence[Record], mapper: Callable[[Record], Any]) -> None:
        self.records = list(records)
        self.mapper = mapper

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        if not isinstance(key, tuple):
            return self.mapper(copy.deepcopy(self.records[key]))
        index, seed = key
        in_worker = torch.utils.data.get_worker_info() is not None
        saved = None if in_worker else (random.getstate(), np.random.get_state(), torch.get_rng_state())
        try:
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
            _reseed_mapper(self.mapper, seed)
            return self.mapper(copy.deepcopy(self.records[index]))
        finally:
            if saved is not None:
                random.setstate(saved[0])
                np.random.set_state(saved[1])
                torch.set_rng_state(saved[2])


def _reseed_mapper(mapper: Any, seed: int) -> None:
    """Mappers that own a numpy Generator (``mapper.rng``) get a fresh one seeded for this sample."""
    if isinstance(getattr(mapper, "rng", None), np.random.Generator):
        info = torch.utils.data.get_worker_info()
        if info is not None and hasattr(mapper, "_worker_seed"):
            mapper._worker_seed = info.seed  # the per-sample seed already differs between workers
        mapper.rng = np.random.default_rng(seed)


class TrainingSampler:
    """Infinite stream of this process's record indices: seeded permutations, sharded by rank."""

    def __init__(self, size: int, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1):
        if size <= 0:
            raise DataError("The training dataset is empty")
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng(self.seed)
        k = 0
        while True:
            order = rng.permutation(self.size) if self.shuffle else np.arange(self.size)
            for idx in order:
                if k % self.world_size == self.rank:
                    yield int(idx)
                k += 1


class TrainingBatchSampler:
    """Infinite batches of ``(index, sample_seed)`` pairs, optionally aspect-ratio grouped.

    ``start_iter`` skips the batches of iterations already trained (indices only, cheap), so
    resuming continues the exact data order.
    """

    def __init__(
        self,
        sampler: TrainingSampler,
        batch_size: int,
        group_ids: Sequence[int] | None = None,
        start_iter: int = 0,
    ) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self.group_ids = list(group_ids) if group_ids is not None else None
        self.start_iter = start_iter

    def _batches(self) -> Iterator[list[tuple[int, int]]]:
        buckets: dict[int, list[tuple[int, int]]] = {}
        for pos, idx in enumerate(self.sampler):
            item = (idx, sample_seed(self.sampler.seed, self.sampler.rank, pos))
            group = self.group_ids[idx] if self.group_ids is not None else 0
            bucket = buckets.setdefault(group, [])
            bucket.append(item)
            if len(bucket) == self.batch_size:
                yield bucket
                buckets[group] = []

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        batches = self._batches()
        for _ in range(self.start_iter):
            next(batches)
        yield from batches


def trivial_collate(batch: list[Any]) -> list[Any]:
    return batch


def worker_init_fn(worker_id: int) -> None:
    """Give every worker distinct python/numpy seeds derived from torch's per-worker seed."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def load_records(names: Sequence[str], root: str, what: str) -> list[Record]:
    """Concatenate the records of the named datasets; ConfigError when none are named."""
    if not names:
        raise ConfigError(f"{what} is empty; name at least one registered dataset")
    records: list[Record] = []
    for name in names:
        records.extend(get_dataset(name, root or None))
    return records


def check_train_records(cfg: CfgNode, records: list[Record]) -> None:
    """Fail early, with one sentence, on data the trainer cannot learn from."""
    names = ", ".join(cfg.DATASETS.TRAIN)
    if not records:
        raise DataError(f"Training dataset(s) {names} hold no images")
    n_inst = sum(len(r.get("annotations", [])) for r in records)
    if n_inst == 0:
        files = ", ".join(
            str(get_metadata(n, cfg.DATASETS.ROOT or None).get("json_file", n)) for n in cfg.DATASETS.TRAIN
        )
        raise DataError(
            f"Training dataset(s) {names} have {len(records)} images but no annotations at all ({files}); "
            "there is nothing to learn"
        )
    max_cat = max(int(a["category_id"]) for r in records for a in r.get("annotations", []))
    if max_cat >= cfg.MODEL.ROI_HEADS.NUM_CLASSES:
        classes = get_metadata(cfg.DATASETS.TRAIN[0], cfg.DATASETS.ROOT or None).get("thing_classes")
        raise ConfigError(
            f"MODEL.ROI_HEADS.NUM_CLASSES is {cfg.MODEL.ROI_HEADS.NUM_CLASSES} but dataset(s) {names} "
            f"use category index {max_cat} (classes: {classes})"
        )
    check_channels(cfg, records, names)


def dataset_class_names(cfg: CfgNode, eval_only: bool = False) -> list[str]:
    """The one class list of a run: every DATASETS.TRAIN entry must name the same classes in the
    same order (category ids would silently mix otherwise) and every DATASETS.TEST entry the
    same classes (in any order: evaluation maps them by name). ConfigError naming both lists."""
    root = cfg.DATASETS.ROOT or None
    train = [] if eval_only else list(cfg.DATASETS.TRAIN)
    lists = {n: list(get_metadata(n, root).get("thing_classes") or []) for n in [*train, *cfg.DATASETS.TEST]}
    if not lists:
        return []
    ref_name = train[0] if train else cfg.DATASETS.TEST[0]
    ref = lists[ref_name]
    for name, names in lists.items():
        same = names == ref if name in train else sorted(names) == sorted(ref)
        if not same:
            where = "DATASETS.TRAIN" if name in train else "DATASETS.TEST"
            raise ConfigError(
                f"{where} dataset {name} has classes {names} but {ref_name} has {ref}; "
                "every dataset of a run must name the same classes (training ones in the same order)"
            )
    return ref


def check_channels(cfg: CfgNode, records: list[Record], names: str) -> None:
    """Every channel the recipe (INPUT.CHANNELS, INPUT.OTSU.SOURCE) names must exist in every record."""
    wanted = [c for c in cfg.INPUT.CHANNELS if c not in _BUILTIN_CHANNELS]
    if "otsu_mask" in cfg.INPUT.CHANNELS and cfg.INPUT.OTSU.SOURCE not in _BUILTIN_CHANNELS:
        wanted.append(cfg.INPUT.OTSU.SOURCE)
    for rec in records:
        have = rec.get("channels") or {}
        for ch in wanted:
            if ch not in have:
                raise DataError(
                    f"INPUT.CHANNELS names channel {ch!r} but image {rec['file_name']} of {names} only has "
                    f"channels {sorted(have) + ['gray']}"
                )


def build_train_loader(
    cfg: CfgNode, mapper: Callable[[Record], Any], records: list[Record], seed: int, start_iter: int = 0
) -> DataLoader:
    """Infinite loader of per-process batches (lists of mapper outputs), resumable by iteration."""
    world = get_world_size()
    total = cfg.SOLVER.IMS_PER_BATCH
    if total % world:
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH ({total}) must be divisible by the number of processes ({world})"
        )
    sampler = TrainingSampler(len(records), shuffle=True, seed=seed, rank=get_rank(), world_size=world)
    groups = None
    if cfg.DATALOADER.ASPECT_RATIO_GROUPING:
        groups = [int(r["width"] > r["height"]) for r in records]
    batch_sampler = TrainingBatchSampler(sampler, total // world, groups, start_iter)
    workers = cfg.DATALOADER.NUM_WORKERS
    return DataLoader(
        MapDataset(records, mapper),
        batch_sampler=batch_sampler,
        collate_fn=trivial_collate,
        num_workers=workers,
        worker_init_fn=worker_init_fn,
        persistent_workers=workers > 0,
        generator=_private_generator(seed),
    )


def _private_generator(seed: int) -> torch.Generator:
    """A generator of the loader's own: starting an iterator draws its base seed from here, not
    from the global torch RNG (a draw there would shift a resumed run's random stream)."""
    return torch.Generator().manual_seed(int(seed) % 2**63)


def build_test_loader(cfg: CfgNode, mapper: Callable[[Record], Any], records: list[Record]) -> DataLoader:
    """This process's contiguous share of ``records``, one image per batch, in order."""
    world, rank = get_world_size(), get_rank()
    per = -(-len(records) // world) if records else 0
    shard = list(range(rank * per, min(len(records), (rank + 1) * per)))
    return DataLoader(
        MapDataset(records, mapper),
        sampler=shard,
        batch_size=1,
        collate_fn=trivial_collate,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        worker_init_fn=worker_init_fn,
        generator=_private_generator(0),
    )


def clean_worker_error(exc: BaseException) -> PcnaSegError:
    """A PcnaSegError re-raised from a DataLoader worker carries a traceback; keep its last line."""
    msg = str(exc)
    if "Original Traceback" in msg:
        last = [ln for ln in msg.strip().splitlines() if ln.strip()][-1]
        msg = re.sub(r"^[\w.]+Error: ", "", last)
    return type(exc)(msg) if isinstance(exc, PcnaSegError) else PcnaSegError(msg)
