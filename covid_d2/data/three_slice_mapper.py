"""``ThreeSliceDatasetMapper``: dataset dict of a key slice -> model input with three slice channels.

Output per dataset dict (the model-input contract of covid-d2):

- ``image``: float32 tensor ``(3, H, W)``, channels = slices ``[index - 1, index, index + 1]``
  (superior neighbour, key slice, inferior neighbour), zeros for a missing neighbour, values
  0..255 (the exported 8-bit intensities).
- ``instances``: ``Instances`` with ``gt_boxes`` (XYXY, tight around each augmented mask),
  ``gt_classes`` (int64, 0 = lesion), ``gt_masks`` (``BitMasks``) and ``gt_stages`` (int64,
  -1 = unlabelled). Key slices without lesions give empty ``Instances`` and are kept.
- ``lesion_mask``: uint8 tensor ``(H, W)``, union of the key slice's lesion masks.
- ``stage``: slice-level stage (-1 = unlabelled).
- ``height``, ``width``, ``file_name``, ``image_id``, ``case_id``, ``slice_index`` as in the dict.
"""

import copy
import logging
from typing import Any, Dict, List, Optional, Sequence

import cv2
import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.config import configurable
from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Boxes, Instances

from covid_d2.data.augmentation import RandomAffine, merge_slices

logger = logging.getLogger(__name__)


def read_grey(path: str) -> np.ndarray:
    """Read an 8-bit grey image as ``(H, W)`` uint8; raises ``FileNotFoundError`` naming the path."""
    image = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise FileNotFoundError(
            f"Slice image {path} not found or unreadable. Re-export the dataset with tools/export_coco.py "
            "or check $COVID_D2_DATASETS."
        )
    return image


def load_three_slices(dataset_dict: Dict[str, Any]) -> np.ndarray:
    """Return the ``(H, W, 3)`` uint8 stack [index - 1, key, index + 1] of a key-slice dataset dict.

    A neighbour whose file is None becomes a zero channel. A dict without ``neighbor_files`` (a
    plain 2D dataset) gives [0, key, 0]. Raises ``ValueError`` when a neighbour's size differs.
    """
    key = read_grey(dataset_dict["file_name"])
    channels = []
    for path in dataset_dict.get("neighbor_files") or [None, None]:
        if path is None:
            channels.append(np.zeros_like(key))
            continue
        neighbour = read_grey(path)
        if neighbour.shape != key.shape:
            raise ValueError(
                f"Neighbour {path} has shape {neighbour.shape} but key slice {dataset_dict['file_name']} has "
                f"{key.shape}; slices of one case must share the exported crop. Re-export the case."
            )
        channels.append(neighbour)
    return np.stack([channels[0], key, channels[1]], axis=-1)


def decode_masks(annotations: Sequence[Dict[str, Any]], height: int, width: int) -> List[np.ndarray]:
    """Decode the RLE (or polygon) ``segmentation`` of each annotation to an ``(H, W)`` uint8 mask."""
    masks = []
    for annotation in annotations:
        segmentation = annotation["segmentation"]
        if isinstance(segmentation, list):
            rles = mask_util.frPyObjects(segmentation, height, width)
            segmentation = mask_util.merge(rles)
        elif isinstance(segmentation["counts"], list):
            segmentation = mask_util.frPyObjects(segmentation, height, width)
        masks.append(mask_util.decode(segmentation).astype(np.uint8))
    return masks


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """Return the tight XYXY boxes (pixel edges, float32 ``(N, 4)``) of non-empty ``(N, H, W)`` masks."""
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for k, mask in enumerate(masks):
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        boxes[k] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


def masks_to_instances(masks: Sequence[np.ndarray], classes: Sequence[int], stages: Sequence[int], image_size) -> Instances:
    """Build ``Instances`` from ``(H, W)`` masks, dropping masks left empty by augmentation.

    Boxes are the tight XYXY boxes of the masks (pixel edges), so they stay aligned after rotation.
    """
    # NumPy instead of torch ops here: per-sample torch reductions cost milliseconds each in
    # a DataLoader's main process, where torch runs multi-threaded.
    height, width = image_size
    keep = [k for k, mask in enumerate(masks) if mask.any()]
    stacked = np.zeros((len(keep), height, width), dtype=bool)
    for row, k in enumerate(keep):
        stacked[row] = masks[k] > 0
    instances = Instances((height, width))
    instances.gt_masks = BitMasks(torch.from_numpy(stacked))
    instances.gt_boxes = Boxes(torch.from_numpy(mask_boxes(stacked)))
    instances.gt_classes = torch.tensor([int(classes[k]) for k in keep], dtype=torch.int64)
    instances.gt_stages = torch.tensor([int(stages[k]) for k in keep], dtype=torch.int64)
    return instances


def build_three_slice_augmentations(cfg, is_train: bool) -> List[T.Augmentation]:
    """Resize from ``cfg.INPUT.MIN_SIZE_*`` (skipped when the min size is 0), then for training the
    ``cfg.INPUT.THREE_SLICE`` affine warp and flips."""
    if is_train:
        min_size, max_size, sampling = cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
    else:
        min_size, max_size, sampling = cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice"
    sizes = min_size if isinstance(min_size, (list, tuple)) else (min_size,)
    augmentations: List[T.Augmentation] = []
    if sizes and min(sizes) > 0:
        augmentations.append(T.ResizeShortestEdge(sizes, max_size, sampling))

    three = cfg.INPUT.THREE_SLICE
    if is_train and three.AUGMENT:
        augmentations.append(RandomAffine(three.TRANSLATE_FRACTION, tuple(three.SCALE_RANGE), three.ROTATION_DEGREES))
        if three.HFLIP_PROB > 0:
            augmentations.append(T.RandomFlip(prob=three.HFLIP_PROB, horizontal=True, vertical=False))
        if three.VFLIP_PROB > 0:
            augmentations.append(T.RandomFlip(prob=three.VFLIP_PROB, horizontal=False, vertical=True))
    return augmentations


class ThreeSliceDatasetMapper:
    """Map a key-slice dataset dict to the three-slice model input (see the module docstring).

    The same geometric transform is applied to the three channels and to every lesion mask.
    With ``mosaic_prob`` > 0 (training only), a sample is replaced with that probability by a
    2x2 mosaic of itself and three key slices drawn from ``mosaic_pool``; its slice-level stage
    is then the largest of the four when all are labelled, else -1.
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: Sequence[T.Augmentation] = (),
        mosaic_prob: float = 0.0,
        mosaic_pool: Optional[Sequence[Dict[str, Any]]] = None,
    ):
        if not 0.0 <= mosaic_prob <= 1.0:
            raise ValueError(f"mosaic_prob {mosaic_prob} is invalid; use a probability in [0, 1] (cfg.INPUT.THREE_SLICE.MOSAIC_PROB).")
        if mosaic_prob > 0 and not mosaic_pool:
            raise ValueError("mosaic_prob > 0 needs a non-empty mosaic_pool of dataset dicts to draw the other tiles from.")
        self.is_train = is_train
        self.augmentations = T.AugmentationList(list(augmentations))
        self.mosaic_prob = float(mosaic_prob) if is_train else 0.0
        self.mosaic_pool = list(mosaic_pool or [])
        logger.info("ThreeSliceDatasetMapper (%s): augmentations %s, mosaic probability %.2f",
                    "train" if is_train else "test", self.augmentations, self.mosaic_prob)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> Dict[str, Any]:
        if is_train and cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
            logger.warning(
                "cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS is True, so detectron2 drops every lesion-free key slice "
                "(the negatives) from training. Set it to False for three-slice lesion datasets."
            )
        mosaic_prob = float(cfg.INPUT.THREE_SLICE.MOSAIC_PROB) if is_train else 0.0
        pool = None
        if mosaic_prob > 0:
            pool = [record for name in cfg.DATASETS.TRAIN for record in DatasetCatalog.get(name)]
        return {
            "is_train": is_train,
            "augmentations": build_three_slice_augmentations(cfg, is_train),
            "mosaic_prob": mosaic_prob,
            "mosaic_pool": pool,
        }

    def _load_augmented(self, dataset_dict: Dict[str, Any]):
        """Return the augmented ``(H, W, 3)`` image, its masks, classes and stages."""
        image = load_three_slices(dataset_dict)
        annotations = [a for a in dataset_dict.get("annotations", []) if not a.get("iscrowd", 0)]
        masks = decode_masks(annotations, image.shape[0], image.shape[1])

        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        masks = [transforms.apply_segmentation(mask) for mask in masks]
        classes = [int(a.get("category_id", 0)) for a in annotations]
        stages = [int(a["stage"]) if a.get("stage") is not None else -1 for a in annotations]
        return image, masks, classes, stages

    def _mosaic(self, dataset_dict: Dict[str, Any]):
        partners = [self.mosaic_pool[k] for k in np.random.randint(len(self.mosaic_pool), size=3)]
        samples = [self._load_augmented(d) for d in [dataset_dict, *partners]]
        image, masks, owners = merge_slices([s[0] for s in samples], [s[1] for s in samples])
        classes = [c for s in samples for c in s[2]]
        stages = [st for s in samples for st in s[3]]
        slice_stages = [int(d.get("slice_stage", -1)) for d in [dataset_dict, *partners]]
        slice_stage = max(slice_stages) if min(slice_stages) >= 0 else -1
        return image, masks, classes, stages, slice_stage

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        dataset_dict = copy.deepcopy(dataset_dict)
        if self.mosaic_prob > 0 and np.random.rand() < self.mosaic_prob:
            image, masks, classes, stages, slice_stage = self._mosaic(dataset_dict)
        else:
            image, masks, classes, stages = self._load_augmented(dataset_dict)
            slice_stage = int(dataset_dict.get("slice_stage", -1))

        image_size = image.shape[:2]
        instances = masks_to_instances(masks, classes, stages, image_size)
        union = np.zeros(image_size, dtype=np.uint8)
        for mask in masks:
            union |= (mask > 0).astype(np.uint8)
        output = {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)),
            "instances": instances,
            "lesion_mask": torch.from_numpy(union),
            "stage": slice_stage,
        }
        for key in ("height", "width", "file_name", "image_id", "case_id", "slice_index"):
            if key in dataset_dict:
                output[key] = dataset_dict[key]
        return output
