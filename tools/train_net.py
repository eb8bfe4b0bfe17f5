#!/usr/bin/env python
r"""Train and evaluate covid-d2 lesion models (and the resolver pre-training) with Detectron2.

Examples:
    python tools/train_net.py --config-file configs/lesion/cpu/st_R18.yaml
    python tools/train_net.py --config-file configs/lesion/cpu/st_R18.yaml --resume
    python tools/train_net.py --config-file configs/lesion/cpu/st_R18.yaml --eval-only \
        MODEL.WEIGHTS output/lesion_st_R18_cpu/model_final.pth
    python tools/train_net.py --config-file configs/lesion/cpu/st_R18.yaml --num-gpus 2

Datasets are the three-slice exports registered on ``import covid_d2`` (see datasets/README.md).
Both train and test loaders use ``ThreeSliceDatasetMapper``; lesion datasets are scored by
COCOEvaluator (bbox, segm) and LesionEvaluator. With ``--num-gpus N`` on a CPU-only machine,
N processes train through torch.distributed with the gloo backend.
"""

import logging
import os

import covid_d2  # first: applies the detectron2 0.6 shims before detectron2 loads

from detectron2.data import (DatasetCatalog, MetadataCatalog, build_detection_test_loader,
                             build_detection_train_loader)
from detectron2.engine import default_argument_parser

from covid_d2.data.three_slice_mapper import ThreeSliceDatasetMapper
from covid_d2.engine import ResumableTrainer, covid_setup, launch, train_or_evaluate
from covid_d2.evaluation import LesionEvaluator, SemSegAsInstances, build_lesion_evaluators

logger = logging.getLogger("covid_d2.train_net")


class Trainer(ResumableTrainer):
    """DefaultTrainer with the three-slice mapper and the lesion evaluators."""

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=ThreeSliceDatasetMapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name,
                                           mapper=ThreeSliceDatasetMapper(cfg, is_train=False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", "")
        if evaluator_type != "covid_lesion":
            raise NotImplementedError(
                f"Dataset {dataset_name} has evaluator_type {evaluator_type!r}; train_net.py "
                "evaluates covid_lesion datasets only (register it with "
                "covid_d2.data.datasets.register_covid_lesion_instances)."
            )
        if cfg.MODEL.META_ARCHITECTURE == "SpatioTemporalResolver":
            # The resolver predicts a lesion probability map, scored as connected-component
            # instances by the lesion evaluator (as for the U-Net baseline).
            baseline = cfg.MODEL.UNET_BASELINE
            return SemSegAsInstances(LesionEvaluator(cfg, dataset_name, output_dir=output_folder),
                                     baseline.SCORE_THRESH_TEST, baseline.MIN_AREA_TEST)
        return build_lesion_evaluators(cfg, dataset_name, output_folder)


def check_datasets(cfg) -> None:
    """Raise a clear error when a configured dataset is not registered."""
    registered = set(DatasetCatalog.list())
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        if name not in registered:
            raise SystemExit(
                f"Dataset {name!r} (from the config) is not registered. Export it with "
                "tools/prepare_data.py, tools/preprocess_lung_roi.py and tools/export_coco.py "
                "(see README), and point $COVID_D2_DATASETS to the export folder."
            )


def setup(args):
    cfg = covid_setup(args)
    check_datasets(cfg)
    return cfg


def main(args):
    cfg = setup(args)
    return train_or_evaluate(Trainer, cfg, args.eval_only, args.resume)


if __name__ == "__main__":
    args = default_argument_parser(epilog=__doc__).parse_args()
    logger.info("Command line arguments: %s", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
