"""NIfTI reader (``.nii``, ``.nii.gz``) returning ``CTVolume`` on the canonical ``(S, H, W)`` grid."""

import logging
import pathlib
import zlib
from typing import Union

import nibabel as nib
import numpy as np

from covid_d2.data.errors import GeometryError, IntensityError, UnreadableFileError
from covid_d2.data.orientation import check_affine, to_canonical
from covid_d2.data.volume import CTVolume, check_intensities

logger = logging.getLogger(__name__)

PathLike = Union[str, pathlib.Path]

# Tolerance (mm) when comparing the affines of an image and its mask.
AFFINE_TOLERANCE_MM = 1e-3


def _check_exists(path: pathlib.Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"NIfTI file {path} not found. Check the path (expected .nii or .nii.gz).")


def _load(path: pathlib.Path, dtype) -> tuple:
    """Return ``(data, affine)`` with scl_slope/scl_inter applied, raising ``UnreadableFileError``."""
    _check_exists(path)
    try:
        image = nib.load(str(path))
        # np.asanyarray(dataobj) applies scl_slope/scl_inter like get_fdata, but keeps integer
        # masks integer when the header has no scaling.
        data = np.asanyarray(image.dataobj)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error) as error:
        raise UnreadableFileError(
            f"NIfTI file {path} cannot be read ({type(error).__name__}: {error}). The file is corrupt or "
            "truncated; copy or export it again."
        ) from error
    _check_raw_pixdim(image, path)
    affine = image.affine if image.affine is not None else np.eye(4)
    return np.asarray(data, dtype=dtype) if dtype is not None else data, affine


def _check_raw_pixdim(image, path: pathlib.Path) -> None:
    """Raise ``GeometryError`` for zero pixdim that nibabel would silently replace by 1 mm."""
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        return
    with nib.openers.ImageOpener(str(path)) as fileobj:
        raw = type(image.header).from_fileobj(fileobj, check=False)
    spatial = min(3, int(raw["dim"][0]))
    zero = [axis for axis in range(1, spatial + 1) if float(raw["pixdim"][axis]) == 0.0]
    # The sform, when set, defines the affine without pixdim; otherwise pixdim gives the spacing.
    if zero and int(raw["sform_code"]) == 0:
        raise GeometryError(
            f"NIfTI file {path}: zero voxel spacing (pixdim[{zero[0]}] = 0) and no sform. Fix the "
            "pixdim values in the header; covid-d2 does not assume 1 mm."
        )


def _as_3d(data: np.ndarray, path: pathlib.Path, require_volume: bool) -> np.ndarray:
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[:, :, np.newaxis]
    if data.ndim != 3:
        raise GeometryError(
            f"NIfTI file {path} has shape {data.shape}; covid-d2 reads one 3D volume. Split 4D or "
            "multi-channel files into single 3D volumes first."
        )
    if require_volume and data.shape[2] < 2:
        raise GeometryError(
            f"NIfTI file {path} is 2D (shape {data.shape}) but a volume of at least 2 slices is "
            "needed. Pass the full 3D scan, or read it with require_volume=False for single slices."
        )
    return data


def read_nifti(
    path: PathLike,
    intensity_kind: str = "hu",
    require_volume: bool = True,
    check_values: bool = True,
) -> CTVolume:
    """Read a NIfTI CT image and reorient it to the canonical ``(S, H, W)`` grid.

    The scl_slope/scl_inter scaling of the header is applied; the result is float32 for
    ``intensity_kind="hu"`` and keeps the stored dtype otherwise. The source affine, shape and
    reorientation are kept on the returned volume so that masks can be written back onto the
    source grid (:func:`covid_d2.data.writers.write_mask`).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnreadableFileError: the file is corrupt or truncated.
        GeometryError: 2D data with ``require_volume`` true, 4D data, or zero voxel spacing.
        IntensityError: (``check_values``) NaN/inf voxels or a constant volume.
    """
    path = pathlib.Path(path)
    data, affine = _load(path, np.float32 if intensity_kind == "hu" else None)
    data = _as_3d(data, path, require_volume)
    affine = check_affine(affine, f"NIfTI file {path}")
    if check_values:
        check_intensities(data, f"NIfTI file {path}")
    volume = CTVolume.from_source_grid(data, affine, intensity_kind, meta={"source_file": path.name})
    if intensity_kind == "hu" and check_values:
        warn_if_not_hu(volume.array, f"NIfTI file {path}")
    return volume


def warn_if_not_hu(array: np.ndarray, source: str) -> None:
    """Log a warning when an array labelled as HU has a value range unlike CT in HU."""
    low, high = float(array.min()), float(array.max())
    # Air is about -1000 HU; a CT in HU always reaches below -500 HU outside the body or in lung.
    if low > -500.0 or high - low < 500.0:
        logger.warning(
            "%s: values span [%.1f, %.1f], which does not look like CT in Hounsfield units. "
            "Pass the right intensity_kind if the scan is already normalised.",
            source,
            low,
            high,
        )


def read_mask_nifti(path: PathLike, like: CTVolume) -> np.ndarray:
    """Read a label mask NIfTI and return it on ``like``'s ``(S, H, W)`` grid as uint8.

    The mask may be stored on the source grid of ``like`` or on its canonical grid: it is
    reoriented with its own affine. Raises ``GeometryError`` when the reoriented shape or affine
    differs from ``like`` (tolerance 1e-3 mm), and ``IntensityError`` for non-integer labels or
    labels outside 0..255.
    """
    path = pathlib.Path(path)
    data, affine = _load(path, None)
    data = _as_3d(np.asarray(data), path, require_volume=False)
    affine = check_affine(affine, f"mask {path}")
    array, affine_shw, _ = to_canonical(data, affine)

    if tuple(array.shape) != like.shape:
        raise GeometryError(
            f"Mask {path}: shape {tuple(array.shape)} (S, H, W) does not match the image shape {like.shape}. "
            "Use a mask drawn on the same scan."
        )
    if not np.allclose(affine_shw, like.affine, atol=AFFINE_TOLERANCE_MM):
        raise GeometryError(
            f"Mask {path}: its affine differs from the image affine by up to "
            f"{np.abs(affine_shw - like.affine).max():.4f} mm, so it does not overlay the image. "
            "Resample the mask onto the image grid or fix its header."
        )
    if np.issubdtype(array.dtype, np.floating) and not np.array_equal(array, np.round(array)):
        raise IntensityError(f"Mask {path}: contains non-integer values; a label mask must hold integer labels.")
    if array.min() < 0 or array.max() > 255:
        raise IntensityError(
            f"Mask {path}: labels span [{array.min()}, {array.max()}], outside 0..255 for a uint8 label mask."
        )
    return array.astype(np.uint8)
