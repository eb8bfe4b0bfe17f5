"""Each bad CT input raises the documented covid_d2.data error naming the file."""

import pathlib
import shutil
import struct

import nibabel as nib
import numpy as np
import pytest
from pydicom.pixels import get_decoder

from covid_d2.data import (
    AmbiguousSeriesError,
    Case,
    GeometryError,
    IntensityError,
    MissingDecoderError,
    NoDicomSeriesError,
    NonUniformSpacingWarning,
    UnreadableFileError,
    load_case,
    normalize_volume,
    read_dicom_series,
    read_mask_nifti,
    read_nifti,
    save_case,
    write_mask,
)
from covid_d2.data import volume as volume_module
from covid_d2.data.writers import write_volume_nifti
from io_helpers import write_ct_series, write_nifti

HU = np.random.default_rng(1).normal(-400, 300, (8, 9, 5)).astype(np.float32)


@pytest.fixture
def ct_nifti(tmp_path):
    return write_nifti(tmp_path / "ct.nii.gz", HU, np.diag([0.8, 0.8, 2.0, 1.0]))


@pytest.fixture
def p001_three_files(dicom_root, tmp_path):
    folder = tmp_path / "p001"
    folder.mkdir()
    for name in ("P001_1.dcm", "P001_61.dcm", "P001_72.dcm"):
        shutil.copy(dicom_root / "COVID-19" / "P001" / name, folder / name)
    return folder


def test_missing_nifti(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.nii.gz"):
        read_nifti(tmp_path / "absent.nii.gz")


def test_missing_dicom_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent"):
        read_dicom_series(tmp_path / "absent")


def test_missing_case(tmp_path):
    with pytest.raises(FileNotFoundError, match="case.json"):
        load_case(tmp_path)


@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nii"])
def test_truncated_nifti(tmp_path, name):
    path = write_nifti(tmp_path / name, HU, np.eye(4))
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(UnreadableFileError, match=name):
        read_nifti(path)


def test_truncated_dicom(p001_three_files):
    path = p001_three_files / "P001_61.dcm"
    path.write_bytes(path.read_bytes()[:100000])
    with pytest.raises(UnreadableFileError, match="P001_61.dcm"):
        read_dicom_series(p001_three_files)


def test_truncated_dicom_header(p001_three_files):
    path = p001_three_files / "P001_61.dcm"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(UnreadableFileError, match="P001_61.dcm"):
        read_dicom_series(p001_three_files)


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("not a DICOM file")
    with pytest.raises(NoDicomSeriesError, match=str(tmp_path)):
        read_dicom_series(tmp_path)


def test_two_series_none_chosen(tmp_path):
    write_ct_series(tmp_path, [0.0, 2.0, 4.0], series_number=1)
    write_ct_series(tmp_path, [0.0, 1.0, 2.0, 3.0], series_number=2)
    with pytest.raises(AmbiguousSeriesError, match="SeriesNumber 2"):
        read_dicom_series(tmp_path)
    assert read_dicom_series(tmp_path, series=1).shape[0] == 3
    assert read_dicom_series(tmp_path, series="largest").shape[0] == 4


def test_2d_nifti_where_volume_needed(tmp_path):
    path = write_nifti(tmp_path / "slice.nii.gz", HU[:, :, 0], np.eye(4))
    with pytest.raises(GeometryError, match="2D"):
        read_nifti(path)
    assert read_nifti(path, require_volume=False).shape == (1, 9, 8)


def test_nonuniform_dicom_spacing_warns(tmp_path):
    write_ct_series(tmp_path, [0.0, 2.0, 4.0, 8.0, 10.0])
    with pytest.warns(NonUniformSpacingWarning, match="not uniform"):
        volume = read_dicom_series(tmp_path)
    assert volume.shape[0] == 5


def test_zero_dicom_pixel_spacing(tmp_path):
    write_ct_series(tmp_path, [0.0, 2.0, 4.0], pixel_spacing=(0.0, 0.0))
    with pytest.raises(GeometryError, match="zero voxel spacing"):
        read_dicom_series(tmp_path)


def test_zero_nifti_spacing(tmp_path):
    # nibabel refuses to write zero pixdim, so patch the float32 pixdim[3] at header byte 88.
    image = nib.Nifti1Image(HU, np.diag([0.8, 0.8, 2.0, 1.0]))
    image.set_sform(None, code=0)
    path = tmp_path / "flat.nii"
    nib.save(image, str(path))
    header = bytearray(path.read_bytes())
    header[88:92] = struct.pack("<f", 0.0)
    path.write_bytes(bytes(header))
    with pytest.raises(GeometryError, match="zero voxel spacing"):
        read_nifti(path)


def test_duplicate_dicom_positions_dropped(tmp_path):
    write_ct_series(tmp_path, [0.0, 2.0, 2.0, 4.0])
    assert read_dicom_series(tmp_path).shape[0] == 3


def test_mask_shape_mismatch(ct_nifti, tmp_path):
    volume = read_nifti(ct_nifti)
    path = write_nifti(tmp_path / "mask.nii.gz", np.zeros((8, 9, 4), np.uint8), np.diag([0.8, 0.8, 2.0, 1.0]))
    with pytest.raises(GeometryError, match="mask.nii.gz"):
        read_mask_nifti(path, volume)
    with pytest.raises(GeometryError, match="does not match"):
        write_mask(np.zeros((4, 9, 8), np.uint8), volume, tmp_path / "out.nii.gz")


def test_mask_affine_mismatch(ct_nifti, tmp_path):
    volume = read_nifti(ct_nifti)
    path = write_nifti(tmp_path / "mask.nii.gz", np.zeros(HU.shape, np.uint8), np.diag([0.8, 0.8, 2.5, 1.0]))
    with pytest.raises(GeometryError, match="affine"):
        read_mask_nifti(path, volume)


def test_nan_volume(tmp_path):
    data = HU.copy()
    data[2, 3, 1] = np.nan
    with pytest.raises(IntensityError, match="NaN"):
        read_nifti(write_nifti(tmp_path / "nan.nii.gz", data, np.eye(4)))


def test_constant_volume(tmp_path):
    with pytest.raises(IntensityError, match="constant"):
        read_nifti(write_nifti(tmp_path / "flat.nii.gz", np.full(HU.shape, -1000.0, np.float32), np.eye(4)))


def test_missing_jpeg_plugin(p001_three_files, monkeypatch):
    decoder = get_decoder("1.2.840.10008.1.2.4.70")
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setitem(decoder._unavailable, "pylibjpeg", ("pylibjpeg>=2.0", "pylibjpeg-libjpeg>=2.1"))
    with pytest.raises(MissingDecoderError, match="pylibjpeg-libjpeg"):
        read_dicom_series(p001_three_files)


def test_window_needs_hu(ct_nifti):
    volume = read_nifti(ct_nifti).with_array(np.zeros((5, 9, 8), np.uint8) + 1, "minmax_clahe_uint8")
    with pytest.raises(IntensityError, match="needs intensity kind 'hu'"):
        normalize_volume(volume, "hu_window")


def test_save_case_leaves_nothing_on_failure(ct_nifti, tmp_path, monkeypatch):
    volume = read_nifti(ct_nifti)
    case = Case(image=volume, lesion=np.zeros(volume.shape, np.uint8), meta={"case_id": "c1", "source": "user"})

    def fail_on_lesion(array, affine, path):
        if "lesion" in str(path):
            raise OSError("disk full")
        return nib.save(nib.Nifti1Image(array, affine), str(path))

    monkeypatch.setattr("covid_d2.data.writers.write_volume_nifti", fail_on_lesion)
    with pytest.raises(OSError, match="disk full"):
        save_case(case, tmp_path / "cases" / "c1")
    assert list((tmp_path / "cases").iterdir()) == []
    assert volume_module.CASE_JSON == "case.json"


def test_failed_nifti_write_keeps_old_file(tmp_path, monkeypatch):
    path = write_volume_nifti(np.zeros((2, 3, 4), np.uint8), np.eye(4), tmp_path / "mask.nii.gz")
    before = path.read_bytes()

    def fail(self, filename):
        pathlib.Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib.Nifti1Image, "to_filename", fail)
    with pytest.raises(OSError, match="disk full"):
        write_volume_nifti(np.ones((2, 3, 4), np.uint8), np.eye(4), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["mask.nii.gz"]
