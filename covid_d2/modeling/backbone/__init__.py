from covid_d2.modeling.backbone.resnet_encoder import ResNetEncoder
from covid_d2.modeling.backbone.spatio_temporal import (
    SpatioTemporalBackbone,
    build_spatio_temporal_backbone,
)

__all__ = ["ResNetEncoder", "SpatioTemporalBackbone", "build_spatio_temporal_backbone"]
