"""Building blocks shared by the covid-d2 models: residual conv block, U-Net decoder, losses."""

from typing import List, Sequence

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import Conv2d, get_norm


def conv3x3_norm_relu(in_channels: int, out_channels: int, norm: str) -> Conv2d:
    """3x3 convolution (padding 1) followed by ``norm`` and ReLU, MSRA-initialised."""
    conv = Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=not norm,
                  norm=get_norm(norm, out_channels), activation=F.relu)
    weight_init.c2_msra_fill(conv)
    return conv


class ResidualConvBlock(nn.Module):
    """``num_convs`` 3x3 conv + norm + ReLU layers whose input is added to their output.

    Keeps the shape ``(N, C, H, W)``. The last ReLU comes after the sum, as in a ResNet block.
    """

    def __init__(self, channels: int, norm: str, num_convs: int = 2):
        super().__init__()
        if num_convs < 1:
            raise ValueError(f"num_convs must be at least 1, got {num_convs}.")
        layers = [conv3x3_norm_relu(channels, channels, norm) for _ in range(num_convs - 1)]
        last = Conv2d(channels, channels, kernel_size=3, padding=1, bias=not norm,
                      norm=get_norm(norm, channels))
        weight_init.c2_msra_fill(last)
        layers.append(last)
        self.convs = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.convs(x))


class UNetDecoder(nn.Module):
    """U-Net decoder: each step upsamples x2, concatenates a skip map and applies two convs.

    ``forward(x, skips)`` takes the deepest map ``(N, in_channels, h, w)`` and the skip maps
    from the next-shallower level to the shallowest (one per step, channel counts
    ``skip_channels``) and returns ``(N, channels[-1], H, W)`` at the size of the last skip.
    Upsampling is bilinear to the skip's exact size, so odd sizes are handled.
    """

    def __init__(self, in_channels: int, skip_channels: Sequence[int],
                 channels: Sequence[int], norm: str):
        super().__init__()
        if len(skip_channels) != len(channels):
            raise ValueError(
                f"UNetDecoder needs one output width per skip: {len(skip_channels)} skips, "
                f"{len(channels)} widths ({list(channels)})."
            )
        steps: List[nn.Module] = []
        previous = in_channels
        for skip, width in zip(skip_channels, channels):
            steps.append(nn.Sequential(
                conv3x3_norm_relu(previous + skip, width, norm),
                conv3x3_norm_relu(width, width, norm),
            ))
            previous = width
        self.steps = nn.ModuleList(steps)
        self.out_channels = previous

    def forward(self, x: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        for step, skip in zip(self.steps, skips):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = step(torch.cat([x, skip], dim=1))
        return x


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss ``1 - (2|P∩G| + eps) / (|P| + |G| + eps)`` averaged over the batch.

    ``logits`` and ``targets`` are ``(N, H, W)``; ``targets`` contains 0/1. ``eps`` (in pixels)
    keeps the loss defined, and near 0 for an empty prediction, on an empty mask.
    """
    probs = logits.sigmoid().flatten(1)
    targets = targets.flatten(1).to(probs.dtype)
    intersection = (probs * targets).sum(dim=1)
    total = probs.sum(dim=1) + targets.sum(dim=1)
    return (1.0 - (2.0 * intersection + eps) / (total + eps)).mean()


def segmentation_losses(logits: torch.Tensor, targets: torch.Tensor, *, ce_weight: float,
                        dice_weight: float, prefix: str = "loss_seg") -> dict:
    """Binary cross-entropy and Dice losses of lesion logits ``(N, H, W)`` against 0/1 masks."""
    ce = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))
    return {
        f"{prefix}_ce": ce * ce_weight,
        f"{prefix}_dice": dice_loss(logits, targets) * dice_weight,
    }


def stack_lesion_masks(batched_inputs, height: int, width: int,
                       device: torch.device) -> torch.Tensor:
    """Stack each input's ``lesion_mask`` ``(H_i, W_i)`` into ``(N, height, width)`` float 0/1.

    Masks are zero-padded at the bottom and right, as ``ImageList`` pads the images.
    """
    masks = torch.zeros((len(batched_inputs), height, width), device=device)
    for index, record in enumerate(batched_inputs):
        if "lesion_mask" not in record:
            raise KeyError(
                "Training input has no 'lesion_mask' (H, W) tensor; use a mapper that emits it "
                "(ThreeSliceDatasetMapper does)."
            )
        mask = record["lesion_mask"].to(device)
        masks[index, : mask.shape[0], : mask.shape[1]] = (mask > 0).float()
    return masks
