"""Lung segmentation of whole volumes: per-view U-Net prediction, fusion, CRF and clean-up."""

import logging
import time
from typing import Dict, Optional, Tuple

import cv2
import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from covid_d2.data.errors import IntensityError
from covid_d2.data.intensity import minmax_clahe, window_hu
from covid_d2.data.volume import CTVolume
from covid_d2.lung.crf import CRFParams, fuse_views, refine_lung_volume
from covid_d2.lung.data import UINT8_KINDS, from_view_images, view_images

logger = logging.getLogger(__name__)


def lung_input_volume(volume: CTVolume, expected_kind: str, window_level: float = -500.0,
                      window_width: float = 1600.0) -> np.ndarray:
    """Return the (S, H, W) uint8 grey levels the lung U-Net expects for this volume.

    A volume of the model's intensity kind is used as is. An HU volume is converted to the
    model's kind: per-slice min-max + CLAHE for ``"minmax_clahe_uint8"`` models, the HU window
    (``window_level``/``window_width``) for ``"hu"`` models. Any other pairing raises
    ``IntensityError``, since an 8-bit image cannot be turned back into HU.
    """
    kind = volume.intensity_kind
    if kind == expected_kind and kind in UINT8_KINDS:
        return volume.array.astype(np.uint8)
    if kind == "hu" and expected_kind == "minmax_clahe_uint8":
        return minmax_clahe(volume.array)
    if kind == "hu" and expected_kind == "hu":
        return window_hu(volume.array, window_level, window_width)
    raise IntensityError(
        f"{volume.meta.get('source_file', 'volume')}: intensity kind {kind!r} cannot be fed to a "
        f"lung U-Net trained on {expected_kind!r} (cfg.LUNG.INTENSITY_KIND). Use a model trained "
        "on this kind, or give the scan in HU so it can be normalised the same way."
    )


class LungViewPredictor:
    """Predict lung probabilities of a volume with one trained view model (axial or sagittal)."""

    def __init__(self, cfg, weights: str, view: str, device: str = "cpu", batch_size: int = 8):
        self.cfg = cfg.clone()
        self.cfg.defrost()
        self.cfg.MODEL.DEVICE = device
        self.model = build_model(self.cfg)
        self.model.eval()
        DetectionCheckpointer(self.model).load(weights)
        self.view = view
        self.input_size = cfg.LUNG.INPUT_SIZE
        self.batch_size = batch_size

    @torch.inference_mode()
    def predict(self, grey: np.ndarray) -> np.ndarray:
        """Return the lung probability (S, H, W) float32 of a (S, H, W) uint8 volume."""
        stack = view_images(grey, self.view)
        height, width = stack.shape[1:]
        output = np.zeros(stack.shape, dtype=np.float32)
        size = (self.input_size, self.input_size)
        for start in range(0, len(stack), self.batch_size):
            batch = [{"image": torch.from_numpy(cv2.resize(image, size,
                                                           interpolation=cv2.INTER_AREA))[None].float()}
                     for image in stack[start:start + self.batch_size]]
            for offset, result in enumerate(self.model(batch)):
                probability = result["sem_seg"][1].cpu().numpy()
                output[start + offset] = cv2.resize(probability, (width, height),
                                                    interpolation=cv2.INTER_LINEAR)
        return from_view_images(output, self.view)


def segment_lungs(volume: CTVolume, cfg, axial: LungViewPredictor,
                  sagittal: Optional[LungViewPredictor] = None) -> Tuple[np.ndarray, Dict[str, float]]:
    """Segment the lungs of a volume; return the (S, H, W) uint8 mask and stage timings (s).

    The axial and (when given) sagittal probabilities are averaged, refined slice by slice with
    the dense CRF when ``cfg.LUNG.CRF.ENABLED``, then cut to the lung components with holes
    filled. A volume with a single slice uses the axial view alone.
    """
    timings: Dict[str, float] = {}
    grey = lung_input_volume(volume, cfg.LUNG.INTENSITY_KIND, cfg.LUNG.AUGMENT.WINDOW_LEVEL,
                             cfg.LUNG.AUGMENT.WINDOW_WIDTH)

    start = time.perf_counter()
    probability = axial.predict(grey)
    timings["axial_s"] = time.perf_counter() - start
    if sagittal is not None and grey.shape[0] > 1:
        start = time.perf_counter()
        probability = fuse_views(probability, sagittal.predict(grey))
        timings["sagittal_s"] = time.perf_counter() - start

    start = time.perf_counter()
    params = CRFParams.from_config(cfg) if cfg.LUNG.CRF.ENABLED else None
    mask = refine_lung_volume(probability, grey, params, cfg.LUNG.CRF.MAX_COMPONENTS,
                              cfg.LUNG.CRF.MIN_RELATIVE_SIZE)
    timings["crf_s"] = time.perf_counter() - start
    return mask, timings
