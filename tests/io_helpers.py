"""Synthetic NIfTI and DICOM inputs for the covid_d2.data tests."""

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def write_nifti(path, data, affine):
    nib.save(nib.Nifti1Image(np.asarray(data), np.asarray(affine, dtype=np.float64)), str(path))
    return path


def _ct_dataset(sop_class, series_uid, series_number, instance_number):
    """Return a CT dataset with its file meta and series identity, uncompressed."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.Modality = "CT"
    ds.InstanceNumber = instance_number
    return ds


def write_ct_series(folder, positions_z, series_uid=None, series_number=1, pixel_spacing=(0.8, 0.8), size=16, seed=0):
    """Write an uncompressed axial CT series (one file per z position, mm) with random HU."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    rng = np.random.default_rng(seed)
    for index, z in enumerate(positions_z):
        ds = _ct_dataset(CTImageStorage, series_uid, series_number, index + 1)
        ds.ImagePositionPatient = [-6.0, -6.0, float(z)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = list(pixel_spacing)
        ds.Rows = ds.Columns = size
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.RescaleSlope = 1
        ds.RescaleIntercept = -1024
        ds.PixelData = rng.integers(0, 1500, (size, size), dtype=np.uint16).tobytes()
        ds.save_as(folder / f"s{series_number}_{index:03d}.dcm", enforce_file_format=True)
    return folder


def write_enhanced_ct(path, frames, positions, orientation, pixel_spacing, intercepts, series_uid=None):
    """Write one uncompressed Enhanced CT file: ``frames`` (N, rows, columns) uint16 stored values.

    Orientation and pixel spacing go into the shared functional groups. Each frame's position
    and rescale intercept (slope 1) go into its per-frame functional group, in the order given.
    """
    from pydicom.sequence import Sequence
    from pydicom.uid import EnhancedCTImageStorage

    def item(**values):
        element = pydicom.Dataset()
        for key, value in values.items():
            setattr(element, key, value)
        return Sequence([element])

    frames = np.asarray(frames, dtype=np.uint16)
    ds = _ct_dataset(EnhancedCTImageStorage, series_uid or generate_uid(), 1, 1)
    ds.NumberOfFrames = len(frames)
    ds.Rows, ds.Columns = frames.shape[1:]
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    shared = pydicom.Dataset()
    shared.PlaneOrientationSequence = item(ImageOrientationPatient=[float(v) for v in orientation])
    shared.PixelMeasuresSequence = item(PixelSpacing=[float(v) for v in pixel_spacing])
    ds.SharedFunctionalGroupsSequence = pydicom.sequence.Sequence([shared])
    per_frame = []
    for position, intercept in zip(positions, intercepts):
        group = pydicom.Dataset()
        group.PlanePositionSequence = item(ImagePositionPatient=[float(v) for v in position])
        group.PixelValueTransformationSequence = item(RescaleSlope=1.0, RescaleIntercept=float(intercept),
                                                      RescaleType="HU")
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = pydicom.sequence.Sequence(per_frame)
    ds.PixelData = frames.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path
