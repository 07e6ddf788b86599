"""What every synthetic writer returns: the exact ground truth of the files it wrote."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class GroundTruthImage:
    """Ground truth of one written image.

    ``key``: the identifier the matching converter gives the image (its ``image_id``).
    ``labels``: (H, W) int32 instance labels, 0 = background.
    ``classes``: instance id → class name (every id in ``labels``).
    ``sequence``: movie / well id ("" when the format has none).
    """

    key: str
    labels: np.ndarray
    classes: dict[int, str]
    sequence: str = ""


@dataclass
class GroundTruth:
    """Ground truth of a whole synthetic dataset written in one on-disk format."""

    format: str
    class_names: list[str]
    images: list[GroundTruthImage] = field(default_factory=list)

    def by_key(self) -> dict[str, GroundTruthImage]:
        return {g.key: g for g in self.images}


def single_class_image(key: str, labels: np.ndarray, class_name: str, sequence: str = "") -> GroundTruthImage:
    """Ground truth of one single-class image: ``labels`` as (H, W) int32, every non-zero id in
    it → ``class_name``."""
    lab = np.asarray(labels).astype(np.int32)
    return GroundTruthImage(key, lab, {int(i): class_name for i in np.unique(lab) if i}, sequence)
