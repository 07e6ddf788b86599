"""Channel recipes: build the model's (H, W, C) input from a record's image files.

A recipe is the list ``INPUT.CHANNELS``; entry ``i`` becomes input channel ``i`` (no BGR swap
anywhere: the order of the list is the order of the tensor). Names:

- ``"gray"``: the record's ``file_name`` converted to grey;
- any key of ``record["channels"]`` (``"pcna"``, ``"dic"``, ...): that file, converted to grey;
- ``"otsu_mask"``: a lowered-Otsu foreground mask of the ``INPUT.OTSU.SOURCE`` channel
  (``"pcna"``; records without a ``channels`` dict fall back to ``"gray"``).

Normalisation: each channel is rescaled by its own percentiles computed on the FULL image
(before any crop), ``(x - p_low) / (p_high - p_low)`` clipped to [0, 1], then ``x ** gamma``.
Integer (8/16-bit) and float images are handled alike. Each file is read once per record, even
when the recipe names it twice (``["pcna", "pcna", "dic"]``).

Otsu mask: the source channel rescaled by the same percentiles (no gamma), Gaussian-smoothed
with ``sigma``, thresholded at ``threshold_otsu(smoothed) - offset``; float32 {0, 1}. The lowered
threshold keeps dim (e.g. mitotic) nuclei inside the mask at the cost of some background.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from pcna_seg.data.image_io import check_pixels, read_image, to_gray
from pcna_seg.data.intensity import percentile_normalize
from pcna_seg.errors import ConfigError, DataError

GRAY = "gray"
OTSU = "otsu_mask"


@dataclass(frozen=True)
class ChannelRole:
    """What a channel name stands for: ``role`` is ``fluorescence`` (an intensity that may be
    jittered and percentile-stretched), ``transmitted`` (DIC / phase contrast: never jittered) or
    ``derived`` (computed from another channel); ``file_tag`` marks its files in the in-house
    movie layout (``<movie>_mcy.tif``, ``<movie>_dic.tif``)."""

    name: str
    role: str
    file_tag: str = ""


#: the one description of the known channels; any other name is a fluorescence channel
CHANNEL_ROLES: dict[str, ChannelRole] = {
    GRAY: ChannelRole(GRAY, "fluorescence"),
    "pcna": ChannelRole("pcna", "fluorescence", "mcy"),
    "dic": ChannelRole("dic", "transmitted", "dic"),
    OTSU: ChannelRole(OTSU, "derived"),
}
#: names that are never fluorescence intensities (never jittered)
NON_FLUORESCENCE = tuple(n for n, r in CHANNEL_ROLES.items() if r.role != "fluorescence")


def channel_role(name: str) -> str:
    """The role of channel ``name`` (see :class:`ChannelRole`)."""
    return CHANNEL_ROLES[name].role if name in CHANNEL_ROLES else "fluorescence"


def available_channels(record: dict[str, Any]) -> list[str]:
    """Channel names a record can provide (``"gray"`` plus its ``channels`` keys)."""
    return [GRAY, *sorted((record.get("channels") or {}).keys())]


def resolve_otsu_source(record: dict[str, Any], source: str) -> str:
    """The channel the Otsu mask is computed from: ``source``, or ``"gray"`` for records
    without a ``channels`` dict (single-channel datasets)."""
    if source != GRAY and not record.get("channels"):
        return GRAY
    return source


def otsu_mask(rescaled: np.ndarray, sigma: float = 2.0, offset: float = 0.1) -> np.ndarray:
    """Lowered-Otsu foreground of a [0, 1] image: (H, W) float32 with values {0, 1}.

    ``rescaled`` is the percentile-rescaled source channel; it is smoothed with a Gaussian of
    ``sigma`` pixels (0 = no smoothing) and thresholded at ``otsu - offset``.
    """
    arr = np.asarray(rescaled, dtype=np.float32)
    smooth = ndimage.gaussian_filter(arr, sigma) if sigma > 0 else arr
    if float(smooth.max()) <= float(smooth.min()):
        return np.zeros(arr.shape, dtype=np.float32)
    thresh = float(threshold_otsu(smooth)) - offset
    return (smooth > thresh).astype(np.float32)


@dataclass(frozen=True)
class Normalization:
    """How channels are normalised and the Otsu mask is made (``INPUT.SATURATION.*``, ``INPUT.OTSU.*``)."""

    sat_low: float = 2.0  # INPUT.SATURATION.LOW: lower percentile, maps to 0
    sat_high: float = 98.0  # INPUT.SATURATION.HIGH: upper percentile, maps to 1
    gamma: float = 1.0  # INPUT.SATURATION.GAMMA: x ** gamma after rescaling
    otsu_sigma: float = 2.0  # INPUT.OTSU.SIGMA: Gaussian smoothing before thresholding, pixels
    otsu_offset: float = 0.1  # INPUT.OTSU.OFFSET: threshold = otsu - offset on the [0, 1] scale
    otsu_source: str = "pcna"  # INPUT.OTSU.SOURCE: channel the Otsu mask is computed from

    @classmethod
    def from_config(cls, cfg: Any) -> Normalization:
        """From a config's ``INPUT.SATURATION`` and ``INPUT.OTSU`` nodes."""
        sat, otsu = cfg.INPUT.SATURATION, cfg.INPUT.OTSU
        return cls(
            sat_low=float(sat.LOW),
            sat_high=float(sat.HIGH),
            gamma=float(sat.GAMMA),
            otsu_sigma=float(otsu.SIGMA),
            otsu_offset=float(otsu.OFFSET),
            otsu_source=str(otsu.SOURCE),
        )

    def check(self) -> Normalization:
        """Itself; ConfigError unless 0 <= sat_low < sat_high <= 100."""
        if not 0 <= self.sat_low < self.sat_high <= 100:
            raise ConfigError(
                "INPUT.SATURATION.LOW/HIGH must satisfy 0 <= LOW < HIGH <= 100, "
                f"got {self.sat_low}, {self.sat_high}"
            )
        return self


class ChannelLoader:
    """Reads and normalises the channels of one input, each source at most once.

    The input is a record (channels are files: ``file_name`` for ``gray``, ``channels[name]``
    otherwise) or, with :meth:`from_arrays`, channels already in memory ``{name: (H, W)}``.
    """

    def __init__(
        self,
        record: dict[str, Any],
        norm: Normalization = Normalization(),
        arrays: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.record = record
        self.norm = norm
        self.arrays = arrays
        self.otsu_source = resolve_otsu_source(record, norm.otsu_source)
        self._raw: dict[str, np.ndarray] = {}
        self._norm: dict[tuple[str, float], np.ndarray] = {}

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, np.ndarray], norm: Normalization = Normalization(), source: str = "<arrays>"
    ) -> ChannelLoader:
        """Channels from memory; ``source`` names the input in error messages."""
        record = {"file_name": source, "channels": {k: k for k in arrays if k != GRAY}}
        return cls(record, norm, arrays=dict(arrays))

    def _path(self, name: str) -> str:
        if name == GRAY:
            return str(self.record["file_name"])
        chans = self.record.get("channels") or {}
        if name not in chans:
            raise DataError(
                f"Record {self.record.get('file_name')} has no channel {name!r} (INPUT.CHANNELS); "
                f"it has: {', '.join(available_channels(self.record))}"
            )
        return str(chans[name])

    def _read(self, name: str) -> tuple[np.ndarray, str]:
        """(pixels as stored, a label for messages) of channel ``name``."""
        if self.arrays is None:
            path = self._path(name)
            return read_image(path), path
        source = str(self.record["file_name"])
        if name not in self.arrays:
            raise DataError(
                f"Input {source} has no channel {name!r} (INPUT.CHANNELS); "
                f"it has: {', '.join(sorted(self.arrays)) or 'none'}"
            )
        return np.asarray(self.arrays[name]), f"{source} ({name})"

    def raw(self, name: str) -> np.ndarray:
        """(H, W) grey pixels of channel ``name`` as stored (dtype kept)."""
        if name not in self._raw:
            arr, where = self._read(name)
            check_pixels(arr, where)
            arr = to_gray(arr)
            if arr.ndim != 2:
                raise DataError(f"Channel {name!r} of {where} is not 2-D: {arr.shape}")
            h, w = self.record.get("height"), self.record.get("width")
            if h is not None and w is not None and arr.shape != (int(h), int(w)):
                raise DataError(
                    f"Channel {name!r} file {where} has size {arr.shape}, but the record says "
                    f"height={h}, width={w}"
                )
            self._raw[name] = arr
        return self._raw[name]

    def normalized(self, name: str, gamma: float | None = None) -> np.ndarray:
        """(H, W) float32 in [0, 1]: percentile-normalised channel ``name``."""
        g = self.norm.gamma if gamma is None else gamma
        key = (name, g)
        if key not in self._norm:
            self._norm[key] = percentile_normalize(self.raw(name), self.norm.sat_low, self.norm.sat_high, g)
        return self._norm[key]

    def channel(self, name: str) -> np.ndarray:
        """(H, W) float32 input channel for recipe entry ``name``."""
        if name == OTSU:
            rescaled = self.normalized(self.otsu_source, 1.0)
            return otsu_mask(rescaled, self.norm.otsu_sigma, self.norm.otsu_offset)
        return self.normalized(name)


def build_input(
    record: dict[str, Any] | ChannelLoader,
    recipe: Sequence[str],
    norm: Normalization | None = None,
    **overrides: Any,
) -> np.ndarray:
    """Build the (H, W, C) float32 input for ``record`` following ``recipe`` (C = len(recipe)).

    ``record`` may also be a ready :class:`ChannelLoader` (e.g. :meth:`ChannelLoader.from_arrays`).
    ``norm`` (default :class:`Normalization`'s defaults) with ``overrides`` of its fields
    (``sat_low=``, ``otsu_source=``, ...). All channels must have the same size; DataError
    names the input and the channel otherwise.
    """
    if not recipe:
        raise DataError("INPUT.CHANNELS is empty; name at least one channel")
    if isinstance(record, ChannelLoader):
        loader = record
    else:
        loader = ChannelLoader(record, replace(norm or Normalization(), **overrides))
    name0 = loader.record.get("file_name")
    cache: dict[str, np.ndarray] = {}
    planes = []
    for name in recipe:
        if name not in cache:
            cache[name] = loader.channel(name)
        plane = cache[name]
        if planes and plane.shape != planes[0].shape:
            raise DataError(
                f"Channel {name!r} of {name0} has size {plane.shape}, "
                f"channel {recipe[0]!r} has {planes[0].shape}"
            )
        planes.append(plane)
    return np.stack(planes, axis=-1)
