"""Configuration: defaults, loading with ``_BASE_`` inheritance, overrides and validation."""

from pcna_seg.config.config import (
    config_to_dict,
    load_config,
    load_yaml_with_bases,
    merge_overrides,
    save_config,
)
from pcna_seg.config.defaults import get_default_config

__all__ = [
    "config_to_dict",
    "get_default_config",
    "load_config",
    "load_yaml_with_bases",
    "merge_overrides",
    "save_config",
]
