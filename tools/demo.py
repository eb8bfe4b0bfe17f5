#!/usr/bin/env python
"""Run the covid-d2 main job end to end on the default input and print its results.

Each stage is a real covid-d2 command run in a subprocess, so every step can be re-run by hand.
The stages prepare cases, train the axial and sagittal lung U-Nets and score the lung stage.
They then write lung-ROI cases, export three-slice COCO datasets, pre-train the spatio-temporal
resolver (spatial then temporal phase) and export its encoders. Finally they train the detector,
evaluate it on the held-out cases, and run tools/infer.py on the COVID-CT-MD DICOM volumes.
With no shared data the demo generates synthetic chest phantoms and runs the same stages.

Usage:
    python tools/demo.py [--work-dir output/demo] [--data-root PATH] [--synthetic]
"""

import argparse
import json
import logging
import os
import pathlib
import subprocess
import sys
import time
from typing import Dict, List

import covid_d2  # noqa: F401  (first: applies the detectron2 0.6 shims)
import numpy as np

from covid_d2.evaluation.table import format_results_table
from covid_d2.paths import DATA_ROOT_ENV, data_root

logger = logging.getLogger("covid_d2.demo")

REPO = pathlib.Path(__file__).resolve().parent.parent
LUNG_CONFIGS = {
    # view -> (config for the shared 8-bit data, config for HU phantoms)
    "axial": ("configs/lung/axial_cpu.yaml", "configs/lung/axial_cpu_hu.yaml"),
    "sagittal": ("configs/lung/sagittal_cpu.yaml", "configs/lung/sagittal_cpu_hu.yaml"),
}
RESOLVER_SPATIAL = "configs/resolver/cpu/spatial_R18.yaml"
RESOLVER_TEMPORAL = "configs/resolver/cpu/temporal_R18.yaml"
DETECTOR = "configs/lesion/cpu/st_R18.yaml"
DICOM_INPUTS = ("covid_ct_md_sample/COVID-19/P001", "covid_ct_md_sample/Normal/normal002")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=pathlib.Path, default=REPO / "output" / "demo",
                        help="folder for every demo output (created; reused on a second run)")
    parser.add_argument("--data-root", default="",
                        help=f"shared data folder (default ${DATA_ROOT_ENV} or ../shared/data)")
    parser.add_argument("--synthetic", action="store_true",
                        help="use synthetic phantoms even when the shared data is present")
    parser.add_argument("--detector-iters", type=int, default=900,
                        help="detector training iterations (CPU schedule)")
    parser.add_argument("--resolver-iters", type=int, default=100,
                        help="iterations of each resolver pre-training phase")
    parser.add_argument("--lung-iters", type=int, default=400,
                        help="iterations of each lung U-Net")
    return parser.parse_args(argv)


class Stages:
    """Run the demo's commands in order, logging each with its wall time."""

    def __init__(self, work_dir: pathlib.Path, env: Dict[str, str]):
        self.work_dir = work_dir
        self.env = env
        self.timings: Dict[str, float] = {}
        self.log_dir = work_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)

    def run(self, name: str, command: List[str]) -> None:
        log_path = self.log_dir / f"{name}.log"
        logger.info("[%s] %s", name, " ".join(command))
        start = time.perf_counter()
        with open(log_path, "w") as log:
            result = subprocess.run([sys.executable, *command], cwd=REPO, env=self.env,
                                    stdout=log, stderr=subprocess.STDOUT)
        self.timings[name] = time.perf_counter() - start
        if result.returncode != 0:
            tail = log_path.read_text()[-3000:]
            raise SystemExit(f"Demo stage '{name}' failed (exit {result.returncode}); its log "
                             f"{log_path} ends with:\n{tail}")
        logger.info("[%s] done in %.0f s (log: %s)", name, self.timings[name], log_path)


def _lung_stages(stages: Stages, cases: pathlib.Path, work: pathlib.Path, iters: int,
                 synthetic: bool) -> Dict[str, str]:
    weights = {}
    for view, configs in LUNG_CONFIGS.items():
        config = configs[int(synthetic)]
        out = work / f"lung_{view}"
        stages.run(f"train_lung_{view}", [
            "tools/train_lung_unet.py", "--config-file", config, "--resume",
            "LUNG.CASES_ROOT", str(cases), "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", str(iters),
            "SOLVER.STEPS", f"({int(iters * 0.75)},)", "TEST.EVAL_PERIOD", "0"])
        weights[view] = str(out / "model_final.pth")
    return weights


def _slice_level(infer_dir: pathlib.Path, cases: pathlib.Path) -> Dict[str, Dict]:
    """Slice-level detection on the CT-MD volumes against their slice labels."""
    from covid_d2.data.nifti import read_mask_nifti
    from covid_d2.data.volume import load_case

    results = {}
    for case_id, scan_id in (("covid_ct_md_P001", "P001"), ("covid_ct_md_normal002", "normal002")):
        lesion_path = infer_dir / scan_id / "lesions.nii.gz"
        if not lesion_path.is_file() or not (cases / case_id).is_dir():
            continue
        case = load_case(cases / case_id)
        flagged = read_mask_nifti(lesion_path, case.image).reshape(case.image.shape[0], -1).any(axis=1)
        labels = np.asarray(case.meta.get("slice_labels") or [0] * len(flagged), dtype=bool)
        positives, negatives = labels.sum(), (~labels).sum()
        results[scan_id] = {
            "slices": int(len(flagged)),
            "flagged_fraction": float(flagged.mean()),
            "slice_sensitivity": float((flagged & labels).sum() / positives) if positives else "n/a",
            "slice_specificity": float((~flagged & ~labels).sum() / negatives) if negatives else "n/a",
        }
    return results


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    cases = work / "cases"
    roi = work / "roi"
    env = dict(os.environ, COVID_D2_DATASETS=str(work), PYTHONUNBUFFERED="1")
    stages = Stages(work, env)

    synthetic = args.synthetic
    root = None
    if not synthetic:
        try:
            root = data_root(args.data_root)
        except FileNotFoundError as error:
            logger.warning("%s", error)
            synthetic = True
    if synthetic:
        logger.warning("INPUT IS SYNTHETIC: no shared data found, so the demo runs on generated "
                       "chest phantoms. Its numbers say nothing about real CT.")
        from covid_d2.data.phantom import write_phantom_cases

        write_phantom_cases(cases)
    else:
        env[DATA_ROOT_ENV] = str(root)
        stages.run("prepare_data", ["tools/prepare_data.py", "--data-root", str(root),
                                    "--output-dir", str(cases), "--noprogress"])

    weights = _lung_stages(stages, cases, work, args.lung_iters, synthetic)
    lung_config = LUNG_CONFIGS["axial"][int(synthetic)]
    stages.run("eval_lung", [
        "tools/eval_lung.py", "--cases-root", str(cases), "--config-file", lung_config,
        "--axial-weights", weights["axial"], "--sagittal-weights", weights["sagittal"],
        "--output", str(work / "lung_eval.json")])

    with open(cases / "splits.json") as f:
        splits = json.load(f)
    roi_cases = [c for split in splits.values() for c in split if not c.startswith("infnet_")]
    stages.run("preprocess_lung_roi", [
        "tools/preprocess_lung_roi.py", "--cases-root", str(cases), "--output-dir", str(roi),
        "--config-file", lung_config, "--axial-weights", weights["axial"],
        "--sagittal-weights", weights["sagittal"], "--noprogress", "--cases", *roi_cases])
    # None of the shared data sets has clinical stage labels, so the temporal encoder's stage
    # supervision uses the proxy labeller (stage from lung involvement), named as such in the log.
    logger.info("Stage labels come from the lung-involvement proxy (--proxy-stages), not from "
                "clinical staging.")
    stages.run("export_coco", ["tools/export_coco.py", "--cases-root", str(roi),
                               "--output-dir", str(work / "covid_lesion"), "--split", "all",
                               "--proxy-stages", "--noprogress"])

    # The lesion configs train on covid_zenodo_train and test on covid_zenodo_val.
    detector_common = (["DATASETS.TRAIN", "('covid_phantom_train',)",
                        "DATASETS.TEST", "('covid_phantom_val',)"] if synthetic else [])
    resolver_spatial = work / "resolver_spatial"
    resolver_temporal = work / "resolver_temporal"
    phase_opts = ["SOLVER.MAX_ITER", str(args.resolver_iters), "SOLVER.STEPS", "()",
                  "SOLVER.WARMUP_ITERS", "10", "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()",
                  *detector_common]
    stages.run("resolver_spatial", ["tools/train_net.py", "--config-file", RESOLVER_SPATIAL,
                                    "--resume", "OUTPUT_DIR", str(resolver_spatial), *phase_opts])
    stages.run("resolver_temporal", [
        "tools/train_net.py", "--config-file", RESOLVER_TEMPORAL, "--resume",
        "OUTPUT_DIR", str(resolver_temporal),
        "MODEL.WEIGHTS", str(resolver_spatial / "model_final.pth"), *phase_opts])
    encoder = work / "encoder.pth"
    stages.run("export_encoder", ["tools/export_encoder.py",
                                  str(resolver_temporal / "model_final.pth"), str(encoder),
                                  "--phase", "temporal"])

    detector_dir = work / "detector"
    iters = args.detector_iters
    stages.run("train_detector", [
        "tools/train_net.py", "--config-file", DETECTOR, "--resume", "OUTPUT_DIR",
        str(detector_dir), "MODEL.SPATIO_TEMPORAL.ENCODER_WEIGHTS", str(encoder),
        "SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", f"({int(iters * 0.75)},)",
        "TEST.EVAL_PERIOD", "0", *detector_common])

    infer_dir = work / "infer"
    if synthetic:
        inputs = [_write_phantom_scan(cases, work)]
    else:
        inputs = [str(root / relative) for relative in DICOM_INPUTS]
    stages.run("infer", [
        "tools/infer.py", "--input", *inputs, "--output-dir", str(infer_dir),
        "--config-file", DETECTOR, "--weights", str(detector_dir / "model_final.pth"),
        "--lung-config", lung_config, "--lung-axial-weights", weights["axial"],
        "--lung-sagittal-weights", weights["sagittal"], "--noprogress"])

    _print_summary(work, detector_dir, infer_dir, cases, stages, synthetic)
    return 0


def _write_phantom_scan(cases: pathlib.Path, work: pathlib.Path) -> str:
    """Write the lesion-free test phantom as a NIfTI scan for tools/infer.py."""
    from covid_d2.data.volume import load_case
    from covid_d2.data.writers import write_volume_nifti

    case = load_case(cases / "phantom_06")
    path = work / "phantom_scan.nii.gz"
    write_volume_nifti(case.image.to_original_grid(case.image.array), case.image.original_affine, path)
    return str(path)


# Lesion-evaluator metrics shown in the demo summary (all are in lesion_metrics.json).
SUMMARY_METRICS = ("lesion_dice_matched", "pixel_accuracy_lung", "lesion_sensitivity",
                   "tiny_lesion_sensitivity", "pixel_dice_per_slice", "false_positives_per_slice")


def _coco_ap(detector_dir: pathlib.Path) -> Dict[str, float]:
    """Return bbox and segm AP of the detector's last evaluation (Detectron2's metrics.json)."""
    rows = [json.loads(line) for line in (detector_dir / "metrics.json").read_text().splitlines()
            if line.strip()]
    evaluated = [row for row in rows if "bbox/AP" in row]
    if not evaluated:
        return {}
    return {key: evaluated[-1][key] for key in ("bbox/AP", "segm/AP") if key in evaluated[-1]}


def _score_threshold(detector_dir: pathlib.Path) -> str:
    config = detector_dir / "config.yaml"
    for line in config.read_text().splitlines() if config.is_file() else []:
        if line.strip().startswith("SCORE_THRESH:"):
            return line.split(":", 1)[1].strip()
    return "n/a"


def _print_summary(work, detector_dir, infer_dir, cases, stages, synthetic) -> None:
    tables = []
    for path in sorted((detector_dir / "inference").glob("*/lesion_metrics.json")):
        metrics = json.loads(path.read_text())["metrics"]
        row = {key: metrics.get(key, "n/a") for key in SUMMARY_METRICS}
        row.update(_coco_ap(detector_dir))
        tables.append(f"Detector on {path.parent.name} (score threshold "
                      f"{_score_threshold(detector_dir)}):\n"
                      + format_results_table({"spatio-temporal R18 (CPU demo)": row}))
    lung = json.loads((work / "lung_eval.json").read_text())
    tables.append("Lung stage (validation cases):\n"
                  + format_results_table(lung["validation"], row_header="variant"))
    if lung["hu_sanity"]:
        tables.append("Lung stage on HU volumes:\n"
                      + format_results_table(lung["hu_sanity"], row_header="case"))
    volumes = {}
    for report_path in sorted(infer_dir.glob("*/report.json")):
        report = json.loads(report_path.read_text())
        volumes[report["scan_id"]] = {key: report[key] for key in (
            "lesion_count", "lesion_volume_ml", "lung_volume_ml", "involvement_percent")}
    if volumes:
        tables.append("Inference per scan:\n" + format_results_table(volumes, row_header="scan"))
    slice_level = _slice_level(infer_dir, cases)
    if slice_level:
        tables.append("Slice-level detection on COVID-CT-MD:\n"
                      + format_results_table(slice_level, row_header="scan"))
    tables.append("Stage wall times (s):\n" + format_results_table(
        {name: {"seconds": seconds} for name, seconds in stages.timings.items()},
        row_header="stage"))
    text = "\n\n".join(tables)
    if synthetic:
        text = "SYNTHETIC INPUT (phantoms): these numbers do not describe real CT.\n\n" + text
    summary = work / "demo_summary.md"
    summary.write_text(text + "\n")
    logger.info("Demo results:\n\n%s\n", text)
    logger.info("Outputs: %s (per-scan masks, reports and overlays in %s)", work, infer_dir)


if __name__ == "__main__":
    sys.exit(main())
