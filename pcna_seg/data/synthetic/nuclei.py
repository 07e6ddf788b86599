"""Seeded generator of fluorescence nuclei images with exact ground truth.

Everything here is in memory; the format writers in this package lay the arrays out on disk
exactly as each real dataset is laid out. All randomness flows from a ``numpy.random.Generator``
so the same seed gives the same pixels.

Appearance by cell-cycle phase (PCNA channel):
- ``G1/G2``: smooth, uniform nucleoplasmic signal;
- ``S``: punctate foci (replication factories) on a moderate background;
- ``M``: dim, diffuse, larger and round (PCNA leaks into the cytoplasm);
- ``E`` (optional): small and bright (emerging daughters, early G1).
The DIC channel is a shaded relief of cell bodies; mitotic cells are rounded and show a bright
rim. Images carry uneven illumination and Poisson–Gaussian noise and are stored as uint16.

Two styles: the default ``realism=None`` ("clean", fast and pixel-stable: the unit tests'
data) and a randomised acquisition simulator (:mod:`pcna_seg.data.synthetic.realism`,
``realism="realistic"`` or a :class:`~pcna_seg.data.synthetic.realism.Realism`) with
heavy-tailed brightness, saturated bodies, texture, defocus, irregular shapes, per-image
scale and density, background, debris and several SNRs. Labels are exact in both.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy import ndimage

DEFAULT_PHASES: tuple[str, ...] = ("G1/G2", "S", "M")

# Per-phase shape and brightness: (radius range px, eccentricity range, mean intensity)
_PHASE_LOOK = {
    "G1/G2": ((7.0, 11.0), (1.0, 1.5), 0.55),
    "S": ((8.0, 12.0), (1.0, 1.4), 0.45),
    "M": ((10.0, 14.0), (1.0, 1.1), 0.18),
    "E": ((4.5, 6.5), (1.0, 1.2), 0.9),
}


@dataclass
class Frame:
    """One synthetic frame. Arrays are (H, W).

    ``labels``: int32 instance labels, 0 = background, ids 1..N contiguous.
    ``phases``: instance id → phase name (empty for single-class data).
    ``channels``: name → uint16 image (``"pcna"``, ``"dic"`` or ``"hoechst"``, ``"draq7"``).
    ``debris``: realistic style only, bool mask of the autofluorescent debris drawn (never in
    ``labels``); ``signal``: realistic style only, float32 noiseless fluorescence (relative
    units, median nucleus ≈ 1) the colour (H&E-like) renderings are made from.
    """

    labels: np.ndarray
    channels: dict[str, np.ndarray]
    phases: dict[int, str] = field(default_factory=dict)
    debris: np.ndarray | None = None
    signal: np.ndarray | None = None

    @property
    def n_instances(self) -> int:
        return int(self.labels.max())


@dataclass
class Nucleus:
    """An ellipse (centre, radii, angle) with a phase; the realistic style adds radial
    harmonics ``(amplitude, phase)`` for k = 2, 3, … (irregular outline), a brightness factor
    and a defocus blur sigma (px)."""

    cy: float
    cx: float
    ry: float
    rx: float
    angle: float
    phase: str
    harmonics: tuple[tuple[float, float], ...] = ()
    brightness: float = 1.0
    blur: float = 0.0


def _ellipse(
    shape: tuple[int, int], n: Nucleus, scale: float = 1.0
) -> tuple[tuple[slice, slice], np.ndarray]:
    """Bounding slices and a boolean ellipse patch for nucleus ``n`` (radii × ``scale``)."""
    if n.harmonics:  # perturbed ellipse: radius × (1 + Σ a_k cos(kθ + φ_k))
        r = max(n.ry, n.rx) * scale * (1.0 + sum(abs(a) for a, _ in n.harmonics)) + 1
    else:
        r = max(n.ry, n.rx) * scale + 1
    y0, y1 = max(int(n.cy - r), 0), min(int(n.cy + r) + 2, shape[0])
    x0, x1 = max(int(n.cx - r), 0), min(int(n.cx + r) + 2, shape[1])
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dy, dx = yy - n.cy, xx - n.cx
    c, s = np.cos(n.angle), np.sin(n.angle)
    u = (c * dx + s * dy) / (n.rx * scale)
    v = (-s * dx + c * dy) / (n.ry * scale)
    if n.harmonics:
        theta = np.arctan2(v, u)
        rad = 1.0 + sum(a * np.cos(k * theta + ph) for k, (a, ph) in enumerate(n.harmonics, start=2))
        return (slice(y0, y1), slice(x0, x1)), (u * u + v * v) <= rad * rad
    return (slice(y0, y1), slice(x0, x1)), (u * u + v * v) <= 1.0


def place_nuclei(
    rng: np.random.Generator,
    shape: tuple[int, int],
    n: int,
    phases: tuple[str, ...],
    phase_probs: tuple[float, ...] | None = None,
    cluster_fraction: float = 0.3,
    max_tries: int = 20,
) -> list[Nucleus]:
    """Sample nuclei positions: some touching in clusters, otherwise spread out; none overlap much."""
    h, w = shape
    out: list[Nucleus] = []
    probs = np.asarray(phase_probs if phase_probs is not None else [1.0] * len(phases), dtype=float)
    probs = probs / probs.sum()
    cell = 2.0 * max(look[0][1] for look in _PHASE_LOOK.values()) * 1.3  # grid for neighbour checks
    grid: dict[tuple[int, int], list[Nucleus]] = {}
    for _ in range(n):
        phase = str(phases[rng.choice(len(phases), p=probs)])
        (rmin, rmax), (emin, emax), _ = _PHASE_LOOK.get(phase, _PHASE_LOOK["G1/G2"])
        for _try in range(max_tries):
            r = rng.uniform(rmin, rmax)
            e = rng.uniform(emin, emax)
            if out and rng.random() < cluster_fraction:  # touch a neighbour
                nb = out[rng.integers(len(out))]
                ang = rng.uniform(0, 2 * np.pi)
                dist = max(nb.ry, nb.rx) + r * 0.95
                cy, cx = nb.cy + dist * np.sin(ang), nb.cx + dist * np.cos(ang)
            else:
                cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
            if not (2 <= cy < h - 2 and 2 <= cx < w - 2):
                continue
            cand = Nucleus(cy, cx, r * np.sqrt(e), r / np.sqrt(e), rng.uniform(0, np.pi), phase)
            gy, gx = int(cy // cell), int(cx // cell)
            near = [o for dy in (-1, 0, 1) for dx in (-1, 0, 1) for o in grid.get((gy + dy, gx + dx), ())]
            ok = all(
                np.hypot(cand.cy - o.cy, cand.cx - o.cx) > 0.8 * (max(o.ry, o.rx) + max(cand.ry, cand.rx))
                for o in near
            )
            if ok:
                out.append(cand)
                grid.setdefault((gy, gx), []).append(cand)
                break
    return out


def rasterize(shape: tuple[int, int], nuclei: list[Nucleus]) -> tuple[np.ndarray, list[int]]:
    """(H, W) int32 instance labels 1..N; earlier nuclei keep contested pixels.

    Instances that end up with fewer than 12 pixels are dropped and ids are renumbered.
    Returns (labels, kept) where label ``k`` is nucleus ``nuclei[kept[k - 1]]``.
    """
    labels = np.zeros(shape, dtype=np.int32)
    for i, n in enumerate(nuclei, start=1):
        sl, patch = _ellipse(shape, n)
        region = labels[sl]
        region[patch & (region == 0)] = i
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    keep = ids[counts >= 12]
    remap = np.zeros(len(nuclei) + 1, dtype=np.int32)
    remap[keep] = np.arange(1, len(keep) + 1, dtype=np.int32)
    return remap[labels], [int(k) - 1 for k in keep]


def _illumination(rng: np.random.Generator, shape: tuple[int, int], strength: float = 0.35) -> np.ndarray:
    """Smooth multiplicative field in [1 - strength, 1] (vignetting + tilt)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    rr = ((yy - cy) / h) ** 2 + ((xx - cx) / w) ** 2
    tilt = rng.uniform(-0.5, 0.5) * (xx / w - 0.5) + rng.uniform(-0.5, 0.5) * (yy / h - 0.5)
    field_ = 1.0 - strength * np.clip(rr * 2.0 + tilt * 0.5, 0, 1)
    return field_.astype(np.float32)


def _noise_uint16(
    rng: np.random.Generator, signal: np.ndarray, photons: float, offset: float, read_sd: float
) -> np.ndarray:
    """Poisson (shot) + Gaussian (read) noise on a [0, 1] signal → uint16 counts."""
    counts = rng.poisson(np.clip(signal, 0, None) * photons).astype(np.float32)
    counts += offset + rng.normal(0, read_sd, size=signal.shape).astype(np.float32)
    return np.clip(np.rint(counts), 0, 65535).astype(np.uint16)


def render_pcna(
    rng: np.random.Generator, labels: np.ndarray, nuclei: list[Nucleus], phases: dict[int, str]
) -> np.ndarray:
    """PCNA fluorescence (H, W) uint16 from labels and per-instance phases."""
    shape = labels.shape
    signal = np.zeros(shape, dtype=np.float32)
    halo = np.zeros(shape, dtype=np.float32)
    for idx, phase in phases.items():
        m = labels == idx
        _, _, level = _PHASE_LOOK.get(phase, _PHASE_LOOK["G1/G2"])
        level = level * rng.uniform(0.85, 1.15)
        if phase == "S":
            ys, xs = np.nonzero(m)
            n_foci = max(4, len(ys) // 12)
            pick = rng.integers(len(ys), size=n_foci)
            foci = np.zeros(shape, dtype=np.float32)
            np.add.at(foci, (ys[pick], xs[pick]), rng.uniform(2.0, 4.0, size=n_foci).astype(np.float32))
            signal += m * (level * 0.7)
            signal += ndimage.gaussian_filter(foci, 0.9) * m
        elif phase == "M":
            signal += m * level
            halo += m.astype(np.float32) * level
        else:
            signal += m * level
    signal = ndimage.gaussian_filter(signal, 0.8)
    if halo.any():  # mitotic PCNA leaks diffusely into the cytoplasm around the cell
        signal += ndimage.gaussian_filter(halo, 5.0) * 0.6
    signal = signal * _illumination(rng, shape) + 0.04
    return _noise_uint16(rng, signal, photons=rng.uniform(1500, 3000), offset=100.0, read_sd=6.0)


def render_dic(rng: np.random.Generator, labels: np.ndarray, phases: dict[int, str]) -> np.ndarray:
    """DIC-like relief (H, W) uint16: shaded cell bodies; mitotic cells rounded with a bright rim."""
    shape = labels.shape
    body = ndimage.grey_dilation(labels, size=(7, 7)) > 0  # cytoplasm around nuclei
    height = ndimage.gaussian_filter(body.astype(np.float32), 3.0) + 0.6 * ndimage.gaussian_filter(
        (labels > 0).astype(np.float32), 1.5
    )
    rim = np.zeros(shape, dtype=np.float32)
    for idx, phase in phases.items():
        if phase == "M":
            m = labels == idx
            ring = ndimage.binary_dilation(m, iterations=4) & ~ndimage.binary_dilation(m, iterations=2)
            rim += ring
    gy, gx = np.gradient(height)
    relief = 0.5 + 0.8 * (gx + gy) + 0.5 * ndimage.gaussian_filter(rim, 0.8)
    relief += rng.normal(0, 0.01, size=shape).astype(np.float32)
    relief = ndimage.gaussian_filter(relief, 0.5) * _illumination(rng, shape, 0.15)
    return np.clip(np.rint(relief * 20000 + 2000), 0, 65535).astype(np.uint16)


def make_pcna_frame(
    rng: np.random.Generator,
    height: int = 256,
    width: int = 256,
    n_nuclei: int = 30,
    phases: tuple[str, ...] = DEFAULT_PHASES,
    phase_probs: tuple[float, ...] | None = None,
    blank: bool = False,
    realism: Any = None,
) -> Frame:
    """One PCNA + DIC frame with instance labels and a phase for every instance.

    ``realism``: None / "clean" (default), "realistic", a ``Realism`` (ranges) or an
    ``ImageStyle`` (one draw) from :mod:`pcna_seg.data.synthetic.realism`.
    """
    style = image_style(rng, realism, "pcna")
    if style is not None:
        from pcna_seg.data.synthetic import realism as R

        nuclei = [] if blank else R.place_nuclei(rng, (height, width), n_nuclei, phases, style, phase_probs)
        return R.render_frame(rng, (height, width), nuclei, style)
    nuclei = [] if blank else place_nuclei(rng, (height, width), n_nuclei, phases, phase_probs)
    return frame_from_nuclei(rng, (height, width), nuclei)


def image_style(rng: np.random.Generator, realism: Any, kind: str = "nuclei") -> Any:
    """None for the clean style, else an ``ImageStyle`` (drawn from ``rng`` unless given;
    ``kind`` "pcna" makes "realistic" mean the PCNA preset, one objective's size range)."""
    if realism is None or realism == "clean":
        return None
    from pcna_seg.data.synthetic import realism as R

    if isinstance(realism, R.ImageStyle):
        return realism
    return R.draw_style(rng, R.resolve(realism, kind))


def frame_from_nuclei(
    rng: np.random.Generator, shape: tuple[int, int], nuclei: list[Nucleus], style: Any = None
) -> Frame:
    """Render a frame for given nuclei (used by movies, where nuclei drift between frames);
    ``style``: an ``ImageStyle`` for the realistic style, None for the clean one."""
    if style is not None:
        from pcna_seg.data.synthetic.realism import render_frame

        return render_frame(rng, shape, nuclei, style)
    labels, kept = rasterize(shape, nuclei)
    phases = {lab: nuclei[k].phase for lab, k in enumerate(kept, start=1)}
    pcna = render_pcna(rng, labels, nuclei, phases)
    dic = render_dic(rng, labels, phases)
    return Frame(labels=labels, channels={"pcna": pcna, "dic": dic}, phases=phases)


def make_pcna_movie(
    rng: np.random.Generator,
    n_frames: int = 5,
    height: int = 256,
    width: int = 256,
    n_nuclei: int = 30,
    phases: tuple[str, ...] = DEFAULT_PHASES,
    drift: float = 1.5,
    realism: Any = None,
) -> list[Frame]:
    """A short time-lapse: the same nuclei drift a little between frames (one ``sequence``).

    ``realism`` as in :func:`make_pcna_frame`; one style is drawn for the whole movie (one
    acquisition), the noise is new in every frame."""
    style = image_style(rng, realism, "pcna")
    if style is not None:
        from pcna_seg.data.synthetic.realism import place_nuclei as place_realistic

        nuclei = place_realistic(rng, (height, width), n_nuclei, phases, style)
    else:
        nuclei = place_nuclei(rng, (height, width), n_nuclei, phases)
    frames = []
    for _ in range(n_frames):
        frames.append(frame_from_nuclei(rng, (height, width), nuclei, style))
        nuclei = [
            replace(
                n,
                cy=float(np.clip(n.cy + rng.normal(0, drift), n.ry, height - n.ry)),
                cx=float(np.clip(n.cx + rng.normal(0, drift), n.rx, width - n.rx)),
                angle=n.angle + rng.normal(0, 0.05),
            )
            for n in nuclei
        ]
    return frames


def make_nuclei_image(
    rng: np.random.Generator,
    height: int = 256,
    width: int = 256,
    n_nuclei: int = 30,
    blank: bool = False,
    realism: Any = None,
) -> Frame:
    """Single-class nuclei image (Kaggle/DeepCell/BBBC-like): one ``"gray"`` uint16 channel.

    ``realism`` as in :func:`make_pcna_frame` (realistic frames carry ``debris``/``signal``)."""
    style = image_style(rng, realism)
    if style is not None:
        from pcna_seg.data.synthetic import realism as R

        nuclei = [] if blank else R.place_nuclei(rng, (height, width), n_nuclei, ("G1/G2",), style)
        frame = R.render_frame(rng, (height, width), nuclei, style, channel="gray", with_dic=False)
        return replace(frame, phases={})
    frame = make_pcna_frame(rng, height, width, n_nuclei, phases=("G1/G2",), blank=blank)
    return Frame(labels=frame.labels, channels={"gray": frame.channels["pcna"]}, phases={})


def make_livedead_frame(
    rng: np.random.Generator,
    height: int = 2700,
    width: int = 3600,
    density: float = 6e-4,
    dead_fraction: float = 0.3,
) -> tuple[Frame, np.ndarray]:
    """Live/dead assay frame: HOECHST (all nuclei) and Draq7 (dead only) uint16 channels.

    Returns (frame, semantic) where ``semantic`` is (H, W) uint8: 0 background, 1 DAPI-only
    (live), 2 Cy5-positive (dead); ``frame.phases`` maps instance id → "live" / "dead".
    """
    n = int(density * height * width)
    nuclei = place_nuclei(rng, (height, width), n, ("G1/G2",), cluster_fraction=0.2)
    labels, _ = rasterize((height, width), nuclei)
    n_inst = int(labels.max())
    dead = rng.random(n_inst + 1) < dead_fraction
    dead[0] = False
    semantic = np.where(labels > 0, np.where(dead[labels], 2, 1), 0).astype(np.uint8)
    illum = _illumination(rng, (height, width), 0.25)
    hoechst_sig = ndimage.gaussian_filter((labels > 0).astype(np.float32) * 0.6, 1.0) * illum + 0.05
    draq7_sig = ndimage.gaussian_filter((semantic == 2).astype(np.float32) * 0.7, 1.0) * illum + 0.03
    hoechst = _noise_uint16(rng, hoechst_sig, 1500.0, 100.0, 5.0)
    draq7 = _noise_uint16(rng, draq7_sig, 1200.0, 100.0, 5.0)
    phases = {i: ("dead" if dead[i] else "live") for i in range(1, n_inst + 1)}
    return Frame(labels=labels, channels={"hoechst": hoechst, "draq7": draq7}, phases=phases), semantic
