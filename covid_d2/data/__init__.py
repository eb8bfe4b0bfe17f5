"""CT input/output of covid-d2: readers, writers, intensity normalisation and the case format.

Arrays are ``(S, H, W)`` (slice 0 most superior, rows anterior -> posterior, columns patient
right -> left) and spacing is in mm as ``(slice, row, column)``.
"""

from covid_d2.data.dicom import list_dicom_series, read_dicom_series
from covid_d2.data.errors import (
    AmbiguousSeriesError,
    GeometryError,
    IntensityError,
    MissingDecoderError,
    NoDicomSeriesError,
    NonUniformSpacingWarning,
    UnreadableFileError,
    VolumeError,
)
from covid_d2.data.intensity import minmax_clahe, normalize_from_config, normalize_volume, window_hu
from covid_d2.data.nifti import read_mask_nifti, read_nifti
from covid_d2.data.slice_gaps import detect_slice_gaps
from covid_d2.data.slice_stack import read_order_csv, read_slice_stack
from covid_d2.data.splits import build_splits, write_splits
from covid_d2.data.volume import Case, CTVolume, load_case, save_case
from covid_d2.data.writers import write_mask, write_volume_nifti

__all__ = [
    "AmbiguousSeriesError",
    "CTVolume",
    "Case",
    "GeometryError",
    "IntensityError",
    "MissingDecoderError",
    "NoDicomSeriesError",
    "NonUniformSpacingWarning",
    "UnreadableFileError",
    "VolumeError",
    "build_splits",
    "detect_slice_gaps",
    "list_dicom_series",
    "load_case",
    "minmax_clahe",
    "normalize_from_config",
    "normalize_volume",
    "read_dicom_series",
    "read_mask_nifti",
    "read_nifti",
    "read_order_csv",
    "read_slice_stack",
    "save_case",
    "window_hu",
    "write_mask",
    "write_splits",
    "write_volume_nifti",
]
