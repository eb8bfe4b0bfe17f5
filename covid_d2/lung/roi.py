"""Lung region of interest: crop records and the masking/cropping of volumes around the lungs.

A crop is a box of half-open index ranges on a case's ``(S, H, W)`` grid. Cropping keeps the
voxels inside the box; :func:`paste_roi` puts an ROI array back at its place on the full grid, so
that every ROI output maps back onto the case voxel-exactly.
"""

import dataclasses
import json
import pathlib
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from covid_d2.data.volume import CTVolume
from covid_d2.utils.atomic import write_json_atomic

ROI_JSON = "roi.json"


@dataclasses.dataclass(frozen=True)
class RoiCrop:
    """Half-open ranges ``[start, stop)`` along slices, rows and columns of a full ``(S, H, W)`` grid."""

    slices: Tuple[int, int]
    rows: Tuple[int, int]
    cols: Tuple[int, int]
    full_shape: Tuple[int, int, int]

    @property
    def index(self) -> Tuple[slice, slice, slice]:
        return (slice(*self.slices), slice(*self.rows), slice(*self.cols))

    @property
    def shape(self) -> Tuple[int, int, int]:
        return tuple(int(stop - start) for start, stop in (self.slices, self.rows, self.cols))

    @property
    def is_empty(self) -> bool:
        return any(n <= 0 for n in self.shape)

    def to_json(self) -> Dict[str, Any]:
        return {
            "crop": {"slice": list(self.slices), "row": list(self.rows), "col": list(self.cols)},
            "original_shape": list(self.full_shape),
        }

    @classmethod
    def from_json(cls, record: Dict[str, Any]) -> "RoiCrop":
        crop = record["crop"]
        return cls(tuple(crop["slice"]), tuple(crop["row"]), tuple(crop["col"]),
                   tuple(record["original_shape"]))

    @classmethod
    def full(cls, shape: Sequence[int]) -> "RoiCrop":
        """Return the crop that keeps the whole grid."""
        s, h, w = (int(n) for n in shape)
        return cls((0, s), (0, h), (0, w), (s, h, w))

    @classmethod
    def empty(cls, shape: Sequence[int]) -> "RoiCrop":
        """Return the crop of a volume where no lung was found."""
        return cls((0, 0), (0, 0), (0, 0), tuple(int(n) for n in shape))


def dilate_in_plane(mask: np.ndarray, radius_px: Tuple[float, float]) -> np.ndarray:
    """Dilate each axial slice of a (S, H, W) mask by an elliptical disc of (row, col) radii."""
    radius_rows, radius_cols = (max(0, int(round(r))) for r in radius_px)
    if radius_rows == 0 and radius_cols == 0:
        return mask > 0
    rows, cols = np.ogrid[-radius_rows:radius_rows + 1, -radius_cols:radius_cols + 1]
    disc = ((rows / max(radius_rows, 1)) ** 2 + (cols / max(radius_cols, 1)) ** 2) <= 1.0
    return ndimage.binary_dilation(mask > 0, structure=disc[None])


def compute_roi(lung: np.ndarray, spacing_mm: Tuple[float, float, float], dilation_mm: float,
                margin_px: int, spacing_known: bool = True) -> Tuple[RoiCrop, np.ndarray]:
    """Return the crop around the lungs and the dilated lung mask (S, H, W) bool.

    The lung mask is dilated in-plane by ``dilation_mm`` (read as pixels when the spacing is
    unknown), and the crop is the dilated mask's bounding box grown by ``margin_px`` rows and
    columns (clipped to the grid). All slices with dilated lung are kept. An empty lung mask
    gives an empty crop.
    """
    if spacing_known:
        radius = (dilation_mm / spacing_mm[1], dilation_mm / spacing_mm[2])
    else:
        radius = (dilation_mm, dilation_mm)
    dilated = dilate_in_plane(lung, radius)
    if not dilated.any():
        return RoiCrop.empty(lung.shape), dilated

    ranges = []
    for axis, margin in ((0, 0), (1, margin_px), (2, margin_px)):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(dilated.any(axis=other))
        start = max(0, int(present[0]) - margin)
        stop = min(lung.shape[axis], int(present[-1]) + 1 + margin)
        ranges.append((start, stop))
    return RoiCrop(ranges[0], ranges[1], ranges[2], tuple(lung.shape)), dilated


def paste_roi(array_roi: np.ndarray, crop: RoiCrop, fill=0) -> np.ndarray:
    """Place an ROI array back on the full (S, H, W) grid, filling the rest with ``fill``."""
    if tuple(array_roi.shape) != crop.shape:
        raise ValueError(f"ROI array shape {tuple(array_roi.shape)} differs from the crop shape "
                         f"{crop.shape}; it was not made with this crop record.")
    full = np.full(crop.full_shape, fill, dtype=array_roi.dtype)
    full[crop.index] = array_roi
    return full


def crop_volume(volume: CTVolume, crop: RoiCrop, array_shw: Optional[np.ndarray] = None) -> CTVolume:
    """Return the cropped volume, with an affine that keeps every voxel at its world position.

    ``array_shw`` replaces the voxel values before cropping (e.g. the lung-masked image).
    The cropped volume's source grid is its own canonical grid: map results back to the
    original scan with :func:`paste_roi` and the full case volume.
    """
    values = volume.array if array_shw is None else array_shw
    volume.check_same_shape(values, "array to crop")
    cropped = np.ascontiguousarray(values[crop.index])
    offset = np.eye(4)
    offset[:3, 3] = [crop.slices[0], crop.rows[0], crop.cols[0]]
    affine_shw = volume.affine @ offset
    # (column, row, slice) source axes already point to the canonical codes, so reorientation
    # back to the source is the identity.
    affine_ijk = affine_shw[:, [2, 1, 0, 3]]
    return CTVolume.from_source_grid(cropped.transpose(2, 1, 0), affine_ijk,
                                     volume.intensity_kind, meta=dict(volume.meta))


def write_roi_json(path: pathlib.Path, crop: RoiCrop, extra: Dict[str, Any]) -> None:
    """Write the crop record (and facts such as the lung volume) atomically as JSON."""
    write_json_atomic(path, {**crop.to_json(), **extra})


def read_roi_json(case_dir: pathlib.Path) -> Optional[RoiCrop]:
    """Return the crop record of an ROI case folder, or None when it has none."""
    path = pathlib.Path(case_dir) / ROI_JSON
    if not path.is_file():
        return None
    with open(path) as f:
        return RoiCrop.from_json(json.load(f))
