"""COCO export, stage labels and registration of the three-slice lesion datasets, on shared data."""

import json
import shutil

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
from pycocotools.coco import COCO

from covid_d2.data.coco_export import ExportOptions, export_cases, lesion_components, neighbor_indices
from covid_d2.data.converters import infnet, zenodo
from covid_d2.data.datasets import DATASETS_ENV, register_all_covid_lesion, register_covid_lesion_instances
from covid_d2.data.stages import StageLabeller, proxy_stage_from_involvement, read_stage_csv
from covid_d2.data.volume import load_case, save_case
from detectron2.data import DatasetCatalog, MetadataCatalog

ZENODO_CASE = "zenodo_case_05"  # 116 slices; slices 4 and 5 are not adjacent (one gap)
INFNET_CASE = "infnet_000"
HEALTHY_CASE = "healthy_copy"
STAGE_ROWS = [
    "case_id,slice_index,lesion_index,stage",
    f"{ZENODO_CASE},,,2",
    f"{ZENODO_CASE},20,,3",
    f"{ZENODO_CASE},30,0,1",
]


@pytest.fixture(scope="module")
def export(tmp_path_factory, shared_data):
    """Cases root with a Zenodo case, an Inf-Net slice and a lesion-free 'normal' copy, exported once."""
    root = tmp_path_factory.mktemp("lesion_export")
    cases = root / "cases"
    save_case(zenodo.convert_case(shared_data, ZENODO_CASE), cases / ZENODO_CASE)
    save_case(infnet.convert_case(shared_data, INFNET_CASE), cases / INFNET_CASE)

    healthy = cases / HEALTHY_CASE
    shutil.copytree(cases / ZENODO_CASE, healthy)
    (healthy / "lesion.nii.gz").unlink()
    meta = json.loads((healthy / "case.json").read_text())
    meta.update(case_id=HEALTHY_CASE, diagnosis="normal", slice_labels=[0] * meta["shape"][0])
    (healthy / "case.json").write_text(json.dumps(meta))
    (cases / "splits.json").write_text(json.dumps({"train": [ZENODO_CASE, INFNET_CASE], "val": [HEALTHY_CASE]}))

    csv_path = root / "stages.csv"
    csv_path.write_text("\n".join(STAGE_ROWS) + "\n")
    labeller = StageLabeller(read_stage_csv(csv_path))
    output = root / "covid_lesion"
    summary = export_cases(cases, output, "all", ExportOptions(), labeller)
    coco = json.loads((output / "all.json").read_text())
    images = {(image["case_id"], image["slice_index"]): image for image in coco["images"]}
    return {"root": root, "cases": cases, "output": output, "summary": summary, "coco": coco, "images": images}


def _annotations(coco, image_id):
    return [a for a in coco["annotations"] if a["image_id"] == image_id]


def test_export_neighbours_are_true_slices(export):
    case = load_case(export["cases"] / ZENODO_CASE)
    for index in (1, 10, 60, 114):
        record = export["images"][(ZENODO_CASE, index)]
        assert record["neighbor_indices"] == [index - 1, index + 1]
        for offset, name in zip((-1, 0, 1), [record["neighbor_files"][0], record["file_name"], record["neighbor_files"][1]]):
            png = cv2.imread(str(export["output"] / name), cv2.IMREAD_GRAYSCALE)
            assert np.array_equal(png, case.image.array[index + offset]), (index, offset)


def test_export_gap_and_ends_are_null(export):
    last = load_case(export["cases"] / ZENODO_CASE).image.shape[0] - 1
    expected = {0: [None, 1], 4: [3, None], 5: [None, 6], last: [last - 1, None]}
    for index, neighbours in expected.items():
        record = export["images"][(ZENODO_CASE, index)]
        assert record["neighbor_indices"] == neighbours, index
        assert [n is None for n in record["neighbor_files"]] == [n is None for n in neighbours], index


def test_export_isolated_slice_has_no_neighbours(export):
    record = export["images"][(INFNET_CASE, 0)]
    assert record["neighbor_indices"] == [None, None]
    assert record["neighbor_files"] == [None, None]
    assert record["intensity_kind"] == "uint8_windowed"


def test_export_annotations_rebuild_lesion_mask(export):
    case = load_case(export["cases"] / ZENODO_CASE)
    options = ExportOptions()
    for index in (12, 50, 90):
        record = export["images"][(ZENODO_CASE, index)]
        annotations = _annotations(export["coco"], record["id"])
        components = lesion_components(case.lesion[index], options.connectivity, options.min_lesion_area)
        union = np.zeros(case.lesion.shape[1:], dtype=bool)
        for annotation in annotations:
            union |= mask_util.decode(annotation["segmentation"]).astype(bool)
        expected = np.any(components, axis=0) if components else np.zeros_like(union)
        assert len(annotations) == len(components)
        assert np.array_equal(union, expected)
        assert record["lung_area_px"] == int(case.lung[index].sum())


def test_coco_json_loads_in_pycocotools(export):
    coco = COCO(str(export["output"] / "all.json"))
    assert len(coco.getImgIds()) == export["summary"]["images"]
    annotation = coco.loadAnns(coco.getAnnIds())[0]
    mask = coco.annToMask(annotation)
    x, y, w, h = annotation["bbox"]
    rows, cols = np.nonzero(mask)
    assert [cols.min(), rows.min(), cols.max() + 1 - cols.min(), rows.max() + 1 - rows.min()] == [x, y, w, h]
    assert mask.sum() == annotation["area"]


def test_load_coco_json_keeps_extra_fields(export):
    name = "test_export_all"
    register_covid_lesion_instances(name, export["output"] / "all.json", export["output"])
    try:
        dicts = {(d["case_id"], d["slice_index"]): d for d in DatasetCatalog.get(name)}
        record = dicts[(ZENODO_CASE, 5)]
        assert record["neighbor_indices"] == [None, 6]
        assert record["neighbor_files"][1] == str(export["output"] / "images" / ZENODO_CASE / "0006.png")
        assert record["roi_crop"]["original_shape"] == [116, 256, 256]
        assert {a["category_id"] for d in dicts.values() for a in d["annotations"]} == {0}
        metadata = MetadataCatalog.get(name)
        assert metadata.thing_classes == ["lesion"]
        assert metadata.evaluator_type == "covid_lesion"
        assert metadata.stage_names == ["healthy", "early", "advanced", "severe"]
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_stage_labels_survive_registration(export):
    name = "test_export_stages"
    register_covid_lesion_instances(name, export["output"] / "all.json", export["output"])
    try:
        dicts = {(d["case_id"], d["slice_index"]): d for d in DatasetCatalog.get(name)}
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    assert {a["stage"] for a in dicts[(ZENODO_CASE, 20)]["annotations"]} == {3}
    assert dicts[(ZENODO_CASE, 20)]["slice_stage"] == 3
    assert [a["stage"] for a in dicts[(ZENODO_CASE, 30)]["annotations"]][:1] == [1]
    assert {a["stage"] for a in dicts[(ZENODO_CASE, 30)]["annotations"][1:]} <= {2}
    assert dicts[(ZENODO_CASE, 60)]["slice_stage"] == 2
    assert all("stage" not in a for a in dicts[(INFNET_CASE, 0)]["annotations"])
    assert dicts[(INFNET_CASE, 0)]["slice_stage"] == -1


def test_healthy_case_exports_stage_zero_negatives(export):
    records = [r for key, r in export["images"].items() if key[0] == HEALTHY_CASE]
    assert len(records) == 116
    assert all(r["slice_stage"] == 0 for r in records)
    assert all(not _annotations(export["coco"], r["id"]) for r in records[:5])
    assert all(r["lesion_annotated"] is False for r in records)


def test_standard_dataset_files_follow_splits(export):
    names = {p.stem for p in export["output"].glob("covid_*.json")}
    assert names == {"covid_zenodo_train", "covid_zenodo_val", "covid_infnet_train"}
    zenodo_train = json.loads((export["output"] / "covid_zenodo_train.json").read_text())
    assert {image["case_id"] for image in zenodo_train["images"]} == {ZENODO_CASE}
    zenodo_val = json.loads((export["output"] / "covid_zenodo_val.json").read_text())
    assert {image["case_id"] for image in zenodo_val["images"]} == {HEALTHY_CASE}


def test_register_all_skips_missing_json(export, monkeypatch):
    monkeypatch.setenv(DATASETS_ENV, str(export["root"]))
    try:
        registered = register_all_covid_lesion()
        assert registered == ["covid_zenodo_train", "covid_zenodo_val", "covid_infnet_train"]
        assert MetadataCatalog.get("covid_infnet_train").image_root == str(export["output"])
        assert len(DatasetCatalog.get("covid_infnet_train")) == 1
    finally:
        for name in ("covid_zenodo_train", "covid_zenodo_val", "covid_infnet_train"):
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        monkeypatch.delenv(DATASETS_ENV)
        register_all_covid_lesion()  # restores the names found under the default root


def test_export_crops_to_roi_record(export, tmp_path):
    cases = tmp_path / "cases"
    shutil.copytree(export["cases"] / ZENODO_CASE, cases / ZENODO_CASE)
    crop = {"crop": {"slice": [10, 30], "row": [20, 200], "col": [30, 220]}, "original_shape": [116, 256, 256]}
    (cases / ZENODO_CASE / "roi.json").write_text(json.dumps(crop))
    export_cases(cases, tmp_path / "out", "all")
    coco = json.loads((tmp_path / "out" / "all.json").read_text())
    indices = [image["slice_index"] for image in coco["images"]]
    assert indices == list(range(10, 30))
    assert coco["images"][0]["neighbor_indices"] == [None, 11]
    assert (coco["images"][0]["height"], coco["images"][0]["width"]) == (180, 190)
    png = cv2.imread(str(tmp_path / "out" / coco["images"][5]["file_name"]), cv2.IMREAD_GRAYSCALE)
    case = load_case(cases / ZENODO_CASE)
    assert np.array_equal(png, case.image.array[15, 20:200, 30:220])


def test_neighbor_indices_table():
    assert neighbor_indices(0, 5, [], False) == [None, 1]
    assert neighbor_indices(2, 5, [2], False) == [1, None]
    assert neighbor_indices(3, 5, [2], False) == [None, 4]
    assert neighbor_indices(4, 5, [], False) == [3, None]
    assert neighbor_indices(2, 5, [], True) == [None, None]


def test_stage_csv_rejects_invalid_stage(tmp_path):
    path = tmp_path / "stages.csv"
    path.write_text("case_id,stage\ncase_a,4\n")
    with pytest.raises(ValueError, match="stage '4' is invalid"):
        read_stage_csv(path)


def test_stage_csv_rejects_lesion_without_slice(tmp_path):
    path = tmp_path / "stages.csv"
    path.write_text("case_id,slice_index,lesion_index,stage\ncase_a,,2,1\n")
    with pytest.raises(ValueError, match="needs a slice_index"):
        read_stage_csv(path)


def test_proxy_stage_thresholds():
    assert proxy_stage_from_involvement(0.01, (0.05, 0.25)) == 1
    assert proxy_stage_from_involvement(0.05, (0.05, 0.25)) == 2
    assert proxy_stage_from_involvement(0.6, (0.05, 0.25)) == 3
    with pytest.raises(ValueError):
        proxy_stage_from_involvement(0.0)


def test_proxy_stages_are_off_by_default():
    labeller = StageLabeller()
    meta = {"diagnosis": "covid19"}
    assert labeller.slice_stage("case_a", 3, meta, True, 0.4, 0.4) == -1
    proxy = StageLabeller(proxy=True, proxy_level="slice")
    assert proxy.slice_stage("case_a", 3, meta, True, 0.4, 0.01) == 3
