"""Tiny U-Net mask head: a small U-Net over the RoIAlign features of each proposal."""

from typing import List

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import Conv2d, ConvTranspose2d, ShapeSpec, get_norm
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY, BaseMaskRCNNHead

from covid_d2.modeling.layers import ResidualConvBlock


@ROI_MASK_HEAD_REGISTRY.register()
class TinyUNetMaskHead(BaseMaskRCNNHead):
    """U-Net with ``num_levels`` downsamplings and as many upsamplings over RoI features.

    Input: ``(R, C, P, P)`` RoIAlign features (P = ``ROI_MASK_HEAD.POOLER_RESOLUTION``).
    A 1x1 conv maps C to ``base_channels``. Each level is a residual block of ``convs_per_block``
    conv + norm + ReLU layers. Downsampling is 2x2 max pooling followed by a 1x1 conv that doubles
    the channels. Upsampling is bilinear to the skip's size, followed by concatenation and a 1x1
    conv that halves the channels. Output:
    ``(R, num_mask_classes, M, M)`` mask logits with M = 2P when ``upsample_output`` (a stride-2
    transposed conv, as in the standard Mask R-CNN head), else M = P. Detectron2's
    ``mask_rcnn_loss`` and ``mask_rcnn_inference`` apply unchanged.
    """

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, num_classes: int, base_channels: int = 32,
                 num_levels: int = 3, convs_per_block: int = 4, norm: str = "BN",
                 upsample_output: bool = True, **kwargs):
        super().__init__(**kwargs)
        if num_levels < 1:
            raise ValueError(f"MODEL.ROI_MASK_HEAD.TINY_UNET.NUM_LEVELS must be >= 1, got "
                             f"{num_levels}.")
        self.num_levels = num_levels
        self.input_proj = Conv2d(input_shape.channels, base_channels, kernel_size=1,
                                 bias=not norm, norm=get_norm(norm, base_channels),
                                 activation=F.relu)
        widths = [base_channels * 2 ** level for level in range(num_levels + 1)]
        self.down_blocks = nn.ModuleList()
        self.widen = nn.ModuleList()
        for level in range(num_levels + 1):
            self.down_blocks.append(ResidualConvBlock(widths[level], norm, convs_per_block))
            if level < num_levels:
                self.widen.append(Conv2d(widths[level], widths[level + 1], kernel_size=1,
                                         bias=not norm, norm=get_norm(norm, widths[level + 1]),
                                         activation=F.relu))
        self.merge = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for level in reversed(range(num_levels)):
            self.merge.append(Conv2d(widths[level + 1] + widths[level], widths[level],
                                     kernel_size=1, bias=not norm,
                                     norm=get_norm(norm, widths[level]), activation=F.relu))
            self.up_blocks.append(ResidualConvBlock(widths[level], norm, convs_per_block))

        self.upsample = None
        if upsample_output:
            self.upsample = ConvTranspose2d(base_channels, base_channels, kernel_size=2,
                                            stride=2)
        self.predictor = Conv2d(base_channels, num_classes, kernel_size=1)

        for layer in [self.input_proj, *self.widen, *self.merge]:
            weight_init.c2_msra_fill(layer)
        if self.upsample is not None:
            weight_init.c2_msra_fill(self.upsample)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.constant_(self.predictor.bias, 0.0)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        unet = cfg.MODEL.ROI_MASK_HEAD.TINY_UNET
        num_classes = 1 if cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK else \
            cfg.MODEL.ROI_HEADS.NUM_CLASSES
        ret.update(
            input_shape=input_shape,
            num_classes=num_classes,
            base_channels=unet.BASE_CHANNELS,
            num_levels=unet.NUM_LEVELS,
            convs_per_block=unet.CONVS_PER_BLOCK,
            norm=unet.NORM,
            upsample_output=unet.UPSAMPLE_OUTPUT,
        )
        return ret

    def layers(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_proj(x)
        skips: List[torch.Tensor] = []
        for level in range(self.num_levels):
            x = self.down_blocks[level](x)
            skips.append(x)
            # ceil_mode keeps at least one cell when P is not a power of two.
            x = self.widen[level](F.max_pool2d(x, kernel_size=2, stride=2, ceil_mode=True))
        x = self.down_blocks[self.num_levels](x)

        for merge, block, skip in zip(self.merge, self.up_blocks, reversed(skips)):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(merge(torch.cat([x, skip], dim=1)))

        if self.upsample is not None:
            x = F.relu(self.upsample(x))
        return self.predictor(x)
