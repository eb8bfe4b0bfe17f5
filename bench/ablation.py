#!/usr/bin/env python
"""Ablation of covid-d2 on the Zenodo cases under one fixed budget, with a robustness test.

Four models train on the same exported Zenodo training cases (``covid_zenodo_train``), each for
``--iters`` iterations with its config's mapper, augmentations, batch and learning rate:

- full model: spatial then temporal resolver pre-training (``--resolver-iters`` each),
  ``tools/export_encoder.py``, then the spatio-temporal detector from those encoders;
- spatial-only model (no temporal encoder, no pre-training);
- Detectron2's stock Mask R-CNN R-FPN with GroupNorm;
- whole-image U-Net baseline (lesions are its connected components).

Every training run is ``tools/train_net.py`` in a subprocess with config overrides and the same
``SEED``. Each model is then scored in this process by the evaluators ``tools/train_net.py``
builds (COCO AP and ``LesionEvaluator``, whose ``lesion_metrics.json`` lands in the run folder)
on three held-out sets made from the validation cases:

- ``axial``: ``covid_zenodo_val`` as exported;
- ``coronal``: the validation volumes resliced to coronal planes (rows of the ``(S, H, W)``
  array), each plane with its two neighbouring planes, keeping planes that contain lung or lesion;
- ``multiaug``: several consecutive axial key slices squeezed side by side or stacked into one
  image of the key slice's size (layouts 1x2, 2x1, 1x3, 3x1). Each slice thus appears at
  another aspect ratio, and the three channels are tiled the same way.

Nothing is tuned on these sets: thresholds and schedules come from the configs.

Data: an existing export under ``--datasets-root`` (``covid_lesion/covid_zenodo_train.json``
and ``covid_zenodo_val.json``) is reused, with the case folders it was exported from (recorded
in the export's ``info.cases_root``). Without one, ``tools/prepare_data.py --datasets zenodo``
and ``tools/export_coco.py`` write one into the work folder (full slices, no lung ROI). The
split in use is written to ``<work-dir>/split.json``.

``--quick`` (the ``make bench-quick`` variant): ``--iters 20``, ``--resolver-iters 10`` and
every 6th image of each held-out set (``--eval-stride 6``). Twenty iterations say nothing about
accuracy: the quick variant checks that the whole comparison runs.

Examples:
    python bench/ablation.py --quick
    python bench/ablation.py --datasets-root output/demo
    python bench/ablation.py --iters 1500 --work-dir output/bench/ablation_1500
"""

import argparse
import contextlib
import json
import logging
import pathlib
import shutil
import sys
import time
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(1, str(pathlib.Path(__file__).resolve().parent.parent))

import covid_d2  # noqa: E402  (first: applies the detectron2 0.6 shims)
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402

import common  # noqa: E402
from covid_d2.data.coco_export import LESION_CATEGORY, encode_rle, lesion_components  # noqa: E402
from covid_d2.utils.atomic import write_json_atomic  # noqa: E402
from covid_d2.data.datasets.covid_lesion import (  # noqa: E402
    EXPORT_FOLDER, datasets_root, load_covid_lesion_json, register_covid_lesion_instances)
from covid_d2.data.three_slice_mapper import decode_masks, load_three_slices  # noqa: E402
from covid_d2.data.volume import load_case  # noqa: E402
from covid_d2.engine import load_covid_config  # noqa: E402
from covid_d2.evaluation import format_results_table  # noqa: E402

logger = logging.getLogger("covid_d2.bench.ablation")

# Model key -> (table label, lesion config). The full model also runs the resolver phases.
MODELS = {
    18: OrderedDict([
        ("full", ("spatio-temporal R18 + resolver", "configs/lesion/cpu/st_R18.yaml")),
        ("spatial", ("spatial-only R18", "configs/lesion/cpu/spatial_R18.yaml")),
        ("mask_rcnn", ("Mask R-CNN R18-FPN GN", "configs/lesion/cpu/mask_rcnn_R18_FPN_gn.yaml")),
        ("unet", ("U-Net R18", "configs/lesion/cpu/unet_R18.yaml")),
    ]),
    50: OrderedDict([
        ("full", ("spatio-temporal R50 + resolver", "configs/lesion/st_R50.yaml")),
        ("spatial", ("spatial-only R50", "configs/lesion/spatial_R50.yaml")),
        ("mask_rcnn", ("Mask R-CNN R50-FPN GN", "configs/lesion/mask_rcnn_R50_FPN_gn.yaml")),
        ("unet", ("U-Net R50", "configs/lesion/unet_R50.yaml")),
    ]),
}
RESOLVER = {
    18: ("configs/resolver/cpu/spatial_R18.yaml", "configs/resolver/cpu/temporal_R18.yaml"),
    50: ("configs/resolver/spatial_R50.yaml", "configs/resolver/temporal_R50.yaml"),
}
TRAIN_SET, VAL_SET = "covid_zenodo_train", "covid_zenodo_val"
EVAL_SETS = ("axial", "coronal", "multiaug")
# (rows, columns) of the multi-augmentation composites, used in turn.
MULTIAUG_LAYOUTS = ((1, 2), (2, 1), (1, 3), (3, 1))
MIN_LESION_AREA = 4
# Columns of the main table (Detectron2 results flattened to "task/metric").
MAIN_COLUMNS = ["segm/AP", "bbox/AP", "lesion/lesion_dice_matched", "lesion/pixel_accuracy_lung",
                "lesion/lesion_sensitivity", "lesion/tiny_lesion_sensitivity", "lesion/pixel_dice_global",
                "lesion/false_positives_per_slice", "train s", "pre-training s"]
ROBUSTNESS_METRICS = ["segm/AP", "bbox/AP", "lesion/lesion_dice_matched", "lesion/lesion_sensitivity",
                      "lesion/pixel_dice_global"]
# Default budget: about two hours for the four CPU models on 2 cores, an estimate from per-iteration
# costs measured on a loaded machine (docs/benchmarks.md).
DEFAULT_ITERS = 800


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short variant (see the module docstring)")
    parser.add_argument("--iters", type=int, default=0,
                        help=f"training iterations of every model (default {DEFAULT_ITERS}, 20 with --quick)")
    parser.add_argument("--resolver-iters", type=int, default=0,
                        help="iterations of each resolver phase before the full model (default iters // 2)")
    parser.add_argument("--eval-stride", type=int, default=0,
                        help="score every N-th image of each held-out set (default 1, 6 with --quick)")
    parser.add_argument("--depth", type=int, choices=sorted(MODELS), default=18,
                        help="18: the CPU configs (256 px, batch 2); 50: the GPU configs (512 px, batch 8)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS[18]), default=list(MODELS[18]),
                        help="models to train and score")
    parser.add_argument("--seed", type=int, default=0, help="SEED of every training run and of a new split")
    parser.add_argument("--device", default="cpu", help="torch device: cpu or cuda[:N]")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: the CPU cores)")
    parser.add_argument("--datasets-root", default="",
                        help="folder above covid_lesion/ to reuse (default: $COVID_D2_DATASETS or datasets/)")
    parser.add_argument("--data-root", default="", help="shared data folder (default: $COVID_D2_DATA or ../shared/data)")
    parser.add_argument("--work-dir", default="", help="output folder (default: output/bench/ablation[_quick])")
    parser.add_argument("--reuse", action="store_true",
                        help="skip a training run whose model_final.pth exists in the work folder")
    args = parser.parse_args(argv)
    args.iters = args.iters or (20 if args.quick else DEFAULT_ITERS)
    args.resolver_iters = args.resolver_iters or max(1, args.iters // 2)
    args.eval_stride = args.eval_stride or (6 if args.quick else 1)
    args.work_dir = pathlib.Path(args.work_dir or common.REPO / "output" / "bench"
                                 / ("ablation_quick" if args.quick else "ablation"))
    for name in ("iters", "resolver_iters", "eval_stride"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    return args


def schedule_opts(iters: int) -> List[str]:
    """Return the solver overrides of every training run: ``iters`` iterations, LR step at 75 %,
    a checkpoint every quarter of the run but not more often than every 100 iterations."""
    return ["SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", f"({max(1, int(iters * 0.75))},)",
            "SOLVER.WARMUP_ITERS", str(min(50, max(1, iters // 5))),
            "SOLVER.CHECKPOINT_PERIOD", str(max(100, iters // 4)), "TEST.EVAL_PERIOD", "0",
            "DATASETS.TEST", "()"]


# --------------------------------------------------------------------------- data


def find_or_prepare_export(args, env: Dict[str, str]) -> Tuple[pathlib.Path, Dict[str, Any]]:
    """Return the datasets root holding the export and a description of its input."""
    root = datasets_root(args.datasets_root or None)
    export = root / EXPORT_FOLDER
    if not all((export / f"{name}.json").is_file() for name in (TRAIN_SET, VAL_SET)):
        logger.info("No %s/%s export under %s; preparing the Zenodo cases in %s", TRAIN_SET, VAL_SET, root, args.work_dir)
        root = args.work_dir / "data"
        cases = root / "cases"
        command = ["tools/prepare_data.py", "--output-dir", cases, "--datasets", "zenodo", "--seed", str(args.seed),
                   "--noprogress"]
        if args.data_root:
            command += ["--data-root", args.data_root]
        common.run_python(command, args.work_dir / "logs" / "prepare_data.log", env)
        common.run_python(["tools/export_coco.py", "--cases-root", cases, "--output-dir", root / EXPORT_FOLDER,
                           "--split", "all", "--noprogress"], args.work_dir / "logs" / "export_coco.log", env)
        export = root / EXPORT_FOLDER

    with open(export / f"{VAL_SET}.json") as f:
        info = json.load(f)["info"]
    cases_root = pathlib.Path(info["cases_root"])
    roi = any(cases_root.glob("*/roi.json"))
    return root, {"datasets_root": str(root), "cases_root": str(cases_root),
                  "input": "lung ROI crops (predicted lungs)" if roi else "full slices (no lung ROI)"}


def split_of(export: pathlib.Path) -> Dict[str, List[str]]:
    """Return the case ids of the exported training and validation sets."""
    split = {}
    for key, name in (("train", TRAIN_SET), ("val", VAL_SET)):
        with open(export / f"{name}.json") as f:
            split[key] = sorted({image["case_id"] for image in json.load(f)["images"]})
    return split


def _write_png(path: pathlib.Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(image)):
        raise OSError(f"Writing {path} failed; check free disk space and permissions of {path.parent}.")


def _annotations(masks: Sequence[np.ndarray]) -> List[Dict[str, Any]]:
    """Return COCO lesion annotations (without ids) of ``(H, W)`` instance masks."""
    import pycocotools.mask as mask_util

    annotations = []
    for mask in masks:
        rle = encode_rle(mask > 0)
        annotations.append({"category_id": LESION_CATEGORY["id"], "bbox": [float(v) for v in mask_util.toBbox(rle)],
                            "segmentation": rle, "area": int(np.count_nonzero(mask)), "iscrowd": 0})
    return annotations


def _image_record(file_name: str, neighbors: List[Optional[str]], shape, case_id: str, index: int,
                  annotated_lesions: int, lung_px: Optional[int], source: str) -> Dict[str, Any]:
    """Return an image record with the key-slice fields ``load_covid_lesion_json`` requires."""
    return {"file_name": file_name, "height": int(shape[0]), "width": int(shape[1]), "case_id": case_id,
            "source": source, "slice_index": index, "neighbor_indices": None, "neighbor_files": neighbors,
            "spacing_mm": None, "slice_label": int(annotated_lesions > 0), "lung_area_px": lung_px,
            "slice_stage": -1, "intensity_kind": "minmax_clahe_uint8", "roi_crop": None, "lesion_annotated": True}


def _coco(images: List[Tuple[Dict[str, Any], List[Dict[str, Any]]]], description: str) -> Dict[str, Any]:
    """Number images and annotations from 1 and return the COCO dict."""
    coco_images, coco_annotations = [], []
    for image_id, (image, annotations) in enumerate(images, start=1):
        coco_images.append({"id": image_id, **image})
        for annotation in annotations:
            coco_annotations.append({"id": len(coco_annotations) + 1, "image_id": image_id, **annotation})
    return {"info": {"description": description}, "licenses": [], "images": coco_images,
            "annotations": coco_annotations, "categories": [dict(LESION_CATEGORY)]}


def build_coronal(cases_root: pathlib.Path, case_ids: Sequence[str], output: pathlib.Path, stride: int) -> pathlib.Path:
    """Write the coronal reslice of the validation cases as a lesion dataset; return its JSON path.

    Plane ``r`` of a case is ``image[:, r, :]``, an ``(S, W)`` image with the most superior slice
    on top and the patient's right on the left. Its channels are planes ``r - 1``, ``r`` and
    ``r + 1`` (zeros past the grid). Lesions are the 8-connected components of at least 4 px of
    the plane's lesion mask, as the axial export defines them. The planes keep the voxel grid
    without resampling, because the Zenodo slice spacing is unknown.
    """
    images = []
    for case_id in case_ids:
        case = load_case(cases_root / case_id)
        if case.image.array.dtype != np.uint8:
            raise ValueError(f"{cases_root / case_id}: intensity kind {case.image.intensity_kind!r} is not 8-bit; "
                             "the coronal set is built from 8-bit cases such as the Zenodo PNGs.")
        if case.lesion is None:
            raise ValueError(f"{cases_root / case_id}: no lesion.nii.gz, so the coronal planes have no ground truth.")
        volume, lesion = case.image.array, case.lesion
        lung = case.lung
        relevant = lesion.any(axis=(0, 2)) | (lung.any(axis=(0, 2)) if lung is not None else True)
        planes = np.flatnonzero(relevant)[::stride]
        height = volume.shape[1]
        for plane in range(height):
            _write_png(output / "images" / case_id / f"{plane:04d}.png", volume[:, plane, :])
        for plane in planes:
            masks = lesion_components(lesion[:, plane, :], 8, MIN_LESION_AREA)
            neighbors = [f"images/{case_id}/{n:04d}.png" if 0 <= n < height else None for n in (plane - 1, plane + 1)]
            lung_px = None if lung is None else int(np.count_nonzero(lung[:, plane, :]))
            record = _image_record(f"images/{case_id}/{plane:04d}.png", neighbors, volume[:, plane, :].shape,
                                   case_id, int(plane), len(masks), lung_px, "zenodo_coronal")
            images.append((record, _annotations(masks)))
    path = output / "coronal.json"
    write_json_atomic(path, _coco(images, "validation cases resliced to coronal planes"))
    logger.info("Coronal set: %d planes of %d cases -> %s", len(images), len(case_ids), path)
    return path


def _composite(members: Sequence[Dict[str, Any]], layout: Tuple[int, int]):
    """Tile the three-slice stacks and lesion masks of ``members`` into one image of the first's size."""
    rows, cols = layout
    height, width = int(members[0]["height"]), int(members[0]["width"])
    tile_h, tile_w = height // rows, width // cols
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    masks, lung_px = [], 0
    for position, record in enumerate(members):
        top, left = (position // cols) * tile_h, (position % cols) * tile_w
        stack = load_three_slices(record)
        canvas[top:top + tile_h, left:left + tile_w] = cv2.resize(stack, (tile_w, tile_h), interpolation=cv2.INTER_AREA)
        for mask in decode_masks(record.get("annotations", []), stack.shape[0], stack.shape[1]):
            small = cv2.resize(mask, (tile_w, tile_h), interpolation=cv2.INTER_NEAREST)
            if np.count_nonzero(small) >= MIN_LESION_AREA:
                full = np.zeros((height, width), dtype=np.uint8)
                full[top:top + tile_h, left:left + tile_w] = small
                masks.append(full)
        if lung_px is not None and record.get("lung_area_px") is not None:
            # NOTE: the lung area is scaled by the tile's area ratio, not re-measured on the tile.
            lung_px += int(round(record["lung_area_px"] * tile_h * tile_w / (stack.shape[0] * stack.shape[1])))
        else:
            lung_px = None
    return canvas, masks, lung_px


def build_multiaug(val_dicts: Sequence[Dict[str, Any]], output: pathlib.Path, stride: int) -> pathlib.Path:
    """Write the multi-augmentation composites of the validation key slices; return the JSON path.

    Consecutive key slices of one case fill each composite in raster order, with the layouts of
    ``MULTIAUG_LAYOUTS`` used in turn; a case's last slices that do not fill a layout are left
    out. Each tile is the three-slice stack resized to the tile (area interpolation), and its
    lesion masks resized with nearest neighbours (masks under 4 px are dropped).
    """
    by_case: Dict[str, List[Dict[str, Any]]] = OrderedDict()
    for record in sorted(val_dicts, key=lambda r: (r["case_id"], r["slice_index"])):
        by_case.setdefault(record["case_id"], []).append(record)
    images = []
    composite_index = 0
    for case_id, records in by_case.items():
        start = 0
        while True:
            layout = MULTIAUG_LAYOUTS[composite_index % len(MULTIAUG_LAYOUTS)]
            members = records[start:start + layout[0] * layout[1]]
            if len(members) < layout[0] * layout[1]:
                break
            start += len(members)
            composite_index += 1
            if (composite_index - 1) % stride:
                continue
            canvas, masks, lung_px = _composite(members, layout)
            stem = f"images/{case_id}/{composite_index:04d}"
            for channel, suffix in enumerate(("above", "key", "below")):
                _write_png(output / f"{stem}_{suffix}.png", canvas[:, :, channel])
            record = _image_record(f"{stem}_key.png", [f"{stem}_above.png", f"{stem}_below.png"], canvas.shape,
                                   case_id, composite_index, len(masks), lung_px, "zenodo_multiaug")
            record["layout"] = list(layout)
            images.append((record, _annotations(masks)))
    path = output / "multiaug.json"
    write_json_atomic(path, _coco(images, "validation key slices squeezed into multi-slice composites"))
    logger.info("Multi-augmentation set: %d composites -> %s", len(images), path)
    return path


def build_eval_sets(args, root: pathlib.Path, data: Dict[str, Any], split: Dict[str, List[str]]) -> Dict[str, str]:
    """Build and register the three held-out sets; return set key -> registered dataset name."""
    export = root / EXPORT_FOLDER
    output = args.work_dir / "heldout"
    val_dicts = load_covid_lesion_json(export / f"{VAL_SET}.json", export, VAL_SET)

    with open(export / f"{VAL_SET}.json") as f:
        coco = json.load(f)
    keep = {image["id"] for image in coco["images"][::args.eval_stride]}
    coco["images"] = [image for image in coco["images"] if image["id"] in keep]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
    axial = output / "axial.json"
    write_json_atomic(axial, coco)

    paths = {
        "axial": (axial, export),
        "coronal": (build_coronal(pathlib.Path(data["cases_root"]), split["val"], output / "coronal", args.eval_stride),
                    output / "coronal"),
        "multiaug": (build_multiaug(val_dicts, output / "multiaug", args.eval_stride), output / "multiaug"),
    }
    names = {}
    from detectron2.data import DatasetCatalog, MetadataCatalog

    for key, (json_file, image_root) in paths.items():
        name = f"bench_heldout_{key}"
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_covid_lesion_instances(name, json_file, image_root)
        names[key] = name
    return names


# --------------------------------------------------------------------------- training


def train_model(args, key: str, config: str, env: Dict[str, str], extra_opts: Sequence[str] = ()) -> Dict[str, Any]:
    """Train one config with tools/train_net.py; return its run folder, weights and wall seconds."""
    run_dir = args.work_dir / key
    weights = run_dir / "model_final.pth"
    times_file = run_dir / "bench_train.json"
    if times_file.is_file():
        if args.reuse and weights.is_file():
            logger.info("Reusing %s (--reuse)", weights)
            return json.loads(times_file.read_text())
        # A finished run would "resume" at its last iteration and train nothing, so it starts over.
        logger.info("Removing the finished run %s to train it again (pass --reuse to keep it)", run_dir)
        shutil.rmtree(run_dir)
    # With --resume, a killed run continues from its last checkpoint, and its wall time then
    # covers only the resumed part. A folder without a checkpoint starts from scratch.
    command = ["tools/train_net.py", "--config-file", config, "--resume", "OUTPUT_DIR", run_dir, "SEED", str(args.seed),
               "MODEL.DEVICE", args.device, *schedule_opts(args.resolver_iters if key.startswith("resolver")
                                                           else args.iters), *extra_opts]
    result = common.run_python(command, args.work_dir / "logs" / f"{key}.log", env)
    record = {"run_dir": str(run_dir), "weights": str(weights), "wall_s": result["wall_s"], "config": config}
    write_json_atomic(times_file, record)
    return record


def train_all(args, env: Dict[str, str]) -> Dict[str, Dict[str, Any]]:
    """Train the selected models (the full model after its resolver phases)."""
    runs = OrderedDict()
    models = MODELS[args.depth]
    for key in args.models:
        label, config = models[key]
        pretraining_s = 0.0
        extra: List[str] = []
        if key == "full":
            spatial_config, temporal_config = RESOLVER[args.depth]
            spatial = train_model(args, "resolver_spatial", spatial_config, env)
            temporal = train_model(args, "resolver_temporal", temporal_config, env,
                                   ["MODEL.WEIGHTS", spatial["weights"]])
            encoder = args.work_dir / "encoder.pth"
            export = common.run_python(["tools/export_encoder.py", temporal["weights"], encoder, "--phase", "temporal"],
                                       args.work_dir / "logs" / "export_encoder.log", env)
            pretraining_s = spatial["wall_s"] + temporal["wall_s"] + export["wall_s"]
            extra = ["MODEL.SPATIO_TEMPORAL.ENCODER_WEIGHTS", str(encoder)]
        logger.info("Training %s for %d iterations", label, args.iters)
        run = train_model(args, key, config, env, extra)
        runs[key] = {**run, "label": label, "pretraining_s": pretraining_s}
    return runs


# --------------------------------------------------------------------------- evaluation


def evaluate(args, run: Dict[str, Any], eval_names: Dict[str, str]) -> Dict[str, Dict[str, Any]]:
    """Score one trained model on every held-out set; return set key -> flat results.

    COCO AP comes from the evaluators' returned results and the lesion metrics from the
    ``lesion_metrics.json`` each ``LesionEvaluator`` writes (it keeps "n/a" metrics too).
    """
    trainer = common.load_trainer_class()
    names = tuple(eval_names.values())
    cfg = load_covid_config(run["config"], ["OUTPUT_DIR", run["run_dir"], "MODEL.DEVICE", args.device,
                                            "MODEL.WEIGHTS", run["weights"], "DATASETS.TEST", str(names),
                                            "MODEL.SPATIO_TEMPORAL.ENCODER_WEIGHTS", ""])
    model = trainer.build_model(cfg)
    DetectionCheckpointer(model).load(run["weights"])
    model.eval()
    start = time.perf_counter()
    # pycocotools prints its summary to stdout; keep stdout for the tables.
    with contextlib.redirect_stdout(sys.stderr):
        results = trainer.test(cfg, model)
    eval_s = time.perf_counter() - start
    if len(names) == 1:
        results = {names[0]: results}

    scored = OrderedDict()
    for key, name in eval_names.items():
        row = OrderedDict()
        for task in ("segm", "bbox"):
            if task in results.get(name, {}):
                row[f"{task}/AP"] = results[name][task].get("AP")
                row[f"{task}/AP50"] = results[name][task].get("AP50")
        metrics_file = pathlib.Path(run["run_dir"]) / "inference" / name / "lesion_metrics.json"
        metrics = json.loads(metrics_file.read_text())["metrics"]
        row.update((f"lesion/{metric}", value) for metric, value in metrics.items())
        scored[key] = row
    scored["eval_s"] = eval_s
    return scored


# --------------------------------------------------------------------------- report


def render(report: Dict[str, Any]) -> str:
    """Return the markdown tables: the ablation on axial slices and the robustness test."""
    main_rows = OrderedDict()
    robust_rows = OrderedDict()
    for key, model in report["models"].items():
        axial = dict(model["scores"]["axial"])
        axial["train s"] = model["train_s"]
        axial["pre-training s"] = model["pretraining_s"]
        main_rows[model["label"]] = axial
        row = OrderedDict()
        for set_key in EVAL_SETS:
            for metric in ROBUSTNESS_METRICS:
                row[f"{set_key} {metric.split('/')[-1]}"] = model["scores"][set_key].get(metric)
        robust_rows[model["label"]] = row
    heldout = report["heldout_images"]
    header = (f"{report['iters']} iterations per model (resolver: {report['resolver_iters']} per phase), seed "
              f"{report['seed']}, input {report['data']['input']}; training cases {', '.join(report['split']['train'])}; "
              f"held-out cases {', '.join(report['split']['val'])}; held-out images "
              + ", ".join(f"{key} {count}" for key, count in heldout.items())
              + (f" (every {report['eval_stride']}th image)" if report["eval_stride"] > 1 else "") + ".")
    main = format_results_table(main_rows, MAIN_COLUMNS)
    robust = format_results_table(robust_rows)
    return (f"{header}\n\nAblation on the held-out axial key slices:\n\n{main}\n"
            f"Robustness (same models, held-out cases as axial slices, coronal planes and multi-slice "
            f"composites):\n\n{robust}")


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    common.check_device(args.device)
    args.threads = common.set_threads(args.threads)
    torch.manual_seed(args.seed)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    env = common.subprocess_env(args.threads)
    if args.data_root:
        env["COVID_D2_DATA"] = args.data_root
    root, data = find_or_prepare_export(args, env)
    env["COVID_D2_DATASETS"] = str(root)
    split = split_of(root / EXPORT_FOLDER)
    write_json_atomic(args.work_dir / "split.json", {**split, "seed_of_new_split": args.seed, **data})
    eval_names = build_eval_sets(args, root, data, split)
    from detectron2.data import DatasetCatalog

    heldout = OrderedDict((key, len(DatasetCatalog.get(name))) for key, name in eval_names.items())

    runs = train_all(args, env)
    report: Dict[str, Any] = OrderedDict(
        command=" ".join(["python", "bench/ablation.py", *(argv if argv is not None else sys.argv[1:])]),
        date=time.strftime("%Y-%m-%d %H:%M %Z"), machine=common.machine_summary(args.device, args.threads),
        iters=args.iters, resolver_iters=args.resolver_iters, seed=args.seed, eval_stride=args.eval_stride,
        data=data, split=split, heldout_images=heldout, models=OrderedDict())
    for key, run in runs.items():
        logger.info("Scoring %s", run["label"])
        scores = evaluate(args, run, eval_names)
        report["models"][key] = {"label": run["label"], "config": run["config"], "train_s": run["wall_s"],
                                 "pretraining_s": run["pretraining_s"], "eval_s": scores.pop("eval_s"),
                                 "scores": scores}
    report["bench_wall_s"] = time.perf_counter() - started

    write_json_atomic(args.work_dir / "ablation.json", report)
    text = render(report)
    (args.work_dir / "ablation.md").write_text(text)
    sys.stdout.write(text)
    logger.info("Wrote %s and ablation.md; benchmark wall time %.0f s", args.work_dir / "ablation.json",
                report["bench_wall_s"])
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
