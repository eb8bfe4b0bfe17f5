"""Synthetic NIfTI and DICOM inputs for the covid_d2.data tests."""

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def write_nifti(path, data, affine):
    nib.save(nib.Nifti1Image(np.asarray(data), np.asarray(affine, dtype=np.float64)), str(path))
    return path


def write_ct_series(folder, positions_z, series_uid=None, series_number=1, pixel_spacing=(0.8, 0.8), size=16, seed=0):
    """Write an uncompressed axial CT series (one file per z position, mm) with random HU."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    rng = np.random.default_rng(seed)
    for index, z in enumerate(positions_z):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.Modality = "CT"
        ds.InstanceNumber = index + 1
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
