"""Synthetic realism: the acquisition simulator, the clean mode's stability, photometric
augmentation and the mapper contract with augmentation on."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from pcna_seg.data.synthetic import WRITERS, get_writer
from pcna_seg.data.synthetic import nuclei as N

# Checksums of the clean (default) generator, recorded BEFORE the realistic mode was added:
# the clean mode must stay pixel-identical so every existing test and benchmark is unchanged.
CLEAN_ARRAYS = {
    "pcna_frame": "8ebe8628fabb1c0e",
    "nuclei_image": "841b46c60bf8b1a0",
    "movie": "1e04df085b75c6df",
    "livedead": "e5e4e6d9ecce88eb",
}
CLEAN_WRITERS = {
    "bbbc039": "cbd4a4c54dfca32a",
    "ctc": "b314dd1d7ba7656d",
    "deepcell_npz": "edd0d96e080d7081",
    "deepcell_trks": "9288c6634546a01a",
    "dsb2018": "48f63e68e3595659",
    "livecell": "2aa7ac4256871816",
    "pcna_masks": "2e8179fdf0f47074",
    "pcna_via": "fe989ab49eb93fc2",
}


def _hash_arrays(*arrays: np.ndarray) -> str:
    d = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        d.update(str(a.dtype).encode())
        d.update(str(a.shape).encode())
        d.update(a.tobytes())
    return d.hexdigest()[:16]


def _hash_folder(root: Path) -> str:
    d = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.is_file():
            d.update(str(f.relative_to(root)).encode())
            d.update(f.read_bytes())
    return d.hexdigest()[:16]


def test_clean_generator_unchanged():
    f = N.make_pcna_frame(np.random.default_rng(0), 96, 128, n_nuclei=12)
    g = N.make_nuclei_image(np.random.default_rng(1), 80, 100, n_nuclei=8)
    m = N.make_pcna_movie(np.random.default_rng(2), 3, 64, 64, 6)
    ld, sem = N.make_livedead_frame(np.random.default_rng(3), 120, 160, density=1e-3)
    got = {
        "pcna_frame": _hash_arrays(f.labels, f.channels["pcna"], f.channels["dic"]),
        "nuclei_image": _hash_arrays(g.labels, g.channels["gray"]),
        "movie": _hash_arrays(*[x.labels for x in m], *[x.channels["pcna"] for x in m]),
        "livedead": _hash_arrays(ld.labels, sem, ld.channels["hoechst"], ld.channels["draq7"]),
    }
    assert got == CLEAN_ARRAYS


def test_clean_writers_unchanged(tmp_path):
    got = {}
    for fmt in sorted(WRITERS):
        get_writer(fmt)(tmp_path / fmt, seed=0)
        got[fmt] = _hash_folder(tmp_path / fmt)
    assert got == CLEAN_WRITERS
