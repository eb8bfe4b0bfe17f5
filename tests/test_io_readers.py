"""Readers, writers and converters of covid_d2.data on synthetic and shared data."""

import json
import random
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from scipy import ndimage

from covid_d2.data import (
    detect_slice_gaps,
    load_case,
    normalize_from_config,
    read_dicom_series,
    read_mask_nifti,
    read_nifti,
    save_case,
    window_hu,
    write_mask,
)
from covid_d2.data.converters import covid_ct_md, infnet, zenodo
from covid_d2.data.intensity import minmax_clahe
from io_helpers import write_nifti

CANONICAL = ("I", "P", "L")


@pytest.fixture(scope="module")
def p001(shared_data):
    return covid_ct_md.convert_case(shared_data, "covid_ct_md_P001")


@pytest.fixture(scope="module")
def zenodo_case(shared_data):
    return zenodo.convert_case(shared_data, "zenodo_case_06")


def lps_flipped_nifti(tmp_path):
    """Source axes i -> superior, j -> patient left, k -> posterior; spacing 2.5, 0.7, 0.9 mm."""
    data = np.random.default_rng(0).normal(-500, 300, (6, 10, 8)).astype(np.float32)
    affine = np.array([[0.0, -0.7, 0.0, 30.0], [0.0, 0.0, -0.9, 12.0], [2.5, 0.0, 0.0, -40.0], [0, 0, 0, 1]])
    return write_nifti(tmp_path / "lps.nii.gz", data, affine), data, affine


def test_nifti_noncanonical_orientation(tmp_path):
    path, data, affine = lps_flipped_nifti(tmp_path)
    volume = read_nifti(path)
    assert nib.aff2axcodes(volume.affine) == CANONICAL
    assert volume.shape == (6, 8, 10)
    assert np.allclose(volume.spacing, (2.5, 0.9, 0.7))
    # i runs inferior -> superior, so i = 5 is canonical slice 0; j is the column, k the row.
    for i, expected_slice in ((5, 0), (0, 5)):
        world = affine @ [i, 3, 2, 1]
        s, r, c = np.rint(np.linalg.solve(volume.affine, world)[:3]).astype(int)
        assert (s, r, c) == (expected_slice, 2, 3)
        assert volume.array[s, r, c] == data[i, 3, 2]


def test_nifti_mask_overlays_source(tmp_path):
    path, data, affine = lps_flipped_nifti(tmp_path)
    volume = read_nifti(path)
    mask_path = write_mask(volume.array < -500, volume, tmp_path / "mask.nii.gz")
    written = nib.load(str(mask_path))
    assert np.array_equal(np.asarray(written.dataobj), (data < -500).astype(np.uint8))
    assert np.allclose(written.affine, affine)
    assert np.array_equal(read_mask_nifti(mask_path, volume), (volume.array < -500).astype(np.uint8))


def test_nifti_applies_scaling(tmp_path):
    image = nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4) * 100, np.eye(4))
    image.header.set_slope_inter(2.0, -1024.0)
    nib.save(image, str(tmp_path / "scaled.nii"))
    volume = read_nifti(tmp_path / "scaled.nii")
    assert volume.array.min() == -1024.0
    assert volume.array.max() == 2300 * 2.0 - 1024.0


def test_p001_geometry(p001):
    volume = p001.image
    assert volume.shape == (148, 512, 512)
    assert np.allclose(volume.spacing, (2.0, 0.748046875, 0.748046875))
    assert nib.aff2axcodes(volume.affine) == CANONICAL
    assert volume.meta["instance_numbers"] == list(range(1, 149))


def test_p001_slice_zero_at_its_dicom_position(p001, dicom_root):
    volume = p001.image
    for index in (0, 147):
        ds = pydicom.dcmread(dicom_root / "COVID-19" / "P001" / volume.meta["source_files"][index])
        ras = np.array([-1.0, -1.0, 1.0]) * np.array([float(v) for v in ds.ImagePositionPatient])
        assert np.allclose(volume.affine @ [index, 0, 0, 1], [*ras, 1], atol=1e-3)


def test_p001_round_trip_mask(p001, tmp_path):
    volume = p001.image
    lung = volume.array < -320
    written = nib.load(str(write_mask(lung, volume, tmp_path / "lung.nii.gz")))
    assert np.allclose(written.affine, volume.original_affine)
    assert np.array_equal(read_mask_nifti(tmp_path / "lung.nii.gz", volume), lung.astype(np.uint8))


def test_p001_case_round_trip(p001, tmp_path):
    save_case(p001, tmp_path / "p001")
    loaded = load_case(tmp_path / "p001")
    assert np.array_equal(loaded.image.array, p001.image.array)
    assert np.allclose(loaded.image.affine, p001.image.affine)
    assert np.allclose(loaded.image.original_affine, p001.image.original_affine)
    assert loaded.meta["slice_labels"] == p001.meta["slice_labels"]
    assert loaded.lesion is None


def test_p001_labels_on_lung_slices(p001):
    labels = np.array(p001.meta["slice_labels"])
    assert labels.sum() == 80
    # Lung = air below -320 HU that does not touch the image border (outside-body air does).
    fractions = []
    for plane in p001.image.array[labels == 1]:
        components, _ = ndimage.label(plane < -320)
        border = np.unique(np.r_[components[0], components[-1], components[:, 0], components[:, -1]])
        fractions.append(np.isin(components, border, invert=True).mean())
    assert min(fractions) > 0.05


def test_p001_lobe_labels_per_slice(p001):
    lobes = np.array(p001.meta["lobe_labels"])
    assert lobes.shape == (148, 5)
    assert np.array_equal(lobes.any(axis=1).astype(int), np.array(p001.meta["slice_labels"]))


def test_dicom_shuffled_names_same_volume(p001, dicom_root, tmp_path):
    files = sorted((dicom_root / "COVID-19" / "P001").glob("*.dcm"))
    names = [f"x{n:04d}.dcm" for n in range(len(files))]
    random.Random(3).shuffle(names)
    for source, name in zip(files, names):
        shutil.copy(source, tmp_path / name)
    volume = read_dicom_series(tmp_path)
    assert np.array_equal(volume.array, p001.image.array)
    assert np.allclose(volume.affine, p001.image.affine)


def test_normal002_reads_as_healthy(shared_data, caplog):
    case = covid_ct_md.convert_case(shared_data, "covid_ct_md_normal002")
    assert case.image.shape == (167, 512, 512)
    assert case.meta["diagnosis"] == "normal"
    assert sum(case.meta["slice_labels"]) == 0
    assert "Invalid value for VR UI" not in caplog.text


def test_zenodo_order_superior_first(zenodo_case, zenodo_root):
    files = zenodo_case.meta["source_files"]
    # slices.csv lists case_06 inferior -> superior as files 0626 .. 0695.
    assert files[0] == "0695.png"
    assert files[-1] == "0626.png"
    assert zenodo_case.meta["spacing_known"] is False


def test_zenodo_round_trip_mask(zenodo_case, zenodo_root, tmp_path):
    volume = zenodo_case.image
    written = nib.load(str(write_mask(zenodo_case.lesion, volume, tmp_path / "lesion.nii.gz")))
    data = np.asarray(written.dataobj)
    for k in (0, 35, 69):
        name = f"{626 + k:04d}.png"
        source = np.asarray(Image.open(zenodo_root / "case_06" / "infection_mask" / name)) > 0
        assert np.array_equal(data[:, :, k].T, source.astype(np.uint8)), name
    assert np.allclose(written.affine, volume.original_affine)


def test_zenodo_case_round_trip(zenodo_case, tmp_path):
    save_case(zenodo_case, tmp_path / "z")
    loaded = load_case(tmp_path / "z")
    assert np.array_equal(loaded.lesion, zenodo_case.lesion)
    assert np.array_equal(loaded.lung, zenodo_case.lung)
    assert np.array_equal(loaded.image.array, zenodo_case.image.array)
    assert loaded.meta["slice_gaps"] == zenodo_case.meta["slice_gaps"]
    assert json.loads((tmp_path / "z" / "case.json").read_text())["spacing_known"] is False


def test_gap_detected_where_slices_removed(zenodo_case):
    assert zenodo_case.meta["slice_gaps"] == []
    keep = np.r_[0:30, 34:70]
    gaps = detect_slice_gaps(zenodo_case.image.array[keep], zenodo_case.lung[keep])
    assert gaps == [29]


def test_infnet_flipped_to_radiological(shared_data, infnet_root, tmp_path):
    case = infnet.convert_case(shared_data, "infnet_003")
    jpg = np.asarray(Image.open(infnet_root / infnet.IMAGES / "3.jpg"))
    assert case.image.shape == (1, *jpg.shape)
    assert np.array_equal(case.image.array[0], jpg[::-1])
    assert case.meta["isolated_slices"] is True
    assert set(np.unique(case.extra_masks["lesion_multiclass"])) <= {0, 1, 2}

    written = nib.load(str(write_mask(case.lesion, case.image, tmp_path / "lesion.nii.gz")))
    gt = np.asarray(Image.open(infnet_root / infnet.BINARY_GT / "3.png")) > 0
    assert np.array_equal(np.asarray(written.dataobj)[:, :, 0].T, gt.astype(np.uint8))
    save_case(case, tmp_path / "case")
    assert np.array_equal(load_case(tmp_path / "case").extra_masks["lesion_multiclass"], case.extra_masks["lesion_multiclass"])


def test_window_hu_lung_window():
    assert window_hu(np.array([-1350.0, -600.0, 150.0, 3000.0])).tolist() == [0, 128, 255, 255]


def test_minmax_clahe_per_slice():
    array = np.stack([np.linspace(-1000, 400, 64 * 64).reshape(64, 64), np.full((64, 64), 7.0)])
    output = minmax_clahe(array)
    assert output.dtype == np.uint8
    assert output[0].max() > 200
    assert output[1].max() == 0


def test_normalize_from_config(tmp_path):
    from detectron2.config import get_cfg

    from covid_d2 import add_covid_config

    cfg = get_cfg()
    add_covid_config(cfg)
    path, _, _ = lps_flipped_nifti(tmp_path)
    volume = read_nifti(path)
    assert normalize_from_config(volume, cfg).intensity_kind == "minmax_clahe_uint8"
    cfg.INPUT.CT.NORMALIZATION = "hu_window"
    windowed = normalize_from_config(volume, cfg)
    assert windowed.intensity_kind == "uint8_windowed"
    assert np.array_equal(windowed.array, window_hu(volume.array))
