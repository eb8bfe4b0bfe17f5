"""COVID-CT-MD DICOM volumes -> case folders with slice- and lobe-level infection labels.

Folder ``covid_ct_md_sample/`` holds ``<class>/<subject>/*.dcm`` series and ``labels/`` with
``Index.csv`` (label index -> subject) and the label arrays. Label index i of a subject is the
i-th slice from the top, i.e. the slice with InstanceNumber i+1.
"""

import csv
import logging
import pathlib
from typing import Dict, List, Optional, Tuple

import numpy as np

from covid_d2.data.dicom import read_dicom_series
from covid_d2.data.errors import VolumeError
from covid_d2.data.volume import Case

logger = logging.getLogger(__name__)

SOURCE = "covid_ct_md"
FOLDER = "covid_ct_md_sample"
# Class folder -> diagnosis key.
DIAGNOSES = {"COVID-19": "covid19", "Normal": "normal", "CAP": "cap"}
SLICE_LABELS_FILE = "Slice-level-labels-updated-1.npy"
LOBE_LABELS_FILE = "Lobe-level-labels-updated-1.npy"
LOBE_NAMES = ["LLL", "LUL", "RLL", "RML", "RUL"]


def _subjects(folder: pathlib.Path) -> Dict[str, Tuple[pathlib.Path, str]]:
    subjects = {}
    for class_name, diagnosis in DIAGNOSES.items():
        for path in sorted((folder / class_name).glob("*")):
            if path.is_dir():
                subjects[f"{SOURCE}_{path.name}"] = (path, diagnosis)
    return subjects


def list_cases(data_root) -> List[str]:
    folder = pathlib.Path(data_root) / FOLDER
    if not folder.is_dir():
        raise FileNotFoundError(f"COVID-CT-MD folder {folder} not found under the data root {data_root}.")
    return list(_subjects(folder))


def _label_index(labels_folder: pathlib.Path, subject: str) -> Optional[int]:
    with open(labels_folder / "Index.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["Folder/ID"] == subject:
                return int(row["Label Index"])
    return None


def _labels_per_slice(array: np.ndarray, instance_numbers: List[int], source: str) -> np.ndarray:
    """Pick label rows by InstanceNumber - 1 and check that no label lies beyond the last slice."""
    if any(n is None or n < 1 for n in instance_numbers):
        raise VolumeError(f"{source}: InstanceNumber is missing or < 1, so slice labels cannot be attached.")
    if np.any(array[max(instance_numbers) :] != 0):
        raise VolumeError(f"{source}: labels exist beyond InstanceNumber {max(instance_numbers)}; labels and images disagree.")
    return array[[n - 1 for n in instance_numbers]]


def convert_case(data_root, case_id: str) -> Case:
    """Read one subject as an HU volume with ``slice_labels`` (and ``lobe_labels``) per slice."""
    folder = pathlib.Path(data_root) / FOLDER
    subjects = _subjects(folder)
    if case_id not in subjects:
        raise KeyError(f"Case {case_id!r} not found in {folder}; known cases: {sorted(subjects)}.")
    series_folder, diagnosis = subjects[case_id]
    volume = read_dicom_series(series_folder)
    instance_numbers = volume.meta["instance_numbers"]
    num_slices = volume.shape[0]

    index = _label_index(folder / "labels", series_folder.name)
    if index is not None:
        slice_labels = _labels_per_slice(np.load(folder / "labels" / SLICE_LABELS_FILE)[index], instance_numbers, case_id)
        lobe_labels = _labels_per_slice(np.load(folder / "labels" / LOBE_LABELS_FILE)[index], instance_numbers, case_id)
    elif diagnosis == "normal":
        # NOTE: no label file covers the normal subjects; the data set describes them as healthy
        # controls, so every slice and lobe is labelled uninfected.
        slice_labels = np.zeros(num_slices, dtype=np.int64)
        lobe_labels = np.zeros((num_slices, len(LOBE_NAMES)))
    else:
        slice_labels, lobe_labels = None, None
        logger.warning("%s: no slice labels found in Index.csv; slice_labels is null.", case_id)

    meta = {
        "case_id": case_id,
        "source": SOURCE,
        "spacing_known": True,
        "slice_gaps": [],
        "isolated_slices": False,
        "slice_labels": None if slice_labels is None else [int(v) for v in slice_labels],
        "lobe_labels": None if lobe_labels is None else np.asarray(lobe_labels, dtype=int).tolist(),
        "lobe_names": LOBE_NAMES,
        "diagnosis": diagnosis,
        "source_files": volume.meta["source_files"],
    }
    return Case(image=volume, meta=meta)
