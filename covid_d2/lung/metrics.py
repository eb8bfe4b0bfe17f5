"""Volume metrics of lung masks: Dice and the 95th-percentile Hausdorff distance."""

from typing import Optional, Sequence

import numpy as np
from scipy import ndimage


def dice(a: np.ndarray, b: np.ndarray) -> Optional[float]:
    """Dice ``2 |A & B| / (|A| + |B|)`` of two boolean masks; None when both are empty."""
    a, b = a > 0, b > 0
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int(np.logical_and(a, b).sum()) / total if total else None


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def hausdorff95(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> Optional[float]:
    """Return the symmetric 95th-percentile surface distance between two masks, in ``spacing`` units.

    Distances are measured in 3D from every surface voxel of one mask to the nearest surface
    voxel of the other (both directions pooled). None when either mask is empty.
    """
    a, b = a > 0, b > 0
    if not a.any() or not b.any():
        return None
    surface_a, surface_b = _surface(a), _surface(b)
    to_b = ndimage.distance_transform_edt(~surface_b, sampling=spacing)
    to_a = ndimage.distance_transform_edt(~surface_a, sampling=spacing)
    distances = np.concatenate([to_b[surface_a], to_a[surface_b]])
    return float(np.percentile(distances, 95))
