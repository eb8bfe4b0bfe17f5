"""Lung ROI stage: residual U-Net, view fusion, dense CRF and ROI preprocessing."""

from covid_d2.lung.crf import (CRFParams, crf_refine_slice, fill_holes_per_slice, fuse_views,
                               keep_lung_components, refine_lung_volume)
from covid_d2.lung.model import LungUNet
from covid_d2.lung.unet import ResidualUNet

__all__ = [
    "CRFParams",
    "LungUNet",
    "ResidualUNet",
    "crf_refine_slice",
    "fill_holes_per_slice",
    "fuse_views",
    "keep_lung_components",
    "refine_lung_volume",
]
