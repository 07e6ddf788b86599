"""Cell-cycle phase names: the one place that knows them, their spellings and overlay colours.

Stage-3 data classify every nucleus into a phase. The default set is ``("G1/G2", "S", "M")``;
``"E"`` (emerging daughters / early G1, as in pcnaDeep) is optional and only accepted when a
dataset is configured with it. The phase list *is* the class list: converters write it, in
order, as the COCO categories, so class names live in dataset metadata and never in code.

Annotation tools spell phases in many ways ("G1", "g2", "G1/G2", "mitosis", "emerging"…);
:class:`PhaseSet` maps those spellings onto the configured names and rejects anything else
with a :class:`~pcna_seg.errors.DataError` that lists the allowed names and names the file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from pcna_seg.errors import ConfigError, DataError

DEFAULT_PHASES: tuple[str, ...] = ("G1/G2", "S", "M")
OPTIONAL_PHASES: tuple[str, ...] = ("E",)
KNOWN_PHASES: tuple[str, ...] = DEFAULT_PHASES + OPTIONAL_PHASES

# lower-cased spelling (spaces, "_" and "-" removed) → canonical name; an alias only applies
# when its canonical name is in the configured set
_ALIASES: dict[str, str] = {
    "g1": "G1/G2",
    "g2": "G1/G2",
    "g1/g2": "G1/G2",
    "g2/g1": "G1/G2",
    "g1g2": "G1/G2",
    "g1+g2": "G1/G2",
    "s": "S",
    "sphase": "S",
    "m": "M",
    "mphase": "M",
    "mitosis": "M",
    "mitotic": "M",
    "e": "E",
    "emerging": "E",
    "earlyg1": "E",
}

# overlay colours (RGB, 0-255) of the known phases
_COLORS: dict[str, tuple[int, int, int]] = {
    "G1/G2": (0, 200, 0),
    "S": (230, 0, 230),
    "M": (255, 220, 0),
    "E": (0, 220, 255),
}
# colours for any other configured name, in order of appearance
_FALLBACK_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 128, 0),
    (0, 128, 255),
    (255, 64, 64),
    (160, 96, 255),
    (128, 128, 128),
    (160, 255, 96),
)


def _squash(label: str) -> str:
    return re.sub(r"[\s_\-]+", "", label.strip().lower())


class PhaseSet:
    """An ordered set of phase (class) names; ``index`` gives the 0-based category id.

    ``names`` is a non-empty tuple of unique, non-empty strings, e.g. ``("G1/G2", "S", "M")``
    or ``("G1/G2", "S", "M", "E")``. A bad list raises :class:`ConfigError`.
    """

    def __init__(self, names: Iterable[str] = DEFAULT_PHASES) -> None:
        if isinstance(names, str):
            raise ConfigError(f"phases must be a list of names, got the string {names!r}")
        names = tuple(names)
        if not names:
            raise ConfigError("phases must name at least one class")
        bad = [n for n in names if not isinstance(n, str) or not n.strip()]
        if bad:
            raise ConfigError(f"phases must be non-empty strings, got {bad!r}")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"phases lists {', '.join(dupes)} more than once")
        self.names: tuple[str, ...] = names
        self._exact = {n: n for n in names}
        self._folded = {_squash(n): n for n in names}

    @classmethod
    def coerce(cls, phases: PhaseSet | Iterable[str] | str | None) -> PhaseSet:
        """A PhaseSet from a PhaseSet, a list/tuple of names, "G1/G2,S,M", or None (the default)."""
        if isinstance(phases, PhaseSet):
            return phases
        if isinstance(phases, str):
            phases = [p.strip() for p in phases.split(",")]
        return cls(DEFAULT_PHASES if phases is None else phases)

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self._exact

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PhaseSet) and other.names == self.names

    def __hash__(self) -> int:
        return hash(self.names)

    def __repr__(self) -> str:
        return f"PhaseSet({self.names!r})"

    def allowed(self) -> str:
        """The configured names as one comma-separated string (for messages)."""
        return ", ".join(self.names)

    def try_normalize(self, label: object) -> str | None:
        """The configured name ``label`` spells, or None when it spells none of them.

        Exact names win; then case/space-insensitive matches; then the common aliases
        ("G1", "G2", "g1/g2" → "G1/G2"; "mitosis" → "M"; "emerging" → "E"), each only when its
        target is configured.
        """
        if not isinstance(label, str):
            return None
        if label in self._exact:
            return label
        key = _squash(label)
        if not key:
            return None
        if key in self._folded:
            return self._folded[key]
        target = _ALIASES.get(key)
        return target if target in self._exact else None

    def normalize(self, label: object, source: str = "") -> str:
        """The configured name for ``label``; DataError lists the allowed names and ``source``."""
        name = self.try_normalize(label)
        if name is None:
            where = f" in {source}" if source else ""
            raise DataError(f"Unknown phase label {label!r}{where}; allowed phases: {self.allowed()}")
        return name

    def index(self, label: str, source: str = "") -> int:
        """0-based category id of ``label`` (any accepted spelling); DataError when unknown."""
        return self.names.index(self.normalize(label, source))


def phase_colors(names: Iterable[str]) -> dict[str, tuple[int, int, int]]:
    """Overlay colour (R, G, B in 0-255) per phase name.

    G1/G2 green, S magenta, M yellow, E cyan; other names get distinct fallback colours in the
    order given.
    """
    out: dict[str, tuple[int, int, int]] = {}
    k = 0
    for name in names:
        if name in _COLORS:
            out[name] = _COLORS[name]
        else:
            out[name] = _FALLBACK_COLORS[k % len(_FALLBACK_COLORS)]
            k += 1
    return out
