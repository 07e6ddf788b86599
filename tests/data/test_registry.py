"""Converter and synthetic-writer registries: one lookup rule, the same format names."""

from __future__ import annotations

import pytest

from pcna_seg.data.converters import CONVERTERS, get_converter
from pcna_seg.data.synthetic import WRITERS, get_writer


def test_every_format_has_a_writer_and_a_converter():
    assert set(CONVERTERS) == set(WRITERS)
    for fmt in sorted(CONVERTERS):
        assert callable(get_converter(fmt)) and callable(get_writer(fmt))


def test_unknown_format_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"Unknown dataset format 'nope'; known: bbbc039, ctc"):
        get_converter("nope")
    with pytest.raises(ValueError, match=r"Unknown synthetic format 'nope'; known: bbbc039, ctc"):
        get_writer("nope")
