"""Spatio-temporal backbone: a spatial and a temporal ResNet fused into one stride-16 map.

Both encoders read the three-slice input ``(N, 3, H, W)`` (channels: slice above, key slice,
slice below). The spatial encoder is a plain ResNet. The temporal encoder is a second ResNet of
the same depth. The input of each of its stages is fused with the spatial encoder's output of
the same level (stem, res2, res3). Its res4 output is fused with the spatial res4 the same way. The temporal encoder is meant to be pre-trained with disease-stage labels by
:class:`~covid_d2.modeling.meta_arch.resolver.SpatioTemporalResolver`.

The fused res4 map (stride 16) is reduced to ``out_channels`` by a 1x1 conv and refined by
residual conv blocks that keep its size: the single output feature ``"st"``.
"""

import logging
from typing import Dict, Optional

import torch
from torch import nn

import fvcore.nn.weight_init as weight_init
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling.backbone import BACKBONE_REGISTRY, Backbone

from covid_d2.modeling.backbone.resnet_encoder import ResNetEncoder
from covid_d2.modeling.checkpoint import load_encoder_weights
from covid_d2.modeling.layers import ResidualConvBlock

logger = logging.getLogger(__name__)

MODES = ("spatio_temporal", "spatial")
FUSIONS = ("sum", "concat")
# Levels where the spatial map is fused into the temporal encoder: "pool" is the stem output.
FUSION_LEVELS = ("pool", "res2", "res3", "res4")
OUTPUT_STRIDE = 16


class StageFusion(nn.Module):
    """Fuse a temporal map with the spatial map of the same level, both ``(N, C, H, W)``.

    ``"sum"`` adds them; ``"concat"`` concatenates them and maps 2C back to C channels with a
    1x1 conv + norm + ReLU.
    """

    def __init__(self, channels: int, mode: str, norm: str):
        super().__init__()
        if mode not in FUSIONS:
            raise ValueError(
                f"MODEL.SPATIO_TEMPORAL.FUSION {mode!r} is invalid; use one of {FUSIONS}."
            )
        self.mode = mode
        self.project = None
        if mode == "concat":
            self.project = Conv2d(2 * channels, channels, kernel_size=1, bias=not norm,
                                  norm=get_norm(norm, channels), activation=nn.functional.relu)
            weight_init.c2_msra_fill(self.project)

    def forward(self, temporal: torch.Tensor, spatial: torch.Tensor) -> torch.Tensor:
        if self.project is None:
            return temporal + spatial
        return self.project(torch.cat([temporal, spatial], dim=1))


class SpatioTemporalBackbone(Backbone):
    """Spatial + temporal ResNet encoders, fused and reduced to one stride-16 feature ``"st"``.

    Input: ``(N, 3, H, W)`` normalised three-slice images. Output: ``{"st": (N, out_channels,
    ceil(H/16), ceil(W/16))}``. With ``mode="spatial"`` the temporal encoder is not built and
    the spatial res4 map alone feeds the reduction (the spatial-only ablation).
    """

    @configurable
    def __init__(self, *, in_channels: int = 3, depth: int = 50, norm: str = "GN",
                 mode: str = "spatio_temporal", fusion: str = "sum", out_channels: int = 256,
                 num_residual_blocks: int = 2):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"MODEL.SPATIO_TEMPORAL.MODE {mode!r} is invalid; use one of {MODES}.")
        self.mode = mode
        self.spatial = ResNetEncoder(in_channels=in_channels, depth=depth, norm=norm,
                                     last_stage="res4")
        self.temporal: Optional[ResNetEncoder] = None
        self.fusions: Optional[nn.ModuleDict] = None
        if mode == "spatio_temporal":
            self.temporal = ResNetEncoder(in_channels=in_channels, depth=depth, norm=norm,
                                          last_stage="res4")
            self.fusions = nn.ModuleDict({
                level: StageFusion(self.spatial.out_channels[level], fusion, norm)
                for level in FUSION_LEVELS
            })

        encoder_channels = self.spatial.out_channels["res4"]
        self.reduce = Conv2d(encoder_channels, out_channels, kernel_size=1, bias=not norm,
                             norm=get_norm(norm, out_channels), activation=nn.functional.relu)
        weight_init.c2_msra_fill(self.reduce)
        self.blocks = nn.Sequential(
            *[ResidualConvBlock(out_channels, norm) for _ in range(num_residual_blocks)]
        )
        self._out_features = ["st"]
        self._out_feature_channels = {"st": out_channels}
        self._out_feature_strides = {"st": OUTPUT_STRIDE}

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        st = cfg.MODEL.SPATIO_TEMPORAL
        return {
            "in_channels": input_shape.channels,
            "depth": st.DEPTH,
            "norm": st.NORM,
            "mode": st.MODE,
            "fusion": st.FUSION,
            "out_channels": st.OUT_CHANNELS,
            "num_residual_blocks": st.NUM_RESIDUAL_BLOCKS,
        }

    @property
    def size_divisibility(self) -> int:
        return OUTPUT_STRIDE

    def forward_spatial(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Spatial encoder maps ``"stem"`` (stride 2), ``"pool"``, ``"res2"`` .. ``"res4"``."""
        features = {}
        features["stem"], features["pool"] = self.spatial.forward_stem(x)
        y = features["pool"]
        for name in self.spatial.stage_names:
            y = getattr(self.spatial, name)(y)
            features[name] = y
        return features

    def forward_temporal(self, x: torch.Tensor,
                         spatial: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Temporal encoder maps (before fusion) and ``"fused"``, the fused res4 map."""
        if self.temporal is None:
            raise RuntimeError(
                "This SpatioTemporalBackbone was built with MODEL.SPATIO_TEMPORAL.MODE "
                "'spatial' and has no temporal encoder; set MODE to 'spatio_temporal'."
            )
        features = {}
        features["stem"], y = self.temporal.forward_stem(x)
        y = self.fusions["pool"](y, spatial["pool"])
        for name in self.temporal.stage_names:
            y = getattr(self.temporal, name)(y)
            features[name] = y
            y = self.fusions[name](y, spatial[name])
        features["fused"] = y
        return features

    def forward_neck(self, encoded: torch.Tensor) -> torch.Tensor:
        """Reduce the res4-level map to ``out_channels`` and apply the residual blocks."""
        return self.blocks(self.reduce(encoded))

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        spatial = self.forward_spatial(x)
        if self.temporal is None:
            return {"st": self.forward_neck(spatial["res4"])}
        temporal = self.forward_temporal(x, spatial)
        return {"st": self.forward_neck(temporal["fused"])}

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name],
                            stride=self._out_feature_strides[name])
            for name in self._out_features
        }


@BACKBONE_REGISTRY.register()
def build_spatio_temporal_backbone(cfg, input_shape: ShapeSpec) -> SpatioTemporalBackbone:
    """Build :class:`SpatioTemporalBackbone` from ``cfg.MODEL.SPATIO_TEMPORAL``.

    When ``MODEL.SPATIO_TEMPORAL.ENCODER_WEIGHTS`` names a file written by
    ``tools/export_encoder.py``, its weights are loaded and missing/unexpected keys are logged.
    """
    backbone = SpatioTemporalBackbone(cfg, input_shape)
    path = cfg.MODEL.SPATIO_TEMPORAL.ENCODER_WEIGHTS
    if path:
        load_encoder_weights(backbone, path)
    return backbone
