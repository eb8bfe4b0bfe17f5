#!/usr/bin/env python
"""Find and segment COVID-19 lesions in chest CT scans (NIfTI files or DICOM series folders).

Example:
    python tools/infer.py --input scan.nii.gz dicom_folder/ --output-dir output/infer \
        --config-file configs/lesion/cpu/st_R18.yaml --weights output/lesion/model_final.pth \
        --lung-config configs/lung/axial_cpu.yaml \
        --lung-axial-weights output/lung_axial_cpu/model_final.pth \
        --lung-sagittal-weights output/lung_sagittal_cpu/model_final.pth

For each scan, ``<output-dir>/<scan id>/`` receives lesions.nii.gz and lung.nii.gz (on the
input's voxel grid, with its affine), report.json and overlay PNGs. ``<output-dir>/summary.csv``
has one row per scan. See covid_d2/inference/report.py for the file contents.
"""

import argparse
import csv
import io
import logging
import pathlib
import re
import sys
import time

import covid_d2  # noqa: F401  (first: applies the detectron2 0.6 shims)
import torch
import tqdm

from covid_d2.data.dicom import read_dicom_series
from covid_d2.data.errors import VolumeError
from covid_d2.data.nifti import read_mask_nifti, read_nifti
from covid_d2.engine import load_covid_config
from covid_d2.inference.report import CSV_COLUMNS, csv_row, write_scan_outputs
from covid_d2.utils.atomic import write_text_atomic
from covid_d2.inference.volume import LesionDetector, detect_volume

logger = logging.getLogger("covid_d2.infer")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", nargs="+", required=True, type=pathlib.Path,
                        help="NIfTI files (.nii, .nii.gz) and/or DICOM series folders")
    parser.add_argument("--output-dir", required=True, type=pathlib.Path,
                        help="folder for the per-scan outputs and summary.csv (created if missing)")
    parser.add_argument("--config-file", required=True, help="lesion detector config")
    parser.add_argument("--weights", required=True, help="lesion detector checkpoint (.pth)")
    parser.add_argument("--lung-config", default="configs/lung/axial_cpu.yaml",
                        help="lung U-Net config (U-Net, CRF and ROI keys)")
    parser.add_argument("--lung-axial-weights", default="", help="axial lung U-Net checkpoint")
    parser.add_argument("--lung-sagittal-weights", default="",
                        help="sagittal lung U-Net checkpoint (optional; fused with the axial one)")
    parser.add_argument("--lung-mask", nargs="*", type=pathlib.Path, default=None,
                        help="lung mask NIfTI per input (same order) instead of the lung U-Nets")
    parser.add_argument("--series", default=None,
                        help="DICOM SeriesNumber or SeriesInstanceUID when a folder has several "
                             "series, or 'largest'")
    parser.add_argument("--score-thresh", type=float, default=None,
                        help="minimum detection score (default: TEST.LESION.SCORE_THRESH)")
    parser.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=4, help="key slices per detector batch")
    parser.add_argument("--noprogress", action="store_true", help="hide progress bars")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="detector config overrides")
    args = parser.parse_args(argv)
    if args.lung_mask is not None and len(args.lung_mask) != len(args.input):
        parser.error(f"--lung-mask needs one mask per input: got {len(args.lung_mask)} masks "
                     f"for {len(args.input)} inputs")
    if args.lung_mask is None and not args.lung_axial_weights:
        parser.error("give --lung-axial-weights (a trained lung U-Net) or --lung-mask")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda was given but CUDA is not available on this machine")
    check_paths(parser, args)
    return args


def check_paths(parser: argparse.ArgumentParser, args) -> None:
    """Exit with a usage error when an input, checkpoint or mask is missing, before any model loads."""
    for path in args.input:
        if not path.exists():
            parser.error(f"--input {path} not found. Give a DICOM series folder or a NIfTI file.")
        if not path.is_dir() and not path.name.endswith((".nii", ".nii.gz")):
            parser.error(f"--input {path} is neither a folder nor a NIfTI file (.nii, .nii.gz). Give a "
                         "DICOM series folder or a NIfTI file.")
    files = [("--weights", args.weights), ("--lung-axial-weights", args.lung_axial_weights),
             ("--lung-sagittal-weights", args.lung_sagittal_weights)]
    files += [("--lung-mask", str(mask)) for mask in args.lung_mask or []]
    for option, value in files:
        if value and not pathlib.Path(value).is_file():
            parser.error(f"{option} {value} not found. Give the path of an existing file "
                         "(checkpoints come from tools/train_net.py or tools/train_lung_unet.py).")


def scan_id_of(path: pathlib.Path) -> str:
    """Return a file-system-safe scan id from the input path's name."""
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "scan"


def read_scan(path: pathlib.Path, series):
    if path.is_dir():
        return read_dicom_series(path, series=series)
    if path.name.endswith((".nii", ".nii.gz")):
        return read_nifti(path)
    raise SystemExit(f"{path}: not a DICOM folder or a NIfTI file (.nii, .nii.gz). Give a folder "
                     "with the DICOM series or a NIfTI file.")


def write_summary(output_dir: pathlib.Path, rows) -> pathlib.Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    path = output_dir / "summary.csv"
    write_text_atomic(path, buffer.getvalue())
    return path


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    device_opts = ["MODEL.DEVICE", args.device]
    cfg = load_covid_config(args.config_file, list(args.opts) + device_opts)
    lung_cfg = load_covid_config(args.lung_config, device_opts)
    score_thresh = (args.score_thresh if args.score_thresh is not None
                    else cfg.TEST.LESION.SCORE_THRESH)
    detector = LesionDetector(cfg, args.weights, batch_size=args.batch_size)

    axial = sagittal = None
    if args.lung_mask is None:
        from covid_d2.lung.predict import LungViewPredictor

        axial = LungViewPredictor(lung_cfg, args.lung_axial_weights, "axial", device=args.device)
        if args.lung_sagittal_weights:
            sagittal = LungViewPredictor(lung_cfg, args.lung_sagittal_weights, "sagittal",
                                         device=args.device)

    args.output_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for position, path in enumerate(args.input):
        started = time.perf_counter()
        scan_id = scan_id_of(path)
        lung = None
        try:
            volume = read_scan(path, args.series)
            if args.lung_mask is not None:
                lung = read_mask_nifti(args.lung_mask[position], volume)
        except (VolumeError, FileNotFoundError) as error:
            # The message names the file and what to do, so it is shown without a traceback.
            raise SystemExit(f"Failed to read {path}: {error}") from error
        timings = {"read_s": time.perf_counter() - started}
        if lung is None:
            from covid_d2.lung.predict import segment_lungs

            lung, lung_timings = segment_lungs(volume, lung_cfg, axial, sagittal)
            timings.update({f"lung_{key}": value for key, value in lung_timings.items()})

        with tqdm.tqdm(total=volume.shape[0], desc=scan_id, unit="slice",
                       disable=args.noprogress) as bar:
            result = detect_volume(volume, {"case_id": scan_id}, lung, lung_cfg_for(cfg, lung_cfg),
                                   detector, score_thresh, progress=bar.update)
        timings.update(result.timings_s)
        start_write = time.perf_counter()
        report = write_scan_outputs(args.output_dir, scan_id, str(path), volume, result,
                                    spacing_known=True, timings=timings)
        report["timings_s"]["write_s"] = round(time.perf_counter() - start_write, 3)
        rows.append(csv_row(report))
        logger.info(
            "%s: %d slices, %d lesions, lesion volume %s mL, lung volume %s mL, involvement %s %%, "
            "%.1f s", scan_id, volume.shape[0], report["lesion_count"], report["lesion_volume_ml"],
            report["lung_volume_ml"], report["involvement_percent"], time.perf_counter() - started)
    summary = write_summary(args.output_dir, rows)
    logger.info("Wrote %s and per-scan folders under %s", summary, args.output_dir)
    return 0


def lung_cfg_for(cfg, lung_cfg):
    """Return a config with the detector's intensity keys and the lung stage's ROI keys."""
    merged = cfg.clone()
    merged.defrost()
    merged.LUNG = lung_cfg.LUNG.clone()
    merged.freeze()
    return merged


if __name__ == "__main__":
    sys.exit(main())
