"""COVID-SemiSeg (Inf-Net) 2D slices -> one case per slice (S = 1, ``isolated_slices`` true).

The JPGs are 8-bit windowed CT and vertically flipped (posterior at the top); the reader flips
them back to radiological orientation. ``lesion.nii.gz`` is the binary infection mask and
``lesion_multiclass.nii.gz`` the labels 1 = ground-glass opacity, 2 = consolidation.
"""

import logging
import pathlib
from typing import List

import numpy as np

from covid_d2.data.slice_stack import IMAGE_SUFFIXES, natural_key, read_slice_stack
from covid_d2.data.volume import Case

logger = logging.getLogger(__name__)

SOURCE = "infnet"
FOLDER = "covid_semiseg_infnet"
IMAGES = "TrainingSet/LungInfection-Train/Doctor-label/Imgs"
BINARY_GT = "TrainingSet/LungInfection-Train/Doctor-label/GT"
MULTICLASS_GT = "TrainingSet/MultiClassInfection-Train/GT"
# NOTE: pixel spacing of the cropped slices is unknown; 1 mm is nominal (spacing_known false).
NOMINAL_SPACING_MM = (1.0, 1.0, 1.0)


def _image_names(folder: pathlib.Path) -> List[str]:
    images = folder / IMAGES
    if not images.is_dir():
        raise FileNotFoundError(f"Inf-Net image folder {images} not found under the data root.")
    return sorted((p.name for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=natural_key)


def list_cases(data_root) -> List[str]:
    folder = pathlib.Path(data_root) / FOLDER
    return [f"{SOURCE}_{int(pathlib.Path(name).stem):03d}" for name in _image_names(folder)]


def convert_case(data_root, case_id: str) -> Case:
    """Read one Inf-Net slice as a ``(1, H, W)`` case with binary and multi-class lesion masks."""
    folder = pathlib.Path(data_root) / FOLDER
    number = int(case_id[len(SOURCE) + 1 :])
    names = [name for name in _image_names(folder) if int(pathlib.Path(name).stem) == number]
    if len(names) != 1:
        raise KeyError(f"Case {case_id!r}: no single image named {number}.* in {folder / IMAGES}.")

    mask_folders = {"lesion": folder / BINARY_GT}
    if (folder / MULTICLASS_GT).is_dir():
        mask_folders["lesion_multiclass"] = folder / MULTICLASS_GT
    volume, masks = read_slice_stack(
        folder / IMAGES,
        intensity_kind="uint8_windowed",
        file_names=names,
        mask_folders=mask_folders,
        rows_anterior_first=False,
        spacing_mm=NOMINAL_SPACING_MM,
    )
    extra = {"lesion_multiclass": masks["lesion_multiclass"]} if "lesion_multiclass" in masks else {}
    meta = {
        "case_id": case_id,
        "source": SOURCE,
        "spacing_known": False,
        "slice_gaps": [],
        "isolated_slices": True,
        "slice_labels": [int(v) for v in masks["lesion"].any(axis=(1, 2))],
        "diagnosis": "covid19",
        "source_files": volume.meta["source_files"],
    }
    if extra:
        meta["lesion_multiclass_labels"] = {"1": "ground_glass_opacity", "2": "consolidation"}
    return Case(image=volume, lesion=masks["lesion"], meta=meta, extra_masks=extra)
