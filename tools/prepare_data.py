#!/usr/bin/env python
"""Convert the shared data sets (or one user scan) into covid-d2 case folders.

Examples:
    python tools/prepare_data.py --output-dir datasets/cases
    python tools/prepare_data.py --output-dir datasets/cases --datasets zenodo infnet
    python tools/prepare_data.py --output-dir datasets/cases --input scan.nii.gz --case-id patient_a

Each case is written atomically to ``<output-dir>/<case_id>/``; finished cases are skipped unless
``--overwrite``. ``<output-dir>/splits.json`` is rewritten from every case folder present.
"""

import argparse
import logging
import pathlib
import sys
import time

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import covid_d2  # noqa: E402,F401  (applies the detectron2 shims first)
from covid_d2.data.converters import CONVERTERS, convert_scan  # noqa: E402
from covid_d2.data.splits import build_splits, scan_cases_root, write_splits  # noqa: E402
from covid_d2.data.volume import CASE_JSON, save_case  # noqa: E402
from covid_d2.paths import data_root  # noqa: E402

logger = logging.getLogger("covid_d2.prepare_data")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default="", help="folder of the shared data sets (default: $COVID_D2_DATA or ../shared/data)")
    parser.add_argument("--output-dir", required=True, help="cases root to write the case folders and splits.json to")
    parser.add_argument("--datasets", nargs="+", choices=sorted(CONVERTERS), default=sorted(CONVERTERS), help="shared data sets to convert")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the train/val split by case")
    parser.add_argument("--overwrite", action="store_true", help="rebuild cases whose folder already exists")
    parser.add_argument("--input", help="a user scan (NIfTI file or DICOM folder) to convert instead of the shared data")
    parser.add_argument("--case-id", help="case id for --input")
    parser.add_argument("--lesion", help="lesion mask NIfTI on the --input grid (optional)")
    parser.add_argument("--lung", help="lung mask NIfTI on the --input grid (optional)")
    parser.add_argument("--series", help="DICOM SeriesNumber for --input folders with several series, or 'largest'")
    parser.add_argument("--diagnosis", help="diagnosis recorded for --input (e.g. covid19, normal)")
    parser.add_argument("--noprogress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    if args.input and not args.case_id:
        parser.error("--input needs --case-id")
    return args


def summary_line(case) -> str:
    """Return the summary line of a case: slices, spacing, intensity kind, lesion voxels and gaps."""
    volume = case.image
    spacing = "x".join(f"{v:.3g}" for v in volume.spacing)
    known = "" if case.meta.get("spacing_known", True) else " (nominal)"
    lesion = "not annotated" if case.lesion is None else f"{int(np.count_nonzero(case.lesion))} lesion voxels"
    labels = case.meta.get("slice_labels")
    labelled = "" if labels is None else f", {sum(labels)} labelled slices"
    return (
        f"{case.case_id}: {volume.shape[0]} slices of {volume.shape[1]}x{volume.shape[2]}, spacing {spacing} mm{known}, "
        f"{volume.intensity_kind}, {lesion}{labelled}, {len(case.meta.get('slice_gaps', []))} gaps"
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    output_dir = pathlib.Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()

    if args.input:
        jobs = [(args.case_id, lambda: convert_scan(args.input, args.case_id, args.lesion, args.lung, args.series, args.diagnosis))]
    else:
        root = data_root(args.data_root)
        jobs = []
        for name in args.datasets:
            converter = CONVERTERS[name]
            jobs += [(case_id, lambda c=converter, i=case_id: c.convert_case(root, i)) for case_id in converter.list_cases(root)]

    written = skipped = 0
    for case_id, build in tqdm(jobs, desc="cases", unit="case", disable=args.noprogress):
        case_dir = output_dir / case_id
        if (case_dir / CASE_JSON).is_file() and not args.overwrite:
            logger.info("%s: exists, skipped (pass --overwrite to rebuild)", case_id)
            skipped += 1
            continue
        case = build()
        save_case(case, case_dir, overwrite=True)
        logger.info(summary_line(case))
        written += 1

    splits = build_splits(scan_cases_root(output_dir), seed=args.seed)
    write_splits(output_dir, splits)
    logger.info(
        "Wrote %d cases, skipped %d, in %.1f s; splits: %s",
        written,
        skipped,
        time.time() - start,
        ", ".join(f"{name} {len(ids)}" for name, ids in splits.items()),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
