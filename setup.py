"""pcna_seg: nucleus instance segmentation and cell-cycle phase calling for PCNA microscopy."""

import re
from pathlib import Path

from setuptools import find_packages, setup

version = re.search(r'__version__ = "([^"]+)"', Path("pcna_seg/__init__.py").read_text()).group(1)

setup(
    name="pcna_seg",
    version=version,
    description="Nuclei instance segmentation and cell-cycle phase calling in PCNA microscopy",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["pcna_seg", "pcna_seg.*"]),
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "numpy>=1.24",
        "pycocotools>=2.0.6",
        "opencv-python-headless>=4.7",
        "h5py>=3.8",
        "hdf5plugin>=4.0",
        "tifffile>=2023.1",
        "matplotlib>=3.6",
        "scipy>=1.10",
        "scikit-image>=0.21",
        "yacs>=0.1.8",
        "pyyaml>=6.0",
        "tqdm>=4.60",
        "torchmetrics>=1.0",
        "imageio>=2.30",
        "imageio-ffmpeg>=0.4",
    ],
    extras_require={
        "tensorboard": ["tensorboard>=2.12"],
        # sweeps on dask (LocalCluster / a scheduler) and PBS/SLURM job scripts (campaign pbs executor)
        "cluster": ["dask>=2024.1", "distributed>=2024.1", "dask-jobqueue>=0.8.5"],
        "dev": ["pytest>=7", "ruff>=0.5"],
    },
    entry_points={"console_scripts": ["pcna_seg=pcna_seg.__main__:main"]},
)
