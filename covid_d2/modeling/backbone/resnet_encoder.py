"""ResNet encoder built from Detectron2's own stem and stages, exposing every level.

Detectron2's ``ResNet`` returns only the named stage outputs. The spatio-temporal backbone
injects features between stages, and the U-Net decoders need the stride-2 stem activation. So
this module keeps the same parts (``BasicStem``, ``BasicBlock``/``BottleneckBlock`` stages made by
``ResNet.make_stage``) and runs them step by step.
"""

from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock, ResNet

# Residual blocks per stage res2..res5 for each supported depth (He et al. 2016, table 1).
BLOCKS_PER_STAGE = {
    18: [2, 2, 2, 2],
    34: [3, 4, 6, 3],
    50: [3, 4, 6, 3],
    101: [3, 4, 23, 3],
}
STAGE_NAMES = ["res2", "res3", "res4", "res5"]
STAGE_STRIDES = {"stem": 2, "pool": 4, "res2": 4, "res3": 8, "res4": 16, "res5": 32}


class ResNetEncoder(nn.Module):
    """ResNet stem and stages ``res2`` up to ``last_stage``, trained from scratch.

    Input: ``(N, C, H, W)`` normalised images with H and W divisible by the stride of
    ``last_stage``. :meth:`forward` returns a dict of feature maps: ``"stem"`` (stride 2, after
    the first conv, before the max pool) and ``"res2"``.. ``last_stage`` (strides 4, 8, 16, 32).
    """

    def __init__(self, *, in_channels: int = 3, depth: int = 50, norm: str = "GN",
                 last_stage: str = "res4"):
        super().__init__()
        if depth not in BLOCKS_PER_STAGE:
            raise ValueError(
                f"ResNet depth {depth} is not supported; use one of {sorted(BLOCKS_PER_STAGE)}."
            )
        if last_stage not in STAGE_NAMES:
            raise ValueError(f"last_stage {last_stage!r} is invalid; use one of {STAGE_NAMES}.")
        self.depth = depth
        self.stage_names: List[str] = STAGE_NAMES[: STAGE_NAMES.index(last_stage) + 1]

        stem_channels = 64
        self.stem = BasicStem(in_channels=in_channels, out_channels=stem_channels, norm=norm)
        self.out_channels: Dict[str, int] = {"stem": stem_channels, "pool": stem_channels}

        stage_in = stem_channels
        # R18/R34 stages widen 64 -> 512; R50+ bottleneck stages widen 256 -> 2048.
        stage_out = 64 if depth in (18, 34) else 256
        bottleneck = 64
        for index, name in enumerate(self.stage_names):
            num_blocks = BLOCKS_PER_STAGE[depth][index]
            first_stride = 1 if index == 0 else 2
            kwargs = {
                "num_blocks": num_blocks,
                "stride_per_block": [first_stride] + [1] * (num_blocks - 1),
                "in_channels": stage_in,
                "out_channels": stage_out,
                "norm": norm,
            }
            if depth in (18, 34):
                kwargs["block_class"] = BasicBlock
            else:
                kwargs["block_class"] = BottleneckBlock
                kwargs["bottleneck_channels"] = bottleneck
                # Stride in the 3x3 conv (torchvision layout) trains better from scratch.
                kwargs["stride_in_1x1"] = False
            self.add_module(name, nn.Sequential(*ResNet.make_stage(**kwargs)))
            self.out_channels[name] = stage_out
            stage_in = stage_out
            stage_out *= 2
            bottleneck *= 2

    def forward_stem(self, x: torch.Tensor):
        """Run the stem; return ``(stride-2 activation, stride-4 pooled map)``."""
        # Same steps as BasicStem.forward, split to keep the stride-2 map for decoder skips.
        stem = F.relu_(self.stem.conv1(x))
        pooled = F.max_pool2d(stem, kernel_size=3, stride=2, padding=1)
        return stem, pooled

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        features = {}
        features["stem"], x = self.forward_stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
            features[name] = x
        return features
