"""Whole-volume inference: lung ROI, three-slice detection, 3D lesions and per-scan reports."""

from covid_d2.inference.volume import (Lesion3D, LesionDetector, VolumeResult, detect_volume,
                                       label_lesions_3d, three_slice_stacks)

__all__ = ["Lesion3D", "LesionDetector", "VolumeResult", "detect_volume", "label_lesions_3d",
           "three_slice_stacks"]
