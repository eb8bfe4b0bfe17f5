"""Lesion detection on a whole CT volume: lung ROI, three-slice inputs, detector, 3D lesions.

Coordinates: the volume is on the canonical ``(S, H, W)`` grid of ``covid_d2.data``, where slice
0 is the most superior. The detector runs on the lung-ROI crop of that grid. Results are pasted
back onto the full grid, and onto the scan's original voxel grid when written.
"""

import dataclasses
import logging
import time
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from scipy import ndimage

from covid_d2.data.coco_export import neighbor_indices
from covid_d2.data.intensity import normalize_from_config
from covid_d2.data.volume import Case, CTVolume
from covid_d2.lung.preprocess import roi_case
from covid_d2.lung.roi import RoiCrop, paste_roi

logger = logging.getLogger(__name__)

STAGE_NAMES = ("healthy", "early", "advanced", "severe")


@dataclasses.dataclass
class Lesion3D:
    """One 3D lesion: a connected component of the per-slice detections on the full grid."""

    label: int
    voxels: int
    volume_ml: Optional[float]
    slice_range: Tuple[int, int]
    score: float
    stage: Optional[int]


@dataclasses.dataclass
class VolumeResult:
    """Lesion labels (S, H, W) uint16 on the full grid, the lung mask and per-lesion facts."""

    lesion_labels: np.ndarray
    lung: np.ndarray
    lesions: List[Lesion3D]
    crop: RoiCrop
    timings_s: Dict[str, float]

    @property
    def lesion_voxels(self) -> int:
        return int(np.count_nonzero(self.lesion_labels))

    @property
    def lung_voxels(self) -> int:
        return int(np.count_nonzero(self.lung))


class LesionDetector:
    """Run a trained covid-d2 detector on key slices given as (3, h, w) uint8 stacks."""

    def __init__(self, cfg, weights: str, batch_size: int = 4):
        self.cfg = cfg
        self.model = build_model(cfg)
        self.model.eval()
        DetectionCheckpointer(self.model).load(weights)
        self.batch_size = batch_size
        min_size = cfg.INPUT.MIN_SIZE_TEST
        self.resize = (T.ResizeShortestEdge([min_size, min_size], cfg.INPUT.MAX_SIZE_TEST)
                       if min_size > 0 else None)

    def _model_input(self, stack: np.ndarray) -> Dict:
        image = stack.transpose(1, 2, 0)  # (h, w, 3)
        height, width = image.shape[:2]
        if self.resize is not None:
            image = self.resize.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)), dtype=torch.float32)
        return {"image": tensor, "height": height, "width": width}

    @torch.inference_mode()
    def __call__(self, stacks: List[np.ndarray]) -> List:
        """Return one ``Instances`` per (3, h, w) stack, on the stack's own h x w grid."""
        outputs = []
        for start in range(0, len(stacks), self.batch_size):
            batch = [self._model_input(stack) for stack in stacks[start:start + self.batch_size]]
            outputs.extend(result["instances"].to("cpu") for result in self.model(batch))
        return outputs


def three_slice_stacks(grey: np.ndarray, gaps, isolated: bool = False) -> Iterator[Tuple[int, np.ndarray]]:
    """Yield ``(index, (3, h, w) uint8)`` for each key slice of a (S, h, w) volume.

    Channels are [index - 1, index, index + 1] with zeros at the volume ends and across gaps,
    as in the exported training data.
    """
    for index in range(grey.shape[0]):
        neighbours = neighbor_indices(index, grey.shape[0], gaps, isolated)
        below, above = (grey[n] if n is not None else np.zeros_like(grey[index])
                        for n in neighbours)
        yield index, np.stack([below, grey[index], above])


def label_lesions_3d(union: np.ndarray, gaps: Iterable[int] = (), isolated: bool = False) -> Tuple[np.ndarray, int]:
    """Label the 3D connected components (6-connectivity) of an ``(S, H, W)`` lesion union.

    Components never join across a slice gap: each ``g`` in ``gaps`` means slices ``g`` and
    ``g + 1`` are not adjacent in the body (the case format's ``slice_gaps``), and with
    ``isolated`` no two slices are. Labels run from 1 in slice order; 0 is background.
    """
    num_slices = union.shape[0]
    if isolated:
        cuts = list(range(num_slices - 1))
    else:
        cuts = sorted({int(g) for g in gaps if 0 <= int(g) < num_slices - 1})
    labels = np.zeros(union.shape, dtype=np.int32)
    count = 0
    start = 0
    for stop in [cut + 1 for cut in cuts] + [num_slices]:
        block, found = ndimage.label(union[start:stop])
        labels[start:stop] = np.where(block > 0, block + count, 0)
        count += found
        start = stop
    return labels, count


def _lesions_3d(union: np.ndarray, score_map: np.ndarray, stage_votes: Dict[int, np.ndarray],
                spacing_mm, spacing_known: bool, gaps: Iterable[int] = (),
                isolated: bool = False) -> Tuple[np.ndarray, List[Lesion3D]]:
    """Group the per-slice lesion union into 3D lesions (see ``label_lesions_3d``)."""
    labels, count = label_lesions_3d(union, gaps, isolated)
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    lesions = []
    objects = ndimage.find_objects(labels)
    for label in range(1, count + 1):
        region = objects[label - 1]
        component = labels[region] == label
        voxels = int(component.sum())
        stage = None
        if stage_votes:
            votes = {stage_id: int(np.count_nonzero(vote[region] & component))
                     for stage_id, vote in stage_votes.items()}
            stage = max(votes, key=votes.get) if any(votes.values()) else None
        lesions.append(Lesion3D(
            label=label,
            voxels=voxels,
            volume_ml=round(voxels * voxel_ml, 4) if spacing_known else None,
            slice_range=(int(region[0].start), int(region[0].stop - 1)),
            score=round(float(score_map[region][component].max()), 4),
            stage=stage,
        ))
    dtype = np.uint8 if count < 256 else np.uint16
    return labels.astype(dtype), lesions


def detect_volume(volume: CTVolume, meta: Dict, lung: np.ndarray, cfg,
                  detector: LesionDetector, score_thresh: float,
                  progress: Optional[Callable] = None) -> VolumeResult:
    """Detect lesions in one volume whose (S, H, W) lung mask is known.

    The volume is masked and cropped to the lung ROI exactly as tools/preprocess_lung_roi.py
    does, normalised by ``cfg.INPUT.CT``, cut into three-slice inputs and run through the
    detector in batches of ``detector.batch_size`` key slices. Detections with score >=
    ``score_thresh`` are merged per slice and grouped into 3D lesions.
    """
    timings: Dict[str, float] = {}
    case = Case(image=volume, lung=lung, meta={"case_id": meta.get("case_id", "scan"), **meta})
    cropped, crop, dilated_lung = roi_case(case, lung, cfg)
    shape = volume.shape
    union_full = np.zeros(shape, dtype=bool)
    score_full = np.zeros(shape, dtype=np.float32)
    if cropped is None:
        labels, lesions = _lesions_3d(union_full, score_full, {}, volume.spacing, True)
        return VolumeResult(labels, lung, lesions, crop, timings)

    start = time.perf_counter()
    grey = normalize_from_config(cropped.image, cfg).array
    gaps = cropped.meta.get("slice_gaps", [])
    union = np.zeros(grey.shape, dtype=bool)
    scores = np.zeros(grey.shape, dtype=np.float32)
    stage_votes: Dict[int, np.ndarray] = {}
    batch_indices, batch_stacks = [], []

    def flush():
        for index, instances in zip(batch_indices, detector(batch_stacks)):
            keep = instances.scores >= score_thresh
            instances = instances[keep]
            if len(instances) == 0 or not instances.has("pred_masks"):
                continue
            masks = instances.pred_masks.numpy().astype(bool)
            for mask, score, position in zip(masks, instances.scores.numpy(), range(len(masks))):
                union[index] |= mask
                scores[index] = np.where(mask, np.maximum(scores[index], score), scores[index])
                if instances.has("pred_stages"):
                    stage = int(instances.pred_stages[position])
                    stage_votes.setdefault(stage, np.zeros(grey.shape, dtype=bool))[index] |= mask
        if progress is not None:
            progress(len(batch_indices))
        batch_indices.clear()
        batch_stacks.clear()

    for index, stack in three_slice_stacks(grey, gaps, bool(meta.get("isolated_slices"))):
        batch_indices.append(index)
        batch_stacks.append(stack)
        if len(batch_stacks) == detector.batch_size:
            flush()
    if batch_stacks:
        flush()
    timings["detector_s"] = time.perf_counter() - start

    union_full[crop.index] = union
    # Detections outside the dilated lung mask (the ROI) are not lung lesions.
    union_full &= dilated_lung
    score_full = paste_roi(scores, crop, fill=0.0)
    votes_full = {stage: paste_roi(vote, crop, fill=False) for stage, vote in stage_votes.items()}
    labels, lesions = _lesions_3d(union_full, score_full, votes_full, volume.spacing,
                                  bool(meta.get("spacing_known", True)), meta.get("slice_gaps", ()),
                                  bool(meta.get("isolated_slices")))
    return VolumeResult(labels, lung, lesions, crop, timings)
