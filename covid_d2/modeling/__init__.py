"""covid-d2 models; importing this package registers them in Detectron2's registries.

- ``build_spatio_temporal_backbone`` (BACKBONE_REGISTRY): :class:`SpatioTemporalBackbone`
- ``SpatioTemporalResolver`` and ``UNetBaseline`` (META_ARCH_REGISTRY)
- ``TinyUNetMaskHead`` (ROI_MASK_HEAD_REGISTRY) and ``LesionROIHeads`` (ROI_HEADS_REGISTRY)
"""

from covid_d2.modeling.backbone import SpatioTemporalBackbone, build_spatio_temporal_backbone
from covid_d2.modeling.checkpoint import (
    EncoderLoadReport,
    export_encoder_state,
    load_encoder_weights,
    save_encoder_weights,
)
from covid_d2.modeling.meta_arch import SpatioTemporalResolver, UNetBaseline
from covid_d2.modeling.roi_heads import LesionROIHeads, TinyUNetMaskHead

__all__ = [
    "EncoderLoadReport",
    "LesionROIHeads",
    "SpatioTemporalBackbone",
    "SpatioTemporalResolver",
    "TinyUNetMaskHead",
    "UNetBaseline",
    "build_spatio_temporal_backbone",
    "export_encoder_state",
    "load_encoder_weights",
    "save_encoder_weights",
]
