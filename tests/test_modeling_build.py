"""Building the covid-d2 models from their configs, shapes, mask head and weight export."""

import importlib.util
import pathlib

import pytest
import torch

import covid_d2
from covid_d2.modeling import (
    SpatioTemporalBackbone,
    TinyUNetMaskHead,
    export_encoder_state,
    load_encoder_weights,
)
from covid_d2.modeling.meta_arch import instances_from_probabilities
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import (
    BACKBONE_REGISTRY,
    META_ARCH_REGISTRY,
    ROI_HEADS_REGISTRY,
    ROI_MASK_HEAD_REGISTRY,
    build_model,
)
from detectron2.structures import BitMasks, Boxes, Instances

REPO = pathlib.Path(__file__).resolve().parents[1]
MODEL_CONFIGS = sorted(
    str(path.relative_to(REPO / "configs"))
    for folder in ("lesion", "lesion/cpu", "resolver", "resolver/cpu")
    for path in (REPO / "configs" / folder).glob("*.yaml")
    if not path.name.startswith("Base-")
)


def load_config(name: str):
    cfg = get_cfg()
    covid_d2.add_covid_config(cfg)
    cfg.merge_from_file(str(REPO / "configs" / name))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    return cfg


def small_backbone(mode: str = "spatio_temporal", fusion: str = "sum") -> SpatioTemporalBackbone:
    return SpatioTemporalBackbone(in_channels=3, depth=18, norm="GN", mode=mode, fusion=fusion)


def test_names_registered():
    assert "build_spatio_temporal_backbone" in BACKBONE_REGISTRY
    assert "SpatioTemporalResolver" in META_ARCH_REGISTRY
    assert "UNetBaseline" in META_ARCH_REGISTRY
    assert "TinyUNetMaskHead" in ROI_MASK_HEAD_REGISTRY
    assert "LesionROIHeads" in ROI_HEADS_REGISTRY


def test_configs_found():
    assert len(MODEL_CONFIGS) >= 14


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_config_builds(name):
    cfg = load_config(name)
    model = build_model(cfg)
    assert type(model).__name__ == cfg.MODEL.META_ARCHITECTURE


@pytest.mark.parametrize("mode", ["spatio_temporal", "spatial"])
@pytest.mark.parametrize("size", [(256, 192), (200, 152)])
def test_backbone_shape_as_declared(mode, size):
    backbone = small_backbone(mode).eval()
    with torch.no_grad():
        features = backbone(torch.zeros(1, 3, *size))
    spec = backbone.output_shape()
    assert set(features) == set(spec) == {"st"}
    assert features["st"].shape[1] == spec["st"].channels
    assert features["st"].shape[2] == -(-size[0] // spec["st"].stride)
    assert features["st"].shape[3] == -(-size[1] // spec["st"].stride)


def test_backbone_stride_and_divisibility():
    backbone = small_backbone()
    assert backbone.output_shape()["st"].stride == 16
    assert backbone.size_divisibility == 16


def test_backbone_concat_fusion():
    backbone = small_backbone(fusion="concat").eval()
    with torch.no_grad():
        features = backbone(torch.zeros(1, 3, 64, 64))
    assert features["st"].shape == (1, 256, 4, 4)


def test_spatial_mode_has_no_temporal():
    assert small_backbone("spatial").temporal is None


def test_backbone_invalid_mode():
    with pytest.raises(ValueError, match="MODE"):
        small_backbone("temporal_only")


def test_backbone_invalid_fusion():
    with pytest.raises(ValueError, match="FUSION"):
        small_backbone(fusion="product")


def mask_head(num_classes: int = 1, resolution: int = 16) -> TinyUNetMaskHead:
    return TinyUNetMaskHead(ShapeSpec(channels=256, height=resolution, width=resolution),
                            num_classes=num_classes)


def empty_fg_instances(size: int = 64) -> Instances:
    instances = Instances((size, size))
    instances.proposal_boxes = Boxes(torch.zeros(0, 4))
    instances.gt_classes = torch.zeros(0, dtype=torch.int64)
    instances.gt_masks = BitMasks(torch.zeros(0, size, size, dtype=torch.bool))
    return instances


def test_mask_head_zero_proposals_training():
    head = mask_head().train()
    losses = head(torch.zeros(0, 256, 16, 16), [empty_fg_instances()])
    assert losses["loss_mask"].item() == 0.0


def test_mask_head_zero_proposals_inference():
    head = mask_head().eval()
    instances = Instances((64, 64))
    instances.pred_boxes = Boxes(torch.zeros(0, 4))
    instances.pred_classes = torch.zeros(0, dtype=torch.int64)
    with torch.no_grad():
        (result,) = head(torch.zeros(0, 256, 16, 16), [instances])
    assert result.pred_masks.shape == (0, 1, 32, 32)


@pytest.mark.parametrize("num_classes, resolution, expected", [
    (1, 16, (5, 1, 32, 32)),
    (3, 16, (5, 3, 32, 32)),
    (1, 14, (5, 1, 28, 28)),
])
def test_mask_head_logit_shape(num_classes, resolution, expected):
    head = mask_head(num_classes, resolution).eval()
    with torch.no_grad():
        logits = head.layers(torch.randn(5, 256, resolution, resolution))
    assert logits.shape == expected


def test_instances_from_probabilities_components():
    probabilities = torch.zeros(32, 32)
    probabilities[2:6, 3:9] = 0.9
    probabilities[20:30, 20:22] = 0.7
    probabilities[15, 15] = 0.95  # one pixel: below the minimum area
    instances = instances_from_probabilities(probabilities, threshold=0.5, min_area=4)
    order = instances.scores.argsort(descending=True)
    assert len(instances) == 2
    assert instances.pred_boxes.tensor[order].tolist() == [[3, 2, 9, 6], [20, 20, 22, 30]]
    assert torch.allclose(instances.scores[order], torch.tensor([0.9, 0.7]))
    assert instances.pred_masks.shape == (2, 32, 32)
    assert instances.pred_masks[order[0]].sum() == 24


def test_instances_from_probabilities_empty():
    instances = instances_from_probabilities(torch.zeros(16, 16), threshold=0.5, min_area=1)
    assert len(instances) == 0
    assert instances.pred_masks.shape == (0, 16, 16)


@pytest.fixture(scope="module")
def resolver_checkpoint(tmp_path_factory):
    """A temporal-phase CPU resolver saved as the trainer saves it: {"model": state_dict}."""
    cfg = load_config("resolver/cpu/temporal_R18.yaml")
    resolver = build_model(cfg)
    path = tmp_path_factory.mktemp("resolver") / "model_final.pth"
    torch.save({"model": resolver.state_dict(), "iteration": 299}, path)
    return path, resolver


def run_export_tool(argv):
    spec = importlib.util.spec_from_file_location("export_encoder",
                                                  REPO / "tools" / "export_encoder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def test_export_drops_decoders(resolver_checkpoint):
    _, resolver = resolver_checkpoint
    state = export_encoder_state(resolver.state_dict(), "temporal")
    assert not any(key.startswith(("spatial_decoder", "temporal_decoder", "stage_head"))
                   for key in state)
    assert set(state) == set(resolver.backbone.state_dict())


def test_export_tool_loads_into_detector(resolver_checkpoint, tmp_path):
    checkpoint, resolver = resolver_checkpoint
    output = tmp_path / "encoder.pth"
    assert run_export_tool([str(checkpoint), str(output), "--phase", "temporal"]) == 0

    cfg = load_config("lesion/cpu/st_R18.yaml")
    cfg.MODEL.SPATIO_TEMPORAL.ENCODER_WEIGHTS = str(output)
    detector = build_model(cfg)
    report = load_encoder_weights(detector.backbone, str(output))
    assert report.missing_keys == []
    assert report.unexpected_keys == []
    key = "temporal.res3.0.conv1.weight"
    assert torch.equal(detector.backbone.state_dict()[key], resolver.backbone.state_dict()[key])


def test_spatial_export_into_spatial_detector(resolver_checkpoint, tmp_path):
    checkpoint, _ = resolver_checkpoint
    output = tmp_path / "encoder_spatial.pth"
    assert run_export_tool([str(checkpoint), str(output), "--phase", "spatial"]) == 0
    backbone = small_backbone("spatial")
    report = load_encoder_weights(backbone, str(output))
    assert not any(key.startswith("spatial.") for key in report.missing_keys)
    assert report.unexpected_keys == []


def test_export_written_atomically(resolver_checkpoint, tmp_path):
    checkpoint, _ = resolver_checkpoint
    run_export_tool([str(checkpoint), str(tmp_path / "encoder.pth")])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["encoder.pth"]


def test_encoder_weights_depth_mismatch(resolver_checkpoint, tmp_path):
    checkpoint, _ = resolver_checkpoint
    output = tmp_path / "encoder.pth"
    run_export_tool([str(checkpoint), str(output)])
    backbone = SpatioTemporalBackbone(depth=34, norm="GN")
    with pytest.raises(ValueError, match="DEPTH"):
        load_encoder_weights(backbone, str(output))


def test_encoder_weights_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="export_encoder"):
        load_encoder_weights(small_backbone(), str(tmp_path / "absent.pth"))
