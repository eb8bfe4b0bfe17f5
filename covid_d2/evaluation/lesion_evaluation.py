"""Detectron2 ``DatasetEvaluator`` of COVID-19 lesion predictions; its docstring defines every metric."""

import itertools
import logging
import math
import os
from collections import OrderedDict
from typing import List, Optional

from detectron2.config import configurable
from detectron2.data import DatasetCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from covid_d2.evaluation.lesion_metrics import (
    MATCH_MODES,
    NOT_AVAILABLE,
    ground_truth_of,
    score_slice,
    summarize_slice_records,
)
from covid_d2.utils.atomic import write_json_atomic

logger = logging.getLogger(__name__)


class LesionEvaluator(DatasetEvaluator):
    """Score lesion predictions of any Detectron2 model with lesion, pixel, slice and volume metrics.

    Ground truth comes from ``DatasetCatalog.get(dataset_name)``, looked up by ``image_id``.
    Each annotation is one lesion (``bbox`` with ``bbox_mode``, ``segmentation`` as COCO RLE or
    polygons). Optional dict fields: ``slice_label``, ``lung_area_px``, ``case_id``,
    ``spacing_mm`` ``[slice, row, column]`` in mm. Predictions are the ``instances`` of each
    output (``pred_boxes`` XYXY px, ``scores``, optional ``pred_masks`` ``(P, H, W)`` on the
    dataset image grid). All numbers below refer to that grid.

    Definitions, per slice ``s`` (a dataset dict):

    - Kept predictions: those with ``score >= score_thresh``. All metrics use only these.
    - Lesion matching: kept predictions are visited by descending score. Each takes the
      unmatched ground-truth (GT) lesion of largest IoU if that IoU is strictly greater than
      ``iou_thresh``. The IoU is of boxes (``match_by="box"``) or of masks (``"mask"``).
      TP = matched pairs, FN = unmatched GT lesions, FP = unmatched kept predictions.
    - A GT lesion is tiny when its mask area in pixels is ``< tiny_fraction x H x W``.
    - ``G_s``, ``P_s``: union of the GT lesion masks, union of the kept predicted masks.
      ``I_s = |G_s n P_s|``; ``N_s = H x W``; ``TN_s = N_s - |G_s u P_s|``.
    - Pixel-annotated slice: every slice except one with ``slice_label == 1`` and no
      annotations (labelled infected at slice level only). Lesion-, pixel- and volume-level
      metrics use pixel-annotated slices only; slice-level metrics use all slices.

    Metrics (sums run over slices; a ratio with a zero denominator is "n/a"):

    - ``lesion_sensitivity`` = sum TP / sum GT lesions.
    - ``lesion_precision`` = sum TP / sum kept predictions.
    - ``tiny_lesion_sensitivity`` = sum TP on tiny GT lesions / sum tiny GT lesions.
    - ``false_positives_per_slice`` = sum FP / number of pixel-annotated slices.
    - ``lesion_dice_matched`` = mean over TP pairs of ``2|A n B| / (|A| + |B|)`` of the two masks.
    - ``lesion_dice_all`` = sum of TP Dice / sum GT lesions (a missed lesion scores 0).
    - ``pixel_dice_per_slice`` = mean over slices with ``|G_s| > 0`` of
      ``2 I_s / (|G_s| + |P_s|)``.
    - ``pixel_dice_global`` = ``2 sum I_s / (sum |G_s| + sum |P_s|)``.
    - ``pixel_sensitivity`` = ``sum I_s / sum |G_s|``.
    - ``pixel_specificity_image`` = ``sum TN_s / sum (N_s - |G_s|)``, over whole images.
    - ``pixel_accuracy_image`` = ``sum (I_s + TN_s) / sum N_s``, over whole images.
    - ``pixel_specificity_lung``, ``pixel_accuracy_lung``: the same over the lesion-relevant
      pixels, the lung. Only slices with ``lung_area_px`` count. The lung is taken to contain
      every GT and predicted lesion pixel, so its size is
      ``L_s = max(lung_area_px, |G_s u P_s|)`` and its true negatives ``L_s - |G_s u P_s|``.
      Accuracy = ``1 - sum (|G_s| + |P_s| - 2 I_s) / sum L_s``, which is the fraction of lung
      pixels classified correctly; specificity = ``sum (L_s - |G_s u P_s|) / sum (L_s - |G_s|)``.
    - ``slice_sensitivity``, ``slice_specificity``: a slice is predicted positive when it has a
      kept prediction, and is truly positive when ``slice_label == 1`` (when the label is absent,
      when it has a GT lesion). Sensitivity = TP slices / positive slices, specificity =
      TN slices / negative slices.
    - Per volume (slices grouped by ``case_id``): lesion volume = ``sum |G_s|`` (GT) and
      ``sum |P_s|`` (predicted) in voxels, times ``prod(spacing_mm) / 1000`` in mL when every
      slice has ``spacing_mm`` (else mL is "n/a"); lung involvement % =
      ``100 x sum |G_s| / sum lung_area_px`` (predicted: ``|P_s|``). Only the dataset's slices
      count, so a volume of a subset of slices is the lesion volume within those slices.
      ``volume_abs_error_voxels``, ``volume_abs_error_ml`` and ``involvement_abs_error_pct``
      (percentage points) are the mean over volumes of ``|predicted - GT|``.
    - ``num_slices``, ``num_gt_lesions``, ``num_tiny_gt_lesions``: counts, as floats.

    Mask-based metrics are "n/a" when any output lacks ``pred_masks``.

    ``evaluate()`` returns ``{"lesion": {metric: float}}`` with the "n/a" metrics left out,
    because Detectron2's ``print_csv_format`` and ``EvalHook`` call ``float()`` on every value.
    :data:`LESION_METRICS` lists every key; :func:`covid_d2.evaluation.format_results_table`
    prints a missing key as "n/a". With ``output_dir``, ``lesion_metrics.json`` holds every
    metric ("n/a" as the string ``NOT_AVAILABLE``) and the per-volume entries, and
    ``lesion_per_image.json`` the per-slice records.
    """

    @configurable
    def __init__(
        self,
        dataset_name: str,
        *,
        score_thresh: float = 0.5,
        iou_thresh: float = 0.5,
        match_by: str = "box",
        tiny_fraction: float = 0.00059,
        distributed: bool = True,
        output_dir: Optional[str] = None,
    ):
        """
        Args:
            dataset_name: a name registered in ``DatasetCatalog``.
            score_thresh: predictions with a lower score are ignored.
            iou_thresh: a match needs an IoU strictly greater than this.
            match_by: ``"box"`` or ``"mask"`` IoU for lesion matching.
            tiny_fraction: GT lesions smaller than this fraction of the slice area are tiny.
            distributed: gather the per-image records of all workers before summarizing.
            output_dir: folder for the JSON outputs, or None to write nothing.
        """
        if match_by not in MATCH_MODES:
            raise ValueError(f"match_by must be one of {MATCH_MODES}, got {match_by!r} (TEST.LESION.MATCH_BY)")
        if not 0.0 <= iou_thresh < 1.0:
            raise ValueError(f"iou_thresh must be in [0, 1), got {iou_thresh} (TEST.LESION.IOU_THRESH)")
        if not 0.0 < tiny_fraction < 1.0:
            raise ValueError(f"tiny_fraction must be in (0, 1), got {tiny_fraction} (TEST.LESION.TINY_FRACTION)")

        self._dataset_name = dataset_name
        self._score_thresh = float(score_thresh)
        self._iou_thresh = float(iou_thresh)
        self._match_by = match_by
        self._tiny_fraction = float(tiny_fraction)
        self._distributed = distributed
        self._output_dir = output_dir
        self._ground_truth = {}
        for record in DatasetCatalog.get(dataset_name):
            self._ground_truth[record["image_id"]] = ground_truth_of(record, dataset_name)
        self._records: List[dict] = []

    @classmethod
    def from_config(cls, cfg, dataset_name, distributed=True, output_dir=None):
        lesion = cfg.TEST.LESION
        return {
            "dataset_name": dataset_name,
            "score_thresh": lesion.SCORE_THRESH,
            "iou_thresh": lesion.IOU_THRESH,
            "match_by": lesion.MATCH_BY,
            "tiny_fraction": lesion.TINY_FRACTION,
            "distributed": distributed,
            "output_dir": output_dir,
        }

    def reset(self):
        self._records = []

    def process(self, inputs, outputs):
        for model_input, output in zip(inputs, outputs):
            image_id = model_input["image_id"]
            if image_id not in self._ground_truth:
                raise KeyError(
                    f"image_id {image_id!r} not found in dataset {self._dataset_name!r}. Evaluate "
                    "the model on the dataset the evaluator was built for"
                )
            if "instances" not in output:
                raise ValueError(
                    f"the model output of image_id {image_id!r} has no 'instances' "
                    f"(keys: {sorted(output)}). LesionEvaluator needs instance predictions"
                )
            self._records.append(
                score_slice(
                    self._ground_truth[image_id],
                    output["instances"],
                    score_thresh=self._score_thresh,
                    iou_thresh=self._iou_thresh,
                    match_by=self._match_by,
                    tiny_fraction=self._tiny_fraction,
                )
            )

    def evaluate(self):
        records = self._records
        if self._distributed:
            comm.synchronize()
            records = list(itertools.chain(*comm.gather(records, dst=0)))
            if not comm.is_main_process():
                return {}
        if not records:
            logger.warning("LesionEvaluator on %s processed no model outputs", self._dataset_name)
            return {}

        metrics, volumes = summarize_slice_records(records)
        skipped = sum(not r["pixel_annotated"] for r in records)
        if skipped:
            logger.info(
                "%d of %d slices of %s are labelled infected without lesion masks: they count "
                "for slice-level metrics only", skipped, len(records), self._dataset_name,
            )
        if self._output_dir:
            write_json_atomic(
                os.path.join(self._output_dir, "lesion_metrics.json"),
                {"dataset": self._dataset_name, "metrics": metrics, "volumes": volumes},
            )
            write_json_atomic(os.path.join(self._output_dir, "lesion_per_image.json"), records)

        available = OrderedDict(
            (key, value) for key, value in metrics.items()
            if value != NOT_AVAILABLE and math.isfinite(value)
        )
        missing = [key for key, value in metrics.items() if key not in available]
        logger.info("Lesion metrics on %s: %s", self._dataset_name, dict(available))
        if missing:
            logger.info("Lesion metrics n/a on %s (empty denominator): %s", self._dataset_name, ", ".join(missing))
        return OrderedDict({"lesion": available})
