#!/usr/bin/env python
"""Measure ThreeSliceDatasetMapper throughput (samples/s) through Detectron2's train loader.

Example:
    python tools/export_coco.py --cases-root datasets/cases --split all
    python bench/mapper_throughput.py --dataset covid_zenodo_train --workers 0 2 --size 256

The loader runs the training mapper (resize, affine warp, flips; mosaic as configured) with
``--batch-size`` images per batch. The first batch is not timed (worker start-up).
"""

import argparse
import logging
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import covid_d2  # noqa: E402  (applies the detectron2 shims first)
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import build_detection_train_loader  # noqa: E402

from covid_d2.data.datasets import register_all_covid_lesion  # noqa: E402
from covid_d2.data.three_slice_mapper import ThreeSliceDatasetMapper  # noqa: E402

logger = logging.getLogger("covid_d2.bench.mapper_throughput")


def measure(cfg, workers: int, batches: int) -> float:
    """Return mapped samples per second over ``batches`` batches after the first one."""
    cfg = cfg.clone()
    cfg.DATALOADER.NUM_WORKERS = workers
    loader = iter(build_detection_train_loader(cfg, mapper=ThreeSliceDatasetMapper(cfg, is_train=True)))
    next(loader)
    start = time.perf_counter()
    samples = sum(len(next(loader)) for _ in range(batches))
    return samples / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets-root", default="", help="folder above covid_lesion/ (default: $COVID_D2_DATASETS or datasets/)")
    parser.add_argument("--dataset", default="covid_zenodo_train", help="registered lesion dataset name")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts to measure")
    parser.add_argument("--size", type=int, default=256, help="shortest image side after resizing (pixels)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per batch")
    parser.add_argument("--batches", type=int, default=50, help="timed batches per worker count")
    parser.add_argument("--mosaic-prob", type=float, default=0.0, help="cfg.INPUT.THREE_SLICE.MOSAIC_PROB")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    registered = register_all_covid_lesion(args.datasets_root or None)
    if args.dataset not in registered:
        parser.error(f"dataset {args.dataset!r} not found under the datasets root (found {registered}); run tools/export_coco.py first.")
    cfg = get_cfg()
    covid_d2.add_covid_config(cfg)
    cfg.DATASETS.TRAIN = (args.dataset,)
    cfg.INPUT.MIN_SIZE_TRAIN = (args.size,)
    cfg.INPUT.MAX_SIZE_TRAIN = 2 * args.size
    cfg.INPUT.THREE_SLICE.MOSAIC_PROB = args.mosaic_prob
    cfg.SOLVER.IMS_PER_BATCH = args.batch_size

    for workers in args.workers:
        rate = measure(cfg, workers, args.batches)
        sys.stdout.write(f"{args.dataset} size {args.size} mosaic {args.mosaic_prob:.2f} workers {workers}: {rate:.1f} samples/s\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
