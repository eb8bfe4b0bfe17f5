"""Lung training data: axial slices and sagittal reconstructions of cases with lung masks.

A view image is 2D: an axial slice ``volume[s]`` is (H, W); a sagittal reconstruction
``volume[:, :, w]`` is (S, H), slices top to bottom. Both are resized to a square network input.
"""

import json
import logging
import pathlib
from typing import Dict, List, Sequence

import cv2
import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetCatalog, MetadataCatalog

from covid_d2.data.volume import load_case

logger = logging.getLogger(__name__)

VIEWS = ("axial", "sagittal")
UINT8_KINDS = ("minmax_clahe_uint8", "uint8_windowed")


def view_images(volume: np.ndarray, view: str) -> np.ndarray:
    """Return the stack of 2D view images of a (S, H, W) array.

    ``"axial"`` gives (S, H, W) (one image per slice); ``"sagittal"`` gives (W, S, H) (one
    image per column, rows = slices from superior to inferior, columns = anterior to posterior).
    """
    if view == "axial":
        return volume
    if view == "sagittal":
        return np.ascontiguousarray(volume.transpose(2, 0, 1))
    raise ValueError(f"Unknown lung view {view!r}; use one of {VIEWS}.")


def from_view_images(stack: np.ndarray, view: str) -> np.ndarray:
    """Invert :func:`view_images`: return the (S, H, W) array."""
    if view == "axial":
        return stack
    if view == "sagittal":
        return np.ascontiguousarray(stack.transpose(1, 2, 0))
    raise ValueError(f"Unknown lung view {view!r}; use one of {VIEWS}.")


def lung_view_dicts(cases_root: pathlib.Path, case_ids: Sequence[str], view: str,
                    min_lung_pixels: int = 50) -> List[Dict]:
    """Build one dataset dict per view image of the given cases that have a lung mask.

    Images without lung (fewer than ``min_lung_pixels``) are kept one in four, so the model
    also learns from negatives. Each dict carries the image and mask arrays.
    NOTE: the arrays are kept in memory (about 130 KB per 256x256 uint8 image pair), which suits
    the shared data sets; a large cohort would need per-case loading in the mapper.
    """
    dicts: List[Dict] = []
    without_lung = []
    for case_id in case_ids:
        case = load_case(pathlib.Path(cases_root) / case_id)
        if case.lung is None:
            without_lung.append(case_id)
            continue
        if case.meta.get("isolated_slices") and view == "sagittal":
            continue
        images = view_images(case.image.array, view)
        masks = view_images(case.lung, view)
        for index, (image, mask) in enumerate(zip(images, masks)):
            has_lung = int(mask.sum()) >= min_lung_pixels
            if not has_lung and index % 4:
                continue
            dicts.append({
                "file_name": f"{case_id}/{view}/{index:04d}",
                "image_id": f"{case_id}_{view}_{index:04d}",
                "case_id": case_id,
                "view": view,
                "view_index": index,
                "height": int(image.shape[0]),
                "width": int(image.shape[1]),
                "intensity_kind": case.image.intensity_kind,
                "image": np.ascontiguousarray(image),
                "lung_mask": np.ascontiguousarray(mask.astype(np.uint8)),
            })
    if without_lung:
        logger.info("%d of %d cases have no lung mask and are not used for the %s lung view: %s",
                    len(without_lung), len(case_ids), view, ", ".join(without_lung[:5]) +
                    (", ..." if len(without_lung) > 5 else ""))
    return dicts


def register_lung_datasets(cases_root: pathlib.Path) -> List[str]:
    """Register ``covid_lung_{view}_{train,val}`` for both views from ``splits.json``."""
    cases_root = pathlib.Path(cases_root)
    splits_path = cases_root / "splits.json"
    if not splits_path.is_file():
        raise FileNotFoundError(
            f"{splits_path} not found. Create the cases with tools/prepare_data.py first, or pass "
            "the cases root that contains splits.json."
        )
    with open(splits_path) as f:
        splits = json.load(f)
    names = []
    for view in VIEWS:
        for split in ("train", "val"):
            case_ids = splits.get(split, [])
            name = f"covid_lung_{view}_{split}"
            if name in DatasetCatalog.list():
                DatasetCatalog.remove(name)
                MetadataCatalog.remove(name)
            DatasetCatalog.register(
                name, lambda ids=tuple(case_ids), v=view: lung_view_dicts(cases_root, ids, v))
            MetadataCatalog.get(name).set(stuff_classes=["background", "lung"], view=view,
                                          cases_root=str(cases_root), evaluator_type="lung_dice")
            names.append(name)
    return names


class LungViewMapper:
    """Turn a lung view dict into ``{"image": (1, N, N) float 0..255, "sem_seg": (N, N) int64}``.

    In training it applies the augmentations of ``cfg.LUNG.AUGMENT``: flips, scaling, shifts
    and an intensity change. HU data gets a random window around the configured level and
    width, and 8-bit data a random gamma and contrast. ``N`` is ``cfg.LUNG.INPUT_SIZE``.
    """

    @configurable
    def __init__(self, *, is_train: bool, input_size: int, intensity_kind: str,
                 window_level: float = -500.0, window_width: float = 1600.0,
                 window_level_jitter: float = 100.0, window_width_jitter: float = 300.0,
                 gamma_range=(0.7, 1.4), contrast_range=(0.8, 1.2), scale_range=(0.9, 1.1),
                 max_shift: float = 0.05, flip_prob: float = 0.5):
        self.is_train = is_train
        self.input_size = input_size
        self.intensity_kind = intensity_kind
        self.window_level = window_level
        self.window_width = window_width
        self.window_level_jitter = window_level_jitter
        self.window_width_jitter = window_width_jitter
        self.gamma_range = tuple(gamma_range)
        self.contrast_range = tuple(contrast_range)
        self.scale_range = tuple(scale_range)
        self.max_shift = max_shift
        self.flip_prob = flip_prob
        self.rng = np.random.default_rng()

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        augment = cfg.LUNG.AUGMENT
        return {
            "is_train": is_train,
            "input_size": cfg.LUNG.INPUT_SIZE,
            "intensity_kind": cfg.LUNG.INTENSITY_KIND,
            "window_level": augment.WINDOW_LEVEL,
            "window_width": augment.WINDOW_WIDTH,
            "window_level_jitter": augment.WINDOW_LEVEL_JITTER,
            "window_width_jitter": augment.WINDOW_WIDTH_JITTER,
            "gamma_range": augment.GAMMA_RANGE,
            "contrast_range": augment.CONTRAST_RANGE,
            "scale_range": augment.SCALE_RANGE,
            "max_shift": augment.MAX_SHIFT,
            "flip_prob": augment.FLIP_PROB,
        }

    def _to_uint8(self, image: np.ndarray, kind: str) -> np.ndarray:
        if kind in UINT8_KINDS:
            grey = image.astype(np.float32) / 255.0
            if self.is_train:
                grey = grey ** self.rng.uniform(*self.gamma_range)
                grey = 0.5 + (grey - 0.5) * self.rng.uniform(*self.contrast_range)
            return np.clip(grey * 255.0, 0, 255).astype(np.uint8)
        if kind == "hu":
            level, width = self.window_level, self.window_width
            if self.is_train:
                level += self.rng.uniform(-self.window_level_jitter, self.window_level_jitter)
                width += self.rng.uniform(-self.window_width_jitter, self.window_width_jitter)
            low = level - width / 2.0
            return (np.clip((image - low) / width, 0.0, 1.0) * 255.0).astype(np.uint8)
        raise ValueError(f"Lung view {kind!r} intensities are not supported; expected one of "
                         f"{UINT8_KINDS + ('hu',)}.")

    def _geometry(self, height: int, width: int) -> np.ndarray:
        """Return the 2x3 affine from the source image to the square network input."""
        size = self.input_size
        scale_x, scale_y = size / width, size / height
        matrix = np.array([[scale_x, 0.0, 0.0], [0.0, scale_y, 0.0]])
        if not self.is_train:
            return matrix
        zoom = self.rng.uniform(*self.scale_range)
        shift = self.rng.uniform(-self.max_shift, self.max_shift, size=2) * size
        centre = size / 2.0
        matrix = matrix * zoom
        matrix[:, 2] = centre - zoom * centre + shift
        if self.rng.random() < self.flip_prob:
            matrix[0] = -matrix[0]
            matrix[0, 2] += size
        return matrix

    def __call__(self, record: Dict) -> Dict:
        if self.intensity_kind != record["intensity_kind"] and not (
                self.intensity_kind in UINT8_KINDS and record["intensity_kind"] in UINT8_KINDS):
            raise ValueError(
                f"{record['file_name']}: intensity kind {record['intensity_kind']!r} differs from "
                f"cfg.LUNG.INTENSITY_KIND={self.intensity_kind!r}. Convert the cases or change the "
                "config so training and inference see the same intensities."
            )
        image = self._to_uint8(record["image"], record["intensity_kind"])
        matrix = self._geometry(*image.shape)
        size = (self.input_size, self.input_size)
        image = cv2.warpAffine(image, matrix, size, flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        mask = cv2.warpAffine(record["lung_mask"], matrix, size, flags=cv2.INTER_NEAREST,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return {
            "file_name": record["file_name"],
            "image_id": record["image_id"],
            "image": torch.from_numpy(image)[None].float(),
            "sem_seg": torch.from_numpy(mask.astype(np.int64)),
        }
