"""Read and write microscopy images (PNG, TIFF, JPEG) keeping their dtype.

Arrays are returned as stored: (H, W) for grey, (H, W, C) for colour with channels in
**RGB(A) order** (OpenCV's BGR is swapped back here, once, so no caller ever sees BGR).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import tifffile

from pcna_seg.errors import DataError
from pcna_seg.utils_io import atomic_path

TIFF_SUFFIXES = {".tif", ".tiff"}


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file; DataError names the file when missing, unreadable or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Image file not found: {path}")
    if path.suffix.lower() in TIFF_SUFFIXES:
        try:
            arr = tifffile.imread(path)
        except Exception as exc:  # tifffile raises many types for corrupt files
            raise DataError(f"Cannot read TIFF {path}: {exc}") from None
        arr = np.asarray(arr)
        if arr.size == 0:
            raise DataError(f"Cannot read TIFF {path}: it holds no pixels (truncated or corrupt)")
        return arr
    buf = np.fromfile(path, dtype=np.uint8)
    arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    if arr is None:
        raise DataError(f"Cannot read image {path}: not a valid PNG/JPEG or the file is corrupt")
    if arr.ndim == 3:
        code = cv2.COLOR_BGRA2RGBA if arr.shape[2] == 4 else cv2.COLOR_BGR2RGB
        arr = cv2.cvtColor(arr, code)
    return arr


def to_gray(arr: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) RGB(A) → (H, W) grey, dtype kept; alpha is ignored."""
    if arr.ndim == 2:
        return arr
    if arr.ndim == 3 and arr.shape[2] in (1,):
        return arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        rgb = arr[..., :3]
        if np.all(rgb[..., 0] == rgb[..., 1]) and np.all(rgb[..., 1] == rgb[..., 2]):
            return rgb[..., 0]
        grey = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        if np.issubdtype(arr.dtype, np.integer):
            grey = np.clip(np.rint(grey), 0, np.iinfo(arr.dtype).max)
        return grey.astype(arr.dtype)
    raise DataError(f"Cannot convert image of shape {arr.shape} to grey")


def check_pixels(arr: np.ndarray, path: str | os.PathLike) -> None:
    """Reject unsupported dtypes and NaN/inf pixels, naming the file."""
    if arr.dtype == bool or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise DataError(f"Unsupported pixel dtype {arr.dtype} in {path}; expected integer or float")
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        raise DataError(f"Image {path} contains NaN or infinite pixels")


def write_image(path: str | os.PathLike, arr: np.ndarray) -> Path:
    """Write an array atomically: TIFF via tifffile (any dtype), PNG via OpenCV (uint8/uint16)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix.lower() in TIFF_SUFFIXES:
            tifffile.imwrite(tmp, arr)
        else:
            out = arr
            if out.ndim == 3:
                code = cv2.COLOR_RGBA2BGRA if out.shape[2] == 4 else cv2.COLOR_RGB2BGR
                out = cv2.cvtColor(out, code)
            if not cv2.imwrite(str(tmp), out):
                raise DataError(f"Cannot write image {path}")
    return path
