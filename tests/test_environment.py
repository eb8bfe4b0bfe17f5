"""Environment checks: detectron2 0.6 works on this torch/numpy/Pillow through covid_d2's shims.

A stock Mask R-CNN trains, infers, is scored by COCOEvaluator and resumes from a checkpoint,
on a real slice of the shared Zenodo data.
"""

import copy
import pathlib

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator, inference_on_dataset
from detectron2.structures import BoxMode

import covid_d2
from covid_d2 import compat
from covid_d2.engine import ResumableTrainer

SLICE_NAME = "0080.png"
DATASET_NAME = "covid_d2_env_test_slice"


def test_detectron2_and_covid_d2_import():
    import detectron2

    assert detectron2.__version__.startswith("0.6")
    assert callable(covid_d2.add_covid_config)


@pytest.mark.skipif(compat.has_compiled_ops(), reason="detectron2 built from source needs no shim")
def test_shims_in_effect_without_compiled_ops():
    from PIL import Image

    assert np.float is float
    assert np.int is int
    assert Image.LINEAR == Image.BILINEAR
    assert any("detectron2._C" in shim for shim in compat.APPLIED)


@pytest.mark.skipif(compat.has_compiled_ops(), reason="the real rotated-box op is present")
def test_rotated_box_op_raises_clear_error():
    from detectron2.structures import RotatedBoxes, pairwise_iou_rotated

    boxes = RotatedBoxes(torch.tensor([[10.0, 10.0, 4.0, 4.0, 0.0]]))
    with pytest.raises(compat.MissingCompiledOpsError, match="rotated boxes.*Build detectron2 from source"):
        pairwise_iou_rotated(boxes, boxes)


def _slice_record(zenodo_root: pathlib.Path) -> dict:
    case = zenodo_root / "case_01"
    image_path = case / "ct" / SLICE_NAME
    mask = cv2.imread(str(case / "infection_mask" / SLICE_NAME), cv2.IMREAD_GRAYSCALE) > 127
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    annotations = []
    for label in range(1, count):
        component = np.asfortranarray((labels == label).astype(np.uint8))
        ys, xs = np.nonzero(component)
        rle = mask_util.encode(component)
        rle["counts"] = rle["counts"].decode("ascii")
        annotations.append(
            {
                "bbox": [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)],
                "bbox_mode": BoxMode.XYXY_ABS,
                "segmentation": rle,
                "category_id": 0,
                "iscrowd": 0,
            }
        )
    assert annotations, f"{image_path} should have infection in its mask"
    return {"file_name": str(image_path), "image_id": 0, "height": 256, "width": 256,
            "annotations": annotations}


@pytest.fixture(scope="module")
def registered_slice(zenodo_root):
    record = _slice_record(zenodo_root)
    if DATASET_NAME in DatasetCatalog.list():
        DatasetCatalog.remove(DATASET_NAME)
        MetadataCatalog.remove(DATASET_NAME)
    DatasetCatalog.register(DATASET_NAME, lambda: [copy.deepcopy(record)])
    MetadataCatalog.get(DATASET_NAME).set(thing_classes=["lesion"], evaluator_type="coco")
    return DATASET_NAME


def _stock_mask_rcnn_cfg(output_dir: pathlib.Path, max_iter: int):
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("Misc/scratch_mask_rcnn_R_50_FPN_3x_gn.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 1
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 100
    cfg.DATASETS.TRAIN = (DATASET_NAME,)
    cfg.DATASETS.TEST = (DATASET_NAME,)
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.INPUT.MIN_SIZE_TRAIN = (256,)
    cfg.INPUT.MAX_SIZE_TRAIN = 256
    cfg.INPUT.MIN_SIZE_TEST = 256
    cfg.INPUT.MAX_SIZE_TEST = 256
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 1
    cfg.SOLVER.BASE_LR = 0.001
    cfg.SOLVER.MAX_ITER = max_iter
    cfg.SOLVER.STEPS = ()
    cfg.SOLVER.WARMUP_ITERS = 1
    cfg.SOLVER.CHECKPOINT_PERIOD = 2
    cfg.TEST.EVAL_PERIOD = 0
    cfg.OUTPUT_DIR = str(output_dir)
    return cfg


def test_stock_mask_rcnn_trains_infers_evaluates_resumes(registered_slice, tmp_path):
    cfg = _stock_mask_rcnn_cfg(tmp_path, max_iter=2)
    trainer = ResumableTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert trainer.iter == 2  # iterations 0 and 1 ran; the counter ends at MAX_ITER
    losses = trainer.storage.history("total_loss").values()
    assert len(losses) == 2 and all(np.isfinite(v) for v, _ in losses)

    checkpoint = tmp_path / "model_final.pth"
    assert checkpoint.is_file()
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert {"model", "trainer", "iteration"} <= set(saved)
    assert saved["trainer"]["_trainer"]["optimizer"]["state"], "SGD momentum should be saved"
    hook_states = saved["trainer"]["hooks"]
    assert hook_states["LRScheduler"]["last_epoch"] == 2, hook_states

    evaluator = COCOEvaluator(registered_slice, output_dir=str(tmp_path / "eval"))
    assert evaluator._use_fast_impl is compat.has_compiled_ops()
    loader = ResumableTrainer.build_test_loader(cfg, registered_slice)
    results = inference_on_dataset(trainer.model, loader, evaluator)
    assert set(results) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        assert isinstance(results[task]["AP"], float)
        assert 0.0 <= results[task]["AP"] <= 100.0

    # Resume on torch >= 2.6, where torch.load defaults to weights_only=True.
    resumed_cfg = _stock_mask_rcnn_cfg(tmp_path, max_iter=3)
    resumed = ResumableTrainer(resumed_cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    lr_before = resumed.optimizer.param_groups[0]["lr"]
    assert lr_before == pytest.approx(cfg.SOLVER.BASE_LR)
    restored = resumed.optimizer.state_dict()["state"]
    assert restored, "SGD momentum should be restored on resume"
    saved_momentum = saved["trainer"]["_trainer"]["optimizer"]["state"][0]["momentum_buffer"]
    assert torch.equal(restored[0]["momentum_buffer"], saved_momentum)
    resumed.train()
    assert resumed.iter == 3
