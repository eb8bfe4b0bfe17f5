"""Standard ROI heads with optional disease stage as the ROI class."""

import logging
from typing import Dict, List, Optional

import torch

from detectron2.config import configurable
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.structures import ImageList, Instances

logger = logging.getLogger(__name__)

# Lesion stages that can be ROI classes: 1 early, 2 advanced, 3 severe (0 healthy has no lesion).
FIRST_LESION_STAGE = 1
NUM_LESION_STAGES = 3


def stage_targets(targets: List[Instances]) -> List[Instances]:
    """Copy ``targets`` with ``gt_classes = gt_stages - 1`` (early 0, advanced 1, severe 2).

    Raises ``ValueError`` when a lesion has no stage in 1..3, because an unlabelled lesion can be
    neither a class nor background.
    """
    staged = []
    for target in targets:
        if len(target) and not target.has("gt_stages"):
            raise ValueError("MODEL.ROI_HEADS.STAGE_AS_CLASS needs 'gt_stages' in the instances.")
        copy = Instances(target.image_size, **target.get_fields())
        if len(target):
            stages = target.gt_stages
            invalid = (stages < FIRST_LESION_STAGE) | (stages >= FIRST_LESION_STAGE + NUM_LESION_STAGES)
            if invalid.any():
                raise ValueError(
                    f"MODEL.ROI_HEADS.STAGE_AS_CLASS needs a stage in 1..3 on every lesion; got "
                    f"{sorted(set(stages[invalid].tolist()))}. Label the stages or turn the "
                    "option off."
                )
            copy.gt_classes = stages - FIRST_LESION_STAGE
        staged.append(copy)
    return staged


@ROI_HEADS_REGISTRY.register()
class LesionROIHeads(StandardROIHeads):
    """:class:`StandardROIHeads` that can classify each lesion RoI by disease stage.

    With ``stage_as_class=False`` (the default) it is exactly ``StandardROIHeads``. With
    ``stage_as_class=True`` (``MODEL.ROI_HEADS.STAGE_AS_CLASS``) the ROI classes are the
    three lesion stages, and ``NUM_CLASSES`` must be 3. Training reads ``gt_stages``. The output
    instances get ``pred_stages`` (1..3) and ``pred_classes`` 0 (lesion), so lesion
    evaluators see one class.
    """

    @configurable
    def __init__(self, *, stage_as_class: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.stage_as_class = stage_as_class
        if stage_as_class and self.num_classes != NUM_LESION_STAGES:
            raise ValueError(
                f"MODEL.ROI_HEADS.STAGE_AS_CLASS needs MODEL.ROI_HEADS.NUM_CLASSES = "
                f"{NUM_LESION_STAGES} (early, advanced, severe), got {self.num_classes}."
            )

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["stage_as_class"] = cfg.MODEL.ROI_HEADS.STAGE_AS_CLASS
        return ret

    def forward(self, images: ImageList, features: Dict[str, torch.Tensor],
                proposals: List[Instances], targets: Optional[List[Instances]] = None):
        if self.stage_as_class and self.training and targets is not None:
            targets = stage_targets(targets)
        results, losses = super().forward(images, features, proposals, targets)
        if self.stage_as_class and not self.training:
            for instances in results:
                instances.pred_stages = instances.pred_classes + FIRST_LESION_STAGE
                instances.pred_classes = torch.zeros_like(instances.pred_classes)
        return results, losses
