"""LesionEvaluator and the results table on hand-made slices whose scores are computed by hand."""

import itertools
import json

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import print_csv_format
from detectron2.evaluation.testing import flatten_results_dict
from detectron2.structures import Boxes, BoxMode, Instances

import covid_d2
from covid_d2.evaluation import (
    LESION_METRICS,
    NOT_AVAILABLE,
    LesionEvaluator,
    average_results,
    format_results_table,
)

SIZE = 256  # tiny lesions at 256 x 256: area < 0.00059 x 65536 = 38.7 px
_names = itertools.count()


def _rect(top, left, rows, cols, size=SIZE):
    mask = np.zeros((size, size), dtype=bool)
    mask[top:top + rows, left:left + cols] = True
    return mask


def _annotation(mask):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    ys, xs = np.nonzero(mask)
    box = [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())]
    return {"bbox": box, "bbox_mode": BoxMode.XYWH_ABS, "segmentation": rle, "category_id": 0, "iscrowd": 0}


def _slice(image_id, lesions, size=SIZE, **extra):
    record = {
        "file_name": f"slice_{image_id}.png",
        "image_id": image_id,
        "height": size,
        "width": size,
        "annotations": [_annotation(mask) for mask in lesions],
    }
    record.update(extra)
    return record


def _instances(predictions, size=SIZE, boxes=None):
    """Build Instances from ``[(mask, score), ...]``; boxes default to the masks' tight boxes."""
    instances = Instances((size, size))
    masks = np.stack([mask for mask, _ in predictions]) if predictions else np.zeros((0, size, size), bool)
    if boxes is None:
        boxes = []
        for mask in masks:
            ys, xs = np.nonzero(mask)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    instances.scores = torch.tensor([score for _, score in predictions], dtype=torch.float32)
    instances.pred_classes = torch.zeros(len(predictions), dtype=torch.int64)
    instances.pred_masks = torch.from_numpy(masks)
    return instances


@pytest.fixture
def register():
    names = []

    def _register(records):
        name = f"covid_d2_test_lesion_eval_{next(_names)}"
        DatasetCatalog.register(name, lambda: [dict(r) for r in records])
        MetadataCatalog.get(name).set(thing_classes=["lesion"], evaluator_type="covid_lesion")
        names.append(name)
        return name

    yield _register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _evaluate(name, outputs, **kwargs):
    """Run the evaluator on ``{image_id: Instances}`` and return its "lesion" dict."""
    evaluator = LesionEvaluator(name, **kwargs)
    evaluator.reset()
    for image_id, instances in outputs.items():
        evaluator.process([{"image_id": image_id}], [{"instances": instances}])
    return evaluator.evaluate()["lesion"]


def test_perfect_prediction_all_one(register, tmp_path):
    big, tiny = _rect(40, 40, 20, 20), _rect(150, 150, 5, 5)
    other = _rect(100, 60, 12, 30)
    extra = {"case_id": "case_a", "spacing_mm": [2.0, 0.5, 0.5], "lung_area_px": 5000}
    name = register([
        _slice(0, [big, tiny], slice_label=1, **extra),
        _slice(1, [other], slice_label=1, **extra),
        _slice(2, [], slice_label=0, **extra),
    ])
    outputs = {
        0: _instances([(big, 0.9), (tiny, 0.8)]),
        1: _instances([(other, 0.95)]),
        2: _instances([]),
    }
    result = _evaluate(name, outputs, output_dir=str(tmp_path))

    ratios = [key for key in LESION_METRICS if not key.startswith(("num_", "volume_", "involvement_"))]
    ratios.remove("false_positives_per_slice")
    for key in ratios:
        assert result[key] == pytest.approx(1.0), key
    assert result["false_positives_per_slice"] == 0.0
    for key in ("volume_abs_error_voxels", "volume_abs_error_ml", "involvement_abs_error_pct"):
        assert result[key] == 0.0, key
    assert result["num_gt_lesions"] == 3.0
    assert result["num_tiny_gt_lesions"] == 1.0

    saved = json.loads((tmp_path / "lesion_metrics.json").read_text())
    volume = saved["volumes"][0]
    # 400 + 25 + 360 voxels of 2.0 x 0.5 x 0.5 mm = 0.5 mm^3 each.
    assert volume["gt_voxels"] == 785
    assert volume["gt_ml"] == pytest.approx(785 * 0.5 / 1000)
    assert volume["gt_involvement_pct"] == pytest.approx(100 * 785 / 15000)
    per_image = json.loads((tmp_path / "lesion_per_image.json").read_text())
    assert [r["image_id"] for r in per_image] == [0, 1, 2]


def test_missed_tiny_lesion(register):
    big, tiny_a, tiny_b = _rect(40, 40, 20, 20), _rect(150, 150, 5, 5), _rect(200, 30, 6, 6)
    name = register([_slice(0, [big, tiny_a]), _slice(1, [tiny_b])])
    outputs = {0: _instances([(big, 0.9), (tiny_a, 0.7)]), 1: _instances([])}
    result = _evaluate(name, outputs)

    assert result["tiny_lesion_sensitivity"] == pytest.approx(1 / 2)
    assert result["lesion_sensitivity"] == pytest.approx(2 / 3)
    assert result["lesion_dice_matched"] == pytest.approx(1.0)
    assert result["lesion_dice_all"] == pytest.approx(2 / 3)
    # Pixel sensitivity: (400 + 25) of the 400 + 25 + 36 GT pixels.
    assert result["pixel_sensitivity"] == pytest.approx(425 / 461)
    # Slice 1 is missed entirely (Dice 0); slice 0 is perfect.
    assert result["pixel_dice_per_slice"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    "pred_rows, matched",
    [(19, True), (20, False), (21, False)],  # IoU 100/190 = 0.526, 100/200 = 0.5, 100/210 = 0.476
)
def test_mask_iou_around_half(register, pred_rows, matched):
    gt = _rect(50, 50, 10, 10)
    name = register([_slice(0, [gt])])
    outputs = {0: _instances([(_rect(50, 50, pred_rows, 10), 0.9)])}
    result = _evaluate(name, outputs, match_by="mask")

    assert result["lesion_sensitivity"] == (1.0 if matched else 0.0)
    assert result["false_positives_per_slice"] == (0.0 if matched else 1.0)


@pytest.mark.parametrize("bottom, matched", [(69.9, True), (70.1, False)])
def test_box_iou_around_half(register, bottom, matched):
    # GT box (50, 50)-(60, 60) has area 100; the predicted box (50, 50)-(60, bottom) contains
    # it, so IoU = 100 / (10 x (bottom - 50)): 0.5025 at 69.9, 0.4975 at 70.1.
    gt = _rect(50, 50, 10, 10)
    name = register([_slice(0, [gt])])
    outputs = {0: _instances([(gt, 0.9)], boxes=[[50.0, 50.0, 60.0, bottom]])}
    result = _evaluate(name, outputs, match_by="box")

    assert result["lesion_sensitivity"] == (1.0 if matched else 0.0)
    assert result["lesion_precision"] == (1.0 if matched else 0.0)


def test_duplicate_predictions_one_match(register):
    gt = _rect(40, 40, 20, 20)
    name = register([_slice(0, [gt])])
    outputs = {0: _instances([(gt, 0.9), (gt, 0.8)])}
    result = _evaluate(name, outputs)

    assert result["lesion_sensitivity"] == 1.0
    assert result["lesion_precision"] == 0.5
    assert result["false_positives_per_slice"] == 1.0
    assert result["lesion_dice_matched"] == pytest.approx(1.0)


def test_empty_prediction_positive_slice(register):
    name = register([_slice(0, [_rect(40, 40, 20, 20)], slice_label=1)])
    result = _evaluate(name, {0: _instances([])})

    assert result["lesion_sensitivity"] == 0.0
    assert "lesion_precision" not in result  # no kept prediction: n/a
    assert "lesion_dice_matched" not in result  # no match: n/a
    assert result["lesion_dice_all"] == 0.0
    assert result["pixel_dice_per_slice"] == 0.0
    assert result["pixel_dice_global"] == 0.0
    assert result["slice_sensitivity"] == 0.0
    assert result["false_positives_per_slice"] == 0.0


def test_predictions_on_healthy_slice(register):
    name = register([_slice(0, [], slice_label=0), _slice(1, [], slice_label=0)])
    outputs = {
        0: _instances([(_rect(10, 10, 8, 8), 0.9), (_rect(100, 100, 8, 8), 0.6)]),
        1: _instances([(_rect(10, 10, 8, 8), 0.3)]),  # below the score threshold 0.5
    }
    result = _evaluate(name, outputs)

    assert result["false_positives_per_slice"] == 1.0  # 2 false positives over 2 slices
    assert result["slice_specificity"] == 0.5
    assert result["lesion_precision"] == 0.0
    assert result["pixel_dice_global"] == 0.0
    assert result["pixel_specificity_image"] == pytest.approx(1 - 128 / (2 * SIZE * SIZE))
    for key in ("lesion_sensitivity", "slice_sensitivity", "pixel_dice_per_slice", "pixel_sensitivity"):
        assert key not in result, key


def test_no_tiny_lesions_not_available(register, tmp_path):
    name = register([_slice(0, [_rect(40, 40, 20, 20)])])
    result = _evaluate(name, {0: _instances([(_rect(40, 40, 20, 20), 0.9)])}, output_dir=str(tmp_path))

    assert "tiny_lesion_sensitivity" not in result
    saved = json.loads((tmp_path / "lesion_metrics.json").read_text())
    assert saved["metrics"]["tiny_lesion_sensitivity"] == NOT_AVAILABLE
    table = format_results_table({"model": {"lesion": result}}, ["lesion/tiny_lesion_sensitivity"])
    assert table.splitlines()[-1] == "| model | n/a |"


def test_tiny_threshold_scales_with_size(register):
    # 100 px is tiny at 512 x 512 (limit 154.7 px) but not at 256 x 256 (limit 38.7 px).
    lesion_256, lesion_512 = _rect(20, 20, 10, 10, size=256), _rect(20, 20, 10, 10, size=512)
    name = register([_slice(0, [lesion_256], size=256), _slice(1, [lesion_512], size=512)])
    outputs = {0: _instances([], size=256), 1: _instances([(lesion_512, 0.9)], size=512)}
    result = _evaluate(name, outputs)

    assert result["num_tiny_gt_lesions"] == 1.0
    assert result["tiny_lesion_sensitivity"] == 1.0
    assert result["lesion_sensitivity"] == 0.5


def test_lung_accuracy_and_volume(register):
    gt, pred = _rect(40, 40, 10, 10), _rect(40, 40, 12, 10)  # 100 GT px, 120 predicted, 100 shared
    extra = {"case_id": "case_b", "spacing_mm": [2.0, 0.5, 0.5], "lung_area_px": 1000}
    name = register([_slice(0, [gt], **extra)])
    result = _evaluate(name, {0: _instances([(pred, 0.9)])})

    assert result["pixel_accuracy_lung"] == pytest.approx(1 - 20 / 1000)
    assert result["pixel_specificity_lung"] == pytest.approx((1000 - 120) / (1000 - 100))
    assert result["pixel_accuracy_image"] == pytest.approx(1 - 20 / (SIZE * SIZE))
    assert result["volume_abs_error_voxels"] == 20.0
    assert result["volume_abs_error_ml"] == pytest.approx(20 * 0.5 / 1000)
    assert result["involvement_abs_error_pct"] == pytest.approx(100 * 20 / 1000)


def test_unknown_spacing_volume_in_voxels(register):
    gt, pred = _rect(40, 40, 10, 10), _rect(40, 40, 12, 10)
    name = register([_slice(0, [gt], case_id="case_c", spacing_mm=None)])
    result = _evaluate(name, {0: _instances([(pred, 0.9)])})

    assert result["volume_abs_error_voxels"] == 20.0
    assert "volume_abs_error_ml" not in result
    assert "pixel_accuracy_lung" not in result


def test_slice_label_without_masks(register):
    # Labelled infected at slice level only: counts for slice metrics, not as false positives.
    name = register([_slice(0, [], slice_label=1)])
    result = _evaluate(name, {0: _instances([(_rect(10, 10, 8, 8), 0.9)])})

    assert result["slice_sensitivity"] == 1.0
    assert "false_positives_per_slice" not in result
    assert result["num_slices"] == 1.0


def test_box_only_model(register):
    gt = _rect(40, 40, 20, 20)
    name = register([_slice(0, [gt], slice_label=1)])
    instances = _instances([(gt, 0.9)])
    instances.remove("pred_masks")
    result = _evaluate(name, {0: instances})

    assert result["lesion_sensitivity"] == 1.0
    assert result["slice_sensitivity"] == 1.0
    assert "lesion_dice_matched" not in result
    assert "pixel_dice_global" not in result
    with pytest.raises(ValueError, match="match_by='mask' needs pred_masks"):
        _evaluate(name, {0: instances}, match_by="mask")


def test_polygon_ground_truth(register):
    record = _slice(0, [])
    record["annotations"] = [{
        "bbox": [40.0, 40.0, 20.0, 20.0],
        "bbox_mode": BoxMode.XYWH_ABS,
        "segmentation": [[40.0, 40.0, 60.0, 40.0, 60.0, 60.0, 40.0, 60.0]],
        "category_id": 0,
        "iscrowd": 0,
    }]
    name = register([record])
    result = _evaluate(name, {0: _instances([(_rect(40, 40, 20, 20), 0.9)])}, match_by="mask")

    assert result["lesion_sensitivity"] == 1.0
    assert result["pixel_dice_global"] > 0.9  # pycocotools rasterizes the polygon edge


def test_results_fit_detectron2_reporting(register):
    name = register([_slice(0, [_rect(40, 40, 20, 20)], slice_label=1)])
    results = {"lesion": _evaluate(name, {0: _instances([])})}

    print_csv_format(results)
    for key, value in flatten_results_dict(results).items():
        assert isinstance(float(value), float), key  # EvalHook calls float() on every value


def test_evaluator_from_config(register):
    cfg = get_cfg()
    covid_d2.add_covid_config(cfg)
    cfg.TEST.LESION.SCORE_THRESH = 0.95
    gt = _rect(40, 40, 20, 20)
    name = register([_slice(0, [gt])])
    evaluator = LesionEvaluator(cfg, name)
    evaluator.reset()
    evaluator.process([{"image_id": 0}], [{"instances": _instances([(gt, 0.9)])}])

    assert evaluator.evaluate()["lesion"]["lesion_sensitivity"] == 0.0


def test_invalid_match_mode_raises(register):
    name = register([_slice(0, [])])
    with pytest.raises(ValueError, match="match_by"):
        LesionEvaluator(name, match_by="centroid")


def test_table_marks_missing_values():
    rows = {
        "mask_rcnn": {"segm": {"AP": 12.3456}, "lesion": {"lesion_sensitivity": 0.5}},
        "unet": {"lesion": {"lesion_sensitivity": None, "pixel_dice_global": float("nan")}},
    }
    table = format_results_table(rows, ["segm/AP", "lesion/lesion_sensitivity", "lesion/pixel_dice_global"])
    lines = table.splitlines()

    assert lines[0] == "| model | segm/AP | lesion/lesion_sensitivity | lesion/pixel_dice_global |"
    assert lines[2] == "| mask_rcnn | 12.346 | 0.500 | n/a |"
    assert lines[3] == "| unet | n/a | n/a | n/a |"


def test_average_skips_not_available():
    runs = [
        {"lesion": {"tiny_lesion_sensitivity": 0.25, "lesion_precision": NOT_AVAILABLE}},
        {"lesion": {"tiny_lesion_sensitivity": 0.75}},
    ]
    averaged = average_results(runs)

    assert averaged["lesion/tiny_lesion_sensitivity"] == 0.5
    assert averaged["lesion/lesion_precision"] == NOT_AVAILABLE
