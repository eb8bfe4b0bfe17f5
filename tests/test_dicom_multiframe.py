"""Enhanced CT multi-frame files read like the single-frame series they were made from."""

import shutil

import numpy as np
import pydicom
import pytest

from covid_d2.data import read_dicom_series
from covid_d2.data.errors import GeometryError
from io_helpers import write_enhanced_ct

# Four P001 slices 2 mm apart (z -88.1 to -94.1 mm); their file names are not in position order.
P001_FILES = ("P001_63.dcm", "P001_60.dcm", "P001_64.dcm", "P001_62.dcm")


@pytest.fixture()
def single_and_multi_frame(dicom_root, tmp_path):
    """The four P001 files as a single-frame series, and the same slices as one Enhanced CT file."""
    single = tmp_path / "single"
    single.mkdir()
    frames, positions, intercepts = [], [], []
    for offset, name in enumerate(P001_FILES):
        source = dicom_root / "COVID-19" / "P001" / name
        shutil.copy(source, single / name)
        ds = pydicom.dcmread(str(source))
        # Shift the stored values per frame and compensate in the frame's own rescale intercept.
        frames.append(ds.pixel_array.astype(np.uint16) + 10 * offset)
        positions.append([float(v) for v in ds.ImagePositionPatient])
        intercepts.append(float(ds.RescaleIntercept) - 10 * offset)
        orientation, spacing = ds.ImageOrientationPatient, ds.PixelSpacing
    multi = tmp_path / "multi"
    multi.mkdir()
    write_enhanced_ct(multi / "enhanced.dcm", frames, positions, orientation, spacing, intercepts)
    return single, multi


def test_enhanced_ct_matches_series(single_and_multi_frame):
    single, multi = single_and_multi_frame
    expected = read_dicom_series(single)
    volume = read_dicom_series(multi)
    assert volume.shape == expected.shape == (4, 512, 512)
    np.testing.assert_array_equal(volume.array, expected.array)
    np.testing.assert_allclose(volume.original_affine, expected.original_affine)
    np.testing.assert_allclose(volume.spacing, expected.spacing)
    assert volume.meta["source_files"] == ["enhanced.dcm"] * 4
    # Canonical slice order maps back to the frames written in file-name order 63, 60, 64, 62.
    by_position = {name: frame for frame, name in enumerate(P001_FILES)}
    assert volume.meta["source_frames"] == [by_position[name] for name in expected.meta["source_files"]]
    assert "source_frames" not in expected.meta


def test_enhanced_ct_frame_without_position(single_and_multi_frame):
    _, multi = single_and_multi_frame
    path = multi / "enhanced.dcm"
    ds = pydicom.dcmread(str(path))
    del ds.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence
    ds.save_as(path)
    with pytest.raises(GeometryError, match=r"enhanced.dcm, frame 3 of 4.*ImagePositionPatient"):
        read_dicom_series(multi)


def test_multi_frame_without_groups(single_and_multi_frame):
    _, multi = single_and_multi_frame
    path = multi / "enhanced.dcm"
    ds = pydicom.dcmread(str(path))
    del ds.PerFrameFunctionalGroupsSequence
    del ds.SharedFunctionalGroupsSequence
    ds.ImagePositionPatient = [0.0, 0.0, 0.0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.save_as(path)
    with pytest.raises(GeometryError, match=r"enhanced.dcm contains 4 frames but no functional groups"):
        read_dicom_series(multi)
