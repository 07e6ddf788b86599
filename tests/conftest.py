"""Shared test set-up: every test starts from the same dataset catalog."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/_cli.py for every test folder

from pcna_seg.data import catalog


@pytest.fixture(autouse=True)
def _restore_catalog():
    """Names registered by one test (or resolved from its tmp folders) never leak into the next."""
    loaders = dict(catalog._LOADERS)
    metadata = {k: dict(v) for k, v in catalog._METADATA.items()}
    yield
    catalog._LOADERS.clear()
    catalog._LOADERS.update(loaders)
    catalog._METADATA.clear()
    catalog._METADATA.update(metadata)
