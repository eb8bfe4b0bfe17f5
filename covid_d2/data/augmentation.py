"""Geometric augmentations of three-slice inputs: one affine warp and the "merge slices" mosaic.

Images are ``(H, W, C)`` arrays (C = 3 slices) and masks ``(H, W)`` uint8; a transform applies
the same geometry to every channel and every mask, so lesions stay aligned with their slices.
Coordinates follow Detectron2: ``x`` along columns, ``y`` along rows, pixel centres at +0.5.
"""

from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
from detectron2.data.transforms import Augmentation, NoOpTransform, Transform


class AffineTransform(Transform):
    """Warp by a 2x3 affine ``matrix`` acting on pixel indices ``(column, row)``, keeping the image size.

    Pixels that come from outside the input are 0. Images use bilinear interpolation and
    segmentation masks nearest neighbour.
    """

    def __init__(self, matrix: np.ndarray, height: int, width: int):
        super().__init__()
        self._set_attributes(locals())
        self.matrix = np.asarray(matrix, dtype=np.float64).reshape(2, 3)

    def _warp(self, array: np.ndarray, interpolation: int) -> np.ndarray:
        return cv2.warpAffine(
            array, self.matrix, (int(self.width), int(self.height)), flags=interpolation,
            borderMode=cv2.BORDER_CONSTANT, borderValue=0,
        )

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        warped = self._warp(img, cv2.INTER_LINEAR)
        # cv2 drops a trailing channel axis of size 1.
        return warped.reshape(warped.shape[:2] + img.shape[2:])

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self._warp(segmentation, cv2.INTER_NEAREST)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        # cv2 maps pixel indices, whose centres are at detectron2 coordinates index + 0.5.
        centred = np.asarray(coords, dtype=np.float64) - 0.5
        mapped = centred @ self.matrix[:, :2].T + self.matrix[:, 2]
        return mapped + 0.5

    def inverse(self) -> "AffineTransform":
        return AffineTransform(cv2.invertAffineTransform(self.matrix), self.height, self.width)


class RandomAffine(Augmentation):
    """Random rotation about the image centre, isotropic scaling and translation, as one warp.

    Args:
        max_translate_fraction: maximum shift along each axis as a fraction of that side.
        scale_range: ``(min, max)`` of the uniformly sampled scale factor.
        max_rotation_degrees: rotation sampled uniformly in ``[-x, x]`` degrees.
    """

    def __init__(self, max_translate_fraction: float = 0.05, scale_range: Sequence[float] = (0.9, 1.1),
                 max_rotation_degrees: float = 10.0):
        super().__init__()
        if not 0.0 <= max_translate_fraction < 1.0:
            raise ValueError(f"max_translate_fraction {max_translate_fraction} is invalid; use a fraction in [0, 1).")
        if len(scale_range) != 2 or not 0.0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range {tuple(scale_range)} is invalid; use (min, max) with 0 < min <= max.")
        if max_rotation_degrees < 0:
            raise ValueError(f"max_rotation_degrees {max_rotation_degrees} is invalid; use 0 or more.")
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        height, width = image.shape[:2]
        angle = np.random.uniform(-self.max_rotation_degrees, self.max_rotation_degrees)
        scale = np.random.uniform(*self.scale_range)
        shift_x = np.random.uniform(-self.max_translate_fraction, self.max_translate_fraction) * width
        shift_y = np.random.uniform(-self.max_translate_fraction, self.max_translate_fraction) * height
        if angle == 0 and scale == 1 and shift_x == 0 and shift_y == 0:
            return NoOpTransform()
        centre = ((width - 1) / 2.0, (height - 1) / 2.0)
        matrix = cv2.getRotationMatrix2D(centre, angle, scale)
        matrix[:, 2] += (shift_x, shift_y)
        return AffineTransform(matrix, height, width)


def _fit_into(image: np.ndarray, masks: List[np.ndarray], height: int, width: int) -> Tuple[np.ndarray, List[np.ndarray]]:
    """Resize ``image`` (H, W, C) and its masks to fit a ``height x width`` cell, keeping the aspect ratio."""
    scale = min(height / image.shape[0], width / image.shape[1])
    new_h = max(1, min(height, int(round(image.shape[0] * scale))))
    new_w = max(1, min(width, int(round(image.shape[1] * scale))))
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    resized = resized.reshape((new_h, new_w) + image.shape[2:])
    resized_masks = [cv2.resize(mask, (new_w, new_h), interpolation=cv2.INTER_NEAREST) for mask in masks]
    return resized, resized_masks


def merge_slices(
    images: Sequence[np.ndarray],
    masks: Sequence[List[np.ndarray]],
    output_size: Optional[Tuple[int, int]] = None,
) -> Tuple[np.ndarray, List[np.ndarray], List[int]]:
    """Tile four three-slice samples into one 2x2 mosaic ("merge slices").

    Args:
        images: four ``(H_i, W_i, C)`` arrays of the same dtype and channel count.
        masks: for each image, its instance masks ``(H_i, W_i)`` uint8.
        output_size: ``(H, W)`` of the mosaic; default the first image's size.

    Returns:
        ``(mosaic, mosaic_masks, owners)``. Each sample is shrunk to fit its quadrant, keeping
        its aspect ratio, top-left aligned and padded with zeros. ``mosaic_masks`` are the
        instance masks on the mosaic grid in input order; ``owners[k]`` is the sample that
        mask k came from.
    """
    if len(images) != 4 or len(masks) != 4:
        raise ValueError(f"merge_slices needs 4 samples, got {len(images)} images and {len(masks)} mask lists.")
    height, width = output_size or images[0].shape[:2]
    cell_h, cell_w = height // 2, width // 2
    mosaic = np.zeros((height, width) + images[0].shape[2:], dtype=images[0].dtype)
    merged_masks, owners = [], []
    for index, (image, sample_masks) in enumerate(zip(images, masks)):
        top, left = (index // 2) * cell_h, (index % 2) * cell_w
        resized, resized_masks = _fit_into(image, list(sample_masks), cell_h, cell_w)
        mosaic[top : top + resized.shape[0], left : left + resized.shape[1]] = resized
        for mask in resized_masks:
            full = np.zeros((height, width), dtype=np.uint8)
            full[top : top + mask.shape[0], left : left + mask.shape[1]] = mask
            merged_masks.append(full)
            owners.append(index)
    return mosaic, merged_masks, owners
