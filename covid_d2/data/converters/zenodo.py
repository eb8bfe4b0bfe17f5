"""COVID-19-CT-Seg (Zenodo 3757476) PNG cases -> case folders.

Folder ``covid19_ct_seg_zenodo_kaggle_png256/case_XX/{ct,lung_mask,infection_mask}`` holds 256x256
PNGs after per-slice min-max + CLAHE, ordered inferior -> superior by ``slices.csv``; only slices
with infection were kept, so neighbouring files can be non-adjacent (see ``slice_gaps``).
"""

import logging
import pathlib
from typing import List

from covid_d2.data.slice_gaps import detect_slice_gaps
from covid_d2.data.slice_stack import read_order_csv, read_slice_stack
from covid_d2.data.volume import Case

logger = logging.getLogger(__name__)

SOURCE = "zenodo"
FOLDER = "covid19_ct_seg_zenodo_kaggle_png256"
# NOTE: the source voxel spacing was lost in preprocessing. In-plane ~0.6-0.8 mm at 512 px gives
# ~1.4 mm at 256 px; the slice step is unknown and set to 1 mm. case.json says spacing_known false.
NOMINAL_SPACING_MM = (1.0, 1.4, 1.4)


def list_cases(data_root) -> List[str]:
    folder = pathlib.Path(data_root) / FOLDER
    if not folder.is_dir():
        raise FileNotFoundError(f"Zenodo PNG folder {folder} not found under the data root {data_root}.")
    return [f"{SOURCE}_{path.name}" for path in sorted(folder.glob("case_*")) if path.is_dir()]


def convert_case(data_root, case_id: str) -> Case:
    """Read one Zenodo case as a ``(S, H, W)`` stack, slice 0 superior, with lung and lesion masks."""
    folder = pathlib.Path(data_root) / FOLDER
    name = case_id[len(SOURCE) + 1 :]
    case_folder = folder / name
    file_names = read_order_csv(folder / "slices.csv", "file", "order_in_case_inferior_to_superior", where={"case": name})

    # NOTE: left/right was not verified for these files; columns are assumed to run from patient
    # right to patient left, as in radiological display.
    volume, masks = read_slice_stack(
        case_folder / "ct",
        intensity_kind="minmax_clahe_uint8",
        file_names=file_names,
        mask_folders={"lung": case_folder / "lung_mask", "lesion": case_folder / "infection_mask"},
        slice_order="inferior_to_superior",
        spacing_mm=NOMINAL_SPACING_MM,
    )
    gaps = detect_slice_gaps(volume.array, masks["lung"])
    if gaps:
        logger.info("%s: slice gap after slice index %s (slices i and i+1 are not adjacent)", case_id,
                    ", ".join(str(index) for index in gaps))
    else:
        logger.info("%s: no slice gaps found", case_id)
    meta = {
        "case_id": case_id,
        "source": SOURCE,
        "spacing_known": False,
        "slice_gaps": gaps,
        "isolated_slices": False,
        "slice_labels": [int(v) for v in masks["lesion"].any(axis=(1, 2))],
        "diagnosis": "covid19",
        "source_files": volume.meta["source_files"],
    }
    return Case(image=volume, lesion=masks["lesion"], lung=masks["lung"], meta=meta)
