"""Spatio-temporal resolver: encoder-decoder pre-training of the spatio-temporal backbone.

The resolver contains a :class:`SpatioTemporalBackbone` under the name ``backbone`` (so its
weights export to the detector unchanged) and adds, per encoder, a U-Net decoder of four x2
upsampling steps (skips: res3, res2, stem, input image) ending in a lesion logit for the key
slice, plus a stage classifier over the temporal encoder's res4 map.

Two phases (``MODEL.RESOLVER.PHASE``):

- ``"spatial"``: the spatial encoder and decoder learn lesion masks (BCE + Dice); the temporal
  parts are frozen at their random initialisation.
- ``"temporal"``: every spatial parameter is frozen (``requires_grad=False``; its norm layers
  stay in eval mode); the temporal encoder, fusions, neck and temporal decoder learn lesion
  masks and the 4-class slice stage (cross-entropy; stage -1 is ignored). Start this phase
  from the spatial phase's checkpoint (``MODEL.WEIGHTS``).
"""

import logging
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList

from covid_d2.modeling.backbone.spatio_temporal import (
    SpatioTemporalBackbone,
    build_spatio_temporal_backbone,
)
from covid_d2.modeling.layers import UNetDecoder, segmentation_losses, stack_lesion_masks

logger = logging.getLogger(__name__)

PHASES = ("spatial", "temporal")


class LesionDecoder(nn.Module):
    """U-Net decoder plus a 1x1 conv to one lesion logit per pixel: ``(N, 1, H, W)``."""

    def __init__(self, in_channels: int, skip_channels: Sequence[int],
                 channels: Sequence[int], norm: str):
        super().__init__()
        self.decoder = UNetDecoder(in_channels, skip_channels, channels, norm)
        self.predictor = Conv2d(self.decoder.out_channels, 1, kernel_size=1)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.constant_(self.predictor.bias, 0.0)

    def forward(self, x: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.predictor(self.decoder(x, skips))


@META_ARCH_REGISTRY.register()
class SpatioTemporalResolver(nn.Module):
    """Pre-training model for the two encoders of :class:`SpatioTemporalBackbone`.

    Training input: the "Model inputs" dicts of ThreeSliceDatasetMapper (``image`` (3, H, W)
    in 0..255, ``lesion_mask`` (H, W), ``stage`` int, -1 when unknown). Returns a loss dict.
    Inference returns per image ``{"sem_seg": (2, height, width)}`` probabilities of
    [background, lesion] and, in the temporal phase, ``"stage_scores"`` (NUM_STAGES,).
    """

    @configurable
    def __init__(self, *, backbone: SpatioTemporalBackbone, phase: str, num_stages: int,
                 decoder_channels: Sequence[int], norm: str, pixel_mean: Sequence[float],
                 pixel_std: Sequence[float], ce_weight: float = 1.0, dice_weight: float = 1.0,
                 stage_weight: float = 1.0):
        super().__init__()
        if phase not in PHASES:
            raise ValueError(f"MODEL.RESOLVER.PHASE {phase!r} is invalid; use one of {PHASES}.")
        if phase == "temporal" and backbone.temporal is None:
            raise ValueError(
                "MODEL.RESOLVER.PHASE 'temporal' needs a temporal encoder; set "
                "MODEL.SPATIO_TEMPORAL.MODE to 'spatio_temporal'."
            )
        if len(decoder_channels) != 4:
            raise ValueError(
                f"MODEL.RESOLVER.DECODER_CHANNELS needs 4 widths (one per upsampling step), "
                f"got {list(decoder_channels)}."
            )
        self.backbone = backbone
        self.phase = phase
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.stage_weight = stage_weight
        in_channels = len(pixel_mean)

        spatial = backbone.spatial.out_channels
        self.spatial_decoder = LesionDecoder(
            spatial["res4"], [spatial["res3"], spatial["res2"], spatial["stem"], in_channels],
            decoder_channels, norm)
        self.temporal_decoder = None
        self.stage_head = None
        if backbone.temporal is not None:
            temporal = backbone.temporal.out_channels
            neck_channels = backbone.output_shape()["st"].channels
            self.temporal_decoder = LesionDecoder(
                neck_channels,
                [temporal["res3"], temporal["res2"], temporal["stem"], in_channels],
                decoder_channels, norm)
            self.stage_head = nn.Linear(temporal["res4"], num_stages)
            nn.init.normal_(self.stage_head.weight, std=0.01)
            nn.init.constant_(self.stage_head.bias, 0.0)

        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        for module in self.frozen_modules():
            for parameter in module.parameters():
                parameter.requires_grad_(False)

    @classmethod
    def from_config(cls, cfg):
        input_shape = ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN))
        resolver = cfg.MODEL.RESOLVER
        return {
            "backbone": build_spatio_temporal_backbone(cfg, input_shape),
            "phase": resolver.PHASE,
            "num_stages": resolver.NUM_STAGES,
            "decoder_channels": resolver.DECODER_CHANNELS,
            "norm": cfg.MODEL.SPATIO_TEMPORAL.NORM,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "ce_weight": resolver.CE_LOSS_WEIGHT,
            "dice_weight": resolver.DICE_LOSS_WEIGHT,
            "stage_weight": resolver.STAGE_LOSS_WEIGHT,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def spatial_modules(self) -> List[nn.Module]:
        """Modules trained in the spatial phase and frozen in the temporal phase."""
        return [self.backbone.spatial, self.spatial_decoder]

    def frozen_modules(self) -> List[nn.Module]:
        """Modules the current phase does not train (``requires_grad=False``, eval mode).

        In the spatial phase these are the temporal parts, which the forward pass does not
        use; freezing them also keeps DistributedDataParallel from waiting for their gradients.
        """
        if self.phase == "temporal":
            return self.spatial_modules()
        backbone = self.backbone
        temporal_parts = [backbone.temporal, backbone.fusions, backbone.reduce, backbone.blocks,
                          self.temporal_decoder, self.stage_head]
        return [module for module in temporal_parts if module is not None]

    def train(self, mode: bool = True):
        super().train(mode)
        # Frozen norm layers must not update their running statistics either.
        for module in self.frozen_modules():
            module.train(False)
        return self

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std
                  for x in batched_inputs]
        return ImageList.from_tensors(images, self.backbone.size_divisibility)

    def _lesion_logits_and_stage(self, images: torch.Tensor):
        """Return lesion logits ``(N, H, W)`` of the active phase and stage logits or None."""
        if self.phase == "spatial":
            spatial = self.backbone.forward_spatial(images)
            skips = [spatial["res3"], spatial["res2"], spatial["stem"], images]
            return self.spatial_decoder(spatial["res4"], skips)[:, 0], None

        with torch.no_grad():
            spatial = self.backbone.forward_spatial(images)
        temporal = self.backbone.forward_temporal(images, spatial)
        neck = self.backbone.forward_neck(temporal["fused"])
        skips = [temporal["res3"], temporal["res2"], temporal["stem"], images]
        logits = self.temporal_decoder(neck, skips)[:, 0]
        stage_logits = self.stage_head(temporal["res4"].mean(dim=(2, 3)))
        return logits, stage_logits

    def forward(self, batched_inputs: List[Dict]):
        images = self.preprocess_image(batched_inputs)
        logits, stage_logits = self._lesion_logits_and_stage(images.tensor)

        if self.training:
            height, width = images.tensor.shape[-2:]
            targets = stack_lesion_masks(batched_inputs, height, width, self.device)
            losses = segmentation_losses(logits, targets, ce_weight=self.ce_weight,
                                         dice_weight=self.dice_weight)
            if stage_logits is not None:
                stages = torch.tensor([int(x.get("stage", -1)) for x in batched_inputs],
                                      device=self.device)
                if (stages >= 0).any():
                    stage_loss = F.cross_entropy(stage_logits, stages, ignore_index=-1)
                else:
                    # No labelled sample: a zero that keeps the stage head in the graph.
                    stage_loss = stage_logits.sum() * 0.0
                losses["loss_stage"] = stage_loss * self.stage_weight
            return losses

        probabilities = logits.sigmoid()
        results = []
        for index, (record, image_size) in enumerate(zip(batched_inputs, images.image_sizes)):
            lesion = probabilities[index][None]
            sem_seg = torch.cat([1.0 - lesion, lesion], dim=0)
            height = record.get("height", image_size[0])
            width = record.get("width", image_size[1])
            result = {"sem_seg": sem_seg_postprocess(sem_seg, image_size, height, width)}
            if stage_logits is not None:
                result["stage_scores"] = stage_logits[index].softmax(dim=0)
            results.append(result)
        return results
