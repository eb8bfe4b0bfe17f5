#!/usr/bin/env python
"""Export case folders to COCO lesion annotations, one image record per key slice.

Examples:
    python tools/export_coco.py --cases-root datasets/cases --split all
    python tools/export_coco.py --cases-root datasets/roi --split train --stage-csv stages.csv
    python tools/export_coco.py --cases-root datasets/cases --output-dir /tmp/lesions --proxy-stages

Writes ``<output-dir>/images/<case_id>/<slice:04d>.png``, ``<output-dir>/<split>.json`` and one
JSON per standard dataset name (covid_zenodo_train, ...) found among the exported cases. The
default output folder is ``$COVID_D2_DATASETS/covid_lesion`` (``datasets/covid_lesion`` in the
checkout), where ``import covid_d2`` registers the standard names from.
"""

import argparse
import logging
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import covid_d2  # noqa: E402  (applies the detectron2 shims first)
from covid_d2.data.coco_export import SPLIT_CHOICES, ExportOptions, export_cases  # noqa: E402
from covid_d2.data.datasets.covid_lesion import EXPORT_FOLDER, datasets_root  # noqa: E402
from covid_d2.data.stages import StageLabeller, read_stage_csv  # noqa: E402

logger = logging.getLogger("covid_d2.export_coco")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases-root", required=True, help="cases root (tools/prepare_data.py or lung-ROI output) with splits.json")
    parser.add_argument("--output-dir", default="", help="export root (default: $COVID_D2_DATASETS/covid_lesion or datasets/covid_lesion)")
    parser.add_argument("--split", choices=SPLIT_CHOICES, default="all", help="split of splits.json to export; 'all' = every case folder")
    parser.add_argument("--config-file", default="", help="config whose INPUT.CT normalisation and INPUT.THREE_SLICE keys to use")
    parser.add_argument("--stage-csv", default=None, help="CSV of stage labels (case_id, stage, optional slice_index, lesion_index)")
    parser.add_argument("--proxy-stages", action="store_true",
                        help="label stages 1/2/3 from the lung-involvement fraction: a proxy, not clinical stages")
    parser.add_argument("--noprogress", action="store_true", help="hide the progress bar")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides as KEY VALUE pairs")
    return parser.parse_args(argv)


def setup_config(args):
    from detectron2.config import get_cfg

    cfg = get_cfg()
    covid_d2.add_covid_config(cfg)
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if args.stage_csv is not None:
        cfg.INPUT.THREE_SLICE.STAGE_CSV = args.stage_csv
    if args.proxy_stages:
        cfg.INPUT.THREE_SLICE.PROXY_STAGES = True
    cfg.freeze()
    return cfg


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    cfg = setup_config(args)
    three = cfg.INPUT.THREE_SLICE

    table = read_stage_csv(three.STAGE_CSV) if three.STAGE_CSV else None
    labeller = StageLabeller(table, proxy=three.PROXY_STAGES, proxy_thresholds=three.PROXY_STAGE_THRESHOLDS,
                             proxy_level=three.PROXY_STAGE_LEVEL)
    output_dir = pathlib.Path(args.output_dir) if args.output_dir else datasets_root() / EXPORT_FOLDER

    start = time.time()
    summary = export_cases(args.cases_root, output_dir, args.split, ExportOptions.from_config(cfg), labeller,
                           progress=not args.noprogress)
    logger.info(
        "Split %s: %d cases, %d key slices, %d without lesion annotations, %d lesions in %.1f s -> %s",
        args.split, summary["cases"], summary["images"], summary["negatives"], summary["annotations"],
        time.time() - start, output_dir,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
