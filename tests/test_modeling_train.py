"""Training and inference of the covid-d2 models on real three-slice inputs (CPU configs)."""

import copy
import pathlib
import time

import pytest
import torch

import covid_d2
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.structures import Instances
from detectron2.utils.events import EventStorage

from three_slice_batch import healthy_input, zenodo_input

REPO = pathlib.Path(__file__).resolve().parents[1]
DETECTOR_CONFIGS = ["lesion/cpu/st_R18.yaml", "lesion/cpu/spatial_R18.yaml",
                    "lesion/cpu/mask_rcnn_R18_FPN_gn.yaml"]


def load_config(name: str, **overrides):
    cfg = get_cfg()
    covid_d2.add_covid_config(cfg)
    cfg.merge_from_file(str(REPO / "configs" / name))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return cfg


def training_losses(model, batch):
    model.train()
    with EventStorage(0):
        return model(batch)


def assert_finite_losses(losses):
    assert losses, "no loss returned"
    for name, value in losses.items():
        assert torch.isfinite(value), f"{name} = {value}"


@pytest.fixture(scope="module")
def lesion_batch(zenodo_root):
    """Two key slices of two cases, stage 2 (advanced) on the second one."""
    return [zenodo_input(zenodo_root, "case_01", 60), zenodo_input(zenodo_root, "case_02", 50, 2)]


@pytest.fixture(scope="module")
def healthy(dicom_root):
    return healthy_input(dicom_root, 80, size=256)


@pytest.mark.parametrize("name", DETECTOR_CONFIGS)
def test_detector_losses_finite(name, lesion_batch):
    torch.manual_seed(0)
    model = build_model(load_config(name))
    losses = training_losses(model, lesion_batch)
    assert_finite_losses(losses)
    sum(losses.values()).backward()
    gradients = [p.grad for p in model.backbone.parameters() if p.grad is not None]
    assert gradients
    assert all(torch.isfinite(g).all() for g in gradients)


def test_detector_inference_fields(lesion_batch):
    torch.manual_seed(0)
    model = build_model(load_config("lesion/cpu/st_R18.yaml")).eval()
    with torch.no_grad():
        (output,) = model(lesion_batch[:1])
    instances = output["instances"]
    assert instances.image_size == (256, 256)
    assert instances.has("pred_masks")
    assert instances.pred_masks.shape[1:] == (256, 256)


@pytest.mark.parametrize("phase", ["spatial", "temporal"])
def test_resolver_losses_finite(phase, lesion_batch):
    torch.manual_seed(0)
    model = build_model(load_config(f"resolver/cpu/{phase}_R18.yaml"))
    losses = training_losses(model, lesion_batch)
    assert_finite_losses(losses)
    assert ("loss_stage" in losses) == (phase == "temporal")
    sum(losses.values()).backward()


def test_resolver_stage_loss_positive(lesion_batch):
    model = build_model(load_config("resolver/cpu/temporal_R18.yaml"))
    losses = training_losses(model, lesion_batch)
    assert losses["loss_stage"].item() > 0.0


def changed_after_one_step(phase: str, batch):
    """Return the resolver state-dict keys that one SGD step of ``phase`` changes, and all keys."""
    torch.manual_seed(0)
    cfg = load_config(f"resolver/cpu/{phase}_R18.yaml")
    cfg.SOLVER.BASE_LR = 0.05
    model = build_model(cfg)
    before = copy.deepcopy(model.state_dict())
    optimizer = build_optimizer(cfg, model)

    losses = training_losses(model, batch)
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()

    after = model.state_dict()
    changed = {key for key in after if not torch.equal(before[key], after[key])}
    return changed, set(after)


SPATIAL_PREFIXES = ("backbone.spatial.", "spatial_decoder.")
TEMPORAL_PREFIXES = ("backbone.temporal.", "temporal_decoder.", "stage_head.")


def test_temporal_phase_freezes_spatial(lesion_batch):
    changed, keys = changed_after_one_step("temporal", lesion_batch)
    spatial = {key for key in keys if key.startswith(SPATIAL_PREFIXES)}
    temporal_weights = {key for key in keys
                        if key.startswith(TEMPORAL_PREFIXES) and key.endswith("weight")}
    assert spatial
    assert sorted(spatial & changed) == []
    assert sorted(temporal_weights - changed) == []


def test_spatial_phase_freezes_temporal(lesion_batch):
    changed, keys = changed_after_one_step("spatial", lesion_batch)
    spatial_weights = {key for key in keys
                       if key.startswith(SPATIAL_PREFIXES) and key.endswith("weight")}
    temporal = {key for key in keys if key.startswith(TEMPORAL_PREFIXES)}
    assert sorted(temporal & changed) == []
    assert sorted(spatial_weights - changed) == []


def test_unet_baseline_losses_finite(lesion_batch):
    torch.manual_seed(0)
    model = build_model(load_config("lesion/cpu/unet_R18.yaml"))
    losses = training_losses(model, lesion_batch)
    assert set(losses) == {"loss_seg_ce", "loss_seg_dice"}
    assert_finite_losses(losses)
    sum(losses.values()).backward()


def test_unet_baseline_outputs_instances(lesion_batch):
    model = build_model(load_config("lesion/cpu/unet_R18.yaml",
                                    **{"MODEL.UNET_BASELINE.SCORE_THRESH_TEST": 0.0})).eval()
    with torch.no_grad():
        (output,) = model(lesion_batch[:1])
    instances = output["instances"]
    assert isinstance(instances, Instances)
    # Threshold 0 makes the whole slice one component.
    assert len(instances) == 1
    assert instances.pred_boxes.tensor.tolist() == [[0.0, 0.0, 256.0, 256.0]]
    assert output["sem_seg"].shape == (2, 256, 256)


@pytest.mark.parametrize("name", ["lesion/cpu/st_R18.yaml", "lesion/cpu/unet_R18.yaml",
                                  "resolver/cpu/temporal_R18.yaml"])
def test_empty_ground_truth(name, healthy, lesion_batch):
    torch.manual_seed(0)
    model = build_model(load_config(name))
    assert len(healthy["instances"]) == 0
    assert_finite_losses(training_losses(model, [healthy]))
    assert_finite_losses(training_losses(model, [healthy, lesion_batch[0]]))
    model.eval()
    with torch.no_grad():
        (output,) = model([healthy])
    assert output


def test_stage_as_class(lesion_batch):
    torch.manual_seed(0)
    model = build_model(load_config("lesion/cpu/st_R18_stage.yaml"))
    staged = [lesion_batch[1]]
    assert_finite_losses(training_losses(model, staged))
    model.eval()
    with torch.no_grad():
        (output,) = model(staged)
    instances = output["instances"]
    assert bool(((instances.pred_stages >= 1) & (instances.pred_stages <= 3)).all())
    assert bool((instances.pred_classes == 0).all())


def test_stage_as_class_needs_stages(lesion_batch):
    model = build_model(load_config("lesion/cpu/st_R18_stage.yaml"))
    with pytest.raises(ValueError, match="stage in 1..3"):
        training_losses(model, [lesion_batch[0]])


def train_iterations(model, optimizer, slices, iterations: int):
    """Run SGD iterations over ``slices`` two at a time; return the total loss of each."""
    history = []
    with EventStorage(0) as storage:
        for iteration in range(iterations):
            storage.iter = iteration
            batch = [slices[(2 * iteration) % len(slices)],
                     slices[(2 * iteration + 1) % len(slices)]]
            losses = model(batch)
            total = sum(losses.values())
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            history.append(total.item())
    return history


def test_overfit_one_case(zenodo_root):
    """Two hundred iterations on four slices of one case lower the detector loss."""
    torch.manual_seed(0)
    cfg = load_config("lesion/cpu/st_R18.yaml")
    cfg.SOLVER.BASE_LR = 0.02
    # A narrower model than the CPU config keeps this test near a minute on 2 cores.
    cfg.MODEL.SPATIO_TEMPORAL.OUT_CHANNELS = 128
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 256
    cfg.MODEL.ROI_MASK_HEAD.TINY_UNET.BASE_CHANNELS = 16
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 100
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    model = build_model(cfg).train()
    optimizer = build_optimizer(cfg, model)
    slices = [zenodo_input(zenodo_root, "case_03", position, size=128)
              for position in (40, 50, 60, 70)]

    start = time.monotonic()
    # One thread: two OpenMP threads stall badly when other jobs share the two cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        history = train_iterations(model, optimizer, slices, 200)
    finally:
        torch.set_num_threads(threads)
    first = sum(history[:20]) / 20
    last = sum(history[-20:]) / 20
    summary = f"loss {first:.3f} -> {last:.3f} in {time.monotonic() - start:.0f} s"
    print(f"overfit: {summary}")
    assert last < 0.7 * first, summary
