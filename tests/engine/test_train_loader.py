"""Training sampler/batches: seeded, sharded by rank, aspect-grouped, resumable by iteration."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from _toy import toy_records

from pcna_seg.config import get_default_config
from pcna_seg.engine.data import MapDataset, TrainingBatchSampler, TrainingSampler, check_channels
from pcna_seg.errors import DataError


def _take(it, n):
    return list(itertools.islice(iter(it), n))


def test_sampler_is_seeded_and_covers_every_epoch() -> None:
    a = _take(TrainingSampler(10, seed=5), 30)
    assert a == _take(TrainingSampler(10, seed=5), 30)
    assert a != _take(TrainingSampler(10, seed=6), 30)
    for epoch in range(3):
        assert sorted(a[epoch * 10 : (epoch + 1) * 10]) == list(range(10))


def test_ranks_split_one_stream() -> None:
    full = _take(TrainingSampler(7, seed=1), 20)
    r0 = _take(TrainingSampler(7, seed=1, rank=0, world_size=2), 10)
    r1 = _take(TrainingSampler(7, seed=1, rank=1, world_size=2), 10)
    assert r0 == full[0::2] and r1 == full[1::2]


def test_batches_group_orientation_and_resume() -> None:
    groups = [i % 2 for i in range(9)]
    sampler = TrainingSampler(9, seed=2)
    batches = _take(TrainingBatchSampler(sampler, 3, groups), 12)
    for b in batches:
        assert len(b) == 3 and len({groups[i] for i, _ in b}) == 1
    assert len({s for b in batches for _, s in b}) == 36  # every sample has its own seed
    resumed = _take(TrainingBatchSampler(TrainingSampler(9, seed=2), 3, groups, start_iter=5), 7)
    assert resumed == batches[5:]


def test_map_dataset_seeds_per_sample_and_restores_rng() -> None:
    ds = MapDataset([{"x": 1}], lambda r: np.random.rand())
    np.random.seed(0)
    before = np.random.get_state()[1].copy()
    assert ds[(0, 42)] == ds[(0, 42)] != ds[(0, 43)]
    assert np.array_equal(np.random.get_state()[1], before)


def test_missing_channel_named() -> None:
    cfg = get_default_config()
    cfg.INPUT.CHANNELS = ["pcna", "dic", "otsu_mask"]
    recs = toy_records(2)
    for r in recs:
        r["channels"] = {"pcna": "p.tif"}
    with pytest.raises(DataError, match=r"channel 'dic' but image img0.png of ds only has channels \['pcna'"):
        check_channels(cfg, recs, "ds")
