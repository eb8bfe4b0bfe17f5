"""Per-scan outputs of lesion inference: NIfTI masks, a JSON report, a CSV row and PNG overlays.

Files written into ``<output_dir>/<scan_id>/`` (each atomically):
- ``lesions.nii.gz``: 3D lesion instance labels (0 background, 1..N lesions) on the input's
  original voxel grid with its affine (uint8, or uint16 above 255 lesions);
- ``lung.nii.gz``: the lung mask {0, 1} on the same grid;
- ``report.json``: per-lesion volume (mL), slice range, score and stage, totals and timings;
- ``overlay_<slice>.png``: the most affected axial slices with lung contour and lesions (the
  slice with the most lung when no lesion is found).
Slice numbers in reports count from the most superior slice (index 0) of the scan.
"""

import json
import pathlib
from typing import Any, Dict, List

import cv2
import numpy as np

from covid_d2.data.volume import CTVolume
from covid_d2.data.writers import write_volume_nifti
from covid_d2.inference.volume import STAGE_NAMES, VolumeResult
from covid_d2.utils.atomic import write_bytes_atomic, write_text_atomic

LESION_FILE = "lesions.nii.gz"
LUNG_FILE = "lung.nii.gz"
REPORT_FILE = "report.json"

CSV_COLUMNS = ["scan_id", "input", "slices", "lesion_count", "lesion_volume_ml", "lung_volume_ml",
               "involvement_percent", "max_score", "status"]


def _write_png_atomic(path: pathlib.Path, image: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"PNG encoding failed for {path}")
    write_bytes_atomic(path, encoded.tobytes())


def display_slice(volume: CTVolume, index: int) -> np.ndarray:
    """Return axial slice ``index`` as uint8 grey levels for display (lung window for HU)."""
    plane = volume.array[index]
    if volume.intensity_kind == "hu":
        low, width = -1350.0, 1500.0  # lung window, level -600 HU / width 1500 HU
        return np.clip((plane.astype(np.float32) - low) * (255.0 / width), 0, 255).astype(np.uint8)
    return plane.astype(np.uint8)


def render_overlay(grey: np.ndarray, lung: np.ndarray, lesions: np.ndarray) -> np.ndarray:
    """Draw the lung contour (green) and lesions (red, half transparent) on a grey slice (BGR)."""
    image = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    lesion_pixels = lesions > 0
    red = np.zeros_like(image)
    red[..., 2] = 255
    image[lesion_pixels] = (0.5 * image[lesion_pixels] + 0.5 * red[lesion_pixels]).astype(np.uint8)
    contours, _ = cv2.findContours((lung > 0).astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(image, contours, -1, (0, 200, 0), 1)
    return image


def build_report(scan_id: str, source: str, volume: CTVolume, result: VolumeResult,
                 spacing_known: bool, timings: Dict[str, float]) -> Dict[str, Any]:
    """Return the JSON-ready report of one scan; volumes in mL, involvement in percent."""
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    lesion_ml = round(result.lesion_voxels * voxel_ml, 3) if spacing_known else None
    lung_ml = round(result.lung_voxels * voxel_ml, 3) if spacing_known else None
    involvement = (round(100.0 * result.lesion_voxels / result.lung_voxels, 3)
                   if result.lung_voxels else None)
    lesions: List[Dict[str, Any]] = []
    for lesion in result.lesions:
        lesions.append({
            "label": lesion.label,
            "voxels": lesion.voxels,
            "volume_ml": lesion.volume_ml,
            "slice_range": list(lesion.slice_range),
            "score": lesion.score,
            "stage": lesion.stage,
            "stage_name": STAGE_NAMES[lesion.stage] if lesion.stage is not None else None,
        })
    return {
        "scan_id": scan_id,
        "input": source,
        "shape_shw": list(volume.shape),
        "spacing_mm": [round(v, 4) for v in volume.spacing],
        "intensity_kind": volume.intensity_kind,
        "status": "ok" if result.lung_voxels else "no_lung",
        "lesion_count": len(result.lesions),
        "lesion_voxels": result.lesion_voxels,
        "lesion_volume_ml": lesion_ml,
        "lung_voxels": result.lung_voxels,
        "lung_volume_ml": lung_ml,
        "involvement_percent": involvement,
        "roi_crop": result.crop.to_json(),
        "lesions": lesions,
        "timings_s": {key: round(value, 3) for key, value in timings.items()},
    }


def write_scan_outputs(output_dir: pathlib.Path, scan_id: str, source: str, volume: CTVolume,
                       result: VolumeResult, spacing_known: bool, timings: Dict[str, float],
                       num_overlays: int = 3) -> Dict[str, Any]:
    """Write the files listed in the module docstring and return the report dict."""
    scan_dir = pathlib.Path(output_dir) / scan_id
    scan_dir.mkdir(parents=True, exist_ok=True)
    write_volume_nifti(volume.to_original_grid(result.lesion_labels), volume.original_affine,
                       scan_dir / LESION_FILE)
    write_volume_nifti(volume.to_original_grid(result.lung.astype(np.uint8)),
                       volume.original_affine, scan_dir / LUNG_FILE)

    areas = np.count_nonzero(result.lesion_labels.reshape(volume.shape[0], -1), axis=1)
    worst = [int(i) for i in np.argsort(areas)[::-1][:num_overlays] if areas[i] > 0]
    if not worst and result.lung_voxels:
        # No lesion found: show the slice with the most lung, so the lung contour can be checked.
        worst = [int(np.argmax(np.count_nonzero(result.lung.reshape(volume.shape[0], -1), axis=1)))]
    overlays = []
    for index in sorted(worst):
        image = render_overlay(display_slice(volume, index), result.lung[index],
                               result.lesion_labels[index])
        name = f"overlay_{index:04d}.png"
        _write_png_atomic(scan_dir / name, image)
        overlays.append(name)

    report = build_report(scan_id, source, volume, result, spacing_known, timings)
    report["overlays"] = overlays
    write_text_atomic(scan_dir / REPORT_FILE, json.dumps(report, indent=1))
    return report


def csv_row(report: Dict[str, Any]) -> Dict[str, Any]:
    """Return the summary CSV row of a report."""
    scores = [lesion["score"] for lesion in report["lesions"]]
    return {
        "scan_id": report["scan_id"],
        "input": report["input"],
        "slices": report["shape_shw"][0],
        "lesion_count": report["lesion_count"],
        "lesion_volume_ml": report["lesion_volume_ml"],
        "lung_volume_ml": report["lung_volume_ml"],
        "involvement_percent": report["involvement_percent"],
        "max_score": max(scores) if scores else None,
        "status": report["status"],
    }
