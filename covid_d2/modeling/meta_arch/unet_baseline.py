"""Whole-image U-Net baseline with a ResNet encoder, scored like the detector.

The network predicts one lesion probability per pixel of the key slice. At inference the
probability map is thresholded and every connected component becomes one instance, so the
output has the same fields as Mask R-CNN's and the lesion evaluator scores both alike.
"""

import logging
from typing import Dict, List

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from detectron2.config import configurable
from detectron2.layers import Conv2d
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import BitMasks, Boxes, ImageList, Instances

from covid_d2.modeling.backbone.resnet_encoder import ResNetEncoder
from covid_d2.modeling.layers import UNetDecoder, segmentation_losses, stack_lesion_masks

logger = logging.getLogger(__name__)

# 8-connectivity: pixels touching at a corner belong to the same lesion.
_CONNECTIVITY = np.ones((3, 3), dtype=bool)


def instances_from_probabilities(probabilities: torch.Tensor, threshold: float,
                                 min_area: int) -> Instances:
    """Turn a lesion probability map ``(H, W)`` into one instance per connected component.

    Pixels with probability >= ``threshold`` are foreground; 8-connected components of at least
    ``min_area`` pixels are kept. Each instance gets ``pred_masks`` (bool, (H, W)),
    ``pred_boxes`` (XYXY pixels, the component's enclosing axis-aligned rectangle, exclusive
    upper corner), ``scores`` (the mean probability inside the component) and
    ``pred_classes`` 0.
    """
    height, width = probabilities.shape
    probs = probabilities.detach().float().cpu().numpy()
    labels, count = ndimage.label(probs >= threshold, structure=_CONNECTIVITY)

    masks, boxes, scores = [], [], []
    for index, window in enumerate(ndimage.find_objects(labels), start=1):
        if window is None:
            continue
        component = labels == index
        area = int(component.sum())
        if area < min_area:
            continue
        rows, cols = window
        masks.append(component)
        boxes.append([cols.start, rows.start, cols.stop, rows.stop])
        scores.append(float(probs[component].mean()))

    instances = Instances((height, width))
    device = probabilities.device
    if masks:
        instances.pred_masks = torch.from_numpy(np.stack(masks)).to(device)
    else:
        instances.pred_masks = torch.zeros((0, height, width), dtype=torch.bool, device=device)
    instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32,
                                              device=device).reshape(-1, 4))
    instances.scores = torch.tensor(scores, dtype=torch.float32, device=device)
    instances.pred_classes = torch.zeros(len(scores), dtype=torch.int64, device=device)
    return instances


@META_ARCH_REGISTRY.register()
class UNetBaseline(nn.Module):
    """U-Net whose encoder is a ResNet (res2..res5) and whose decoder has five x2 steps.

    Training input: "Model inputs" dicts (``image`` (3, H, W) in 0..255, ``lesion_mask``
    (H, W)); returns ``{"loss_seg_ce", "loss_seg_dice"}``. Inference returns per image
    ``{"sem_seg": (2, height, width) [background, lesion] probabilities, "instances"}`` with
    instances from :func:`instances_from_probabilities` at the requested output size.
    """

    @configurable
    def __init__(self, *, encoder: ResNetEncoder, decoder_channels: List[int], norm: str,
                 pixel_mean: List[float], pixel_std: List[float], score_threshold: float = 0.5,
                 min_area: int = 4, ce_weight: float = 1.0, dice_weight: float = 1.0):
        super().__init__()
        if len(decoder_channels) != 5:
            raise ValueError(
                f"MODEL.UNET_BASELINE.DECODER_CHANNELS needs 5 widths (one per upsampling "
                f"step), got {list(decoder_channels)}."
            )
        self.encoder = encoder
        channels = encoder.out_channels
        in_channels = len(pixel_mean)
        self.decoder = UNetDecoder(
            channels["res5"],
            [channels["res4"], channels["res3"], channels["res2"], channels["stem"], in_channels],
            decoder_channels, norm)
        self.predictor = Conv2d(self.decoder.out_channels, 1, kernel_size=1)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.constant_(self.predictor.bias, 0.0)
        self.score_threshold = score_threshold
        self.min_area = min_area
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg):
        unet = cfg.MODEL.UNET_BASELINE
        encoder = ResNetEncoder(in_channels=len(cfg.MODEL.PIXEL_MEAN), depth=unet.DEPTH,
                                norm=unet.NORM, last_stage="res5")
        return {
            "encoder": encoder,
            "decoder_channels": unet.DECODER_CHANNELS,
            "norm": unet.NORM,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "score_threshold": unet.SCORE_THRESH_TEST,
            "min_area": unet.MIN_AREA_TEST,
            "ce_weight": unet.CE_LOSS_WEIGHT,
            "dice_weight": unet.DICE_LOSS_WEIGHT,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # The encoder's deepest map has stride 32.
    size_divisibility = 32

    def forward(self, batched_inputs: List[Dict]):
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std
                  for x in batched_inputs]
        images = ImageList.from_tensors(images, self.size_divisibility)
        x = images.tensor
        features = self.encoder(x)
        skips = [features["res4"], features["res3"], features["res2"], features["stem"], x]
        logits = self.predictor(self.decoder(features["res5"], skips))[:, 0]

        if self.training:
            height, width = x.shape[-2:]
            targets = stack_lesion_masks(batched_inputs, height, width, self.device)
            return segmentation_losses(logits, targets, ce_weight=self.ce_weight,
                                       dice_weight=self.dice_weight)

        results = []
        probabilities = logits.sigmoid()
        for index, (record, image_size) in enumerate(zip(batched_inputs, images.image_sizes)):
            lesion = probabilities[index][None]
            height = record.get("height", image_size[0])
            width = record.get("width", image_size[1])
            sem_seg = sem_seg_postprocess(torch.cat([1.0 - lesion, lesion]), image_size,
                                          height, width)
            instances = instances_from_probabilities(sem_seg[1], self.score_threshold,
                                                     self.min_area)
            results.append({"sem_seg": sem_seg, "instances": instances})
        return results
