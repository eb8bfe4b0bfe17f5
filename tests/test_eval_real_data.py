"""Lesion evaluation on real Zenodo slices: pixel Dice against numpy, and a stock Mask R-CNN
scored by COCOEvaluator and LesionEvaluator together through DatasetEvaluators."""

import copy
import pathlib

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.evaluation import inference_on_dataset
from detectron2.modeling import build_model
from detectron2.structures import Boxes, BoxMode, Instances

import covid_d2
from covid_d2.evaluation import LESION_METRICS, LesionEvaluator, build_lesion_evaluators

CASE = "case_01"
SLICES = ("0080.png", "0081.png")


def _infection_mask(zenodo_root, slice_name):
    path = zenodo_root / CASE / "infection_mask" / slice_name
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert mask is not None, f"cannot read {path}"
    return mask > 127


def _lung_area(zenodo_root, slice_name):
    mask = cv2.imread(str(zenodo_root / CASE / "lung_mask" / slice_name), cv2.IMREAD_GRAYSCALE)
    return int((mask > 127).sum())


def _components(mask):
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return [labels == label for label in range(1, count)]


def _record(zenodo_root, image_id, slice_name):
    annotations = []
    for component in _components(_infection_mask(zenodo_root, slice_name)):
        rle = mask_util.encode(np.asfortranarray(component.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        ys, xs = np.nonzero(component)
        annotations.append({
            "bbox": [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())],
            "bbox_mode": BoxMode.XYWH_ABS,
            "segmentation": rle,
            "category_id": 0,
            "iscrowd": 0,
        })
    return {
        "file_name": str(zenodo_root / CASE / "ct" / slice_name),
        "image_id": image_id,
        "height": 256,
        "width": 256,
        "annotations": annotations,
        "case_id": CASE,
        "slice_index": image_id,
        "spacing_mm": None,  # lost in the Zenodo PNGs
        "slice_label": 1,
        "lung_area_px": _lung_area(zenodo_root, slice_name),
    }


@pytest.fixture(scope="module")
def zenodo_dataset(zenodo_root):
    name = "covid_d2_test_eval_zenodo"
    records = [_record(zenodo_root, index, slice_name) for index, slice_name in enumerate(SLICES)]
    assert all(r["annotations"] for r in records), "the test slices should contain infection"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: copy.deepcopy(records))
    MetadataCatalog.get(name).set(thing_classes=["lesion"], evaluator_type="covid_lesion")
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_pixel_dice_matches_numpy(zenodo_dataset, zenodo_root):
    gt = _infection_mask(zenodo_root, SLICES[0])
    eroded = cv2.erode(gt.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    components = [c for c in _components(eroded)]
    instances = Instances((256, 256))
    instances.pred_masks = torch.from_numpy(np.stack(components))
    boxes = []
    for component in components:
        ys, xs = np.nonzero(component)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    instances.scores = torch.ones(len(components))

    evaluator = LesionEvaluator(zenodo_dataset, distributed=False)
    evaluator.reset()
    evaluator.process([{"image_id": 0}], [{"instances": instances}])
    result = evaluator.evaluate()["lesion"]

    expected = 2.0 * np.logical_and(gt, eroded).sum() / (gt.sum() + eroded.sum())
    assert 0.3 < expected < 0.99, "erosion should change the mask without removing it"
    assert result["pixel_dice_global"] == pytest.approx(expected, rel=1e-12)
    assert result["pixel_dice_per_slice"] == pytest.approx(expected, rel=1e-12)
    assert result["pixel_sensitivity"] == pytest.approx(eroded.sum() / gt.sum(), rel=1e-12)


def test_mask_rcnn_with_coco_end_to_end(zenodo_dataset, tmp_path):
    cfg = get_cfg()
    covid_d2.add_covid_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file("Misc/scratch_mask_rcnn_R_50_FPN_3x_gn.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 1
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # random weights: keep every detection
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 100
    cfg.INPUT.MIN_SIZE_TEST = 256
    cfg.INPUT.MAX_SIZE_TEST = 256
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.TEST.LESION.SCORE_THRESH = 0.0
    torch.manual_seed(0)
    model = build_model(cfg)
    model.eval()

    evaluators = build_lesion_evaluators(cfg, zenodo_dataset, output_dir=str(tmp_path))
    loader = build_detection_test_loader(cfg, zenodo_dataset)
    results = inference_on_dataset(model, loader, evaluators)

    assert set(results) == {"bbox", "segm", "lesion"}
    for task in ("bbox", "segm"):
        assert 0.0 <= results[task]["AP"] <= 100.0, task
    lesion = results["lesion"]
    assert lesion["num_slices"] == 2.0
    assert set(lesion) <= set(LESION_METRICS)
    assert "volume_abs_error_ml" not in lesion  # spacing unknown
    for key in ("lesion_sensitivity", "pixel_dice_global", "volume_abs_error_voxels", "pixel_accuracy_lung"):
        assert 0.0 <= lesion[key] < float("inf"), key
    assert "lesion_precision" in lesion, "the model should emit predictions to score"
    assert (tmp_path / "lesion_per_image.json").is_file()


@pytest.mark.parametrize("config", ["configs/lesion/cpu/unet_R18.yaml", "configs/lesion/cpu/st_R18.yaml"])
def test_coco_tasks_include_segm(zenodo_dataset, tmp_path, config):
    from covid_d2.engine import load_covid_config

    repo = pathlib.Path(__file__).resolve().parent.parent
    cfg = load_covid_config(str(repo / config), ["MODEL.DEVICE", "cpu"])
    coco = build_lesion_evaluators(cfg, zenodo_dataset, output_dir=str(tmp_path))._evaluators[0]
    assert coco._tasks == ("bbox", "segm")

    # A box-only detector gets box AP only.
    cfg.defrost()
    cfg.MODEL.MASK_ON = False
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    coco = build_lesion_evaluators(cfg, zenodo_dataset, output_dir=str(tmp_path))._evaluators[0]
    assert coco._tasks == ("bbox",)
