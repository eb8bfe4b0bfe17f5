"""DICOM series reader: a folder of CT slices -> ``CTVolume`` in HU.

A series is either one file per slice or enhanced multi-frame files (Enhanced CT Image
Storage), whose frames carry their geometry and rescale in the per-frame and shared functional
groups. Slices (files or frames) are grouped by SeriesInstanceUID and ordered by
ImagePositionPatient projected on the slice normal (never by file name, InstanceNumber or frame
number). Patient tags and UIDs are read only to group files; they are never copied into the
volume's ``meta`` or into log messages.
"""

import contextlib
import dataclasses
import logging
import pathlib
import struct
import warnings
from typing import Any, Dict, List, Optional, Union

import numpy as np
import pydicom
import pydicom.config
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder

from covid_d2.data.errors import (
    AmbiguousSeriesError,
    GeometryError,
    MissingDecoderError,
    NoDicomSeriesError,
    NonUniformSpacingWarning,
    UnreadableFileError,
)
from covid_d2.data.nifti import warn_if_not_hu
from covid_d2.data.orientation import check_affine
from covid_d2.data.volume import CTVolume, check_intensities

logger = logging.getLogger(__name__)

# Two slices closer than this along the slice normal (mm) are duplicates.
DUPLICATE_POSITION_MM = 0.01
# Relative deviation of a slice step from the median step above which spacing is non-uniform.
SPACING_TOLERANCE = 0.01

# pip packages that decode each compressed transfer syntax (pydicom 3 pixel data plugins).
_PLUGIN_HINTS = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg pylibjpeg-libjpeg (or pillow)",
    "1.2.840.10008.1.2.4.51": "pylibjpeg pylibjpeg-libjpeg (or pillow)",
    "1.2.840.10008.1.2.4.57": "pylibjpeg pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.70": "pylibjpeg pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.80": "pylibjpeg pylibjpeg-libjpeg (or pyjpegls)",
    "1.2.840.10008.1.2.4.81": "pylibjpeg pylibjpeg-libjpeg (or pyjpegls)",
    "1.2.840.10008.1.2.4.90": "pylibjpeg pylibjpeg-openjpeg (or pillow)",
    "1.2.840.10008.1.2.4.91": "pylibjpeg pylibjpeg-openjpeg (or pillow)",
    "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",
}


@contextlib.contextmanager
def _quiet_value_validation():
    """Suppress pydicom's invalid-value warnings, which quote the value (e.g. a UUID-style UID)."""
    with pydicom.config.disable_value_validation(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Invalid value for VR", category=UserWarning)
        yield


@dataclasses.dataclass
class _Slice:
    path: pathlib.Path
    dataset: pydicom.Dataset
    series_key: str
    series_number: Optional[int]
    series_description: str
    instance_number: Optional[int]
    position: np.ndarray  # ImagePositionPatient, LPS mm
    orientation: np.ndarray  # ImageOrientationPatient (row cosines, column cosines)
    pixel_spacing: np.ndarray  # (between rows, between columns) mm
    rows: int
    columns: int
    slope: float = 1.0
    intercept: float = 0.0
    frame: Optional[int] = None  # index of the frame in a multi-frame file, None for one frame per file


@dataclasses.dataclass
class SeriesSummary:
    """Non-identifying description of one series in a folder."""

    series_number: Optional[int]
    description: str
    num_slices: int


def _has_dicom_preamble(path: pathlib.Path) -> bool:
    with open(path, "rb") as f:
        return f.read(132)[128:132] == b"DICM"


def _functional_value(dataset: pydicom.Dataset, frame: int, sequence: str, keyword: str) -> Any:
    """Return ``keyword`` of a functional group macro for one frame, per-frame group first, then shared."""
    groups = []
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and frame < len(per_frame):
        groups.append(per_frame[frame])
    shared = dataset.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    for group in groups:
        items = group.get(sequence)
        if items and keyword in items[0]:
            return items[0].get(keyword)
    return None


def _frame_records(path: pathlib.Path, dataset: pydicom.Dataset, common: Dict[str, Any]) -> List[_Slice]:
    """Build one slice record per frame of an enhanced multi-frame image."""
    frames = int(dataset.get("NumberOfFrames") or 1)
    if "PerFrameFunctionalGroupsSequence" not in dataset and "SharedFunctionalGroupsSequence" not in dataset:
        raise GeometryError(
            f"DICOM file {path} contains {frames} frames but no functional groups, so the position of "
            "each frame is unknown. covid-d2 reads single-frame series and Enhanced CT multi-frame "
            "files; convert this file to one of them or to NIfTI."
        )
    records = []
    for frame in range(frames):
        geometry = {
            "ImagePositionPatient": _functional_value(dataset, frame, "PlanePositionSequence", "ImagePositionPatient"),
            "ImageOrientationPatient": _functional_value(
                dataset, frame, "PlaneOrientationSequence", "ImageOrientationPatient"),
            "PixelSpacing": _functional_value(dataset, frame, "PixelMeasuresSequence", "PixelSpacing"),
        }
        missing = [key for key, value in geometry.items() if value is None]
        if missing:
            raise GeometryError(
                f"DICOM file {path}, frame {frame + 1} of {frames}: {', '.join(missing)} missing from the "
                "functional groups, so the frame's position in the volume is unknown. covid-d2 reads "
                "axial CT with full geometry; export the series again or convert it to NIfTI."
            )
        slope = _functional_value(dataset, frame, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = _functional_value(dataset, frame, "PixelValueTransformationSequence", "RescaleIntercept")
        records.append(_Slice(
            path=path,
            dataset=dataset,
            position=np.array([float(v) for v in geometry["ImagePositionPatient"]]),
            orientation=np.array([float(v) for v in geometry["ImageOrientationPatient"]]),
            pixel_spacing=np.array([float(v) for v in geometry["PixelSpacing"]]),
            slope=float(slope) if slope not in (None, "") else 1.0,
            intercept=float(intercept) if intercept not in (None, "") else 0.0,
            frame=frame,
            **common,
        ))
    return records


def _read_header(path: pathlib.Path) -> List[_Slice]:
    """Return the slice records of ``path`` (one per frame), none for non-DICOM or non-image files."""
    truncated = (
        f"DICOM file {path} is truncated or corrupt ({{}}). Export the series again or remove the file."
    )
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dataset = pydicom.dcmread(str(path))
    except InvalidDicomError as error:
        if _has_dicom_preamble(path):
            raise UnreadableFileError(truncated.format("header cannot be parsed")) from error
        return []
    except (OSError, EOFError, ValueError, KeyError, TypeError, struct.error) as error:
        raise UnreadableFileError(truncated.format(type(error).__name__)) from error
    # pydicom only warns when a file ends inside an element or inside encapsulated pixel data.
    if any("End of file" in str(warning.message) for warning in caught):
        raise UnreadableFileError(truncated.format("the file ends before its last element"))
    if "PixelData" not in dataset:
        # An image storage SOP class without pixel data means the file was cut off. Other objects
        # (DICOMDIR, structured reports, presentation states) are skipped.
        sop_class = getattr(dataset, "file_meta", pydicom.Dataset()).get("MediaStorageSOPClassUID")
        if sop_class is not None and "Image Storage" in pydicom.uid.UID(str(sop_class)).name:
            raise UnreadableFileError(truncated.format("an image file without pixel data"))
        return []

    number = dataset.get("SeriesNumber")
    instance = dataset.get("InstanceNumber")
    common = {
        "series_key": str(dataset.get("SeriesInstanceUID", "")),
        "series_number": int(number) if number not in (None, "") else None,
        "series_description": str(dataset.get("SeriesDescription", "")),
        "instance_number": int(instance) if instance not in (None, "") else None,
        "rows": int(dataset.Rows),
        "columns": int(dataset.Columns),
    }
    if int(dataset.get("NumberOfFrames") or 1) > 1 or "PerFrameFunctionalGroupsSequence" in dataset:
        return _frame_records(path, dataset, common)

    missing = [key for key in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing") if key not in dataset]
    if missing:
        raise GeometryError(
            f"DICOM file {path} lacks {', '.join(missing)}, so its position in the volume is unknown. "
            "covid-d2 reads axial CT series with full geometry tags."
        )
    slope = dataset.get("RescaleSlope")
    intercept = dataset.get("RescaleIntercept")
    return [_Slice(
        path=path,
        dataset=dataset,
        position=np.array([float(v) for v in dataset.ImagePositionPatient]),
        orientation=np.array([float(v) for v in dataset.ImageOrientationPatient]),
        pixel_spacing=np.array([float(v) for v in dataset.PixelSpacing]),
        slope=float(slope) if slope not in (None, "") else 1.0,
        intercept=float(intercept) if intercept not in (None, "") else 0.0,
        **common,
    )]


def _scan_folder(folder: pathlib.Path) -> Dict[str, List[_Slice]]:
    if not folder.is_dir():
        raise FileNotFoundError(f"DICOM folder {folder} not found. Pass the folder that contains the series files.")
    series: Dict[str, List[_Slice]] = {}
    skipped = 0
    with _quiet_value_validation():
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            records = _read_header(path)
            if not records:
                skipped += 1
                continue
            series.setdefault(records[0].series_key, []).extend(records)
    if not series:
        raise NoDicomSeriesError(
            f"No DICOM image with pixel data found in {folder} ({skipped} other files). Pass the folder "
            "of a DICOM series export."
        )
    if skipped:
        logger.info("%s: skipped %d files that are not DICOM images.", folder.name, skipped)
    return series


def _summaries(series: Dict[str, List[_Slice]]) -> List[SeriesSummary]:
    return [
        SeriesSummary(slices[0].series_number, slices[0].series_description, len(slices))
        for slices in sorted(series.values(), key=len, reverse=True)
    ]


def list_dicom_series(folder) -> List[SeriesSummary]:
    """List the image series in ``folder`` (largest first) by SeriesNumber, description and size."""
    return _summaries(_scan_folder(pathlib.Path(folder)))


def _choose_series(series: Dict[str, List[_Slice]], choice, folder: pathlib.Path) -> List[_Slice]:
    if choice is None and len(series) == 1:
        return next(iter(series.values()))
    if choice == "largest":
        return max(series.values(), key=len)
    if choice is not None:
        matches = [s for key, s in series.items() if key == str(choice) or str(s[0].series_number) == str(choice)]
        if len(matches) == 1:
            return matches[0]
    listing = "; ".join(
        f"SeriesNumber {s.series_number} '{s.description}' ({s.num_slices} slices)" for s in _summaries(series)
    )
    chosen = "none was chosen" if choice is None else f"{choice!r} matches {len(matches)} of them"
    raise AmbiguousSeriesError(
        f"DICOM folder {folder} contains {len(series)} series and {chosen}: {listing}. Pass series=<SeriesNumber> "
        "(or the SeriesInstanceUID), or series='largest'."
    )


def _sorted_unique(slices: List[_Slice], folder: pathlib.Path) -> List[_Slice]:
    first = slices[0]
    for record in slices[1:]:
        if not np.allclose(record.orientation, first.orientation, atol=1e-4):
            raise GeometryError(
                f"DICOM file {record.path}: ImageOrientationPatient differs from {first.path.name}, so the "
                "series is not one stack of parallel slices. Select a single axial series."
            )
        if (record.rows, record.columns) != (first.rows, first.columns):
            raise GeometryError(
                f"DICOM file {record.path}: image size {record.rows}x{record.columns} differs from "
                f"{first.rows}x{first.columns} in {first.path.name}. Select a single axial series."
            )

    normal = np.cross(first.orientation[:3], first.orientation[3:])
    ordered = sorted(slices, key=lambda s: (float(s.position @ normal), s.instance_number or 0, s.frame or 0))
    unique = [ordered[0]]
    for record in ordered[1:]:
        if abs(float((record.position - unique[-1].position) @ normal)) > DUPLICATE_POSITION_MM:
            unique.append(record)
    if len(unique) < len(ordered):
        logger.warning(
            "%s: dropped %d slices at duplicate positions (kept the lowest InstanceNumber).",
            folder.name,
            len(ordered) - len(unique),
        )
    return unique


def _source_affine(slices: List[_Slice], source: str) -> np.ndarray:
    """Affine (RAS mm) of the source grid with voxel axes (column, row, slice by position)."""
    first, last = slices[0], slices[-1]
    row_cosines, column_cosines = first.orientation[:3], first.orientation[3:]
    normal = np.cross(row_cosines, column_cosines)
    if len(slices) > 1:
        step = (last.position - first.position) / (len(slices) - 1)
    else:
        thickness = float(first.dataset.get("SliceThickness") or 0.0)
        step = normal * thickness

    lps = np.eye(4)
    lps[:3, 0] = row_cosines * first.pixel_spacing[1]
    lps[:3, 1] = column_cosines * first.pixel_spacing[0]
    lps[:3, 2] = step
    lps[:3, 3] = first.position
    return check_affine(np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, source)


def _check_uniform_spacing(slices: List[_Slice], source: str) -> None:
    normal = np.cross(slices[0].orientation[:3], slices[0].orientation[3:])
    positions = np.array([float(s.position @ normal) for s in slices])
    steps = np.diff(positions)
    if steps.size < 2:
        return
    median = float(np.median(steps))
    worst = float(np.abs(steps - median).max())
    if worst > SPACING_TOLERANCE * median:
        message = (
            f"{source}: slice spacing is not uniform (median {median:.3f} mm, steps {steps.min():.3f}-"
            f"{steps.max():.3f} mm); the volume uses the mean step, so distances along the slice axis "
            "are approximate. Missing slices are the usual cause; check the export."
        )
        warnings.warn(message, NonUniformSpacingWarning, stacklevel=3)
        logger.warning(message)


def _check_decoder(record: _Slice) -> None:
    syntax = record.dataset.file_meta.TransferSyntaxUID
    if not syntax.is_compressed:
        return
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as error:
        raise MissingDecoderError(
            f"DICOM file {record.path}: pixel data uses transfer syntax {syntax.name}, which pydicom "
            f"{pydicom.__version__} cannot decode. Convert the series to an uncompressed transfer syntax."
        ) from error
    if not decoder.is_available:
        hint = _PLUGIN_HINTS.get(str(syntax), "a pydicom pixel data plugin")
        raise MissingDecoderError(
            f"DICOM file {record.path}: pixel data is compressed as {syntax.name} and no installed plugin "
            f"decodes it (missing: {'; '.join(decoder.missing_dependencies)}). Install it with "
            f"`pip install {hint}`."
        )


def _decode_hu(record: _Slice) -> np.ndarray:
    try:
        pixels = record.dataset.pixel_array
    except (RuntimeError, ValueError, EOFError, OSError, AttributeError) as error:
        raise UnreadableFileError(
            f"DICOM file {record.path}: pixel data cannot be decoded ({type(error).__name__}: {error}). The "
            "file is corrupt or truncated; export the series again."
        ) from error
    if record.frame is not None:
        # Dataset.pixel_array caches the decoded frames (pydicom 3), so each file is decoded once.
        frames = int(record.dataset.get("NumberOfFrames") or 1)
        expected = (frames, record.rows, record.columns) if frames > 1 else (record.rows, record.columns)
        if pixels.shape != expected:
            raise GeometryError(
                f"DICOM file {record.path}: pixel data has shape {pixels.shape}, expected {expected} "
                "(frames, rows, columns). The file is corrupt; export the series again."
            )
        pixels = pixels[record.frame] if frames > 1 else pixels
    elif pixels.shape != (record.rows, record.columns):
        raise GeometryError(
            f"DICOM file {record.path}: pixel data has shape {pixels.shape}, expected one frame "
            f"{record.rows}x{record.columns}. A multi-frame file needs NumberOfFrames and functional "
            "groups (Enhanced CT); convert it to NIfTI otherwise."
        )
    slope = record.slope or 1.0
    return pixels.astype(np.float32) * np.float32(slope) + np.float32(record.intercept)


def read_dicom_series(
    folder: Union[str, pathlib.Path],
    series: Union[None, int, str] = None,
    require_volume: bool = True,
    check_values: bool = True,
) -> CTVolume:
    """Read a DICOM CT series from ``folder`` (searched recursively) into a ``CTVolume`` in HU.

    Args:
        folder: folder with one file per slice or Enhanced CT multi-frame files (one slice per
            frame); non-DICOM files and files without pixel data are skipped.
        series: SeriesNumber or SeriesInstanceUID of the series to read, ``"largest"`` for the
            series with most slices, or None when the folder contains a single series.
        require_volume: raise ``GeometryError`` for a single-slice series.
        check_values: raise ``IntensityError`` for NaN or constant volumes.

    Returns:
        A float32 ``(S, H, W)`` HU volume (RescaleSlope/Intercept applied per slice). Its source
        grid is (column, row, slice in ascending position along the slice normal), and
        ``meta["source_files"]`` / ``meta["instance_numbers"]`` give each canonical slice's file
        basename and InstanceNumber; for multi-frame files ``meta["source_frames"]`` gives the
        0-based frame index as well.

    Raises:
        FileNotFoundError, NoDicomSeriesError, AmbiguousSeriesError, UnreadableFileError,
        MissingDecoderError, GeometryError, IntensityError; ``NonUniformSpacingWarning`` is
        emitted when slice steps differ by more than 1 %.
    """
    folder = pathlib.Path(folder)
    all_series = _scan_folder(folder)
    slices = _sorted_unique(_choose_series(all_series, series, folder), folder)
    source = f"DICOM series in {folder}"
    if require_volume and len(slices) < 2:
        raise GeometryError(f"{source} has a single slice, but a volume is needed. Pass the full series.")
    _check_uniform_spacing(slices, source)
    affine = _source_affine(slices, source)

    with _quiet_value_validation():
        for record in slices:
            _check_decoder(record)
        data_krc = np.stack([_decode_hu(record) for record in slices])
    data_ijk = np.transpose(data_krc, (2, 1, 0))
    if check_values:
        check_intensities(data_ijk, source)

    meta = {
        "source_file": folder.name,
        "num_series_in_folder": len(all_series),
        "modality": str(slices[0].dataset.get("Modality", "")),
        "slice_thickness_mm": float(slices[0].dataset.get("SliceThickness") or 0.0) or None,
    }
    volume = CTVolume.from_source_grid(data_ijk, affine, "hu", meta=meta)

    # The source slice axis k is ascending position; map each canonical slice to its file.
    order = volume.source_slice_indices()
    if order is None:
        raise GeometryError(
            f"{source}: the slices are not axial (ImageOrientationPatient {slices[0].orientation.tolist()}). "
            "covid-d2 reads axial chest CT; reformat the series to axial slices."
        )
    volume.meta["source_files"] = [slices[k].path.name for k in order]
    volume.meta["instance_numbers"] = [slices[k].instance_number for k in order]
    if any(record.frame is not None for record in slices):
        volume.meta["source_frames"] = [slices[k].frame for k in order]
    if check_values:
        warn_if_not_hu(volume.array, source)
    return volume
