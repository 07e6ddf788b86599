"""Randomised acquisition simulator: the "realistic" style of the synthetic nuclei.

Real fluorescence fields (Kaggle DSB2018, in-house PCNA movies) differ from the clean style
in ways a model trained on clean images does not survive: nuclei vary several-fold in
brightness within one image, a few small saturated mitotic/apoptotic bodies set the
contrast stretch so most nuclei are dim, many nuclei are out of focus, the background is
not black, nuclei touch in clumps, and sizes, shapes and densities vary between images.

:class:`Realism` holds every range the simulator draws from (one documented place);
:func:`draw_style` draws one image's (or one movie's) :class:`ImageStyle` from it, and
:func:`place_nuclei` / :func:`render_frame` make the nuclei and the pixels. Labels stay the
exact rasterised nuclei (:func:`pcna_seg.data.synthetic.nuclei.rasterize`): blur, texture,
debris and noise change pixels only, never the ground truth. All randomness comes from the
``numpy.random.Generator`` passed in (same seed, same pixels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pcna_seg.data.intensity import to_uint8
from pcna_seg.data.synthetic.nuclei import (
    _PHASE_LOOK,
    Frame,
    Nucleus,
    _illumination,
    rasterize,
    render_dic,
)

STYLES = ("clean", "realistic")
_REF_DIAMETER = 18.0  # the clean style's typical nucleus diameter (px): n_nuclei refers to it
_REF_LEVEL = _PHASE_LOOK["G1/G2"][2]  # relative brightness 1 = a G1/G2 nucleus
_DN_PER_MEDIAN = 4000.0  # camera counts of a median nucleus (before saturation)


@dataclass(frozen=True)
class Realism:
    """Ranges of the acquisition simulator. ``(lo, hi)`` pairs are drawn per image (per movie
    for PCNA movies) uniformly, or log-uniformly where marked *log*; per-nucleus draws use
    the image's value.

    - ``diameter_px`` *log*: median nucleus diameter of the image (per-image magnification).
    - ``size_sigma``: log-normal sd of nucleus size within an image.
    - ``elongation``: the image's largest axis ratio; each nucleus draws U(1, that).
    - ``irregularity``: amplitude of the radial harmonics k = 2..4 (0 = ellipse).
    - ``density`` *log*: the count is ``n_nuclei × density × (18 / diameter)²``, i.e.
      ``n_nuclei`` is what a clean image would hold; sparse (< 1) to confluent (> 2).
    - ``cluster_fraction``: share of nuclei placed touching an earlier one (clumps).
    - ``brightness_sigma``: log-normal sd of per-nucleus brightness (0.6 → 95th/5th
      percentile ratio ≈ 7×, 1.0 → ≈ 27×).
    - ``bright_bodies``: (min, max) count of small saturated mitotic/apoptotic bodies;
      ``bright_body_size``: their radius as a fraction of the median radius.
    - ``texture``: chromatin texture amplitude (multiplicative, unit-sd smooth noise).
    - ``defocus_fraction``: share of out-of-focus nuclei; ``defocus_sigma``: their blur
      sigma as a fraction of the diameter.
    - ``background``: offset, in units of a median nucleus; ``vignetting``: illumination
      fall-off strength.
    - ``debris_per_mpx`` *log*: autofluorescent debris blobs per megapixel (never labelled);
      ``debris_radius`` px; ``debris_level`` in units of a median nucleus.
    - ``photons`` *log*: photo-electrons of a median nucleus (SNR ≈ √photons);
      ``read_noise``: Gaussian read noise, electrons.
    - ``saturation``: the camera's white level in units of a median nucleus.
    - ``colour_fraction``: share of DSB images written as colour (H&E- or brightfield-like:
      dark nuclei on a light background), as in the real Kaggle set.
    """

    diameter_px: tuple[float, float] = (8.0, 60.0)
    size_sigma: tuple[float, float] = (0.08, 0.3)
    elongation: tuple[float, float] = (1.1, 2.6)
    irregularity: tuple[float, float] = (0.0, 0.15)
    density: tuple[float, float] = (0.35, 3.0)
    cluster_fraction: tuple[float, float] = (0.1, 0.85)
    brightness_sigma: tuple[float, float] = (0.6, 1.0)
    bright_bodies: tuple[int, int] = (0, 4)
    bright_body_size: tuple[float, float] = (0.3, 0.55)
    texture: tuple[float, float] = (0.05, 0.35)
    defocus_fraction: tuple[float, float] = (0.0, 0.6)
    defocus_sigma: tuple[float, float] = (0.05, 0.2)
    background: tuple[float, float] = (0.0, 0.3)
    vignetting: tuple[float, float] = (0.0, 0.5)
    debris_per_mpx: tuple[float, float] = (30.0, 800.0)
    debris_radius: tuple[float, float] = (0.8, 3.0)
    debris_level: tuple[float, float] = (0.1, 0.8)
    photons: tuple[float, float] = (15.0, 2000.0)
    read_noise: tuple[float, float] = (1.0, 6.0)
    saturation: tuple[float, float] = (3.0, 8.0)
    colour_fraction: float = 0.2


# PCNA movies come from one objective and one cell line: a narrower size and density range.
PCNA_REALISM = Realism(
    diameter_px=(14.0, 30.0), density=(0.6, 2.5), debris_per_mpx=(20.0, 300.0), bright_bodies=(0, 2)
)

# A style the default ranges do not cover (wider brightness spread, more and stronger defocus,
# denser, fewer photons, brighter background): the held-out family of
# benchmarks/synthetic_shift.py and the "unseen style" sets of the stage-0 campaigns.
SHIFTED_REALISM = Realism(
    diameter_px=(10.0, 45.0),
    brightness_sigma=(1.0, 1.4),
    defocus_fraction=(0.5, 0.9),
    defocus_sigma=(0.1, 0.3),
    density=(2.0, 5.0),
    photons=(8.0, 60.0),
    background=(0.2, 0.6),
)


@dataclass(frozen=True)
class ImageStyle:
    """One image's (or movie's) draw from :class:`Realism` (same field meanings, scalars)."""

    diameter: float
    size_sigma: float
    elongation: float
    irregularity: float
    density: float
    cluster_fraction: float
    brightness_sigma: float
    n_bright: int
    bright_body_size: float
    texture: float
    defocus_fraction: float
    defocus_sigma: float
    background: float
    vignetting: float
    debris_per_mpx: float
    debris_radius: tuple[float, float]
    debris_level: tuple[float, float]
    photons: float
    read_noise: float
    saturation: float


def resolve(style: str | Realism | None, kind: str = "nuclei") -> Realism | None:
    """``None``/"clean" → None (the clean style); "realistic" → :class:`Realism` defaults
    (``kind="nuclei"``, DSB-like) or :data:`PCNA_REALISM` (``kind="pcna"``)."""
    if style is None or isinstance(style, Realism):
        return style
    if style == "clean":
        return None
    if style == "realistic":
        return PCNA_REALISM if kind == "pcna" else Realism()
    raise ValueError(f"style must be one of {', '.join(STYLES)} or a Realism, got {style!r}")


def _log_uniform(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    lo, hi = float(lo_hi[0]), float(lo_hi[1])
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def draw_style(rng: np.random.Generator, realism: Realism) -> ImageStyle:
    """Draw one image's acquisition style from ``realism``."""
    u = lambda r: float(rng.uniform(r[0], r[1]))  # noqa: E731
    return ImageStyle(
        diameter=_log_uniform(rng, realism.diameter_px),
        size_sigma=u(realism.size_sigma),
        elongation=u(realism.elongation),
        irregularity=u(realism.irregularity),
        density=_log_uniform(rng, realism.density),
        cluster_fraction=u(realism.cluster_fraction),
        brightness_sigma=u(realism.brightness_sigma),
        n_bright=int(rng.integers(realism.bright_bodies[0], realism.bright_bodies[1] + 1)),
        bright_body_size=u(realism.bright_body_size),
        texture=u(realism.texture),
        defocus_fraction=u(realism.defocus_fraction),
        defocus_sigma=u(realism.defocus_sigma),
        background=u(realism.background),
        vignetting=u(realism.vignetting),
        debris_per_mpx=_log_uniform(rng, realism.debris_per_mpx),
        debris_radius=tuple(realism.debris_radius),
        debris_level=tuple(realism.debris_level),
        photons=_log_uniform(rng, realism.photons),
        read_noise=u(realism.read_noise),
        saturation=u(realism.saturation),
    )


def _bright_phase(phases: tuple[str, ...]) -> str | None:
    """Phase of the small saturated bodies: "E" when used, the single class of one-class
    data, else none (PCNA's mitotic cells are dim, not bright)."""
    if "E" in phases:
        return "E"
    return phases[0] if len(phases) == 1 else None


def place_nuclei(
    rng: np.random.Generator,
    shape: tuple[int, int],
    n_nuclei: int,
    phases: tuple[str, ...],
    style: ImageStyle,
    phase_probs: tuple[float, ...] | None = None,
    max_tries: int = 20,
    max_nuclei: int = 4000,
) -> list[Nucleus]:
    """Nuclei of one realistic image: per-image scale and density, touching clumps, irregular
    outlines, per-nucleus brightness and defocus, plus a few small saturated bodies."""
    h, w = shape
    probs = np.asarray(phase_probs if phase_probs is not None else [1.0] * len(phases), dtype=float)
    probs = probs / probs.sum()
    scale = style.diameter / _REF_DIAMETER
    n = int(min(round(n_nuclei * style.density / scale**2), max_nuclei))
    bright = _bright_phase(phases)
    kinds = [None] * n + ([bright] * style.n_bright if bright and n_nuclei > 0 else [])
    cell = style.diameter * 1.6
    grid: dict[tuple[int, int], list[tuple[Nucleus, float]]] = {}
    out: list[Nucleus] = []
    for kind in kinds:
        phase = kind or str(phases[rng.choice(len(phases), p=probs)])
        (rmin, rmax), _, _ = _PHASE_LOOK.get(phase, _PHASE_LOOK["G1/G2"])
        for _try in range(max_tries):
            if kind is None:
                r = rng.uniform(rmin, rmax) * scale * float(np.exp(rng.normal(0, style.size_sigma)))
                e = rng.uniform(1.0, style.elongation) if phase != "M" else 1.0
                gain = float(np.exp(rng.normal(0, style.brightness_sigma)))
            else:  # small saturated body: always above the white level
                r = max(style.diameter / 2 * style.bright_body_size, 2.5)
                e = rng.uniform(1.0, 1.3)
                gain = style.saturation * rng.uniform(1.3, 3.0) / (_PHASE_LOOK[phase][2] / _REF_LEVEL)
            harm = tuple(
                (float(rng.normal(0, style.irregularity / (k - 1))), float(rng.uniform(0, 2 * np.pi)))
                for k in (2, 3, 4)
            )
            reach = r * np.sqrt(e) * (1 + sum(abs(a) for a, _ in harm))
            if out and kind is None and rng.random() < style.cluster_fraction:
                nb = out[-1 - int(rng.integers(min(len(out), 8)))]  # grow a recent clump
                nb_reach = max(nb.ry, nb.rx)
                ang = rng.uniform(0, 2 * np.pi)
                dist = (nb_reach + reach) * rng.uniform(0.8, 0.95)
                cy, cx = nb.cy + dist * np.sin(ang), nb.cx + dist * np.cos(ang)
            else:
                cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            if not (0 <= cy < h and 0 <= cx < w):
                continue
            blur = 0.0
            if kind is None and rng.random() < style.defocus_fraction:
                blur = style.defocus_sigma * style.diameter * rng.uniform(0.5, 1.5)
            cand = Nucleus(
                cy, cx, r * np.sqrt(e), r / np.sqrt(e), rng.uniform(0, np.pi), phase, harm, gain, blur
            )
            gy, gx = int(cy // cell), int(cx // cell)
            near = [o for dy in (-1, 0, 1) for dx in (-1, 0, 1) for o in grid.get((gy + dy, gx + dx), ())]
            if all(np.hypot(cy - o.cy, cx - o.cx) > 0.75 * (rr + reach) for o, rr in near):
                out.append(cand)
                grid.setdefault((gy, gx), []).append((cand, reach))
                break
    return out


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """(H, W) float32 Gaussian-filtered white noise, rescaled to unit sd."""
    f = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), max(sigma, 0.5))
    return f / max(float(f.std()), 1e-6)


def _debris(rng: np.random.Generator, labels: np.ndarray, style: ImageStyle) -> tuple[np.ndarray, np.ndarray]:
    """Autofluorescent debris away from every nucleus: (signal float32, mask bool), (H, W).

    Each blob is a Gaussian whose half-maximum radius r sits at least r + 2 px from any
    labelled pixel, so its mask (the half-maximum disc) never touches a nucleus."""
    h, w = labels.shape
    sig = np.zeros((h, w), dtype=np.float32)
    mask = np.zeros((h, w), dtype=bool)
    n = int(rng.poisson(style.debris_per_mpx * h * w / 1e6))
    if n == 0:
        return sig, mask
    dist = ndimage.distance_transform_edt(labels == 0) if labels.any() else np.full((h, w), np.inf)
    for _ in range(n):
        r = rng.uniform(*style.debris_radius)
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        if dist[cy, cx] <= r + 2:
            continue
        s = r / 1.1774  # half maximum at radius r
        pad = int(3 * s) + 2
        y0, y1, x0, x1 = max(cy - pad, 0), min(cy + pad + 1, h), max(cx - pad, 0), min(cx + pad + 1, w)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s)).astype(np.float32)
        sig[y0:y1, x0:x1] += blob * rng.uniform(*style.debris_level)
        mask[y0:y1, x0:x1] |= blob >= 0.5
    return sig, mask & (labels == 0)


def render_signal(
    rng: np.random.Generator,
    labels: np.ndarray,
    nuclei: list[Nucleus],
    kept: list[int],
    phases: dict[int, str],
    style: ImageStyle,
) -> np.ndarray:
    """Noiseless nuclear signal (H, W) float32 in units of a median G1/G2 nucleus: phase look
    × brightness × chromatin texture, S-phase foci, per-nucleus defocus, mitotic halo, PSF."""
    shape = labels.shape
    sig = np.zeros(shape, dtype=np.float32)
    halo = np.zeros(shape, dtype=np.float32)
    tex = np.clip(1.0 + style.texture * _smooth_noise(rng, shape, 0.04 * style.diameter + 0.5), 0.2, None)
    for lab, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None or lab not in phases:
            continue
        n, phase = nuclei[kept[lab - 1]], phases[lab]
        pad = int(3 * n.blur) + 1
        sl = (
            slice(max(sl[0].start - pad, 0), min(sl[0].stop + pad, shape[0])),
            slice(max(sl[1].start - pad, 0), min(sl[1].stop + pad, shape[1])),
        )
        m = labels[sl] == lab
        level = _PHASE_LOOK.get(phase, _PHASE_LOOK["G1/G2"])[2] / _REF_LEVEL * n.brightness
        patch = m * tex[sl] * (level * (0.7 if phase == "S" else 1.0))
        if phase == "S":  # replication foci
            ys, xs = np.nonzero(m)
            k = max(4, len(ys) // 12)
            pick = rng.integers(len(ys), size=k)
            foci = np.zeros(m.shape, dtype=np.float32)
            np.add.at(foci, (ys[pick], xs[pick]), rng.uniform(2.0, 4.0, size=k).astype(np.float32))
            patch = patch + ndimage.gaussian_filter(foci, 0.9) * m * level
        elif phase == "M":
            halo[sl] += m * level
        if n.blur > 0.3:
            patch = ndimage.gaussian_filter(patch.astype(np.float32), n.blur)
        sig[sl] += patch
    sig = ndimage.gaussian_filter(sig, 0.5 + 0.02 * style.diameter)
    if halo.any():
        sig += ndimage.gaussian_filter(halo, 0.3 * style.diameter) * 0.6
    return sig


def to_counts(rng: np.random.Generator, signal: np.ndarray, style: ImageStyle) -> np.ndarray:
    """Poisson–Gaussian camera: relative signal → (H, W) uint16, 100-count offset, clipped at
    the style's white level (so the brightest bodies saturate)."""
    gain = _DN_PER_MEDIAN / style.photons
    e = rng.poisson(np.clip(signal, 0, None) * style.photons).astype(np.float32)
    e += rng.normal(0, style.read_noise, size=signal.shape).astype(np.float32)
    return np.clip(np.rint(e * gain + 100.0), 0, white_level(style)).astype(np.uint16)


def white_level(style: ImageStyle) -> int:
    """The camera counts at which :func:`to_counts` saturates."""
    return int(round(style.saturation * _DN_PER_MEDIAN + 100.0))


def stretch_uint8(img: np.ndarray) -> np.ndarray:
    """(H, W) uint16 camera image → uint8 by a min–max stretch, as many DSB PNGs were saved:
    the brightest (often saturated) object sets the white, so most nuclei end up dim. The
    white never drops below two median nuclei, so a blank field stays dark noise."""
    lo = float(img.min())
    hi = max(float(img.max()), 100.0 + 2 * _DN_PER_MEDIAN)
    return to_uint8(img, lo, hi, np.float32)


def render_frame(
    rng: np.random.Generator,
    shape: tuple[int, int],
    nuclei: list[Nucleus],
    style: ImageStyle,
    channel: str = "pcna",
    with_dic: bool = True,
) -> Frame:
    """A realistic frame for given nuclei: exact labels, ``channel`` uint16 fluorescence (and
    DIC), ``debris`` mask and noiseless ``signal`` (background, debris and illumination
    included)."""
    labels, kept = rasterize(shape, nuclei)
    phases = {lab: nuclei[k].phase for lab, k in enumerate(kept, start=1)}
    sig = render_signal(rng, labels, nuclei, kept, phases, style)
    junk, debris = _debris(rng, labels, style)
    lowfreq = 1.0 + 0.3 * _smooth_noise(rng, shape, max(shape) / 6)
    sig = (sig + junk) * _illumination(rng, shape, style.vignetting) + style.background * np.clip(
        lowfreq, 0, None
    )
    channels = {channel: to_counts(rng, sig, style)}
    if with_dic:
        channels["dic"] = render_dic(rng, labels, phases)
    return Frame(labels=labels, channels=channels, phases=phases, debris=debris, signal=sig)


# stain optical-density vectors (Ruifrok & Johnston): haematoxylin, eosin
_HEMATOXYLIN = np.array([0.65, 0.70, 0.29], dtype=np.float32)
_EOSIN = np.array([0.07, 0.99, 0.11], dtype=np.float32)


def colourize(rng: np.random.Generator, frame: Frame, style: ImageStyle) -> np.ndarray:
    """(H, W, 3) uint8 H&E- or brightfield-like rendering of a realistic frame: dark nuclei on
    a light background (Beer–Lambert absorption of the nuclear signal, eosin-pink cytoplasm
    for H&E), vignetting and sensor noise."""
    assert frame.signal is not None, "colourize needs a realistic frame"
    shape = frame.labels.shape
    stain = np.clip(frame.signal - style.background, 0, None) ** 0.5
    stain = (
        np.clip(stain / max(float(np.percentile(stain[frame.labels > 0], 90)), 1e-3), 0, 1.5)
        if frame.labels.any()
        else stain
    )
    illum = _illumination(rng, shape, 0.5 * style.vignetting)[..., None]
    if rng.random() < 0.5:  # H&E
        body = ndimage.distance_transform_edt(frame.labels == 0) < 0.35 * style.diameter
        eos = ndimage.gaussian_filter(body.astype(np.float32), 2.0) * rng.uniform(0.2, 0.6)
        eos = eos + 0.08 * np.clip(1 + _smooth_noise(rng, shape, 6.0), 0, None)
        od = stain[..., None] * _HEMATOXYLIN * rng.uniform(1.0, 2.2) + eos[..., None] * _EOSIN
        bg = np.array([rng.uniform(0.9, 0.98), rng.uniform(0.85, 0.95), rng.uniform(0.9, 0.98)])
    else:  # brightfield: grey-brown nuclei on a grey-beige field
        tint = np.array([1.0, 1.05, 1.15]) * rng.uniform(0.9, 1.1, size=3)
        od = stain[..., None] * (tint * rng.uniform(0.6, 1.4)).astype(np.float32)
        bg = np.full(3, rng.uniform(0.75, 0.95)) * rng.uniform(0.95, 1.05, size=3)
    rgb = 255.0 * bg * illum * np.exp(-od)
    rgb += rng.normal(0, rng.uniform(1.0, 5.0), size=rgb.shape)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
