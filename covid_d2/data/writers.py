"""Atomic NIfTI writers for volumes and uint8 label masks."""

import logging
import pathlib

import nibabel as nib
import numpy as np

from covid_d2.data.errors import IntensityError
from covid_d2.data.volume import CTVolume
from covid_d2.utils.atomic import atomic_target

logger = logging.getLogger(__name__)


def write_volume_nifti(array: np.ndarray, affine: np.ndarray, path) -> pathlib.Path:
    """Write ``array`` (any voxel order) with its (4, 4) RAS affine to ``path`` atomically.

    The data go to a temporary file in the same folder, which then replaces ``path``, so readers
    never see a half-written file. The qform and sform are both set to ``affine`` (code 1,
    scanner coordinates) and the spatial unit is mm.
    """
    path = pathlib.Path(path)
    image = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64))
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")

    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    with atomic_target(path, suffix=suffix) as tmp_path:
        image.to_filename(str(tmp_path))
    return path


def _as_label_mask(mask: np.ndarray, source: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask.astype(np.uint8)
    if not np.issubdtype(mask.dtype, np.integer) and not np.array_equal(mask, np.round(mask)):
        raise IntensityError(f"{source}: the mask has non-integer values; threshold it to labels first.")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise IntensityError(f"{source}: labels span [{mask.min()}, {mask.max()}], outside 0..255.")
    return mask.astype(np.uint8)


def write_mask(mask_shw: np.ndarray, volume: CTVolume, path, on_original_grid: bool = True) -> pathlib.Path:
    """Write an ``(S, H, W)`` label mask of ``volume`` as a uint8 NIfTI, atomically.

    With ``on_original_grid`` (default) the mask is mapped back onto the source voxel grid and
    stored with the source affine, so it overlays the input scan voxel for voxel in a viewer
    (for a DICOM series the source grid is (column, row, slice by position)). Otherwise it is
    stored on the canonical ``(S, H, W)`` grid with ``volume.affine``. Raises ``GeometryError``
    when the mask shape differs from the volume and ``IntensityError`` for non-label values.
    """
    path = pathlib.Path(path)
    volume.check_same_shape(mask_shw, f"mask for {path}")
    labels = _as_label_mask(mask_shw, f"mask for {path}")
    if on_original_grid:
        return write_volume_nifti(volume.to_original_grid(labels), volume.original_affine, path)
    return write_volume_nifti(labels, volume.affine, path)
