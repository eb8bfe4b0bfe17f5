#!/usr/bin/env python
"""Measure the lung stage: Dice and HD95 of axial, fused and fused+CRF masks, HU sanity checks.

Example:
    python tools/eval_lung.py --cases-root datasets/cases --config-file configs/lung/axial_cpu.yaml \
        --axial-weights output/lung_axial_cpu/model_final.pth \
        --sagittal-weights output/lung_sagittal_cpu/model_final.pth --output output/lung_eval.json

On the cases of ``--split`` that have a lung mask it reports, per variant, the mean Dice and the
95th-percentile Hausdorff distance (in voxel units of the case grid, since the shared PNG cases
have no known spacing). On HU cases without lung masks (``--hu-split``) it reports the lung
volume in litres and the Dice against a classical -320 HU threshold mask. Seconds per volume
are given for each step.
"""

import argparse
import json
import logging
import pathlib
import sys
import time

import covid_d2  # noqa: F401  (first: applies the detectron2 0.6 shims)
import numpy as np

from covid_d2.data.volume import load_case
from covid_d2.engine import load_covid_config
from covid_d2.evaluation.table import format_results_table
from covid_d2.lung.classical import classical_lung_mask
from covid_d2.lung.crf import CRFParams, fuse_views, refine_lung_volume
from covid_d2.lung.metrics import dice, hausdorff95
from covid_d2.lung.predict import LungViewPredictor, lung_input_volume
from covid_d2.utils.atomic import write_json_atomic

logger = logging.getLogger("covid_d2.eval_lung")

VARIANTS = ("axial", "axial+sagittal", "axial+sagittal+CRF")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases-root", required=True, type=pathlib.Path)
    parser.add_argument("--config-file", default="configs/lung/axial_cpu.yaml")
    parser.add_argument("--axial-weights", required=True)
    parser.add_argument("--sagittal-weights", required=True)
    parser.add_argument("--split", default="val", help="split of splits.json scored against lung GT")
    parser.add_argument("--hu-split", default="test",
                        help="split whose HU cases get the classical-mask sanity check")
    parser.add_argument("--output", type=pathlib.Path, default=None, help="JSON file for results")
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    return parser.parse_args(argv)


def masks_for_variants(grey, axial, sagittal, cfg):
    """Return {variant: (mask, seconds)} for the three lung-stage variants of one volume."""
    results = {}
    start = time.perf_counter()
    axial_probability = axial.predict(grey)
    axial_s = time.perf_counter() - start
    start = time.perf_counter()
    sagittal_probability = sagittal.predict(grey)
    sagittal_s = time.perf_counter() - start
    fused = fuse_views(axial_probability, sagittal_probability)
    crf = cfg.LUNG.CRF
    for variant, probability, params, predict_s in (
            (VARIANTS[0], axial_probability, None, axial_s),
            (VARIANTS[1], fused, None, axial_s + sagittal_s),
            (VARIANTS[2], fused, CRFParams.from_config(cfg), axial_s + sagittal_s)):
        start = time.perf_counter()
        mask = refine_lung_volume(probability, grey, params, crf.MAX_COMPONENTS,
                                  crf.MIN_RELATIVE_SIZE)
        results[variant] = (mask, predict_s + time.perf_counter() - start)
    return results


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    cfg = load_covid_config(args.config_file, args.opts)
    axial = LungViewPredictor(cfg, args.axial_weights, "axial")
    sagittal = LungViewPredictor(cfg, args.sagittal_weights, "sagittal")
    with open(args.cases_root / "splits.json") as f:
        splits = json.load(f)

    scores = {variant: {"dice": [], "hd95_voxels": [], "seconds": []} for variant in VARIANTS}
    for case_id in splits.get(args.split, []):
        case = load_case(args.cases_root / case_id)
        if case.lung is None:
            continue
        grey = lung_input_volume(case.image, cfg.LUNG.INTENSITY_KIND)
        for variant, (mask, seconds) in masks_for_variants(grey, axial, sagittal, cfg).items():
            scores[variant]["dice"].append(dice(mask, case.lung))
            scores[variant]["hd95_voxels"].append(hausdorff95(mask, case.lung, (1.0, 1.0, 1.0)))
            scores[variant]["seconds"].append(seconds)
        logger.info("%s: %s", case_id, {v: round(scores[v]["dice"][-1] or 0.0, 4) for v in VARIANTS})

    rows = {}
    for variant, values in scores.items():
        rows[variant] = {key: float(np.mean([v for v in vals if v is not None]))
                         for key, vals in values.items() if any(v is not None for v in vals)}
    logger.info("Lung stage on the %s cases:\n%s", args.split,
                format_results_table(rows, row_header="variant"))

    hu_rows = {}
    for case_id in splits.get(args.hu_split, []):
        case = load_case(args.cases_root / case_id)
        if case.image.intensity_kind != "hu":
            continue
        grey = lung_input_volume(case.image, cfg.LUNG.INTENSITY_KIND)
        mask, seconds = masks_for_variants(grey, axial, sagittal, cfg)[VARIANTS[2]]
        voxel_l = float(np.prod(case.image.spacing)) / 1e6
        hu_rows[case_id] = {
            "lung_volume_l": float(mask.sum()) * voxel_l,
            "classical_lung_volume_l": float(classical_lung_mask(case.image.array).sum()) * voxel_l,
            "dice_vs_classical": dice(mask, classical_lung_mask(case.image.array)),
            "seconds": seconds,
        }
    if hu_rows:
        logger.info("HU sanity check (fused+CRF vs -320 HU threshold mask):\n%s",
                    format_results_table(hu_rows, row_header="case"))
    if args.output:
        write_json_atomic(args.output, {"validation": rows, "hu_sanity": hu_rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
