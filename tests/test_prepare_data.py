"""tools/prepare_data.py: case folders, skip/overwrite, splits by case, user scans."""

import importlib.util
import json
import pathlib

import numpy as np

from covid_d2.data import load_case
from covid_d2.data.splits import build_splits
from io_helpers import write_ct_series, write_nifti

TOOL = pathlib.Path(__file__).resolve().parent.parent / "tools" / "prepare_data.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("prepare_data", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prepare_infnet_cases(shared_data, tmp_path, caplog):
    tool = load_tool()
    assert tool.main(["--data-root", str(shared_data), "--output-dir", str(tmp_path), "--datasets", "infnet", "--noprogress"]) == 0
    splits = json.loads((tmp_path / "splits.json").read_text())
    assert len(splits["train"]) == 50
    assert splits["val"] == []
    case = load_case(tmp_path / "infnet_067")
    assert case.image.shape[0] == 1
    assert "infnet_067: 1 slices" in caplog.text


def test_prepare_skips_then_overwrites(shared_data, tmp_path, caplog):
    tool = load_tool()
    args = ["--data-root", str(shared_data), "--output-dir", str(tmp_path), "--datasets", "infnet", "--noprogress"]
    tool.main(args)
    stamp = (tmp_path / "infnet_000" / "case.json").stat().st_mtime_ns
    caplog.clear()
    tool.main(args)
    assert "Wrote 0 cases, skipped 50" in caplog.text
    assert (tmp_path / "infnet_000" / "case.json").stat().st_mtime_ns == stamp
    tool.main(args + ["--overwrite"])
    assert (tmp_path / "infnet_000" / "case.json").stat().st_mtime_ns != stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_splits_by_case():
    sources = {f"zenodo_case_0{i}": "zenodo" for i in range(1, 9)}
    sources.update({"infnet_000": "infnet", "covid_ct_md_P001": "covid_ct_md"})
    splits = build_splits(sources, seed=0)
    assert len(splits["val"]) == 2
    assert set(splits["train"]) & set(splits["val"]) == set()
    assert "infnet_000" in splits["train"]
    assert splits["test"] == ["covid_ct_md_P001"]
    assert build_splits(sources, seed=0) == splits


def test_prepare_user_nifti_with_mask(tmp_path):
    tool = load_tool()
    hu = np.random.default_rng(0).normal(-400, 300, (12, 10, 4)).astype(np.float32)
    affine = np.diag([-0.7, 0.7, 3.0, 1.0])
    write_nifti(tmp_path / "scan.nii.gz", hu, affine)
    write_nifti(tmp_path / "lesion.nii.gz", (hu > 0).astype(np.uint8), affine)
    out = tmp_path / "cases"
    tool.main(["--output-dir", str(out), "--input", str(tmp_path / "scan.nii.gz"), "--case-id", "patient_a",
               "--lesion", str(tmp_path / "lesion.nii.gz"), "--noprogress"])
    case = load_case(out / "patient_a")
    assert np.array_equal(case.image.to_original_grid(case.lesion), (hu > 0).astype(np.uint8))
    assert json.loads((out / "splits.json").read_text())["test"] == ["patient_a"]


def test_prepare_user_dicom_folder(tmp_path):
    tool = load_tool()
    write_ct_series(tmp_path / "series", [10.0, 12.0, 14.0])
    tool.main(["--output-dir", str(tmp_path / "cases"), "--input", str(tmp_path / "series"), "--case-id", "b", "--noprogress"])
    case = load_case(tmp_path / "cases" / "b")
    assert case.image.shape == (3, 16, 16)
    assert np.allclose(case.image.spacing, (2.0, 0.8, 0.8))
