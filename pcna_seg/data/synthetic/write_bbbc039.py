"""Synthetic BBBC039 folder: 16-bit TIFF images, graph-coloured RGB PNG masks, split lists.

Layout written under ``out``::

    images/IXMtest_<well>_s<site>_w1<hex>.tif   (H, W) uint16 grey
    masks/<same name>.png                       (H, W, 3) uint8; red = colour 1..K, green = blue = 0
    metadata/{training,validation,test}.txt     "<name>.png" per line (``metadata=True``)

The mask format can only express instances that are single 8-connected regions whose
same-coloured neighbours do not touch. So the ground truth is the generator's labels with
every instance split into its 8-connected components, and colours are assigned greedily over
the 8-neighbour adjacency graph (largest degree first); three colours usually suffice, more
are used when needed (the red channel allows up to 255).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from pcna_seg.data.image_io import write_image
from pcna_seg.data.synthetic.base import GroundTruth, GroundTruthImage
from pcna_seg.data.synthetic.nuclei import make_nuclei_image
from pcna_seg.data.synthetic.realism import Realism, resolve
from pcna_seg.utils_io import write_text_atomic

EIGHT = np.ones((3, 3), dtype=bool)


def split_components(labels: np.ndarray) -> np.ndarray:
    """(H, W) int labels → int32 labels 1..N where each instance is one 8-connected component."""
    out = np.zeros(labels.shape, dtype=np.int32)
    next_id = 0
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        comp, n = ndimage.label(labels[sl] == k, structure=EIGHT)
        region = out[sl]
        region[comp > 0] = comp[comp > 0] + next_id
        next_id += n
    return out


def colour_labels(labels: np.ndarray) -> np.ndarray:
    """Greedy graph colouring: (H, W) labels 1..N → (H, W) uint8 colours 1..K, 0 background.

    Two instances are adjacent when one's pixel is an 8-neighbour of the other's.
    """
    n = int(labels.max(initial=0))
    neighbours: list[set[int]] = [set() for _ in range(n + 1)]
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        grown = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        patch = labels[grown]
        ring = ndimage.binary_dilation(patch == k, structure=EIGHT)
        for other in np.unique(patch[ring]):
            if other not in (0, k):
                neighbours[k].add(int(other))
                neighbours[int(other)].add(k)
    colour = np.zeros(n + 1, dtype=np.int64)
    for k in sorted(range(1, n + 1), key=lambda i: (-len(neighbours[i]), i)):
        used = {colour[j] for j in neighbours[k]}
        colour[k] = next(c for c in range(1, n + 2) if c not in used)
    if colour.max(initial=0) > 255:
        raise ValueError("more than 255 colours needed")
    return colour.astype(np.uint8)[labels]


def write(
    out: str | os.PathLike,
    *,
    seed: int = 0,
    n_images: int = 6,
    height: int = 128,
    width: int = 160,
    n_nuclei: int = 25,
    metadata: bool = True,
    style: str | Realism = "clean",
) -> GroundTruth:
    """Write a BBBC039-layout folder under ``out`` and return its exact ground truth.

    Images cycle over wells A01, A02, B01 (two sites each for the default 6); the last image
    is blank. GroundTruth keys are the file stems; ``sequence`` is ``IXMtest_<well>``.
    With ``metadata``, roughly half the images are listed for training, a quarter each for
    validation and test.
    ``style``: "clean" (default) or "realistic" / a ``Realism`` (acquisition simulator).
    """
    out = Path(out)
    realism = resolve(style)
    rng = np.random.default_rng(seed)
    wells = ["A01", "A02", "B01"]
    gt = GroundTruth(format="bbbc039", class_names=["nucleus"])
    names = []
    for i in range(n_images):
        frame = make_nuclei_image(
            rng, height, width, n_nuclei, blank=n_images >= 2 and i == n_images - 1, realism=realism
        )
        labels = split_components(frame.labels)
        well = wells[i % len(wells)]
        name = f"IXMtest_{well}_s{i // len(wells) + 1}_w1{rng.bytes(8).hex().upper()}"
        write_image(out / "images" / f"{name}.tif", frame.channels["gray"])
        rgb = np.zeros((*labels.shape, 3), dtype=np.uint8)
        rgb[..., 0] = colour_labels(labels)
        write_image(out / "masks" / f"{name}.png", rgb)
        n = int(labels.max(initial=0))
        gt.images.append(
            GroundTruthImage(
                key=name,
                labels=labels,
                classes=dict.fromkeys(range(1, n + 1), "nucleus"),
                sequence=f"IXMtest_{well}",
            )
        )
        names.append(name)
    if metadata:
        n_train = max(1, n_images // 2)
        n_val = max(1, (n_images - n_train) // 2)
        parts = {
            "training.txt": names[:n_train],
            "validation.txt": names[n_train : n_train + n_val],
            "test.txt": names[n_train + n_val :],
        }
        for fname, lst in parts.items():
            write_text_atomic(out / "metadata" / fname, "".join(f"{x}.png\n" for x in lst))
    return gt
