"""LesionEvaluator gathers per-slice records from two CPU workers (gloo on loopback)."""

import json
import pathlib
import socket

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

DATASET_NAME = "covid_d2_test_eval_distributed"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, port: int, output_path: str) -> None:
    import covid_d2  # noqa: F401  (shims before detectron2)
    import pycocotools.mask as mask_util
    from detectron2.data import DatasetCatalog
    from detectron2.structures import Boxes, BoxMode, Instances

    from covid_d2.evaluation import LesionEvaluator

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", world_size=2, rank=rank)
    torch.set_num_threads(1)

    mask = np.zeros((64, 64), dtype=bool)
    mask[10:30, 10:30] = True
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    annotation = {"bbox": [10.0, 10.0, 20.0, 20.0], "bbox_mode": BoxMode.XYWH_ABS,
                  "segmentation": rle, "category_id": 0, "iscrowd": 0}
    records = [
        {"file_name": f"{i}.png", "image_id": i, "height": 64, "width": 64, "annotations": [annotation]}
        for i in range(2)
    ]
    DatasetCatalog.register(DATASET_NAME, lambda: records)

    # Rank 0 finds the lesion of image 0, and rank 1 misses the lesion of image 1.
    instances = Instances((64, 64))
    found = rank == 0
    instances.pred_boxes = Boxes(torch.tensor([[10.0, 10.0, 30.0, 30.0]] if found else []).reshape(-1, 4))
    instances.scores = torch.ones(int(found))
    instances.pred_masks = torch.from_numpy(mask[None] if found else np.zeros((0, 64, 64), bool))

    evaluator = LesionEvaluator(DATASET_NAME, distributed=True)
    evaluator.reset()
    evaluator.process([{"image_id": rank}], [{"instances": instances}])
    results = evaluator.evaluate()
    if rank == 0:
        pathlib.Path(output_path).write_text(json.dumps(results))
    else:
        assert results == {}, results
    dist.barrier()
    dist.destroy_process_group()
    # Exit like covid-d2's CPU launcher, which skips a teardown that gloo can abort.
    from covid_d2.engine.launch import exit_worker_process

    exit_worker_process()


def test_evaluator_gathers_two_workers(tmp_path):
    output_path = tmp_path / "results.json"
    mp.spawn(_worker, args=(_free_port(), str(output_path)), nprocs=2, join=True)
    lesion = json.loads(output_path.read_text())["lesion"]

    assert lesion["num_slices"] == 2.0
    assert lesion["lesion_sensitivity"] == 0.5
    assert lesion["pixel_dice_per_slice"] == 0.5
