"""Classical lung mask of an HU volume (threshold + connected components), used as a sanity check."""

import numpy as np
from scipy import ndimage

from covid_d2.lung.crf import fill_holes_per_slice, keep_lung_components

# Lung parenchyma is below about -320 HU; soft tissue and blood are above it.
LUNG_THRESHOLD_HU = -320.0


def classical_lung_mask(hu: np.ndarray, threshold_hu: float = LUNG_THRESHOLD_HU) -> np.ndarray:
    """Segment the lungs of a (S, H, W) HU volume without learning; return a uint8 mask.

    Voxels below ``threshold_hu`` are air-like; components touching the in-plane border of any
    slice (air around the body, the table) are dropped, the two largest remaining 3D components
    are kept as lungs (the trachea may join them), and holes are filled slice by slice.
    """
    air = hu < threshold_hu
    labels, count = ndimage.label(air)
    if count == 0:
        return np.zeros(hu.shape, dtype=np.uint8)
    border = np.zeros(hu.shape, dtype=bool)
    border[:, 0, :] = border[:, -1, :] = border[:, :, 0] = border[:, :, -1] = True
    outside = np.unique(labels[border & air])
    inside = air & ~np.isin(labels, outside)
    return fill_holes_per_slice(keep_lung_components(inside.astype(np.uint8)))
