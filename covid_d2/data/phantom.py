"""Synthetic chest CT phantoms in HU with lung and lesion masks of known size.

The demo uses them when no real data is available, so the whole pipeline can run on any
machine. A phantom is NOT anatomy: a body ellipse of soft tissue, two ellipsoidal lungs of
air-filled parenchyma whose cross-section shrinks toward apex and base, a spine, thin vessels
inside the lungs, and ground-glass blobs (the lesions) inside the lungs.
"""

import json
import pathlib
from typing import Dict, List, Tuple

import numpy as np
from scipy import ndimage

from covid_d2.data.volume import Case, CTVolume, save_case

# HU values of the phantom's tissues.
AIR_HU = -1000.0
LUNG_HU = -850.0
SOFT_TISSUE_HU = 40.0
BONE_HU = 400.0
VESSEL_HU = 30.0
GGO_HU = -450.0
NOISE_HU = 20.0


def _ellipse(shape: Tuple[int, int], centre: Tuple[float, float], radii: Tuple[float, float]) -> np.ndarray:
    rows, cols = np.ogrid[:shape[0], :shape[1]]
    return ((rows - centre[0]) / radii[0]) ** 2 + ((cols - centre[1]) / radii[1]) ** 2 <= 1.0


def make_phantom_case(case_id: str, seed: int, shape: Tuple[int, int, int] = (40, 128, 128),
                      spacing_mm: Tuple[float, float, float] = (5.0, 2.5, 2.5),
                      num_lesions: int = 5) -> Case:
    """Return a phantom ``Case`` of ``shape`` (S, H, W) in HU with lung and lesion masks.

    ``num_lesions`` ground-glass blobs with radii between 1.5 and 6 voxels are placed inside the
    lungs (0 gives a healthy phantom). The slice order is superior to inferior.
    """
    rng = np.random.default_rng(seed)
    slices, height, width = shape
    image = np.full(shape, AIR_HU, dtype=np.float32)
    lung = np.zeros(shape, dtype=np.uint8)
    body = _ellipse((height, width), (height * 0.5, width * 0.5), (height * 0.36, width * 0.46))
    spine = _ellipse((height, width), (height * 0.76, width * 0.5), (height * 0.07, width * 0.06))
    for index in range(slices):
        # Lung cross-section grows from the apex, peaks below the middle and shrinks at the base.
        position = index / max(1, slices - 1)
        scale = np.sin(np.pi * (0.1 + 0.85 * position)) ** 0.6
        image[index][body] = SOFT_TISSUE_HU
        image[index][spine] = BONE_HU
        for side in (-1, 1):
            centre = (height * 0.48, width * (0.5 + side * 0.2))
            radii = (height * 0.25 * scale + 1, width * 0.14 * scale + 1)
            lung[index] |= _ellipse((height, width), centre, radii)
    image[lung > 0] = LUNG_HU

    for _ in range(12):  # vessels: thin tubes running through the slices inside the lungs
        row, col = rng.uniform(0.3, 0.7) * height, rng.uniform(0.2, 0.8) * width
        drift = rng.normal(0, 0.4, size=2)
        for index in range(slices):
            disc = _ellipse((height, width), (row + drift[0] * index, col + drift[1] * index), (1.0, 1.0))
            image[index][disc & (lung[index] > 0)] = VESSEL_HU

    lesion = np.zeros(shape, dtype=np.uint8)
    lung_voxels = np.argwhere(ndimage.binary_erosion(lung, iterations=3))
    grid = np.ogrid[:slices, :height, :width]
    for _ in range(num_lesions if len(lung_voxels) else 0):
        centre = lung_voxels[rng.integers(len(lung_voxels))]
        radius = rng.uniform(1.5, 6.0)
        blob = sum(((axis - c) * (s / spacing_mm[1])) ** 2 / radius ** 2
                   for axis, c, s in zip(grid, centre, spacing_mm)) <= 1.0
        lesion |= (blob & (lung > 0)).astype(np.uint8)
    image[lesion > 0] = GGO_HU + rng.normal(0, 30, size=int(lesion.sum()))
    image += rng.normal(0, NOISE_HU, size=shape).astype(np.float32)

    affine_ijk = np.diag([-spacing_mm[2], -spacing_mm[1], -spacing_mm[0], 1.0])
    volume = CTVolume.from_source_grid(image.transpose(2, 1, 0), affine_ijk, "hu",
                                       meta={"source_file": f"{case_id} (synthetic)"})
    slice_labels = [int(lesion[index].any()) for index in range(slices)]
    return Case(image=volume, lesion=lesion, lung=lung, meta={
        "case_id": case_id, "source": "phantom", "diagnosis": "covid19" if num_lesions else "normal",
        "spacing_known": True, "slice_gaps": [], "isolated_slices": False,
        "slice_labels": slice_labels, "synthetic": True,
    })


def write_phantom_cases(cases_root: pathlib.Path, num_train: int = 4, num_val: int = 2,
                        seed: int = 0) -> Dict[str, List[str]]:
    """Write phantom cases and ``splits.json`` under ``cases_root``; return the splits.

    Train and val phantoms have lesions; the test split contains one lesion-free phantom.
    """
    cases_root = pathlib.Path(cases_root)
    splits: Dict[str, List[str]] = {"train": [], "val": [], "test": []}
    plan = ([("train", 5)] * num_train) + ([("val", 5)] * num_val) + [("test", 0)]
    for number, (split, lesions) in enumerate(plan):
        case_id = f"phantom_{number:02d}"
        case_dir = cases_root / case_id
        if not (case_dir / "case.json").is_file():
            save_case(make_phantom_case(case_id, seed + number, num_lesions=lesions), case_dir)
        splits[split].append(case_id)
    (cases_root / "splits.json").write_text(json.dumps(splits, indent=1))
    return splits
