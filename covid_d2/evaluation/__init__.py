"""Evaluators of covid-d2: lesion metrics next to Detectron2's COCO AP, and results tables."""

from detectron2.evaluation import COCOEvaluator, DatasetEvaluators

from covid_d2.evaluation.lesion_evaluation import LesionEvaluator
from covid_d2.evaluation.lesion_metrics import (
    LESION_METRICS,
    NOT_AVAILABLE,
    score_slice,
    summarize_slice_records,
)
from covid_d2.evaluation.sem_seg_adapter import SemSegAsInstances
from covid_d2.evaluation.table import average_results, flatten_results, format_results_table

__all__ = [
    "SemSegAsInstances",
    "LESION_METRICS",
    "NOT_AVAILABLE",
    "LesionEvaluator",
    "average_results",
    "build_lesion_evaluators",
    "flatten_results",
    "format_results_table",
    "score_slice",
    "summarize_slice_records",
]


def build_lesion_evaluators(cfg, dataset_name: str, output_dir=None) -> DatasetEvaluators:
    """Build COCO AP (bbox, plus segm for models that predict masks) and lesion metrics for a dataset.

    A model predicts masks when ``cfg.MODEL.MASK_ON`` is set or when it is the ``UNetBaseline``,
    whose instances are connected components of its lesion map.

    Without the compiled ``detectron2._C``, the shims of :mod:`covid_d2.compat` make
    ``COCOEvaluator`` use pycocotools. Both evaluators write into ``output_dir`` when given.
    """
    predicts_masks = cfg.MODEL.MASK_ON or cfg.MODEL.META_ARCHITECTURE == "UNetBaseline"
    tasks = ("bbox", "segm") if predicts_masks else ("bbox",)
    return DatasetEvaluators(
        [
            COCOEvaluator(dataset_name, tasks=tasks, distributed=True, output_dir=output_dir),
            LesionEvaluator(cfg, dataset_name, distributed=True, output_dir=output_dir),
        ]
    )
