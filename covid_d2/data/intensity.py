"""Intensity normalisation of CT volumes: HU windowing and per-slice min-max + CLAHE.

Both methods return 8-bit ``(S, H, W)`` volumes, so an HU scan processed here matches the
shared 8-bit training images: ``"hu_window"`` matches the Inf-Net JPGs (kind
``"uint8_windowed"``), ``"minmax_clahe"`` matches the Zenodo PNGs (kind ``"minmax_clahe_uint8"``).
"""

import logging
from typing import Sequence

import cv2
import numpy as np

from covid_d2.data.errors import IntensityError
from covid_d2.data.volume import CTVolume

logger = logging.getLogger(__name__)

# Lung window (HU): level -600, width 1500 covers air (-1000) to soft tissue (+150).
LUNG_WINDOW_LEVEL = -600.0
LUNG_WINDOW_WIDTH = 1500.0
# CLAHE clip limit of the Zenodo PNG preprocessing; 8x8 tiles is OpenCV's default grid.
CLAHE_CLIP_LIMIT = 7.0
CLAHE_TILE_GRID = (8, 8)

NORMALIZATIONS = ("minmax_clahe", "hu_window", "none")
_OUTPUT_KIND = {"minmax_clahe": "minmax_clahe_uint8", "hu_window": "uint8_windowed"}


def window_hu(hu: np.ndarray, level: float = LUNG_WINDOW_LEVEL, width: float = LUNG_WINDOW_WIDTH) -> np.ndarray:
    """Map HU to uint8: ``level - width/2`` -> 0 and ``level + width/2`` -> 255, clipped. Any shape."""
    if width <= 0:
        raise ValueError(f"HU window width must be positive, got {width}.")
    low = level - width / 2.0
    scaled = (np.asarray(hu, dtype=np.float32) - low) * (255.0 / width)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def minmax_clahe(array: np.ndarray, clip_limit: float = CLAHE_CLIP_LIMIT, tile_grid: Sequence[int] = CLAHE_TILE_GRID) -> np.ndarray:
    """Per slice: min-max scale to 0..255 (uint8), then CLAHE. ``(S, H, W)`` in, uint8 ``(S, H, W)`` out.

    Each slice is scaled by its own minimum and maximum, so values are not comparable between
    slices. A constant slice becomes all zeros.
    """
    if array.ndim != 3:
        raise ValueError(f"minmax_clahe expects an (S, H, W) array, got shape {array.shape}.")
    clahe = cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=tuple(int(v) for v in tile_grid))
    output = np.zeros(array.shape, dtype=np.uint8)
    for index, plane in enumerate(np.asarray(array, dtype=np.float32)):
        low, high = float(plane.min()), float(plane.max())
        if high > low:
            scaled = np.rint((plane - low) * (255.0 / (high - low))).astype(np.uint8)
            output[index] = clahe.apply(scaled)
    return output


def normalize_volume(
    volume: CTVolume,
    method: str,
    level: float = LUNG_WINDOW_LEVEL,
    width: float = LUNG_WINDOW_WIDTH,
    clip_limit: float = CLAHE_CLIP_LIMIT,
    tile_grid: Sequence[int] = CLAHE_TILE_GRID,
) -> CTVolume:
    """Return ``volume`` normalised by ``method`` (one of :data:`NORMALIZATIONS`) as uint8.

    A volume whose ``intensity_kind`` is already the method's output kind is returned
    unchanged; ``"none"`` always returns it unchanged. ``"hu_window"`` needs an HU volume and
    raises ``IntensityError`` otherwise, because windowing an 8-bit image as HU is meaningless.
    """
    if method not in NORMALIZATIONS:
        raise ValueError(f"Unknown CT normalisation {method!r}; expected one of {NORMALIZATIONS} (cfg.INPUT.CT.NORMALIZATION).")
    if method == "none" or volume.intensity_kind == _OUTPUT_KIND[method]:
        return volume

    if method == "hu_window":
        if volume.intensity_kind != "hu":
            raise IntensityError(
                f"{volume.meta.get('source_file', 'volume')}: HU windowing needs intensity kind 'hu', got "
                f"{volume.intensity_kind!r}. Use cfg.INPUT.CT.NORMALIZATION 'minmax_clahe' or 'none' for 8-bit inputs."
            )
        logger.debug("HU window level %.0f width %.0f on %s", level, width, volume.meta.get("source_file"))
        return volume.with_array(window_hu(volume.array, level, width), _OUTPUT_KIND[method])

    logger.debug("min-max + CLAHE (clip %.1f, tiles %s) on %s", clip_limit, tuple(tile_grid), volume.meta.get("source_file"))
    return volume.with_array(minmax_clahe(volume.array, clip_limit, tile_grid), _OUTPUT_KIND[method])


def normalize_from_config(volume: CTVolume, cfg) -> CTVolume:
    """Apply the normalisation selected by ``cfg.INPUT.CT`` (NORMALIZATION and its parameters)."""
    ct = cfg.INPUT.CT
    return normalize_volume(
        volume,
        ct.NORMALIZATION,
        level=ct.WINDOW_LEVEL,
        width=ct.WINDOW_WIDTH,
        clip_limit=ct.CLAHE_CLIP_LIMIT,
        tile_grid=ct.CLAHE_TILE_GRID,
    )
