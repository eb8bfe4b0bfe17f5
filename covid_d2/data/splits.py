"""Train/validation split of a cases root, by case (never by slice), written to ``splits.json``."""

import json
import pathlib
import random
from typing import Dict, List

from covid_d2.data.volume import CASE_JSON
from covid_d2.utils.atomic import write_json_atomic

SPLITS_FILE = "splits.json"
# Fraction of the cases of a split source that goes to "val" (at least one case when >= 2 cases).
VAL_FRACTION = 0.25
# Sources split into train/val; the others go entirely to one split. Inf-Net slices come from
# unknown patients, so splitting them could put one patient in both splits.
SPLIT_SOURCES = ("zenodo",)
WHOLE_SPLIT = {"infnet": "train", "covid_ct_md": "test", "user": "test"}


def build_splits(case_sources: Dict[str, str], seed: int, val_fraction: float = VAL_FRACTION) -> Dict[str, List[str]]:
    """Split case ids by case: ``{"train": [...], "val": [...], "test": [...]}``, each sorted.

    ``case_sources`` maps case id -> ``source``. Zenodo cases are shuffled with ``seed`` and
    ``val_fraction`` of them go to "val"; Inf-Net cases go to "train"; COVID-CT-MD and user
    scans go to "test".
    """
    splits: Dict[str, List[str]] = {"train": [], "val": [], "test": []}
    for source in sorted(set(case_sources.values())):
        case_ids = sorted(case for case, case_source in case_sources.items() if case_source == source)
        if source in SPLIT_SOURCES:
            random.Random(seed).shuffle(case_ids)
            num_val = max(1, round(len(case_ids) * val_fraction)) if len(case_ids) >= 2 else 0
            splits["val"] += case_ids[:num_val]
            splits["train"] += case_ids[num_val:]
        else:
            splits[WHOLE_SPLIT.get(source, "test")] += case_ids
    return {name: sorted(case_ids) for name, case_ids in splits.items()}


def scan_cases_root(cases_root) -> Dict[str, str]:
    """Return case id -> source for every finished case folder (one with ``case.json``)."""
    sources = {}
    for path in sorted(pathlib.Path(cases_root).glob(f"*/{CASE_JSON}")):
        with open(path) as f:
            sources[path.parent.name] = json.load(f)["source"]
    return sources


def write_splits(cases_root, splits: Dict[str, List[str]]) -> pathlib.Path:
    """Write ``splits`` to ``<cases_root>/splits.json`` atomically."""
    return write_json_atomic(pathlib.Path(cases_root) / SPLITS_FILE, splits)
