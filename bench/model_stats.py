#!/usr/bin/env python
"""Parameter counts and CPU inference time of the lesion detectors, side by side.

Models (random weights, built from their configs): the full spatio-temporal model
(``configs/lesion/st_R50.yaml``), the spatial-only ablation (``spatial_R50.yaml``) and the stock
Mask R-CNN R50-FPN with GroupNorm (``mask_rcnn_R50_FPN_gn.yaml``). The input is a real
three-slice stack from the Zenodo PNGs, resized to each size. Each timing is the median of
``--repeats`` runs of ``model([input])`` after one warm-up run, taken round-robin over
models and sizes. An untrained model returns up to ``TEST.DETECTIONS_PER_IMAGE`` boxes, so the
mask head runs on more RoIs than after training. The table therefore also lists the detection
counts and the backbone's time alone.

Usage: ``python bench/model_stats.py [--sizes 256 512] [--repeats 3] [--threads 2]``
"""

import argparse
import os
import pathlib
import statistics
import sys
import time

import cv2
import numpy as np
import torch
from PIL import Image

import covid_d2
from covid_d2.paths import data_root
from detectron2.config import get_cfg
from detectron2.modeling import build_model

REPO = pathlib.Path(__file__).resolve().parents[1]
MODELS = [
    ("spatio-temporal R50", "lesion/st_R50.yaml"),
    ("spatial-only R50", "lesion/spatial_R50.yaml"),
    ("Mask R-CNN R50-FPN GN", "lesion/mask_rcnn_R50_FPN_gn.yaml"),
]
# A slice of case_01 with lesions, and its two neighbours (file order inferior -> superior).
CASE, KEY_POSITION = "case_01", 60


def three_slice_input(size: int) -> dict:
    """Model input dict with a (3, size, size) float32 image in 0..255."""
    folder = data_root() / "covid19_ct_seg_zenodo_kaggle_png256" / CASE / "ct"
    names = sorted(path.name for path in folder.glob("*.png"))
    channels = []
    for position in (KEY_POSITION + 1, KEY_POSITION, KEY_POSITION - 1):
        array = np.asarray(Image.open(folder / names[position]).convert("L"))
        channels.append(cv2.resize(array, (size, size), interpolation=cv2.INTER_LINEAR))
    image = torch.from_numpy(np.stack(channels).astype(np.float32))
    return {"image": image, "height": size, "width": size}


def build(config: str):
    cfg = get_cfg()
    covid_d2.add_covid_config(cfg)
    cfg.merge_from_file(str(REPO / "configs" / config))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    return build_model(cfg).eval()


def time_once(model, record: dict):
    """Return wall times (s) of one whole inference and of its backbone, and the detections."""
    with torch.no_grad():
        start = time.perf_counter()
        (output,) = model([record])
        whole = time.perf_counter() - start

        images = model.preprocess_image([record])
        start = time.perf_counter()
        model.backbone(images.tensor)
        backbone = time.perf_counter() - start
    return whole, backbone, len(output["instances"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512],
                        help="key slice sizes in pixels (square)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per model and size")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    inputs = {size: three_slice_input(size) for size in args.sizes}
    models = {label: build(config) for label, config in MODELS}
    times = {(label, size): [] for label in models for size in args.sizes}
    backbone_times = {(label, size): [] for label in models for size in args.sizes}
    detections = {}
    # Round-robin over models and sizes, so that a change in machine load hits all alike.
    for run in range(args.repeats + 1):
        for label, model in models.items():
            for size in args.sizes:
                whole, backbone, detections[(label, size)] = time_once(model, inputs[size])
                if run > 0:
                    times[(label, size)].append(whole)
                    backbone_times[(label, size)].append(backbone)

    header = ["model", "params (M)"] + [f"s/slice {size}px" for size in args.sizes]
    header += [f"backbone s {size}px" for size in args.sizes]
    header += [f"detections {size}px" for size in args.sizes]
    rows = []
    for label, model in models.items():
        params = sum(p.numel() for p in model.parameters()) / 1e6
        medians = [statistics.median(times[(label, size)]) for size in args.sizes]
        backbone_medians = [statistics.median(backbone_times[(label, size)])
                            for size in args.sizes]
        counts = [detections[(label, size)] for size in args.sizes]
        rows.append([label, f"{params:.1f}"] + [f"{value:.2f}" for value in medians]
                    + [f"{value:.2f}" for value in backbone_medians] + counts)

    widths = [max(len(str(row[i])) for row in rows + [header]) for i in range(len(header))]
    load = os.getloadavg()[0]
    print(f"CPU: {args.threads} torch threads, torch {torch.__version__}; median of "
          f"{args.repeats} runs after 1 warm-up; 1-min load average at the end {load:.1f} on "
          f"{os.cpu_count()} cores")
    for row in [header] + rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
