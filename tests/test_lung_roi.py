"""Lung-ROI preprocessing on a real case built from Zenodo slices: crop records, atomic writes."""

import json
import logging

import cv2
import numpy as np
import pytest
from detectron2.config import get_cfg

from covid_d2 import add_covid_config
from covid_d2.data.errors import IntensityError
from covid_d2.data.volume import Case, CTVolume, load_case, save_case
from covid_d2.lung import preprocess as preprocess_module
from covid_d2.lung.predict import lung_input_volume
from covid_d2.lung.preprocess import LUNG_FULL_FILE, preprocess_case
from covid_d2.lung.roi import ROI_JSON, RoiCrop, compute_roi, paste_roi, read_roi_json

CASE_FILES = [f"{n:04d}.png" for n in range(200, 212)]


def _lung_cfg():
    cfg = get_cfg()
    add_covid_config(cfg)
    return cfg


@pytest.fixture(scope="module")
def zenodo_case(zenodo_root, tmp_path_factory):
    """Case folder of 12 consecutive slices of Zenodo case_02, superior slice first."""
    folder = zenodo_root / "case_02"
    names = CASE_FILES[::-1]  # the files run inferior -> superior
    stack = {kind: np.stack([cv2.imread(str(folder / kind / n), cv2.IMREAD_GRAYSCALE)
                             for n in names]) for kind in ("ct", "lung_mask", "infection_mask")}
    affine_ijk = np.diag([-1.4, -1.4, -5.0, 1.0])  # (column, row, slice) -> L, P, I
    volume = CTVolume.from_source_grid(stack["ct"].transpose(2, 1, 0), affine_ijk,
                                       "minmax_clahe_uint8", meta={"source_file": "case_02"})
    case = Case(image=volume, lesion=(stack["infection_mask"] > 127).astype(np.uint8),
                lung=(stack["lung_mask"] > 127).astype(np.uint8),
                meta={"case_id": "zenodo_case_02_part", "source": "test", "slice_gaps": [5],
                      "slice_labels": [1] * len(names), "source_files": names,
                      "spacing_known": False})
    case_dir = tmp_path_factory.mktemp("cases") / "zenodo_case_02_part"
    save_case(case, case_dir)
    return case_dir


def test_crop_maps_back_voxel_exactly(zenodo_case, tmp_path):
    cfg = _lung_cfg()
    record = preprocess_case(zenodo_case, tmp_path, cfg, use_gt_lungs=True)
    assert record["status"] == "ok"

    original = load_case(zenodo_case)
    roi = load_case(tmp_path / zenodo_case.name)
    crop = read_roi_json(tmp_path / zenodo_case.name)
    assert crop.full_shape == original.image.shape
    np.testing.assert_array_equal(paste_roi(roi.lung, crop), original.lung)
    np.testing.assert_array_equal(paste_roi(roi.lesion, crop), original.lesion)

    _, dilated = compute_roi(original.lung, original.image.spacing, cfg.LUNG.ROI.DILATION_MM,
                             cfg.LUNG.ROI.MARGIN_PX, spacing_known=False)
    expected = np.where(dilated, original.image.array, cfg.LUNG.ROI.BACKGROUND_UINT8)
    np.testing.assert_array_equal(paste_roi(roi.image.array, crop), expected)


def test_crop_affine_keeps_world_positions(zenodo_case, tmp_path):
    preprocess_case(zenodo_case, tmp_path, _lung_cfg(), use_gt_lungs=True)
    original = load_case(zenodo_case)
    roi = load_case(tmp_path / zenodo_case.name)
    crop = read_roi_json(tmp_path / zenodo_case.name)
    corner_roi = roi.image.affine @ np.array([0, 0, 0, 1.0])
    corner_full = original.image.affine @ np.array([crop.slices[0], crop.rows[0], crop.cols[0], 1.0])
    np.testing.assert_allclose(corner_roi, corner_full)


def test_roi_outputs_lung_full_and_record(zenodo_case, tmp_path):
    preprocess_case(zenodo_case, tmp_path, _lung_cfg(), use_gt_lungs=True)
    case_out = tmp_path / zenodo_case.name
    assert (case_out / LUNG_FULL_FILE).is_file()
    record = json.loads((case_out / ROI_JSON).read_text())
    assert record["lung_source"] == "ground_truth"
    assert record["lung_volume_l"] is None  # spacing of the Zenodo PNGs is unknown
    meta = json.loads((case_out / "case.json").read_text())
    assert meta["roi_of"] == zenodo_case.name
    assert len(meta["slice_labels"]) == meta["shape"][0]


def test_finished_case_is_skipped(zenodo_case, tmp_path):
    cfg = _lung_cfg()
    preprocess_case(zenodo_case, tmp_path, cfg, use_gt_lungs=True)
    assert preprocess_case(zenodo_case, tmp_path, cfg, use_gt_lungs=True)["status"] == "skipped"
    again = preprocess_case(zenodo_case, tmp_path, cfg, use_gt_lungs=True, overwrite=True)
    assert again["status"] == "ok"


def test_failed_write_leaves_no_partial_case(zenodo_case, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(preprocess_module, "write_roi_json", fail)
    with pytest.raises(OSError, match="disk full"):
        preprocess_case(zenodo_case, tmp_path, _lung_cfg(), use_gt_lungs=True)
    assert list(tmp_path.iterdir()) == []


def test_no_lung_gives_empty_record(zenodo_case, tmp_path, caplog):
    def segment_nothing(volume):
        return np.zeros(volume.shape, dtype=np.uint8), {}

    with caplog.at_level(logging.WARNING):
        record = preprocess_case(zenodo_case, tmp_path, _lung_cfg(), segment=segment_nothing)
    assert record["status"] == "no_lung"
    assert "no lung found" in caplog.text
    crop = read_roi_json(tmp_path / zenodo_case.name)
    assert crop.is_empty
    assert not (tmp_path / zenodo_case.name / "image.nii.gz").exists()


def test_compute_roi_margin_and_clipping():
    lung = np.zeros((5, 40, 40), dtype=np.uint8)
    lung[1:3, 10:20, 5:15] = 1
    crop, dilated = compute_roi(lung, (2.0, 1.0, 1.0), dilation_mm=2.0, margin_px=4)
    assert crop == RoiCrop((1, 3), (4, 26), (0, 21), (5, 40, 40))
    assert dilated[1, 8, 10]
    assert not dilated[1, 7, 10]


def test_uint8_volume_refused_by_hu_model(zenodo_case):
    volume = load_case(zenodo_case).image
    with pytest.raises(IntensityError, match="cannot be fed"):
        lung_input_volume(volume, expected_kind="hu")
    assert lung_input_volume(volume, "minmax_clahe_uint8").dtype == np.uint8
