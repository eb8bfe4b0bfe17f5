#!/usr/bin/env python
"""AP and speed of one trained detector at several RPN pre-NMS top-k values.

Fewer pre-NMS proposals make inference cheaper, but they change the proposals, so a smaller
``MODEL.RPN.PRE_NMS_TOPK_TEST`` is only worth it when AP does not drop. This script scores the
same checkpoint on the same dataset once per top-k value with Detectron2's COCO evaluator and
covid-d2's lesion evaluator, and times the model's forward calls during that scoring.

The default checkpoint and config are the demo's detector (``output/demo/detector``), scored on
``covid_zenodo_val`` from the demo's export. The top-k values are the config's own, a half and
a quarter of it.

Examples:
    python bench/proposals_ap.py
    python bench/proposals_ap.py --config-file output/bench/ablation/full/config.yaml \\
        --weights output/bench/ablation/full/model_final.pth --topk 500 250 125
"""

import argparse
import contextlib
import json
import logging
import pathlib
import sys
import time
from collections import OrderedDict
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(1, str(pathlib.Path(__file__).resolve().parent.parent))

import covid_d2  # noqa: E402,F401  (first: applies the detectron2 0.6 shims)
import torch  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.data import DatasetCatalog  # noqa: E402

import common  # noqa: E402
from covid_d2.data.datasets import register_all_covid_lesion  # noqa: E402
from covid_d2.engine import load_covid_config  # noqa: E402
from covid_d2.evaluation import format_results_table  # noqa: E402
from covid_d2.utils.atomic import write_json_atomic  # noqa: E402

logger = logging.getLogger("covid_d2.bench.proposals_ap")

DEMO_DETECTOR = common.REPO / "output" / "demo" / "detector"
LESION_METRICS = ("lesion_sensitivity", "tiny_lesion_sensitivity", "lesion_dice_matched", "pixel_dice_global",
                  "false_positives_per_slice")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default=str(DEMO_DETECTOR / "config.yaml"),
                        help="detector config (default: the demo detector's config.yaml)")
    parser.add_argument("--weights", default=str(DEMO_DETECTOR / "model_final.pth"),
                        help="trained checkpoint to score")
    parser.add_argument("--dataset", default="covid_zenodo_val", help="registered dataset to score on")
    parser.add_argument("--datasets-root", default=str(common.REPO / "output" / "demo"),
                        help="folder above covid_lesion/ (default: the demo's export)")
    parser.add_argument("--topk", type=int, nargs="+",
                        help="pre-NMS top-k values (default: the config's value, its half and its quarter)")
    parser.add_argument("--device", default="cpu", help="torch device: cpu or cuda[:N]")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: the CPU cores)")
    parser.add_argument("--work-dir", type=pathlib.Path, default=common.REPO / "output" / "bench" / "proposals_ap",
                        help="folder for the evaluators' outputs and proposals_ap.json")
    args = parser.parse_args(argv)
    if args.topk and min(args.topk) < 1:
        parser.error(f"--topk values must be positive integers, got {args.topk}")
    return args


def check_inputs(args) -> None:
    """Raise a clear error when the config or checkpoint is missing."""
    for flag, path in (("--config-file", args.config_file), ("--weights", args.weights)):
        if not pathlib.Path(path).is_file():
            raise SystemExit(f"{flag} {path} not found. Run `make demo` to train the demo detector, "
                             f"or pass {flag} with a trained detector.")


class ForwardTimer:
    """Forward hooks that add up the wall seconds of a module's calls and count its inputs."""

    def __init__(self, model: torch.nn.Module, device: str):
        self.device = device
        self.seconds = 0.0
        self.images = 0
        self._start: Optional[float] = None
        model.register_forward_pre_hook(self._before)
        model.register_forward_hook(self._after)

    def _before(self, module, inputs) -> None:
        common.synchronize(self.device)
        self._start = time.perf_counter()

    def _after(self, module, inputs, outputs) -> None:
        common.synchronize(self.device)
        self.seconds += time.perf_counter() - self._start
        self.images += len(inputs[0])


def score(args, trainer, topk: int) -> Dict[str, Any]:
    """Score the checkpoint with ``PRE_NMS_TOPK_TEST = topk``; return AP, lesion metrics and timing."""
    output_dir = args.work_dir / f"topk_{topk}"
    cfg = load_covid_config(args.config_file, [
        "OUTPUT_DIR", str(output_dir), "MODEL.DEVICE", args.device, "MODEL.WEIGHTS", args.weights,
        "DATASETS.TEST", f"('{args.dataset}',)", "MODEL.RPN.PRE_NMS_TOPK_TEST", str(topk),
        "MODEL.SPATIO_TEMPORAL.ENCODER_WEIGHTS", ""])
    model = trainer.build_model(cfg)
    DetectionCheckpointer(model).load(args.weights)
    model.eval()
    timer = ForwardTimer(model, args.device)
    # pycocotools prints its summary to stdout; keep stdout for the table.
    with contextlib.redirect_stdout(sys.stderr):
        results = trainer.test(cfg, model)
    row: Dict[str, Any] = OrderedDict()
    for task in ("segm", "bbox"):
        row[f"{task}/AP"] = results.get(task, {}).get("AP")
        row[f"{task}/AP50"] = results.get(task, {}).get("AP50")
    metrics_file = output_dir / "inference" / args.dataset / "lesion_metrics.json"
    metrics = json.loads(metrics_file.read_text())["metrics"]
    row.update((f"lesion/{name}", metrics.get(name)) for name in LESION_METRICS)
    row["s/slice"] = timer.seconds / max(1, timer.images)
    row["slices"] = timer.images
    return row


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    check_inputs(args)
    common.check_device(args.device)
    args.threads = common.set_threads(args.threads)
    registered = register_all_covid_lesion(args.datasets_root or None)
    if args.dataset not in DatasetCatalog.list():
        raise SystemExit(f"Dataset {args.dataset} is not registered (found under {args.datasets_root}: "
                         f"{registered or 'none'}). Run `make demo` or pass --datasets-root and --dataset.")
    trainer = common.load_trainer_class()

    configured = load_covid_config(args.config_file).MODEL.RPN.PRE_NMS_TOPK_TEST
    values: List[int] = args.topk or [configured, max(1, configured // 2), max(1, configured // 4)]
    rows: "OrderedDict[str, Dict[str, Any]]" = OrderedDict()
    for topk in values:
        logger.info("Scoring %s on %s with MODEL.RPN.PRE_NMS_TOPK_TEST %d", args.weights, args.dataset, topk)
        rows[str(topk)] = score(args, trainer, topk)
    reference = rows[str(values[0])]["s/slice"]
    for row in rows.values():
        row["time ratio to first"] = row["s/slice"] / reference if reference else float("nan")

    report = OrderedDict(
        command=" ".join(["python", "bench/proposals_ap.py", *(argv if argv is not None else sys.argv[1:])]),
        date=time.strftime("%Y-%m-%d %H:%M %Z"), machine=common.machine_summary(args.device, args.threads),
        config=args.config_file, weights=args.weights, dataset=args.dataset, configured_topk=configured, rows=rows)
    write_json_atomic(args.work_dir / "proposals_ap.json", report)
    table = format_results_table(rows)
    sys.stdout.write(f"RPN pre-NMS top-k (config value {configured}) on {args.dataset}:\n\n{table}")
    logger.info("Wrote %s", args.work_dir / "proposals_ap.json")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
