#!/usr/bin/env python
r"""Train the lung U-Net on one view (axial slices or sagittal reconstructions) of prepared cases.

Example:
    python tools/train_lung_unet.py --config-file configs/lung/axial_cpu.yaml
    python tools/train_lung_unet.py --config-file configs/lung/axial_cpu.yaml --resume
    python tools/train_lung_unet.py --config-file configs/lung/axial_cpu.yaml --eval-only \
        MODEL.WEIGHTS output/lung_axial_cpu/model_final.pth

The cases root (``LUNG.CASES_ROOT``, written by tools/prepare_data.py) must contain
``splits.json``; the datasets ``covid_lung_{axial,sagittal}_{train,val}`` are built from it.
Validation Dice is logged at every evaluation period.
"""

import logging

import covid_d2  # first: applies the detectron2 0.6 shims before detectron2 loads

from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import default_argument_parser

from covid_d2.engine import ResumableTrainer, covid_setup, launch, train_or_evaluate
from covid_d2.lung.data import LungViewMapper, register_lung_datasets
from covid_d2.lung.evaluation import LungDiceEvaluator

logger = logging.getLogger("covid_d2.train_lung_unet")


class LungTrainer(ResumableTrainer):
    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=LungViewMapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name,
                                           mapper=LungViewMapper(cfg, is_train=False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return LungDiceEvaluator(dataset_name)


def setup(args):
    cfg = covid_setup(args)
    register_lung_datasets(cfg.LUNG.CASES_ROOT)
    return cfg


def main(args):
    cfg = setup(args)
    return train_or_evaluate(LungTrainer, cfg, args.eval_only, args.resume)


if __name__ == "__main__":
    args = default_argument_parser(epilog=__doc__).parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
