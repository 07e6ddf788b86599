"""PhaseSet: spellings, optional "E", errors, overlay colours."""

from __future__ import annotations

import pytest

from pcna_seg.data.phases import DEFAULT_PHASES, PhaseSet, phase_colors
from pcna_seg.errors import ConfigError, DataError


def test_default_set_and_index():
    ps = PhaseSet()
    assert ps.names == DEFAULT_PHASES == ("G1/G2", "S", "M")
    assert [ps.index(n) for n in ps] == [0, 1, 2]
    assert len(ps) == 3 and "S" in ps and "E" not in ps


@pytest.mark.parametrize("label", ["G1", "G2", "G1/G2", "g1/g2", " g1 ", "G2/G1", "g1-g2"])
def test_g1_g2_spellings_normalise(label):
    assert PhaseSet().normalize(label) == "G1/G2"
    assert PhaseSet().index(label) == 0


def test_other_spellings():
    ps = PhaseSet(("G1/G2", "S", "M", "E"))
    assert ps.normalize("s") == "S"
    assert ps.normalize("mitosis") == "M"
    assert ps.normalize("emerging") == "E"
    assert ps.index("e") == 3


def test_e_only_when_configured():
    with pytest.raises(DataError) as err:
        PhaseSet().normalize("E", "ann.json")
    msg = str(err.value)
    assert "ann.json" in msg and "G1/G2, S, M" in msg
    assert PhaseSet().try_normalize("emerging") is None


def test_unknown_label_lists_allowed_and_file():
    with pytest.raises(DataError, match=r"'G0'.*phases\.csv line 3.*allowed phases: G1/G2, S, M"):
        PhaseSet().index("G0", "phases.csv line 3")
    assert PhaseSet().try_normalize(None) is None
    assert PhaseSet().try_normalize("") is None


def test_alias_needs_target_in_set():
    ps = PhaseSet(("G1", "G2", "S", "M"))  # separate G1 and G2 classes: no merging
    assert ps.normalize("g1") == "G1" and ps.normalize("G2") == "G2"
    assert ps.try_normalize("G1/G2") is None


def test_bad_phase_lists():
    with pytest.raises(ConfigError, match="more than once"):
        PhaseSet(("S", "S"))
    with pytest.raises(ConfigError):
        PhaseSet(())
    with pytest.raises(ConfigError):
        PhaseSet("G1/G2")
    assert PhaseSet.coerce(None) == PhaseSet()
    assert PhaseSet.coerce(["S", "M"]).names == ("S", "M")
    assert PhaseSet.coerce("G1/G2, S,M,E").names == ("G1/G2", "S", "M", "E")


def test_phase_colors():
    colors = phase_colors(("G1/G2", "S", "M", "E", "X", "Y"))
    assert colors["G1/G2"] == (0, 200, 0)  # green
    assert colors["S"][0] > 200 and colors["S"][2] > 200 and colors["S"][1] < 50  # magenta
    assert colors["M"][0] > 200 and colors["M"][1] > 200 and colors["M"][2] < 50  # yellow
    assert colors["E"][0] < 50 and colors["E"][1] > 200 and colors["E"][2] > 200  # cyan
    assert len(set(colors.values())) == 6
    assert all(0 <= c <= 255 for rgb in colors.values() for c in rgb)
