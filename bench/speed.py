#!/usr/bin/env python
"""Speed of covid-d2 side by side with Detectron2's stock Mask R-CNN, measured in one process.

Sections (each prints a markdown table; all figures go to ``--output`` as JSON):

1. Detector inference, seconds per key slice at each ``--sizes`` (square), for the full
   spatio-temporal model, the spatial-only model and the stock Mask R-CNN R50-FPN (GroupNorm),
   built from ``configs/lesion/`` with random weights, and each model's ratio to the stock one.
   Calls run under ``torch.inference_mode`` with one key slice per call. At the largest size,
   the full and the stock model are also timed under other inference options: ``no_grad``,
   channels-last weights, four key slices per call (as tools/infer.py does) and half the RPN
   pre-NMS top-k. The last option changes the proposals, so it is a speed-only figure. A stage
   table splits each inference into backbone, RPN and ROI heads.
2. Training seconds per iteration (forward, backward, SGD step; batch ``--train-batch``) for the
   same three models, on pre-built inputs (data loading is section 5).
3. Lung stage on the COVID-CT-MD volume P001 (148 slices of 512 x 512): axial and sagittal
   U-Net, fusion, dense CRF (also seconds per slice), lung components, ROI cropping and writing.
4. ``tools/infer.py`` on P001 end to end in a subprocess: wall seconds and peak resident memory.
5. ``ThreeSliceDatasetMapper`` samples/s through Detectron2's train loader with 0 and 2 workers
   (``bench/mapper_throughput.py``), against the samples/s each model's training step consumes.

Timings: one warm-up run, then the median of ``--repeats`` runs, taken round-robin over the
models so that a change of machine load hits all alike. An untrained detector keeps up to
``TEST.DETECTIONS_PER_IMAGE`` (100) boxes per slice, so its mask head runs on more RoIs than a
trained one; the tables list the detection counts.

``--quick`` (the ``make bench-quick`` variant): 2 repeats, no option and stage tables,
training at the smallest size only, the lung stage on the 16 central slices of P001 instead of
all 148, no ``tools/infer.py`` run, and 10 mapper batches per worker count.

Examples:
    python bench/speed.py --quick
    python bench/speed.py --repeats 5 --output output/bench/speed.json
    python bench/speed.py --device cuda --sizes 512
"""

import argparse
import contextlib
import json
import logging
import os
import pathlib
import sys
import tempfile
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(1, str(pathlib.Path(__file__).resolve().parent.parent))

import covid_d2  # noqa: E402  (first: applies the detectron2 0.6 shims)
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.solver import build_optimizer  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402
from PIL import Image  # noqa: E402

import common  # noqa: E402
import mapper_throughput  # noqa: E402
import model_stats  # noqa: E402
from covid_d2.data.coco_export import lesion_components  # noqa: E402
from covid_d2.utils.atomic import write_json_atomic  # noqa: E402
from covid_d2.data.three_slice_mapper import masks_to_instances  # noqa: E402
from covid_d2.engine import load_covid_config  # noqa: E402
from covid_d2.evaluation import format_results_table  # noqa: E402
from covid_d2.paths import data_root  # noqa: E402

logger = logging.getLogger("covid_d2.bench.speed")

STOCK = "Mask R-CNN R50-FPN GN"
# Detector rows: label -> config under configs/lesion/, for --depth 50 and --depth 18.
DETECTORS = {
    50: OrderedDict([("spatio-temporal R50", "st_R50.yaml"),
                     ("spatial-only R50", "spatial_R50.yaml"),
                     (STOCK, "mask_rcnn_R50_FPN_gn.yaml")]),
    18: OrderedDict([("spatio-temporal R18", "cpu/st_R18.yaml"),
                     ("spatial-only R18", "cpu/spatial_R18.yaml"),
                     ("Mask R-CNN R18-FPN GN", "cpu/mask_rcnn_R18_FPN_gn.yaml")]),
}
P001 = pathlib.Path("covid_ct_md_sample") / "COVID-19" / "P001"
DEMO = common.REPO / "output" / "demo"
QUICK_LUNG_SLICES = 16


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="short variant (see the module docstring): about 4 minutes on 2 cores")
    parser.add_argument("--device", default="cpu", help="torch device: cpu or cuda[:N]")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default: the number of CPU cores)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512],
                        help="square key-slice sizes in pixels for the detector sections")
    parser.add_argument("--depth", type=int, choices=sorted(DETECTORS), default=50,
                        help="ResNet depth of the detectors: 50 (configs/lesion/*_R50*) or 18 (the "
                             "CPU configs under configs/lesion/cpu/)")
    parser.add_argument("--repeats", type=int, default=0,
                        help="timed runs per figure after one warm-up (default 5, 2 with --quick)")
    parser.add_argument("--train-batch", type=int, default=2, help="images per training iteration")
    parser.add_argument("--sections", nargs="+", default=["inference", "training", "lung", "infer", "mapper"],
                        choices=["inference", "training", "lung", "infer", "mapper"],
                        help="sections to run")
    parser.add_argument("--data-root", default="",
                        help="shared data folder (default: $COVID_D2_DATA or ../shared/data)")
    parser.add_argument("--datasets-root", default="",
                        help="folder above covid_lesion/ for the mapper section (default: "
                             "$COVID_D2_DATASETS, else output/demo when it holds an export, else datasets/)")
    parser.add_argument("--lung-config", default="configs/lung/axial_cpu.yaml",
                        help="lung U-Net config (architecture, input size, CRF and ROI keys)")
    parser.add_argument("--lung-axial-weights", default=None,
                        help="axial lung U-Net checkpoint (default: output/demo/lung_axial/model_final.pth "
                             "when it exists, else random weights)")
    parser.add_argument("--lung-sagittal-weights", default=None,
                        help="sagittal lung U-Net checkpoint (default: output/demo/lung_sagittal/"
                             "model_final.pth when it exists, else random weights)")
    parser.add_argument("--infer-config", default="configs/lesion/cpu/st_R18.yaml",
                        help="detector config for the tools/infer.py section")
    parser.add_argument("--infer-weights", default=None,
                        help="detector checkpoint for the tools/infer.py section (default: "
                             "output/demo/detector/model_final.pth when it exists, else random weights)")
    parser.add_argument("--output", default="output/bench/speed.json",
                        help="JSON file for every figure (written atomically)")
    args = parser.parse_args(argv)
    if not args.repeats:
        args.repeats = 2 if args.quick else 5
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.train_batch < 1:
        parser.error(f"--train-batch must be at least 1, got {args.train_batch}")
    return args


def default_checkpoint(given: Optional[str], demo_path: pathlib.Path) -> str:
    """Return ``given`` when set, else the demo's checkpoint when it exists, else "" (random weights)."""
    if given is not None:
        return given
    return str(demo_path) if demo_path.is_file() else ""


def ratio_to(value: float, reference: float) -> float:
    """Return ``value / reference`` (NaN when the reference is not positive)."""
    return value / reference if reference > 0 else float("nan")


# --------------------------------------------------------------------------- inputs and models


def build_detector(config: str, device: str, overrides: Sequence[str] = ()) -> torch.nn.Module:
    """Build a lesion detector from ``configs/lesion/<config>`` with random weights, in eval mode."""
    opts = ["MODEL.DEVICE", device, "MODEL.WEIGHTS", ""] + list(overrides)
    cfg = load_covid_config(str(common.REPO / "configs" / "lesion" / config), opts)
    return build_model(cfg).eval()


def inference_input(size: int, device: str) -> Dict[str, Any]:
    """Return a model input with the real three-slice stack of ``bench/model_stats.py`` at ``size`` px."""
    record = model_stats.three_slice_input(size)
    record["image"] = record["image"].to(device)
    return record


def training_input(size: int, device: str) -> Dict[str, Any]:
    """Return a training input (mapper format) of the same slice with its infection-mask lesions.

    The lesions are the 8-connected components of at least 4 px of the Zenodo infection mask,
    resized to ``size`` px, as the COCO export defines them.
    """
    record = inference_input(size, device)
    folder = data_root() / "covid19_ct_seg_zenodo_kaggle_png256" / model_stats.CASE / "infection_mask"
    names = sorted(path.name for path in folder.glob("*.png"))
    mask = np.asarray(Image.open(folder / names[model_stats.KEY_POSITION]).convert("L")) > 0
    mask = cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
    masks = [component.astype(np.uint8) for component in lesion_components(mask, 8, 4)]
    record["instances"] = masks_to_instances(masks, [0] * len(masks), [-1] * len(masks), (size, size)).to(device)
    record["lesion_mask"] = torch.from_numpy(mask)
    record["stage"] = -1
    return record


def round_robin(functions: "OrderedDict[Any, Callable[[], Any]]", repeats: int,
                device: str) -> Tuple[Dict[Any, float], Dict[Any, Any]]:
    """Time each function: one untimed warm-up each, then ``repeats`` rounds over all of them.

    Returns the median seconds per key and the value each function returned in its warm-up.
    """
    warmup = {key: function() for key, function in functions.items()}
    times: Dict[Any, List[float]] = {key: [] for key in functions}
    for _ in range(repeats):
        for key, function in functions.items():
            times[key].append(common.timed(function, device))
    return {key: float(np.median(values)) for key, values in times.items()}, warmup


# --------------------------------------------------------------------------- 1. inference


def infer_call(model, records: List[Dict[str, Any]], context: Callable[[], Any]) -> Callable[[], int]:
    """Return a function that runs ``model(records)`` under ``context`` and returns the detections."""
    def run() -> int:
        with context():
            outputs = model(records)
        return sum(len(output["instances"]) for output in outputs)
    return run


def measure_inference(args, detectors: "OrderedDict[str, str]") -> Dict[str, Any]:
    """Seconds per key slice of each detector and size, and the option table at the largest size."""
    device = args.device
    models = OrderedDict((label, build_detector(config, device)) for label, config in detectors.items())
    inputs = {size: inference_input(size, device) for size in args.sizes}
    labels = list(models)
    stock = labels[-1]

    calls = OrderedDict()
    for size in args.sizes:
        for label, model in models.items():
            calls[(label, size)] = infer_call(model, [inputs[size]], torch.inference_mode)
    logger.info("Timing detector inference: %d models x %d sizes, %d repeats", len(models), len(args.sizes), args.repeats)
    seconds, detections = round_robin(calls, args.repeats, device)

    table = OrderedDict()
    for label in labels:
        row = OrderedDict()
        for size in args.sizes:
            row[f"s/slice {size}px"] = seconds[(label, size)]
        for size in args.sizes:
            row[f"ratio to stock {size}px"] = ratio_to(seconds[(label, size)], seconds[(stock, size)])
        for size in args.sizes:
            row[f"detections {size}px"] = detections[(label, size)]
        row["params (M)"] = sum(p.numel() for p in models[label].parameters()) / 1e6
        table[label] = row

    if args.quick:
        return {"per_slice": table}
    options = measure_inference_options(args, models, [labels[0], stock], max(args.sizes))
    stages = stage_breakdown(args, models, [labels[0], stock], max(args.sizes))
    return {"per_slice": table, "options": options, "stages": stages, "options_size": max(args.sizes)}


def stage_breakdown(args, models, labels: Sequence[str], size: int) -> "OrderedDict[str, Dict[str, float]]":
    """Seconds per key slice of each stage of ``GeneralizedRCNN.inference`` at ``size`` px.

    Stages: input normalisation and backbone, RPN (proposals and their NMS), and the ROI heads
    (box head, box NMS, mask head), each timed on the outputs of the stage before it.
    """
    device = args.device
    record = inference_input(size, device)
    calls = OrderedDict()
    for label in labels:
        model = models[label]
        with torch.inference_mode():
            images = model.preprocess_image([record])
            features = model.backbone(images.tensor)
            proposals, _ = model.proposal_generator(images, features, None)

        def backbone(model=model):
            with torch.inference_mode():
                model.backbone(model.preprocess_image([record]).tensor)

        def rpn(model=model, images=images, features=features):
            with torch.inference_mode():
                model.proposal_generator(images, features, None)

        def roi_heads(model=model, images=images, features=features, proposals=proposals):
            with torch.inference_mode():
                model.roi_heads(images, features, proposals, None)

        calls[(label, "backbone s")] = backbone
        calls[(label, "RPN s")] = rpn
        calls[(label, "ROI heads s")] = roi_heads
    logger.info("Timing the inference stages at %d px", size)
    seconds, _ = round_robin(calls, args.repeats, device)
    table: "OrderedDict[str, Dict[str, float]]" = OrderedDict()
    for (label, stage), value in seconds.items():
        table.setdefault(label, OrderedDict())[stage] = value
    return table


def measure_inference_options(args, models, labels: Sequence[str], size: int) -> "OrderedDict[str, Dict[str, float]]":
    """Seconds per key slice at ``size`` px under each inference option, for the given models.

    Options that keep the computation: ``no_grad`` (what ``DefaultPredictor`` uses),
    ``inference_mode``, channels-last weights and four key slices per call. The pre-NMS option
    halves ``RPN.PRE_NMS_TOPK_TEST``, which changes the proposals, so its AP must be checked on
    trained weights before any config adopts it.
    """
    device = args.device
    record = inference_input(size, device)
    batch = [dict(record) for _ in range(4)]
    calls = OrderedDict()
    for label in labels:
        model = models[label]
        calls[(label, "inference_mode, 1 slice per call")] = infer_call(model, [record], torch.inference_mode)
        calls[(label, "no_grad, 1 slice per call")] = infer_call(model, [record], torch.no_grad)
        if not args.quick:
            calls[(label, "inference_mode, 4 slices per call")] = infer_call(model, batch, torch.inference_mode)
    logger.info("Timing inference options at %d px", size)
    seconds, _ = round_robin(calls, args.repeats, device)

    # Channels-last and the smaller pre-NMS top-k change the model object, so they run one model
    # at a time after the round-robin above.
    for label in labels:
        model = models[label]
        model.to(memory_format=torch.channels_last)
        call = infer_call(model, [record], torch.inference_mode)
        seconds[(label, "inference_mode, channels-last weights")] = common.median_seconds(
            call, args.repeats, device=device)["median_s"]
        model.to(memory_format=torch.contiguous_format)

        rpn = model.proposal_generator
        original = dict(rpn.pre_nms_topk)
        rpn.pre_nms_topk[False] = max(1, original[False] // 2)
        logger.info("%s: RPN pre-NMS top-k at test time %d -> %d", label, original[False], rpn.pre_nms_topk[False])
        key = (label, "inference_mode, RPN pre-NMS top-k halved (speed only)")
        seconds[key] = common.median_seconds(call, args.repeats, device=device)["median_s"]
        rpn.pre_nms_topk.update(original)

    table: "OrderedDict[str, Dict[str, float]]" = OrderedDict()
    for (label, option), value in seconds.items():
        per_slice = value / 4 if "4 slices" in option else value
        table.setdefault(option, OrderedDict())[f"{label} s/slice"] = per_slice
    stock = labels[-1]
    for option, row in table.items():
        row["ratio full / stock"] = ratio_to(row[f"{labels[0]} s/slice"], row[f"{stock} s/slice"])
    return table


# --------------------------------------------------------------------------- 2. training


def measure_training(args, detectors: "OrderedDict[str, str]", sizes: Sequence[int]) -> Dict[str, Any]:
    """Seconds per training iteration (forward, backward, optimizer step) of each detector and size."""
    device = args.device
    table: "OrderedDict[str, Dict[str, float]]" = OrderedDict()
    for label, config in detectors.items():
        row = OrderedDict()
        for size in sizes:
            cfg = load_covid_config(str(common.REPO / "configs" / "lesion" / config),
                                    ["MODEL.DEVICE", device, "MODEL.WEIGHTS", ""])
            model = build_model(cfg).train()
            optimizer = build_optimizer(cfg, model)
            batch = [training_input(size, device) for _ in range(args.train_batch)]

            def step(model=model, optimizer=optimizer, batch=batch):
                losses = model(batch)
                total = sum(losses.values())
                optimizer.zero_grad()
                total.backward()
                optimizer.step()

            logger.info("Timing training of %s at %d px", label, size)
            # The ROI heads log training statistics, which needs an EventStorage as in the trainer.
            with EventStorage(0):
                row[f"s/iter {size}px"] = common.median_seconds(step, args.repeats, device=device)["median_s"]
            del model, optimizer
        table[label] = row
    stock = list(detectors)[-1]
    for label, row in table.items():
        for size in sizes:
            row[f"ratio to stock {size}px"] = ratio_to(row[f"s/iter {size}px"], table[stock][f"s/iter {size}px"])
    return table


# --------------------------------------------------------------------------- 3. lung stage


def measure_lung(args, axial_weights: str, sagittal_weights: str) -> Dict[str, Any]:
    """Seconds of each lung-stage step on P001 (or its central slices with ``--quick``)."""
    from covid_d2.data.dicom import read_dicom_series
    from covid_d2.data.volume import Case, save_case
    from covid_d2.data.writers import write_volume_nifti
    from covid_d2.lung.crf import CRFParams, crf_refine_slice, fill_holes_per_slice, fuse_views, keep_lung_components
    from covid_d2.lung.predict import LungViewPredictor, lung_input_volume
    from covid_d2.lung.preprocess import roi_case
    from covid_d2.lung.roi import RoiCrop, crop_volume

    device = args.device
    cfg = load_covid_config(args.lung_config, ["MODEL.DEVICE", device])
    folder = data_root(args.data_root) / P001
    start = time.perf_counter()
    volume = read_dicom_series(folder)
    read_s = time.perf_counter() - start
    if args.quick:
        first = max(0, volume.shape[0] // 2 - QUICK_LUNG_SLICES // 2)
        slab = RoiCrop((first, first + QUICK_LUNG_SLICES), (0, volume.shape[1]), (0, volume.shape[2]), volume.shape)
        volume = crop_volume(volume, slab)
    grey = lung_input_volume(volume, cfg.LUNG.INTENSITY_KIND, cfg.LUNG.AUGMENT.WINDOW_LEVEL,
                             cfg.LUNG.AUGMENT.WINDOW_WIDTH)

    axial = LungViewPredictor(cfg, axial_weights, "axial", device=device)
    sagittal = LungViewPredictor(cfg, sagittal_weights, "sagittal", device=device)
    # Warm-up on a small block (4 slices x 32 columns), so that one-off allocations do not count.
    axial.predict(grey[:4, :, :32])
    sagittal.predict(grey[:4, :, :32])

    timings = OrderedDict()
    timings["read DICOM"] = read_s
    timings["axial U-Net"] = common.timed(lambda: axial.predict(grey), device)
    axial_probability = axial.predict(grey)
    timings["sagittal U-Net"] = common.timed(lambda: sagittal.predict(grey), device)
    sagittal_probability = sagittal.predict(grey)
    start = time.perf_counter()
    probability = fuse_views(axial_probability, sagittal_probability)
    timings["fusion"] = time.perf_counter() - start

    params = CRFParams.from_config(cfg)
    labels = np.empty(grey.shape, dtype=np.uint8)
    crf_times = []
    for index in range(grey.shape[0]):
        start = time.perf_counter()
        labels[index] = crf_refine_slice(probability[index], grey[index], params)
        crf_times.append(time.perf_counter() - start)
    timings["dense CRF"] = float(sum(crf_times))
    start = time.perf_counter()
    lung = fill_holes_per_slice(keep_lung_components(labels, cfg.LUNG.CRF.MAX_COMPONENTS,
                                                     cfg.LUNG.CRF.MIN_RELATIVE_SIZE))
    timings["lung components + hole filling"] = time.perf_counter() - start

    case = Case(image=volume, lung=None,
                meta={"case_id": "P001", "source": "covid_ct_md", "spacing_known": True, "slice_gaps": []})
    start = time.perf_counter()
    cropped, crop, _ = roi_case(case, lung, cfg)
    timings["ROI cropping"] = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="covid_d2_bench_lung_") as folder_name:
        start = time.perf_counter()
        if cropped is not None:
            save_case(cropped, pathlib.Path(folder_name) / "P001_roi")
        write_volume_nifti(lung, volume.affine, pathlib.Path(folder_name) / "lung_full.nii.gz")
        timings["writing (ROI case + lung mask)"] = time.perf_counter() - start
    timings["total without reading"] = sum(value for key, value in timings.items() if key != "read DICOM")

    return {
        "slices": int(grey.shape[0]),
        "slice_shape": list(grey.shape[1:]),
        "weights": {"axial": axial_weights or "random", "sagittal": sagittal_weights or "random"},
        "lung_voxels": int(lung.sum()),
        "crop_shape": list(crop.shape),
        "seconds": timings,
        "crf_s_per_slice_median": float(np.median(crf_times)),
    }


# --------------------------------------------------------------------------- 4. tools/infer.py


def write_random_checkpoint(config: str, path: pathlib.Path, opts: Sequence[str] = ()) -> str:
    """Save the random initial weights of the model of ``config`` as a Detectron2 checkpoint."""
    cfg = load_covid_config(config, ["MODEL.DEVICE", "cpu", *opts])
    model = build_model(cfg)
    torch.save({"model": model.state_dict()}, path)
    return str(path)


def measure_infer_tool(args, axial_weights: str, sagittal_weights: str, detector_weights: str,
                       work: pathlib.Path) -> Dict[str, Any]:
    """Run tools/infer.py on P001 in a subprocess; return wall s, peak RSS and the tool's own timings."""
    if not axial_weights:
        axial_weights = write_random_checkpoint(args.lung_config, work / "lung_axial_random.pth")
    if not sagittal_weights:
        sagittal_weights = write_random_checkpoint(args.lung_config, work / "lung_sagittal_random.pth")
    if not detector_weights:
        detector_weights = write_random_checkpoint(args.infer_config, work / "detector_random.pth")
    output_dir = work / "infer"
    command = ["tools/infer.py", "--input", data_root(args.data_root) / P001, "--output-dir", output_dir,
               "--config-file", args.infer_config, "--weights", detector_weights,
               "--lung-config", args.lung_config, "--lung-axial-weights", axial_weights,
               "--lung-sagittal-weights", sagittal_weights, "--device", args.device, "--noprogress"]
    env = common.subprocess_env(args.threads)
    if args.data_root:
        env["COVID_D2_DATA"] = args.data_root
    result = common.run_python(command, work / "infer.log", env)
    report = json.loads((output_dir / "P001" / "report.json").read_text())
    return {**result, "lesion_count": report.get("lesion_count"), "tool_timings_s": report.get("timings_s", {}),
            "detector_weights": detector_weights, "config": args.infer_config}


# --------------------------------------------------------------------------- 5. data loading


def measure_mapper(args, training: Dict[str, Any], sizes: Sequence[int]) -> Optional[Dict[str, Any]]:
    """Mapper samples/s with 0 and 2 workers at each size, and each model's training consumption."""
    from detectron2.config import get_cfg

    from covid_d2.data.datasets import register_all_covid_lesion

    root = mapper_datasets_root(args.datasets_root)
    registered = register_all_covid_lesion(str(root))
    if "covid_zenodo_train" not in registered:
        logger.warning("No covid_zenodo_train export under %s/covid_lesion; skipping the mapper section. "
                       "Export it with tools/export_coco.py or pass --datasets-root.", root)
        return None
    table: "OrderedDict[str, Dict[str, float]]" = OrderedDict()
    batches = 10 if args.quick else 40
    for size in sizes:
        cfg = get_cfg()
        covid_d2.add_covid_config(cfg)
        cfg.DATASETS.TRAIN = ("covid_zenodo_train",)
        cfg.INPUT.MIN_SIZE_TRAIN = (size,)
        cfg.INPUT.MAX_SIZE_TRAIN = size
        cfg.SOLVER.IMS_PER_BATCH = args.train_batch
        row = OrderedDict()
        for workers in (0, 2):
            logger.info("Timing the mapper at %d px with %d workers", size, workers)
            row[f"mapper samples/s, {workers} workers"] = mapper_throughput.measure(cfg, workers, batches)
        for label, timings in training.items():
            step = timings.get(f"s/iter {size}px")
            if step:
                row[f"{label} consumes samples/s"] = args.train_batch / step
        table[f"{size}px"] = row
    return {"datasets_root": str(root), "batches": batches, "table": table}


def mapper_datasets_root(given: str) -> pathlib.Path:
    """Return the datasets root of the mapper section (see ``--datasets-root``)."""
    from covid_d2.data.datasets.covid_lesion import DATASETS_ENV, datasets_root

    if given or os.environ.get(DATASETS_ENV):
        return datasets_root(given or None)
    if (DEMO / "covid_lesion" / "covid_zenodo_train.json").is_file():
        return DEMO
    return datasets_root()


# --------------------------------------------------------------------------- report


def render(results: Dict[str, Any]) -> str:
    """Return the markdown tables of all measured sections."""
    parts = [f"Machine: {results['machine']} at the start, {results['load_average_at_end']:.1f} at the end. "
             f"{results['method']}"]
    if "inference" in results:
        inference = results["inference"]
        parts.append("Detector inference, seconds per key slice (inference_mode, 1 slice per call):\n\n"
                     + format_results_table(inference["per_slice"]))
        if "options" in inference:
            parts.append(f"Inference options at {inference['options_size']} px, seconds per key slice:\n\n"
                         + format_results_table(inference["options"], row_header="option"))
            parts.append(f"Inference stages at {inference['options_size']} px (inference_mode, 1 slice per "
                         "call):\n\n" + format_results_table(inference["stages"]))
    if "training" in results:
        parts.append(f"Training seconds per iteration (batch {results['train_batch']}):\n\n"
                     + format_results_table(results["training"]))
    if "lung" in results:
        lung = results["lung"]
        rows = OrderedDict((step, {"seconds": value}) for step, value in lung["seconds"].items())
        rows["dense CRF per slice (median)"] = {"seconds": lung["crf_s_per_slice_median"]}
        parts.append(f"Lung stage on P001 ({lung['slices']} slices of {lung['slice_shape'][0]}x"
                     f"{lung['slice_shape'][1]}, lung U-Net weights: {lung['weights']['axial']}):\n\n"
                     + format_results_table(rows, row_header="step"))
    if "infer" in results:
        infer = results["infer"]
        rows = {"tools/infer.py on P001": {"wall s": infer["wall_s"], "peak RSS (MiB)": infer["peak_rss_mib"],
                                           **{f"{k}": v for k, v in infer["tool_timings_s"].items()}}}
        parts.append(f"tools/infer.py end to end ({infer['config']}, weights {infer['detector_weights']}):\n\n"
                     + format_results_table(rows, row_header="run", digits=1))
    if results.get("mapper"):
        mapper = results["mapper"]
        parts.append(f"Data loading, samples/s ({mapper['batches']} batches of {results['train_batch']} after one "
                     f"untimed batch, export {mapper['datasets_root']}):\n\n"
                     + format_results_table(mapper["table"], row_header="size", digits=2))
    return "\n\n".join(parts) + "\n"


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    device = common.check_device(args.device)
    args.threads = common.set_threads(args.threads)
    torch.manual_seed(0)
    detectors = DETECTORS[args.depth]
    train_sizes = [min(args.sizes)] if args.quick else list(args.sizes)

    results: Dict[str, Any] = OrderedDict()
    results["command"] = " ".join(["python", "bench/speed.py", *(argv if argv is not None else sys.argv[1:])])
    results["date"] = time.strftime("%Y-%m-%d %H:%M %Z")
    results["machine"] = common.machine_summary(device, args.threads)
    results["method"] = (f"One warm-up run, then the median of {args.repeats} runs; random detector weights "
                         f"({'quick variant' if args.quick else 'full variant'}).")
    results["train_batch"] = args.train_batch
    started = time.perf_counter()

    if "inference" in args.sections:
        results["inference"] = measure_inference(args, detectors)
    if "training" in args.sections:
        results["training"] = measure_training(args, detectors, train_sizes)
    axial_weights = default_checkpoint(args.lung_axial_weights, DEMO / "lung_axial" / "model_final.pth")
    sagittal_weights = default_checkpoint(args.lung_sagittal_weights, DEMO / "lung_sagittal" / "model_final.pth")
    if "lung" in args.sections:
        results["lung"] = measure_lung(args, axial_weights, sagittal_weights)
    if "infer" in args.sections and not args.quick:
        detector_weights = default_checkpoint(args.infer_weights, DEMO / "detector" / "model_final.pth")
        with tempfile.TemporaryDirectory(prefix="covid_d2_bench_infer_") as work:
            results["infer"] = measure_infer_tool(args, axial_weights, sagittal_weights, detector_weights,
                                                  pathlib.Path(work))
    if "mapper" in args.sections:
        results["mapper"] = measure_mapper(args, results.get("training", {}), train_sizes)
    results["bench_wall_s"] = time.perf_counter() - started
    results["load_average_at_end"] = os.getloadavg()[0]

    output = pathlib.Path(args.output)
    write_json_atomic(output, results)
    sys.stdout.write(render(results))
    logger.info("Wrote %s; benchmark wall time %.0f s", output, results["bench_wall_s"])
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
