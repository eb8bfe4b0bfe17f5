"""Exceptions and warnings raised by the covid-d2 CT readers and writers.

Every error derives from ``VolumeError`` (a ``ValueError``), except a missing input path, which
raises the built-in ``FileNotFoundError``. Messages name the file or folder, the offending value
and what to do about it.
"""


class VolumeError(ValueError):
    """Base class of the CT input errors of :mod:`covid_d2.data`."""


class UnreadableFileError(VolumeError):
    """A NIfTI, DICOM or image file exists but cannot be parsed (corrupt or truncated)."""


class NoDicomSeriesError(VolumeError):
    """A folder contains no DICOM image with pixel data."""


class AmbiguousSeriesError(VolumeError):
    """A folder contains several DICOM series and the caller chose none of them."""


class MissingDecoderError(VolumeError):
    """Compressed DICOM pixel data whose decoding plugin is not installed."""


class GeometryError(VolumeError):
    """Invalid geometry: wrong dimensionality, zero spacing, or shape/affine mismatch."""


class IntensityError(VolumeError):
    """Invalid voxel values: NaN/inf, a constant volume, or the wrong intensity kind."""


class NonUniformSpacingWarning(UserWarning):
    """Slice positions of a DICOM series are not equally spaced."""
