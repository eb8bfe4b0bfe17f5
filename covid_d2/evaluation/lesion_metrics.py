"""Per-slice scoring of lesion predictions and its summary into lesion, pixel, slice and volume metrics.

:class:`covid_d2.evaluation.LesionEvaluator` defines every metric in its docstring. These plain
functions do the work, so that they can be used without a model or a ``DatasetEvaluator``.
"""

from collections import OrderedDict
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.structures import BitMasks, BoxMode

from covid_d2.evaluation.matching import box_iou_matrix, greedy_match, mask_iou_matrix

NOT_AVAILABLE = "n/a"
"""Value of a metric whose denominator is empty, in the JSON summary and in results tables."""

# Every metric LesionEvaluator can report, in table order.
LESION_METRICS = (
    "lesion_sensitivity",
    "lesion_precision",
    "tiny_lesion_sensitivity",
    "false_positives_per_slice",
    "lesion_dice_matched",
    "lesion_dice_all",
    "pixel_dice_per_slice",
    "pixel_dice_global",
    "pixel_sensitivity",
    "pixel_specificity_image",
    "pixel_accuracy_image",
    "pixel_specificity_lung",
    "pixel_accuracy_lung",
    "slice_sensitivity",
    "slice_specificity",
    "volume_abs_error_voxels",
    "volume_abs_error_ml",
    "involvement_abs_error_pct",
    "num_slices",
    "num_gt_lesions",
    "num_tiny_gt_lesions",
)

MATCH_MODES = ("box", "mask")

Metric = Union[float, str]


def _segmentation_to_rle(segmentation: Any, height: int, width: int, where: str) -> dict:
    """Convert a COCO polygon list or RLE (compressed or not) to one compressed RLE."""
    if isinstance(segmentation, list):
        if not segmentation:
            raise ValueError(f"{where}: empty polygon list in 'segmentation'")
        return mask_util.merge(mask_util.frPyObjects(segmentation, height, width))
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if isinstance(segmentation["counts"], list):
            return mask_util.frPyObjects(segmentation, height, width)
        counts = segmentation["counts"]
        if isinstance(counts, str):
            counts = counts.encode("ascii")
        return {"size": list(segmentation["size"]), "counts": counts}
    raise ValueError(
        f"{where}: 'segmentation' must be a COCO polygon list or an RLE dict with 'size' and "
        f"'counts', got {type(segmentation).__name__}. Lesion datasets need per-lesion masks."
    )


def _binary_masks_to_rles(masks: np.ndarray) -> List[dict]:
    """Encode ``(N, H, W)`` boolean masks as N compressed RLEs."""
    if len(masks) == 0:
        return []
    return mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))


def _union_of_rles(rles: Sequence[dict], height: int, width: int) -> np.ndarray:
    """Decode RLEs into their ``(H, W)`` boolean union."""
    if len(rles) == 0:
        return np.zeros((height, width), dtype=bool)
    return mask_util.decode(mask_util.merge(list(rles), intersect=0)).astype(bool)


def ground_truth_of(record: dict, dataset_name: str) -> dict:
    """Extract what scoring needs from a Detectron2 dataset dict: XYXY boxes, RLEs, extra fields."""
    image_id = record["image_id"]
    height, width = int(record["height"]), int(record["width"])
    boxes, rles = [], []
    for index, annotation in enumerate(record.get("annotations", [])):
        where = f"dataset {dataset_name!r}, image_id {image_id!r}, annotation {index}"
        if "segmentation" not in annotation:
            raise ValueError(f"{where}: missing 'segmentation'. Lesion datasets need per-lesion masks")
        # NOTE: iscrowd is not read, so a crowd annotation counts as one lesion (lesion datasets use 0).
        boxes.append(BoxMode.convert(list(annotation["bbox"]), annotation["bbox_mode"], BoxMode.XYXY_ABS))
        rles.append(_segmentation_to_rle(annotation["segmentation"], height, width, where))
    spacing = record.get("spacing_mm")
    slice_index, slice_label, lung_area = (
        record.get("slice_index"), record.get("slice_label"), record.get("lung_area_px")
    )
    return {
        "image_id": image_id,
        "height": height,
        "width": width,
        "boxes": np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        "rles": rles,
        "case_id": record.get("case_id"),
        "slice_index": int(slice_index) if slice_index is not None else None,
        "spacing_mm": [float(v) for v in spacing] if spacing is not None else None,
        "slice_label": int(slice_label) if slice_label is not None else None,
        "lung_area_px": int(lung_area) if lung_area is not None else None,
    }


def _prediction_arrays(instances, height: int, width: int, image_id: Any) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Return ``(scores (P,), boxes (P, 4) XYXY px, masks (P, H, W) bool or None)`` of Instances."""
    instances = instances.to(torch.device("cpu"))
    scores = instances.scores.numpy().astype(np.float64)
    boxes = instances.pred_boxes.tensor.numpy().astype(np.float64)
    if not instances.has("pred_masks"):
        return scores, boxes, None

    masks = instances.pred_masks
    if isinstance(masks, BitMasks):
        masks = masks.tensor
    masks = masks.numpy()
    masks = masks >= 0.5 if np.issubdtype(masks.dtype, np.floating) else masks != 0
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.shape[1:] != (height, width):
        raise ValueError(
            f"pred_masks of image_id {image_id!r} have shape {tuple(masks.shape)}, but the dataset "
            f"image is {height}x{width}. Return masks at the dataset resolution, as Detectron2's "
            "detector_postprocess does when the input dict carries 'height' and 'width'."
        )
    return scores, boxes, masks


def score_slice(
    ground_truth: dict,
    instances,
    *,
    score_thresh: float,
    iou_thresh: float,
    match_by: str,
    tiny_fraction: float,
) -> dict:
    """Score the predictions of one slice against its ground truth.

    Args:
        ground_truth: :func:`ground_truth_of` of the slice's dataset dict.
        instances: Detectron2 ``Instances`` with ``pred_boxes``, ``scores`` and optionally
            ``pred_masks`` ``(P, H, W)`` on the dataset image grid.

    Returns:
        A JSON-serialisable record of counts; :func:`summarize_slice_records` turns records into
        metrics, and ``LesionEvaluator`` writes them to ``lesion_per_image.json``.
    """
    height, width = ground_truth["height"], ground_truth["width"]
    scores, boxes, masks = _prediction_arrays(instances, height, width, ground_truth["image_id"])
    above_thresh = scores >= score_thresh
    scores, boxes = scores[above_thresh], boxes[above_thresh]
    masks = masks[above_thresh] if masks is not None else None
    if match_by == "mask" and masks is None:
        raise ValueError(
            f"match_by='mask' needs pred_masks, but the output of image_id "
            f"{ground_truth['image_id']!r} has none. Use match_by='box' for box-only models."
        )

    gt_rles = ground_truth["rles"]
    gt_areas = np.asarray(mask_util.area(gt_rles), dtype=np.int64) if gt_rles else np.zeros(0, np.int64)
    gt_tiny = gt_areas < tiny_fraction * height * width
    slice_label = ground_truth["slice_label"]
    # A slice labelled infected without any lesion mask was labelled only at slice level.
    pixel_annotated = not (slice_label == 1 and len(gt_rles) == 0)

    pred_rles = _binary_masks_to_rles(masks) if masks is not None else []
    if masks is not None:
        mask_iou = mask_iou_matrix(pred_rles, gt_rles)
    if match_by == "mask":
        matches = greedy_match(mask_iou, scores, iou_thresh)
    else:
        matches = greedy_match(box_iou_matrix(boxes, ground_truth["boxes"]), scores, iou_thresh)

    record = {
        "image_id": ground_truth["image_id"],
        "case_id": ground_truth["case_id"],
        "slice_index": ground_truth["slice_index"],
        "height": height,
        "width": width,
        "spacing_mm": ground_truth["spacing_mm"],
        "lung_area_px": ground_truth["lung_area_px"],
        "slice_label": int(slice_label) if slice_label is not None else int(len(gt_rles) > 0),
        "slice_predicted": int(len(scores) > 0),
        "pixel_annotated": pixel_annotated,
        "has_masks": masks is not None,
        "num_gt": len(gt_rles),
        "num_gt_tiny": int(gt_tiny.sum()),
        "num_pred": int(len(scores)),
        "num_matched": len(matches),
        "num_matched_tiny": int(sum(gt_tiny[gt_index] for _, gt_index in matches)),
        "matched_dice": [],
        "gt_pixels": None,
        "pred_pixels": None,
        "intersection_pixels": None,
    }
    if masks is None:
        return record

    # Dice = 2|A n B| / (|A| + |B|) = 2 IoU / (1 + IoU) for the same pair of masks.
    record["matched_dice"] = [
        float(2.0 * mask_iou[p, g] / (1.0 + mask_iou[p, g])) for p, g in matches
    ]
    gt_union = _union_of_rles(gt_rles, height, width)
    pred_union = masks.any(axis=0) if len(masks) else np.zeros((height, width), dtype=bool)
    record["gt_pixels"] = int(gt_union.sum())
    record["pred_pixels"] = int(pred_union.sum())
    record["intersection_pixels"] = int(np.logical_and(gt_union, pred_union).sum())
    return record


def _ratio(numerator: float, denominator: float) -> Metric:
    return float(numerator) / float(denominator) if denominator > 0 else NOT_AVAILABLE


def _mean(values: Sequence[float]) -> Metric:
    return float(np.mean(values)) if len(values) else NOT_AVAILABLE


def _summarize_lesions(records: List[dict]) -> Dict[str, Metric]:
    num_gt = sum(r["num_gt"] for r in records)
    num_gt_tiny = sum(r["num_gt_tiny"] for r in records)
    num_pred = sum(r["num_pred"] for r in records)
    num_matched = sum(r["num_matched"] for r in records)
    metrics = {
        "lesion_sensitivity": _ratio(num_matched, num_gt),
        "lesion_precision": _ratio(num_matched, num_pred),
        "tiny_lesion_sensitivity": _ratio(sum(r["num_matched_tiny"] for r in records), num_gt_tiny),
        "false_positives_per_slice": _ratio(num_pred - num_matched, len(records)),
        "lesion_dice_matched": NOT_AVAILABLE,
        "lesion_dice_all": NOT_AVAILABLE,
    }
    if records and all(r["has_masks"] for r in records):
        dice = [d for r in records for d in r["matched_dice"]]
        metrics["lesion_dice_matched"] = _mean(dice)
        metrics["lesion_dice_all"] = _ratio(sum(dice), num_gt)
    return metrics


def _summarize_pixels(records: List[dict]) -> Dict[str, Metric]:
    metrics = {key: NOT_AVAILABLE for key in (
        "pixel_dice_per_slice", "pixel_dice_global", "pixel_sensitivity",
        "pixel_specificity_image", "pixel_accuracy_image",
        "pixel_specificity_lung", "pixel_accuracy_lung",
    )}
    if not records or not all(r["has_masks"] for r in records):
        return metrics

    gt = np.array([r["gt_pixels"] for r in records], dtype=np.float64)
    pred = np.array([r["pred_pixels"] for r in records], dtype=np.float64)
    inter = np.array([r["intersection_pixels"] for r in records], dtype=np.float64)
    image = np.array([r["height"] * r["width"] for r in records], dtype=np.float64)
    false_pos, false_neg = pred - inter, gt - inter
    true_neg = image - gt - pred + inter

    positive = gt > 0
    metrics["pixel_dice_per_slice"] = _mean(2.0 * inter[positive] / (gt[positive] + pred[positive]))
    metrics["pixel_dice_global"] = _ratio(2.0 * inter.sum(), gt.sum() + pred.sum())
    metrics["pixel_sensitivity"] = _ratio(inter.sum(), gt.sum())
    metrics["pixel_specificity_image"] = _ratio(true_neg.sum(), true_neg.sum() + false_pos.sum())
    metrics["pixel_accuracy_image"] = _ratio(inter.sum() + true_neg.sum(), image.sum())

    with_lung = np.array([r["lung_area_px"] is not None for r in records])
    if with_lung.any():
        lung_area = np.array([r["lung_area_px"] for r in records if r["lung_area_px"] is not None], dtype=np.float64)
        union = (gt + pred - inter)[with_lung]
        region = np.maximum(lung_area, union)
        lung_true_neg = region - union
        lung_errors = (false_pos + false_neg)[with_lung]
        metrics["pixel_specificity_lung"] = _ratio(
            lung_true_neg.sum(), lung_true_neg.sum() + false_pos[with_lung].sum()
        )
        metrics["pixel_accuracy_lung"] = _ratio(region.sum() - lung_errors.sum(), region.sum())
    return metrics


def _summarize_slices(records: List[dict]) -> Dict[str, Metric]:
    labels = np.array([r["slice_label"] for r in records], dtype=bool)
    predicted = np.array([r["slice_predicted"] for r in records], dtype=bool)
    return {
        "slice_sensitivity": _ratio((labels & predicted).sum(), labels.sum()),
        "slice_specificity": _ratio((~labels & ~predicted).sum(), (~labels).sum()),
    }


def summarize_volumes(records: List[dict]) -> List[dict]:
    """Sum lesion pixels per ``case_id`` into predicted and ground-truth volumes.

    Only pixel-annotated slices that carry a ``case_id`` and predicted masks count. Volumes
    are in voxels of the dataset image grid, and also in mL when every slice of the case has
    ``spacing_mm``. Involvement is ``100 x lesion pixels / lung pixels`` when every slice has
    ``lung_area_px``. Unknown values are ``NOT_AVAILABLE``.
    """
    by_case: Dict[str, List[dict]] = OrderedDict()
    for record in records:
        if record["case_id"] is not None and record["has_masks"]:
            by_case.setdefault(str(record["case_id"]), []).append(record)

    volumes = []
    for case_id, case_records in by_case.items():
        gt_voxels = sum(r["gt_pixels"] for r in case_records)
        pred_voxels = sum(r["pred_pixels"] for r in case_records)
        entry = {
            "case_id": case_id,
            "num_slices": len(case_records),
            "gt_voxels": gt_voxels,
            "pred_voxels": pred_voxels,
            "gt_ml": NOT_AVAILABLE,
            "pred_ml": NOT_AVAILABLE,
            "gt_involvement_pct": NOT_AVAILABLE,
            "pred_involvement_pct": NOT_AVAILABLE,
        }
        spacings = [r["spacing_mm"] for r in case_records]
        if all(s is not None for s in spacings):
            # mm^3 per voxel = slice spacing x row spacing x column spacing; 1 mL = 1000 mm^3.
            ml_per_voxel = [float(np.prod(s)) / 1000.0 for s in spacings]
            entry["gt_ml"] = float(sum(r["gt_pixels"] * v for r, v in zip(case_records, ml_per_voxel)))
            entry["pred_ml"] = float(sum(r["pred_pixels"] * v for r, v in zip(case_records, ml_per_voxel)))
        lung_pixels = [r["lung_area_px"] for r in case_records]
        if all(a is not None for a in lung_pixels) and sum(lung_pixels) > 0:
            entry["gt_involvement_pct"] = 100.0 * gt_voxels / sum(lung_pixels)
            entry["pred_involvement_pct"] = 100.0 * pred_voxels / sum(lung_pixels)
        volumes.append(entry)
    return volumes


def _summarize_volume_errors(volumes: List[dict]) -> Dict[str, Metric]:
    def mean_abs_error(gt_key, pred_key):
        errors = [
            abs(v[pred_key] - v[gt_key]) for v in volumes
            if v[gt_key] != NOT_AVAILABLE and v[pred_key] != NOT_AVAILABLE
        ]
        return _mean(errors)

    return {
        "volume_abs_error_voxels": mean_abs_error("gt_voxels", "pred_voxels"),
        "volume_abs_error_ml": mean_abs_error("gt_ml", "pred_ml"),
        "involvement_abs_error_pct": mean_abs_error("gt_involvement_pct", "pred_involvement_pct"),
    }


def summarize_slice_records(records: Iterable[dict]) -> Tuple[Dict[str, Metric], List[dict]]:
    """Aggregate per-slice records of :func:`score_slice` into metrics and per-volume entries.

    Returns ``(metrics, volumes)``: ``metrics`` has every key of :data:`LESION_METRICS`, with
    ``NOT_AVAILABLE`` where the metric is undefined; ``volumes`` is :func:`summarize_volumes`.
    """
    records = list(records)
    annotated = [r for r in records if r["pixel_annotated"]]
    volumes = summarize_volumes(annotated)

    metrics: Dict[str, Metric] = {}
    metrics.update(_summarize_lesions(annotated))
    metrics.update(_summarize_pixels(annotated))
    metrics.update(_summarize_slices(records))
    metrics.update(_summarize_volume_errors(volumes))
    metrics["num_slices"] = float(len(records))
    metrics["num_gt_lesions"] = float(sum(r["num_gt"] for r in annotated))
    metrics["num_tiny_gt_lesions"] = float(sum(r["num_gt_tiny"] for r in annotated))
    return OrderedDict((key, metrics[key]) for key in LESION_METRICS), volumes


