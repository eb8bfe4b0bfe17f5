"""Three-slice model inputs built straight from the shared data, for the model tests.

The dicts follow the "Model inputs" contract of ThreeSliceDatasetMapper. ``image`` is float32
(3, H, W) in 0..255 with channels [slice index - 1, key slice, slice index + 1], where slice index
0 is the most superior slice. The other fields are ``instances`` with ``gt_boxes`` (XYXY),
``gt_classes`` 0, ``gt_masks`` (BitMasks) and ``gt_stages``; ``lesion_mask`` uint8 (H, W);
``stage``; and the pass-through fields. The mapper can replace these helpers once it exists.
"""

import pathlib
from typing import Dict, List, Optional

import cv2
import numpy as np
import pydicom
import torch
from PIL import Image
from scipy import ndimage

from detectron2.structures import BitMasks, Boxes, Instances

# 8-connectivity, as the lesion components of the U-Net baseline.
_CONNECTIVITY = np.ones((3, 3), dtype=bool)


def _read_png(path: pathlib.Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"))


def _resize(array: np.ndarray, size: Optional[int], interpolation: int) -> np.ndarray:
    if size is None or array.shape == (size, size):
        return array
    return cv2.resize(array, (size, size), interpolation=interpolation)


def instances_from_mask(mask: np.ndarray, stage: int = -1) -> Instances:
    """One lesion instance per 8-connected component of a 0/1 mask ``(H, W)``."""
    height, width = mask.shape
    labels, _ = ndimage.label(mask > 0, structure=_CONNECTIVITY)
    masks, boxes = [], []
    for index, window in enumerate(ndimage.find_objects(labels), start=1):
        if window is None:
            continue
        rows, cols = window
        masks.append(labels == index)
        boxes.append([cols.start, rows.start, cols.stop, rows.stop])
    instances = Instances((height, width))
    instances.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    instances.gt_classes = torch.zeros(len(masks), dtype=torch.int64)
    if masks:
        instances.gt_masks = BitMasks(torch.from_numpy(np.stack(masks)))
    else:
        instances.gt_masks = BitMasks(torch.zeros((0, height, width), dtype=torch.bool))
    instances.gt_stages = torch.full((len(masks),), stage, dtype=torch.int64)
    return instances


def _model_input(slices: List[np.ndarray], lesion: np.ndarray, *, stage: int, case_id: str,
                 slice_index: int, file_name: str, image_id: str) -> Dict:
    image = np.stack(slices).astype(np.float32)
    height, width = lesion.shape
    return {
        "image": torch.from_numpy(image),
        "instances": instances_from_mask(lesion, stage if lesion.any() else -1),
        "lesion_mask": torch.from_numpy((lesion > 0).astype(np.uint8)),
        "stage": stage,
        "height": height,
        "width": width,
        "file_name": file_name,
        "image_id": image_id,
        "case_id": case_id,
        "slice_index": slice_index,
    }


def zenodo_input(zenodo_root: pathlib.Path, case_id: str = "case_01", position: int = 60,
                 stage: int = -1, size: Optional[int] = None) -> Dict:
    """Model input for the file at ``position`` (inferior -> superior file order) of a case.

    Files of a Zenodo case are named in inferior -> superior order, so slice index (0 = most
    superior) is ``n_files - 1 - position``: channel 0 (slice index - 1) is the next file and
    channel 2 (slice index + 1) the previous one. A missing neighbour is zeros. ``size`` resizes
    to ``size`` x ``size`` (bilinear image, nearest masks).
    """
    folder = zenodo_root / case_id
    names = sorted(path.name for path in (folder / "ct").glob("*.png"))
    if not 0 <= position < len(names):
        raise IndexError(f"{case_id} has {len(names)} slices; position {position} is invalid.")
    key = _resize(_read_png(folder / "ct" / names[position]), size, cv2.INTER_LINEAR)
    slices = []
    for neighbour in (position + 1, position, position - 1):
        if 0 <= neighbour < len(names):
            ct = _read_png(folder / "ct" / names[neighbour])
            slices.append(_resize(ct, size, cv2.INTER_LINEAR))
        else:
            slices.append(np.zeros_like(key))
    lesion = (_read_png(folder / "infection_mask" / names[position]) > 127).astype(np.uint8)
    lesion = _resize(lesion, size, cv2.INTER_NEAREST)
    return _model_input(slices, lesion, stage=stage, case_id=case_id,
                        slice_index=len(names) - 1 - position,
                        file_name=str(folder / "ct" / names[position]),
                        image_id=f"{case_id}/{names[position]}")


def healthy_input(dicom_root: pathlib.Path, instance_number: int = 80,
                  size: Optional[int] = 256) -> Dict:
    """Model input for a slice of the healthy COVID-CT-MD case normal002: no lesion, stage 0.

    Slices are ordered by InstanceNumber (1 = most superior, as the dataset's labels). Each
    slice is min-max scaled to 0..255, like the per-slice scaling of the Zenodo PNGs.
    """
    folder = dicom_root / "Normal" / "normal002"
    slices = []
    for number in (instance_number - 1, instance_number, instance_number + 1):
        dataset = pydicom.dcmread(folder / f"IM{number:04d}.dcm")
        hu = dataset.pixel_array.astype(np.float32) * float(dataset.RescaleSlope) + \
            float(dataset.RescaleIntercept)
        scaled = (hu - hu.min()) / max(float(hu.max() - hu.min()), 1.0) * 255.0
        slices.append(_resize(scaled, size, cv2.INTER_LINEAR))
    lesion = np.zeros(slices[1].shape, dtype=np.uint8)
    return _model_input(slices, lesion, stage=0, case_id="normal002",
                        slice_index=instance_number - 1,
                        file_name=str(folder / f"IM{instance_number:04d}.dcm"),
                        image_id=f"normal002/{instance_number}")
