"""Reorientation between a source voxel grid and the covid-d2 canonical ``(S, H, W)`` grid.

A source grid has voxel axes ``(i, j, k)`` and an affine mapping them to world RAS mm (the NIfTI
convention). The canonical grid stores arrays as ``(S, H, W)``: slice 0 is the most superior,
rows run anterior -> posterior and columns run from patient right to patient left. In nibabel
axis codes the canonical voxel axes (column, row, slice) point to ``("L", "P", "I")``.
"""

from typing import Tuple

import numpy as np
from nibabel import orientations as nio

from covid_d2.data.errors import GeometryError

# Directions of the canonical (column, row, slice) voxel axes in nibabel axis codes.
CANONICAL_AXCODES = ("L", "P", "I")


def check_affine(affine: np.ndarray, source: str) -> np.ndarray:
    """Return ``affine`` as float64 (4, 4), raising ``GeometryError`` when it is unusable.

    Unusable means non-finite values or a zero-length voxel axis (zero spacing).
    """
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise GeometryError(
            f"{source}: the affine is not a finite 4x4 matrix ({affine.tolist()}). "
            "Fix the header (qform/sform or ImagePositionPatient/ImageOrientationPatient)."
        )
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(spacing <= 1e-6):
        raise GeometryError(
            f"{source}: zero voxel spacing {spacing.round(6).tolist()} mm along the voxel axes. "
            "Fix the pixdim/PixelSpacing or slice positions in the header."
        )
    return affine


def spacing_from_affine(affine: np.ndarray) -> Tuple[float, float, float]:
    """Return the voxel spacing in mm along the three array axes of ``affine``."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))


def canonical_orientation(affine: np.ndarray) -> np.ndarray:
    """Return the nibabel ``ornt`` (3, 2) that takes source axes ``(i, j, k)`` to the canonical
    ``(column, row, slice)`` axes, i.e. to axis codes ``("L", "P", "I")``."""
    return nio.ornt_transform(nio.io_orientation(affine), nio.axcodes2ornt(CANONICAL_AXCODES))


def to_canonical(data_ijk: np.ndarray, affine: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reorient a source-grid array to the canonical ``(S, H, W)`` grid.

    Args:
        data_ijk: array with source voxel axes ``(i, j, k)``.
        affine: (4, 4) map from source voxel index ``(i, j, k, 1)`` to world RAS mm.

    Returns:
        ``(array_shw, affine_shw, ornt)``: the ``(S, H, W)`` array (contiguous), the (4, 4) affine
        mapping ``(s, r, c, 1)`` to RAS mm, and the ``ornt`` used, which
        :func:`to_original` inverts.
    """
    ornt = canonical_orientation(affine)
    data = nio.apply_orientation(data_ijk, ornt)
    affine_clp = affine @ nio.inv_ornt_aff(ornt, data_ijk.shape)

    # Canonical (column, row, slice) storage -> (slice, row, column) storage.
    array_shw = np.ascontiguousarray(np.transpose(data, (2, 1, 0)))
    affine_shw = affine_clp[:, [2, 1, 0, 3]]
    return array_shw, affine_shw, np.asarray(ornt, dtype=np.float64)


def to_original(array_shw: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Invert :func:`to_canonical`: map an ``(S, H, W)`` array back to the source ``(i, j, k)`` grid."""
    data_clp = np.transpose(array_shw, (2, 1, 0))
    ornt = np.asarray(ornt)
    inverse = np.zeros_like(ornt)
    for source_axis, (target_axis, flip) in enumerate(ornt):
        inverse[int(target_axis)] = (source_axis, flip)
    return np.ascontiguousarray(nio.apply_orientation(data_clp, inverse))
