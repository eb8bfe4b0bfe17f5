"""tools/infer.py on the real P001 DICOM volume: output geometry and report numbers.

The detector and lung U-Net have random weights (saved as local checkpoints): the test checks
the pipeline and its bookkeeping, not accuracy. The detector runs at 128 px to stay fast.
"""

import csv
import json
import pathlib
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from covid_d2.data.dicom import read_dicom_series
from covid_d2.data.writers import write_volume_nifti
from covid_d2.engine import load_covid_config
from covid_d2.lung.classical import classical_lung_mask

REPO = pathlib.Path(__file__).resolve().parent.parent
INFER = REPO / "tools" / "infer.py"
DETECTOR_CONFIG = REPO / "configs" / "lesion" / "cpu" / "st_R18.yaml"
LUNG_CONFIG = REPO / "configs" / "lung" / "axial_cpu.yaml"
FAST_DETECTOR = ["INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
                 "MODEL.RPN.POST_NMS_TOPK_TEST", "20"]


def _save_random_model(config, path, opts=()):
    torch.manual_seed(0)
    cfg = load_covid_config(str(config), list(opts) + ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    DetectionCheckpointer(model, save_dir=str(path.parent)).save(path.stem)
    return path


@pytest.fixture(scope="module")
def p001(dicom_root):
    return dicom_root / "COVID-19" / "P001"


@pytest.fixture(scope="module")
def inference_run(p001, tmp_path_factory):
    work = tmp_path_factory.mktemp("infer")
    detector = _save_random_model(DETECTOR_CONFIG, work / "detector.pth")
    volume = read_dicom_series(p001)
    lung = classical_lung_mask(volume.array)
    lung_path = work / "p001_lung.nii.gz"
    write_volume_nifti(volume.to_original_grid(lung), volume.original_affine, lung_path)

    output = work / "out"
    command = [sys.executable, str(INFER), "--input", str(p001), "--output-dir", str(output),
               "--config-file", str(DETECTOR_CONFIG), "--weights", str(detector),
               "--lung-mask", str(lung_path), "--score-thresh", "0.0", "--noprogress",
               *FAST_DETECTOR]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return {"output": output / "P001", "summary": output / "summary.csv", "volume": volume,
            "lung": lung, "log": result.stderr}


def test_outputs_overlay_the_input(inference_run):
    volume = inference_run["volume"]
    for name in ("lesions.nii.gz", "lung.nii.gz"):
        image = nib.load(str(inference_run["output"] / name))
        assert image.shape == tuple(volume.original_shape), name
        np.testing.assert_allclose(image.affine, volume.original_affine, atol=1e-4)


def test_lung_output_is_the_given_mask(inference_run):
    volume = inference_run["volume"]
    written = np.asarray(nib.load(str(inference_run["output"] / "lung.nii.gz")).dataobj)
    np.testing.assert_array_equal(written, volume.to_original_grid(inference_run["lung"]))


def test_report_numbers_match_the_mask(inference_run):
    volume = inference_run["volume"]
    report = json.loads((inference_run["output"] / "report.json").read_text())
    labels = np.asarray(nib.load(str(inference_run["output"] / "lesions.nii.gz")).dataobj)
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0

    assert report["lesion_count"] > 0, "a random detector at score 0 should report lesions"
    assert report["lesion_count"] == len(np.unique(labels)) - 1
    assert report["lesion_voxels"] == int(np.count_nonzero(labels))
    assert report["lesion_volume_ml"] == pytest.approx(report["lesion_voxels"] * voxel_ml, abs=1e-2)
    assert report["lung_voxels"] == int(inference_run["lung"].sum())
    expected_involvement = 100.0 * report["lesion_voxels"] / report["lung_voxels"]
    assert report["involvement_percent"] == pytest.approx(expected_involvement, abs=1e-2)
    for lesion in report["lesions"][:20]:
        assert lesion["voxels"] == int(np.count_nonzero(labels == lesion["label"]))
        assert lesion["volume_ml"] == pytest.approx(lesion["voxels"] * voxel_ml, abs=1e-3)


def test_lesions_stay_inside_the_lung_roi(inference_run):
    labels = np.asarray(nib.load(str(inference_run["output"] / "lesions.nii.gz")).dataobj)
    lung = inference_run["volume"].to_original_grid(inference_run["lung"])
    outside = (labels > 0) & (lung == 0)
    assert outside.sum() < 0.2 * max(1, (labels > 0).sum())


def test_summary_csv_and_overlays(inference_run):
    with open(inference_run["summary"]) as f:
        rows = list(csv.DictReader(f))
    assert [row["scan_id"] for row in rows] == ["P001"]
    assert int(rows[0]["slices"]) == 148
    overlays = sorted(inference_run["output"].glob("overlay_*.png"))
    assert 1 <= len(overlays) <= 3


def test_no_patient_tags_in_outputs(inference_run, p001):
    import pydicom

    header = pydicom.dcmread(str(next(p001.glob("*.dcm"))), stop_before_pixels=True)
    identifiers = [str(header.get(tag, "")) for tag in
                   ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")]
    text = (inference_run["output"] / "report.json").read_text() + inference_run["log"]
    text += inference_run["summary"].read_text()
    for identifier in identifiers:
        assert identifier and identifier not in text


def test_lesions_split_at_slice_gaps():
    from covid_d2.inference import label_lesions_3d

    union = np.zeros((5, 8, 8), dtype=bool)
    union[1:4, 2:5, 2:5] = True  # one blob over slices 1, 2 and 3
    union[4, 6, 6] = True  # a second blob, touching nothing

    labels, count = label_lesions_3d(union)
    assert count == 2
    assert len(np.unique(labels[1:4][union[1:4]])) == 1

    # Slices 2 and 3 are not adjacent in the body: the blob splits there.
    labels, count = label_lesions_3d(union, gaps=[2])
    assert count == 3
    assert labels[1, 3, 3] == labels[2, 3, 3] != labels[3, 3, 3]
    assert set(np.unique(labels)) == {0, 1, 2, 3}

    # Isolated slices: every slice is its own lesion. Gaps outside the volume are ignored.
    labels, count = label_lesions_3d(union, gaps=[-1, 7], isolated=True)
    assert count == 4
    assert len({int(labels[index, 3, 3]) for index in (1, 2, 3)}) == 3


def _run_infer(*arguments):
    command = [sys.executable, str(INFER), "--config-file", str(DETECTOR_CONFIG), "--noprogress",
               *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_missing_input_and_weights_rejected(tmp_path):
    weights = tmp_path / "detector.pth"
    weights.write_bytes(b"")
    lung = tmp_path / "lung.pth"
    lung.write_bytes(b"")
    missing_input = _run_infer("--input", str(tmp_path / "absent"), "--output-dir", str(tmp_path / "out"),
                               "--weights", str(weights), "--lung-axial-weights", str(lung))
    assert missing_input.returncode == 2
    assert f"--input {tmp_path / 'absent'} not found" in missing_input.stderr
    assert "Traceback" not in missing_input.stderr
    assert not (tmp_path / "out").exists()

    missing_weights = _run_infer("--input", str(tmp_path), "--output-dir", str(tmp_path / "out"),
                                 "--weights", str(tmp_path / "none.pth"), "--lung-axial-weights", str(lung))
    assert missing_weights.returncode == 2
    assert f"--weights {tmp_path / 'none.pth'} not found" in missing_weights.stderr
    assert "Traceback" not in missing_weights.stderr


def test_empty_folder_clear_error(tmp_path):
    detector = _save_random_model(DETECTOR_CONFIG, tmp_path / "detector.pth")
    empty = tmp_path / "empty"
    empty.mkdir()
    mask = tmp_path / "lung.nii.gz"
    mask.write_bytes(b"")
    result = _run_infer("--input", str(empty), "--output-dir", str(tmp_path / "out"),
                        "--weights", str(detector), "--lung-mask", str(mask))
    assert result.returncode == 1
    assert f"Failed to read {empty}: No DICOM image with pixel data found in {empty}" in result.stderr
    assert "Traceback" not in result.stderr
