"""ThreeSliceDatasetMapper on an export of shared Zenodo and Inf-Net cases."""

import copy

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader
from detectron2.data import transforms as T

from covid_d2 import add_covid_config
from covid_d2.data.augmentation import RandomAffine
from covid_d2.data.coco_export import export_cases
from covid_d2.data.converters import infnet, zenodo
from covid_d2.data.datasets import register_covid_lesion_instances
from covid_d2.data.stages import StageLabeller, read_stage_csv
from covid_d2.data.three_slice_mapper import ThreeSliceDatasetMapper
from covid_d2.data.volume import save_case

ZENODO_CASE = "zenodo_case_05"  # one gap, between slices 4 and 5
INFNET_CASE = "infnet_000"
DATASET = "test_mapper_lesions"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, shared_data):
    """Registered export of one Zenodo case (stage 2 on slice 40) and one Inf-Net slice."""
    root = tmp_path_factory.mktemp("mapper")
    cases = root / "cases"
    save_case(zenodo.convert_case(shared_data, ZENODO_CASE), cases / ZENODO_CASE)
    save_case(infnet.convert_case(shared_data, INFNET_CASE), cases / INFNET_CASE)
    (root / "stages.csv").write_text(f"case_id,slice_index,lesion_index,stage\n{ZENODO_CASE},40,,2\n{ZENODO_CASE},41,0,3\n")
    export_cases(cases, root / "out", "all", labeller=StageLabeller(read_stage_csv(root / "stages.csv")))
    register_covid_lesion_instances(DATASET, root / "out" / "all.json", root / "out")
    dicts = {(d["case_id"], d["slice_index"]): d for d in DatasetCatalog.get(DATASET)}
    yield {"root": root, "dicts": dicts}
    DatasetCatalog.remove(DATASET)
    MetadataCatalog.remove(DATASET)


def _png(path):
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).astype(np.float32)


def _mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """XYXY pixel-edge boxes re-derived from (N, H, W) masks."""
    boxes = []
    for mask in masks.numpy():
        rows, cols = np.nonzero(mask)
        boxes.append([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


def _alignment(channel: torch.Tensor, union: torch.Tensor):
    """(share of mask pixels where the marker channel is lit, share of fully lit pixels inside the mask)."""
    union = union.bool()
    lit_in_mask = (channel[union] > 0).float().mean().item()
    full = channel == 255
    full_in_mask = (union[full]).float().mean().item()
    return lit_in_mask, full_in_mask


def _marker_dict(record, folder):
    """Copy of ``record`` whose three slices all show its lesion union as 255 on 0."""
    union = np.zeros((record["height"], record["width"]), dtype=np.uint8)
    for annotation in record["annotations"]:
        union |= mask_util.decode(annotation["segmentation"])
    path = folder / f"marker_{record['image_id']}.png"
    cv2.imwrite(str(path), union * 255)
    marked = copy.deepcopy(record)
    marked["file_name"] = str(path)
    marked["neighbor_files"] = [str(path), str(path)]
    return marked


def test_channels_are_neighbours_in_order(dataset):
    mapper = ThreeSliceDatasetMapper(is_train=False)
    record = dataset["dicts"][(ZENODO_CASE, 30)]
    image = mapper(record)["image"]
    folder = record["file_name"].rsplit("/", 1)[0]
    assert image.dtype == torch.float32
    assert image.shape == (3, 256, 256)
    for channel, index in enumerate((29, 30, 31)):
        assert torch.equal(image[channel], torch.from_numpy(_png(f"{folder}/{index:04d}.png"))), channel


def test_gap_and_volume_end_get_zero_filler(dataset):
    mapper = ThreeSliceDatasetMapper(is_train=False)
    for index, zero_channel in ((4, 2), (5, 0), (0, 0), (115, 2)):
        image = mapper(dataset["dicts"][(ZENODO_CASE, index)])["image"]
        assert image[zero_channel].abs().sum() == 0, index
        assert image[2 - zero_channel].abs().sum() > 0, index
        assert image[1].abs().sum() > 0, index


def test_isolated_slice_gives_zero_key_zero(dataset):
    record = dataset["dicts"][(INFNET_CASE, 0)]
    output = ThreeSliceDatasetMapper(is_train=False)(record)
    assert output["image"][0].abs().sum() == 0
    assert output["image"][2].abs().sum() == 0
    assert torch.equal(output["image"][1], torch.from_numpy(_png(record["file_name"])))
    assert len(output["instances"]) == len(record["annotations"])


@pytest.mark.parametrize(
    "augmentation",
    [
        RandomAffine(0.15, (1.0, 1.0), 0.0),
        RandomAffine(0.0, (0.7, 1.3), 0.0),
        RandomAffine(0.0, (1.0, 1.0), 25.0),
        T.RandomFlip(prob=1.0, horizontal=True, vertical=False),
        T.RandomFlip(prob=1.0, horizontal=False, vertical=True),
        T.ResizeShortestEdge((320,), 640, "choice"),
    ],
    ids=["translate", "scale", "rotate", "hflip", "vflip", "resize"],
)
def test_masks_and_boxes_stay_aligned(dataset, tmp_path, augmentation):
    np.random.seed(0)
    mapper = ThreeSliceDatasetMapper(is_train=True, augmentations=[augmentation])
    for index in (20, 60, 100):
        output = mapper(_marker_dict(dataset["dicts"][(ZENODO_CASE, index)], tmp_path))
        instances = output["instances"]
        assert len(instances) > 0, index
        assert torch.equal(instances.gt_boxes.tensor, _mask_boxes(instances.gt_masks.tensor)), index
        lit_in_mask, full_in_mask = _alignment(output["image"][1], output["lesion_mask"])
        assert lit_in_mask > 0.95, (index, lit_in_mask)
        assert full_in_mask > 0.95, (index, full_in_mask)
        assert torch.equal(output["image"][0], output["image"][1]), index
        assert torch.equal(output["image"][2], output["image"][1]), index


def test_mosaic_keeps_masks_aligned(dataset, tmp_path):
    np.random.seed(1)
    pool = [_marker_dict(dataset["dicts"][(ZENODO_CASE, i)], tmp_path) for i in (10, 50, 80, 110)]
    mapper = ThreeSliceDatasetMapper(is_train=True, augmentations=[], mosaic_prob=1.0, mosaic_pool=pool)
    output = mapper(pool[0])
    tiles = [record["case_id"] for record in pool]
    assert output["image"].shape == (3, 256, 256)
    assert 0 < len(output["instances"]) <= 4 * max(len(record["annotations"]) for record in pool), tiles
    assert torch.equal(output["instances"].gt_boxes.tensor, _mask_boxes(output["instances"].gt_masks.tensor))
    lit_in_mask, full_in_mask = _alignment(output["image"][1], output["lesion_mask"])
    assert lit_in_mask > 0.95
    assert full_in_mask > 0.95


def test_stages_reach_instances(dataset):
    mapper = ThreeSliceDatasetMapper(is_train=False)
    staged = mapper(dataset["dicts"][(ZENODO_CASE, 40)])
    assert staged["stage"] == 2
    assert set(staged["instances"].gt_stages.tolist()) == {2}
    lesion_staged = mapper(dataset["dicts"][(ZENODO_CASE, 41)])
    assert lesion_staged["instances"].gt_stages[0].item() == 3
    assert set(lesion_staged["instances"].gt_stages[1:].tolist()) <= {-1}
    assert lesion_staged["stage"] == -1
    unlabelled = mapper(dataset["dicts"][(ZENODO_CASE, 60)])
    assert set(unlabelled["instances"].gt_stages.tolist()) == {-1}
    assert unlabelled["instances"].gt_stages.dtype == torch.int64


def test_empty_slice_gives_empty_instances(dataset):
    record = copy.deepcopy(dataset["dicts"][(ZENODO_CASE, 30)])
    record["annotations"] = []
    output = ThreeSliceDatasetMapper(is_train=False)(record)
    instances = output["instances"]
    assert len(instances) == 0
    assert instances.gt_masks.tensor.shape == (0, 256, 256)
    assert instances.gt_boxes.tensor.shape == (0, 4)
    assert instances.gt_classes.dtype == torch.int64
    assert output["lesion_mask"].sum() == 0
    assert output["lesion_mask"].dtype == torch.uint8


def test_output_passes_through_fields(dataset):
    record = dataset["dicts"][(ZENODO_CASE, 30)]
    output = ThreeSliceDatasetMapper(is_train=False)(record)
    for key in ("height", "width", "file_name", "image_id", "case_id", "slice_index"):
        assert output[key] == record[key], key
    assert output["instances"].gt_classes.tolist() == [0] * len(record["annotations"])


def test_train_loader_keeps_negatives(dataset):
    cfg = get_cfg()
    add_covid_config(cfg)
    cfg.DATASETS.TRAIN = (DATASET,)
    cfg.INPUT.MIN_SIZE_TRAIN = (256,)
    cfg.INPUT.MAX_SIZE_TRAIN = 512
    cfg.INPUT.THREE_SLICE.MOSAIC_PROB = 0.5
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 4
    assert cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS is False
    mapper = ThreeSliceDatasetMapper(cfg, is_train=True)
    assert len(mapper.mosaic_pool) == len(dataset["dicts"])
    batch = next(iter(build_detection_train_loader(cfg, mapper=mapper)))
    assert len(batch) == 4
    assert all(item["image"].shape[0] == 3 for item in batch)
