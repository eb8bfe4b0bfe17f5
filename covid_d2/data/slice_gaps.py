"""Detection of gaps between neighbouring slices of a stack whose missing slices were dropped.

A gap between slices i and i+1 means they are not adjacent in the body, so a three-slice input
must not straddle it. Both the lung mask and the image change about twice as much across one
missing slice as between adjacent slices, so a pair is a gap when both of its dissimilarities
exceed ``ratio`` times the median dissimilarity of the nearby pairs.
"""

import logging
from typing import List

import numpy as np

logger = logging.getLogger(__name__)

# NOTE: calibrated on the 8 shared Zenodo PNG cases: adjacent pairs reach at most 1.6x the local
# median image dissimilarity (lung-mask Dice alone varies up to 26x in a periodic pattern, so it
# cannot decide alone); the 3 pairs flagged there reach 3.5-4x. A single missing slice in a
# region where anatomy barely changes can fall below the threshold and go undetected.
GAP_RATIO = 2.0
# Pairs on each side used for the local median.
GAP_WINDOW = 4


def lung_dice_dissimilarity(lung: np.ndarray) -> np.ndarray:
    """``1 - Dice`` of the lung masks of each neighbouring pair; ``(S, H, W)`` in, ``(S-1,)`` out."""
    lung = lung.astype(bool)
    overlap = np.logical_and(lung[1:], lung[:-1]).sum(axis=(1, 2))
    total = lung[1:].sum(axis=(1, 2)) + lung[:-1].sum(axis=(1, 2))
    dice = np.where(total > 0, 2.0 * overlap / np.maximum(total, 1), 1.0)
    return 1.0 - dice


def image_dissimilarity(image: np.ndarray) -> np.ndarray:
    """``1 - normalised cross-correlation`` of each neighbouring pair; ``(S, H, W)`` in, ``(S-1,)`` out."""
    flat = image.reshape(image.shape[0], -1).astype(np.float64)
    flat -= flat.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(flat, axis=1)
    products = (flat[1:] * flat[:-1]).sum(axis=1)
    correlation = products / np.maximum(norms[1:] * norms[:-1], 1e-12)
    return 1.0 - correlation


def _local_ratio(dissimilarity: np.ndarray, window: int) -> np.ndarray:
    ratios = np.zeros_like(dissimilarity)
    for index, value in enumerate(dissimilarity):
        nearby = np.r_[dissimilarity[max(0, index - window) : index], dissimilarity[index + 1 : index + 1 + window]]
        baseline = max(float(np.median(nearby)), 1e-3) if nearby.size else 1e-3
        ratios[index] = value / baseline
    return ratios


def detect_slice_gaps(image: np.ndarray, lung: np.ndarray, ratio: float = GAP_RATIO, window: int = GAP_WINDOW) -> List[int]:
    """Return the indices i where slices i and i+1 of an ``(S, H, W)`` stack are not adjacent.

    Args:
        image: ``(S, H, W)`` intensities (any kind; compared by normalised cross-correlation).
        lung: ``(S, H, W)`` lung mask on the same grid.
        ratio: a pair is a gap when both its image and lung-mask dissimilarities exceed this
            multiple of the median over the ``window`` pairs on each side.
    """
    if image.shape[0] < 3:
        return []
    image_ratio = _local_ratio(image_dissimilarity(image), window)
    lung_ratio = _local_ratio(lung_dice_dissimilarity(lung), window)
    return [int(i) for i in np.flatnonzero((image_ratio > ratio) & (lung_ratio > ratio))]
