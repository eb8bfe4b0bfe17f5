"""Lung-ROI preprocessing of one case: lung mask, masking, cropping and an atomic case write.

Output layout for a case ``<out>/<case_id>/`` (a case folder, see ``covid_d2.data.volume``):
``image.nii.gz`` (the crop, with voxels outside the dilated lungs set to the background value),
``lesion.nii.gz`` and ``lung.nii.gz`` cropped alike, ``lung_full.nii.gz`` (the lung mask on the
whole case grid, with the case's affine), and ``roi.json`` (the crop record plus lung volume
and timings). A case with no lung found has only ``roi.json`` with an empty crop and
``"status": "no_lung"``.
"""

import logging
import pathlib
import shutil
import time
from typing import Any, Dict, Optional, Tuple

import numpy as np

from covid_d2.data.volume import Case, load_case, save_case
from covid_d2.data.writers import write_volume_nifti
from covid_d2.lung.roi import ROI_JSON, RoiCrop, compute_roi, crop_volume, write_roi_json

logger = logging.getLogger(__name__)

LUNG_FULL_FILE = "lung_full.nii.gz"
PARTIAL_SUFFIX = ".partial"


def _crop_slice_meta(meta: Dict[str, Any], crop: RoiCrop) -> Dict[str, Any]:
    """Cut the per-slice fields of ``case.json`` to the crop's slices."""
    start, stop = crop.slices
    cropped = dict(meta)
    for key in ("slice_labels", "source_files", "lobe_labels"):
        if isinstance(meta.get(key), list) and len(meta[key]) == crop.full_shape[0]:
            cropped[key] = meta[key][start:stop]
    cropped["slice_gaps"] = [g - start for g in meta.get("slice_gaps", []) if start <= g < stop - 1]
    for key in ("shape", "affine", "original_affine", "original_shape", "reorientation",
                "spacing_mm", "extra_masks"):
        cropped.pop(key, None)
    cropped["roi_of"] = meta["case_id"]
    return cropped


def _background_value(intensity_kind: str, cfg) -> float:
    return cfg.LUNG.ROI.BACKGROUND_HU if intensity_kind == "hu" else cfg.LUNG.ROI.BACKGROUND_UINT8


def roi_case(case: Case, lung: np.ndarray, cfg) -> Tuple[Optional[Case], RoiCrop, np.ndarray]:
    """Return ``(roi_case, crop, dilated_lung)`` for a case and its (S, H, W) lung mask.

    Returns ``(None, empty_crop, dilated)`` when the lung mask is empty.
    """
    crop, dilated = compute_roi(lung, case.image.spacing, cfg.LUNG.ROI.DILATION_MM,
                                cfg.LUNG.ROI.MARGIN_PX, bool(case.meta.get("spacing_known", True)))
    if crop.is_empty:
        return None, crop, dilated
    background = _background_value(case.image.intensity_kind, cfg)
    masked = np.where(dilated, case.image.array, background).astype(case.image.array.dtype)
    image = crop_volume(case.image, crop, masked)

    def cut(mask):
        return None if mask is None else np.ascontiguousarray(mask[crop.index])

    cropped = Case(image=image, lesion=cut(case.lesion), lung=cut(lung),
                   meta=_crop_slice_meta(case.meta, crop),
                   extra_masks={name: cut(mask) for name, mask in case.extra_masks.items()})
    return cropped, crop, dilated


def preprocess_case(case_dir: pathlib.Path, output_root: pathlib.Path, cfg,
                    segment=None, use_gt_lungs: bool = False, overwrite: bool = False) -> Dict:
    """Write the lung-ROI version of one case folder and return its summary record.

    ``segment`` is a callable ``volume -> (lung_mask, timings)`` (see
    ``covid_d2.lung.predict.segment_lungs``); with ``use_gt_lungs`` the case's own lung mask is
    used instead. The case is written to a ``.partial`` folder renamed at the end, so a killed
    run leaves no partial case. Finished cases are skipped unless ``overwrite``.
    """
    case_dir = pathlib.Path(case_dir)
    output_root = pathlib.Path(output_root)
    target = output_root / case_dir.name
    if (target / ROI_JSON).is_file() and not overwrite:
        return {"case_id": case_dir.name, "status": "skipped"}

    case = load_case(case_dir)
    timings: Dict[str, float] = {}
    if use_gt_lungs:
        if case.lung is None:
            raise FileNotFoundError(
                f"{case_dir}: --use-gt-lungs needs lung.nii.gz in the case folder, but it has none. "
                "Run without --use-gt-lungs to predict the lungs."
            )
        lung = case.lung
    else:
        lung, timings = segment(case.image)

    start = time.perf_counter()
    cropped, crop, _ = roi_case(case, lung, cfg)
    spacing = case.image.spacing
    voxel_ml = float(np.prod(spacing)) / 1000.0
    record: Dict[str, Any] = {
        "case_id": case.case_id,
        "status": "ok" if cropped is not None else "no_lung",
        "lung_source": "ground_truth" if use_gt_lungs else "predicted",
        "lung_voxels": int(lung.sum()),
        "lung_volume_l": (round(int(lung.sum()) * voxel_ml / 1000.0, 4)
                          if case.meta.get("spacing_known", True) else None),
        "intensity_kind": case.image.intensity_kind,
        "timings_s": {key: round(value, 3) for key, value in timings.items()},
    }
    if cropped is None:
        logger.warning("%s: no lung found; writing an empty ROI record. Check the scan covers the "
                       "chest and its intensity kind (%s).", case.case_id,
                       case.image.intensity_kind)

    staging = output_root / f".{case_dir.name}{PARTIAL_SUFFIX}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        if cropped is not None:
            save_case(cropped, staging, overwrite=True)
            write_volume_nifti(lung.astype(np.uint8), case.image.affine, staging / LUNG_FULL_FILE)
        else:
            staging.mkdir(parents=True)
        record["timings_s"]["write_s"] = round(time.perf_counter() - start, 3)
        write_roi_json(staging / ROI_JSON, crop, record)
        if target.exists():
            shutil.rmtree(target)
        staging.replace(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {**record, **crop.to_json()}


def clean_partial_cases(output_root: pathlib.Path) -> int:
    """Remove ``.partial`` folders left by a killed run; return how many were removed."""
    removed = 0
    for path in pathlib.Path(output_root).glob(f".*{PARTIAL_SUFFIX}"):
        shutil.rmtree(path, ignore_errors=True)
        removed += 1
    return removed

