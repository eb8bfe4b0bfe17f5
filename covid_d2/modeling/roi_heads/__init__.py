from covid_d2.modeling.roi_heads.lesion_roi_heads import LesionROIHeads
from covid_d2.modeling.roi_heads.tiny_unet_mask_head import TinyUNetMaskHead

__all__ = ["LesionROIHeads", "TinyUNetMaskHead"]
