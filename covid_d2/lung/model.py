"""``LungUNet``: the residual U-Net as a Detectron2 meta-architecture for lung segmentation."""

from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn
from torch.nn import functional as F

from covid_d2.lung.unet import ResidualUNet


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Return 1 - soft Dice of the foreground class, pooled over the batch.

    ``logits`` is (N, 2, H, W) and ``target`` (N, H, W) with values {0, 1}.
    """
    foreground = logits.softmax(dim=1)[:, 1]
    target = target.float()
    intersection = (foreground * target).sum()
    return 1.0 - (2.0 * intersection + eps) / (foreground.sum() + target.sum() + eps)


@META_ARCH_REGISTRY.register()
class LungUNet(nn.Module):
    """Lung segmentation of single 2D images (axial slices or sagittal reconstructions).

    Inputs are Detectron2-style dicts with ``image``: float tensor (1, H, W) in 0..255 and, for
    training, ``sem_seg``: int64 tensor (H, W) with 0 background, 1 lung. H and W must be
    divisible by ``2 ** depth``. In training mode ``forward`` returns the losses
    ``loss_lung_ce`` and ``loss_lung_dice``; in inference mode a list of
    ``{"sem_seg": (2, H, W) class probabilities}``.
    """

    @configurable
    def __init__(self, *, unet: ResidualUNet, dice_weight: float = 1.0, ce_weight: float = 1.0):
        super().__init__()
        self.unet = unet
        self.dice_weight = dice_weight
        self.ce_weight = ce_weight

    @classmethod
    def from_config(cls, cfg):
        unet_cfg = cfg.LUNG.UNET
        return {
            "unet": ResidualUNet(
                in_channels=1,
                num_classes=2,
                base_channels=unet_cfg.BASE_CHANNELS,
                depth=unet_cfg.DEPTH,
                norm_groups=unet_cfg.NORM_GROUPS,
            ),
            "dice_weight": unet_cfg.DICE_WEIGHT,
            "ce_weight": unet_cfg.CE_WEIGHT,
        }

    @property
    def device(self) -> torch.device:
        return self.unet.head.weight.device

    def forward(self, batched_inputs: List[Dict]):
        images = torch.stack([item["image"] for item in batched_inputs]).to(self.device)
        logits = self.unet(images.float() / 255.0)
        if not self.training:
            return [{"sem_seg": probabilities} for probabilities in logits.softmax(dim=1)]
        target = torch.stack([item["sem_seg"] for item in batched_inputs]).to(self.device).long()
        return {
            "loss_lung_ce": self.ce_weight * F.cross_entropy(logits, target),
            "loss_lung_dice": self.dice_weight * soft_dice_loss(logits, target),
        }
