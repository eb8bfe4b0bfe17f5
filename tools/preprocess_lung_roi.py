#!/usr/bin/env python
"""Write lung-ROI cases: predict (or take) lung masks, mask and crop every case of a cases root.

Example:
    python tools/preprocess_lung_roi.py --cases-root datasets/cases --output-dir datasets/roi \
        --axial-weights output/lung_axial_cpu/model_final.pth \
        --sagittal-weights output/lung_sagittal_cpu/model_final.pth \
        --config-file configs/lung/axial_cpu.yaml --workers 2 --shard 0/1

Each output case is a case folder with ``roi.json`` (crop record, lung volume, timings) and
``lung_full.nii.gz``; ``manifest.csv`` lists every finished case of the output folder. Finished
cases are skipped unless ``--overwrite``. For HU cases the log also gives the Dice between the
predicted lungs and a classical -320 HU threshold mask, as a sanity check.
"""

import argparse
import csv
import json
import logging
import multiprocessing
import io
import pathlib
import shutil
import sys
from typing import Dict, List, Optional

import numpy as np
import torch
import tqdm

import covid_d2  # noqa: F401  (applies the detectron2 0.6 shims first)
from covid_d2.engine import load_covid_config
from covid_d2.lung.roi import ROI_JSON
from covid_d2.utils.atomic import write_text_atomic

logger = logging.getLogger("covid_d2.preprocess_lung_roi")

_worker_state: Dict = {}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases-root", required=True, type=pathlib.Path,
                        help="folder of case folders (tools/prepare_data.py output)")
    parser.add_argument("--output-dir", required=True, type=pathlib.Path,
                        help="folder that receives the ROI case folders")
    parser.add_argument("--config-file", default="configs/lung/axial_cpu.yaml",
                        help="lung config (U-Net, CRF and ROI keys)")
    parser.add_argument("--axial-weights", default="", help="checkpoint of the axial lung U-Net")
    parser.add_argument("--sagittal-weights", default="",
                        help="checkpoint of the sagittal lung U-Net (optional; fused when given)")
    parser.add_argument("--use-gt-lungs", action="store_true",
                        help="use each case's lung.nii.gz instead of predicting (for ablations)")
    parser.add_argument("--cases", nargs="*", default=None, help="case ids to process (default all)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument("--shard", default="0/1",
                        help="i/n: process the i-th of n interleaved shares of the cases")
    parser.add_argument("--overwrite", action="store_true", help="redo finished cases")
    parser.add_argument("--device", default="cpu", help="torch device for the U-Nets")
    parser.add_argument("--noprogress", action="store_true", help="hide the progress bar")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    try:
        index, count = (int(part) for part in args.shard.split("/"))
        if not 0 <= index < count:
            raise ValueError
    except ValueError:
        parser.error(f"--shard must be i/n with 0 <= i < n, got {args.shard!r}")
    args.shard_index, args.shard_count = index, count
    if not args.use_gt_lungs and not args.axial_weights:
        parser.error("give --axial-weights (a trained lung U-Net) or --use-gt-lungs")
    return args


def _init_worker(args, threads: int) -> None:
    torch.set_num_threads(threads)
    cfg = load_covid_config(args.config_file, args.opts)
    _worker_state["cfg"] = cfg
    _worker_state["args"] = args
    _worker_state["segment"] = None
    if not args.use_gt_lungs:
        from covid_d2.lung.predict import LungViewPredictor, segment_lungs

        axial = LungViewPredictor(cfg, args.axial_weights, "axial", device=args.device)
        sagittal = (LungViewPredictor(cfg, args.sagittal_weights, "sagittal", device=args.device)
                    if args.sagittal_weights else None)
        _worker_state["segment"] = lambda volume: segment_lungs(volume, cfg, axial, sagittal)


def _sanity_dice(case_dir: pathlib.Path, output_dir: pathlib.Path) -> Optional[float]:
    """Dice between the written lung mask and the classical HU mask, for HU cases."""
    from covid_d2.data.nifti import read_mask_nifti
    from covid_d2.data.volume import load_case
    from covid_d2.lung.classical import classical_lung_mask
    from covid_d2.lung.preprocess import LUNG_FULL_FILE

    case = load_case(case_dir)
    lung_path = output_dir / case_dir.name / LUNG_FULL_FILE
    if case.image.intensity_kind != "hu" or not lung_path.is_file():
        return None
    predicted = read_mask_nifti(lung_path, case.image) > 0
    classical = classical_lung_mask(case.image.array) > 0
    total = predicted.sum() + classical.sum()
    return float(2.0 * np.logical_and(predicted, classical).sum() / total) if total else None


def _process(case_dir: pathlib.Path) -> Dict:
    from covid_d2.lung.preprocess import preprocess_case

    args = _worker_state["args"]
    record = preprocess_case(case_dir, args.output_dir, _worker_state["cfg"],
                             segment=_worker_state["segment"], use_gt_lungs=args.use_gt_lungs,
                             overwrite=args.overwrite)
    if record["status"] == "ok" and not args.use_gt_lungs:
        record["dice_vs_classical_hu"] = _sanity_dice(case_dir, args.output_dir)
    return record


def write_manifest(output_dir: pathlib.Path) -> pathlib.Path:
    """Rebuild ``manifest.csv`` from every finished case's ``roi.json``, atomically."""
    rows = []
    for roi_path in sorted(output_dir.glob(f"*/{ROI_JSON}")):
        with open(roi_path) as f:
            record = json.load(f)
        crop = record["crop"]
        rows.append({
            "case_id": record["case_id"], "status": record["status"],
            "lung_source": record["lung_source"], "lung_voxels": record["lung_voxels"],
            "lung_volume_l": record["lung_volume_l"],
            "crop_slice": "%d:%d" % tuple(crop["slice"]), "crop_row": "%d:%d" % tuple(crop["row"]),
            "crop_col": "%d:%d" % tuple(crop["col"]),
            "original_shape": "x".join(str(n) for n in record["original_shape"]),
        })
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["case_id"])
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(output_dir / "manifest.csv", buffer.getvalue())


def select_cases(args) -> List[pathlib.Path]:
    if not args.cases_root.is_dir():
        raise SystemExit(f"Cases root {args.cases_root} does not exist; run tools/prepare_data.py "
                         "first or pass the right --cases-root.")
    case_dirs = sorted(p for p in args.cases_root.iterdir() if (p / "case.json").is_file())
    if args.cases:
        wanted = set(args.cases)
        unknown = wanted - {p.name for p in case_dirs}
        if unknown:
            raise SystemExit(f"Cases {sorted(unknown)} are not in {args.cases_root}.")
        case_dirs = [p for p in case_dirs if p.name in wanted]
    return case_dirs[args.shard_index::args.shard_count]


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    from covid_d2.lung.preprocess import clean_partial_cases

    args.output_dir.mkdir(parents=True, exist_ok=True)
    removed = clean_partial_cases(args.output_dir)
    if removed:
        logger.info("Removed %d partial case folders left by an interrupted run.", removed)
    splits = args.cases_root / "splits.json"
    if splits.is_file() and not (args.output_dir / "splits.json").is_file():
        shutil.copyfile(splits, args.output_dir / "splits.json")

    case_dirs = select_cases(args)
    logger.info("Preprocessing %d cases (shard %d/%d) from %s into %s", len(case_dirs),
                args.shard_index, args.shard_count, args.cases_root, args.output_dir)
    records = []
    if args.workers > 1:
        threads = max(1, torch.get_num_threads() // args.workers)
        context = multiprocessing.get_context("spawn")
        with context.Pool(args.workers, initializer=_init_worker, initargs=(args, threads)) as pool:
            iterator = pool.imap_unordered(_process, case_dirs)
            for record in tqdm.tqdm(iterator, total=len(case_dirs), disable=args.noprogress):
                records.append(record)
                _log_record(record)
    else:
        _init_worker(args, torch.get_num_threads())
        for case_dir in tqdm.tqdm(case_dirs, disable=args.noprogress):
            record = _process(case_dir)
            records.append(record)
            _log_record(record)
    manifest = write_manifest(args.output_dir)
    logger.info("Wrote %s", manifest)
    return 0


def _log_record(record: Dict) -> None:
    if record["status"] == "skipped":
        logger.info("%s: already done, skipped (use --overwrite to redo)", record["case_id"])
        return
    logger.info(
        "%s: %s, lung %s voxels (%s L), crop %s, Dice vs -320 HU mask %s, timings %s",
        record["case_id"], record["status"], record["lung_voxels"], record["lung_volume_l"],
        record.get("crop"), record.get("dice_vs_classical_hu"), record["timings_s"],
    )


if __name__ == "__main__":
    sys.exit(main())
