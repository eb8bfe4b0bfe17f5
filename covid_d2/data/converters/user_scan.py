"""A user's NIfTI file or DICOM series folder (+ optional masks) -> ``Case``."""

import logging
import pathlib
from typing import Optional, Union

from covid_d2.data.dicom import read_dicom_series
from covid_d2.data.nifti import read_mask_nifti, read_nifti
from covid_d2.data.volume import Case

logger = logging.getLogger(__name__)

SOURCE = "user"
PathLike = Union[str, pathlib.Path]


def read_scan(path: PathLike, series=None):
    """Read a CT in HU from a NIfTI file (``.nii``/``.nii.gz``) or a DICOM series folder."""
    path = pathlib.Path(path)
    if path.is_dir():
        return read_dicom_series(path, series=series)
    if path.name.endswith((".nii", ".nii.gz")):
        return read_nifti(path, intensity_kind="hu")
    if not path.exists():
        raise FileNotFoundError(f"Scan {path} not found. Pass a NIfTI file or a DICOM series folder.")
    raise ValueError(f"Scan {path} is neither a .nii/.nii.gz file nor a folder of DICOM files.")


def convert_scan(
    path: PathLike,
    case_id: str,
    lesion: Optional[PathLike] = None,
    lung: Optional[PathLike] = None,
    series=None,
    diagnosis: Optional[str] = None,
) -> Case:
    """Build a case from a user scan; ``lesion``/``lung`` are NIfTI masks on the scan's grid.

    Raises ``GeometryError`` when a mask's shape or affine does not match the scan.
    """
    volume = read_scan(path, series=series)
    lesion_mask = read_mask_nifti(lesion, volume) if lesion else None
    lung_mask = read_mask_nifti(lung, volume) if lung else None
    meta = {
        "case_id": case_id,
        "source": SOURCE,
        "spacing_known": True,
        "slice_gaps": [],
        "isolated_slices": False,
        "slice_labels": None if lesion_mask is None else [int(v) for v in lesion_mask.any(axis=(1, 2))],
        "diagnosis": diagnosis,
        "source_files": volume.meta.get("source_files", [volume.meta.get("source_file")]),
    }
    return Case(image=volume, lesion=lesion_mask, lung=lung_mask, meta=meta)
