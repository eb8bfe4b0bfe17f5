"""Residual U-Net with GroupNorm for 2D lung segmentation (axial slices or sagittal reconstructions).

The encoder has one residual block per resolution level. The first two downsamplings are 2x2
convolutions with stride 2, later ones are 2x2 max-pooling. The decoder upsamples with 2x2
transposed convolutions and concatenates the encoder feature of the same level. Every
convolution is followed by GroupNorm and ReLU.
"""

from typing import List

import torch
from torch import nn
from torch.nn import functional as F

# Downsamplings done by strided convolution; the rest use max-pooling.
NUM_STRIDED_DOWNSAMPLINGS = 2


def _conv_gn_relu(in_channels: int, out_channels: int, groups: int, kernel_size: int = 3,
                  stride: int = 1) -> nn.Sequential:
    padding = (kernel_size - 1) // 2 if stride == 1 else 0
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                  bias=False),
        nn.GroupNorm(min(groups, out_channels), out_channels),
        nn.ReLU(inplace=True),
    )


class ResidualBlock(nn.Module):
    """Two 3x3 conv + GroupNorm layers with an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.conv1 = _conv_gn_relu(in_channels, out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(min(groups, out_channels), out_channels)
        if in_channels == out_channels:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, bias=False),
                nn.GroupNorm(min(groups, out_channels), out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm2(self.conv2(self.conv1(x)))
        return F.relu(out + self.shortcut(x), inplace=True)


class ResidualUNet(nn.Module):
    """2D residual U-Net returning per-pixel class logits of shape (N, num_classes, H, W).

    Args:
        in_channels: input channels (1 for a CT slice).
        num_classes: output classes (2: background, lung).
        base_channels: channels at full resolution; doubled at each downsampling.
        depth: number of downsamplings; H and W must be divisible by ``2 ** depth``.
        norm_groups: GroupNorm groups (capped at the channel count).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, base_channels: int = 16,
                 depth: int = 4, norm_groups: int = 8):
        super().__init__()
        if depth < NUM_STRIDED_DOWNSAMPLINGS:
            raise ValueError(
                f"LUNG.UNET.DEPTH={depth} is too small: the first {NUM_STRIDED_DOWNSAMPLINGS} "
                "downsamplings are strided convolutions, so use a depth of at least "
                f"{NUM_STRIDED_DOWNSAMPLINGS}."
            )
        self.depth = depth
        channels = [base_channels * 2 ** level for level in range(depth + 1)]

        self.stem = ResidualBlock(in_channels, channels[0], norm_groups)
        self.downsamples = nn.ModuleList()
        self.encoder_blocks = nn.ModuleList()
        for level in range(1, depth + 1):
            if level <= NUM_STRIDED_DOWNSAMPLINGS:
                down = _conv_gn_relu(channels[level - 1], channels[level - 1], norm_groups,
                                     kernel_size=2, stride=2)
            else:
                down = nn.MaxPool2d(2)
            self.downsamples.append(down)
            self.encoder_blocks.append(ResidualBlock(channels[level - 1], channels[level],
                                                     norm_groups))

        self.upsamples = nn.ModuleList()
        self.decoder_blocks = nn.ModuleList()
        for level in range(depth, 0, -1):
            self.upsamples.append(nn.Sequential(
                nn.ConvTranspose2d(channels[level], channels[level - 1], 2, stride=2, bias=False),
                nn.GroupNorm(min(norm_groups, channels[level - 1]), channels[level - 1]),
                nn.ReLU(inplace=True),
            ))
            self.decoder_blocks.append(nn.Sequential(
                _conv_gn_relu(2 * channels[level - 1], channels[level - 1], norm_groups),
                _conv_gn_relu(channels[level - 1], channels[level - 1], norm_groups),
            ))
        self.head = nn.Conv2d(channels[0], num_classes, 1)

    @property
    def size_divisibility(self) -> int:
        return 2 ** self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.size_divisibility or x.shape[-2] % self.size_divisibility:
            raise ValueError(
                f"Input of size {tuple(x.shape[-2:])} is not divisible by "
                f"{self.size_divisibility}; pad or resize it first."
            )
        skips: List[torch.Tensor] = []
        x = self.stem(x)
        for down, block in zip(self.downsamples, self.encoder_blocks):
            skips.append(x)
            x = block(down(x))
        for up, block in zip(self.upsamples, self.decoder_blocks):
            x = block(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)
