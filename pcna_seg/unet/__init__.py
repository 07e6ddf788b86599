"""Semantic U-Net branch: HDF5 tiling, tile datasets, models, losses, schedulers, metrics.

Import the submodules directly (``from pcna_seg.unet.dataset import H5TileDataset``); this
package imports nothing so that tiling workers stay light.
"""
