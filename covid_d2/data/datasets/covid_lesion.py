"""Registration of three-slice COVID-19 lesion datasets (COCO JSON from ``tools/export_coco.py``).

Dataset dicts are those of Detectron2's ``load_coco_json`` (one per key slice, ``category_id``
0 = lesion, ``stage`` kept on annotations) plus the key-slice fields of the export:
``case_id``, ``source``, ``slice_index``, ``neighbor_indices``, ``neighbor_files`` (absolute paths
or None for a zero channel), ``spacing_mm``, ``slice_label``, ``lung_area_px``, ``slice_stage``,
``intensity_kind``, ``roi_crop`` and ``lesion_annotated``.

These datasets contain lesion-free key slices as negatives, so train with
``cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = False`` (the default set by ``add_covid_config``).
"""

import json
import logging
import os
import pathlib
from typing import Any, Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from covid_d2.data.stages import STAGE_NAMES

logger = logging.getLogger(__name__)

DATASETS_ENV = "COVID_D2_DATASETS"
# Folder of the export root below the datasets root, as detectron2 keeps coco/ below $DETECTRON2_DATASETS.
EXPORT_FOLDER = "covid_lesion"
_CHECKOUT_ROOT = pathlib.Path(__file__).resolve().parents[3]

# Image-record fields of the export copied into every dataset dict.
IMAGE_FIELDS = (
    "case_id", "source", "slice_index", "neighbor_indices", "neighbor_files", "spacing_mm", "slice_label",
    "lung_area_px", "slice_stage", "intensity_kind", "roi_crop", "lesion_annotated",
)

# Standard dataset names and the cases each one holds: a case matches when its case.json
# ``source`` (and ``case_id``) agree and, where ``split`` is set, splits.json lists it in that split.
STANDARD_DATASETS: Dict[str, Dict[str, Any]] = {
    "covid_zenodo_train": {"source": "zenodo", "split": "train"},
    "covid_zenodo_val": {"source": "zenodo", "split": "val"},
    # The 50 Inf-Net slices are that data set's own training split, whatever splits.json lists.
    "covid_infnet_train": {"source": "infnet", "split": None},
    "covid_ctmd_p001": {"source": "covid_ct_md", "case_id": "covid_ct_md_P001", "split": None},
    "covid_ctmd_normal002": {"source": "covid_ct_md", "case_id": "covid_ct_md_normal002", "split": None},
    # Synthetic phantoms of covid_d2.data.phantom (the demo without real data).
    "covid_phantom_train": {"source": "phantom", "split": "train"},
    "covid_phantom_val": {"source": "phantom", "split": "val"},
}

METADATA = {
    "thing_classes": ["lesion"],
    "evaluator_type": "covid_lesion",
    "stage_names": list(STAGE_NAMES),
}


def datasets_root(root: Optional[str] = None) -> pathlib.Path:
    """Return the datasets root: ``root`` if given, else ``$COVID_D2_DATASETS``, else ``datasets/`` in the checkout."""
    if root:
        return pathlib.Path(root)
    if os.environ.get(DATASETS_ENV):
        return pathlib.Path(os.environ[DATASETS_ENV])
    return _CHECKOUT_ROOT / "datasets"


def load_covid_lesion_json(json_file, image_root, dataset_name: Optional[str] = None) -> List[Dict[str, Any]]:
    """Load an exported COCO JSON as Detectron2 dataset dicts with the key-slice fields kept.

    ``file_name`` and ``neighbor_files`` become paths under ``image_root``. Raises ``KeyError``
    naming the JSON when an image record lacks a key-slice field, i.e. the JSON was not written
    by ``tools/export_coco.py``.
    """
    json_file, image_root = str(json_file), str(image_root)
    dataset_dicts = load_coco_json(json_file, image_root, dataset_name, extra_annotation_keys=["stage"])
    with open(json_file) as f:
        images = {image["id"]: image for image in json.load(f)["images"]}

    for record in dataset_dicts:
        image = images[record["image_id"]]
        missing = [field for field in IMAGE_FIELDS if field not in image]
        if missing:
            raise KeyError(
                f"{json_file}: image {record['image_id']} lacks the key-slice fields {missing}. Export the dataset "
                "with tools/export_coco.py."
            )
        for field in IMAGE_FIELDS:
            record[field] = image[field]
        record["neighbor_files"] = [None if name is None else os.path.join(image_root, name) for name in image["neighbor_files"]]
    return dataset_dicts


def register_covid_lesion_instances(name: str, json_file, image_root, metadata: Optional[Dict[str, Any]] = None) -> None:
    """Register an exported lesion dataset under ``name`` in ``DatasetCatalog`` and ``MetadataCatalog``.

    Metadata: ``thing_classes=["lesion"]``, ``evaluator_type="covid_lesion"``, ``stage_names``,
    ``json_file``, ``image_root`` and any extra ``metadata``. Raises ``AssertionError`` (from
    Detectron2) when ``name`` is already registered.
    """
    json_file, image_root = str(json_file), str(image_root)
    DatasetCatalog.register(name, lambda: load_covid_lesion_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, **METADATA, **(metadata or {}))


def register_all_covid_lesion(root: Optional[str] = None) -> List[str]:
    """Register every standard dataset whose JSON exists under ``<root>/covid_lesion/``.

    ``root`` defaults to :func:`datasets_root`. A name registered before from another JSON is
    registered again from this root; names whose JSON is absent are skipped. Returns the names
    registered from this root.
    """
    export_root = datasets_root(root) / EXPORT_FOLDER
    registered = []
    for name in STANDARD_DATASETS:
        json_file = export_root / f"{name}.json"
        if not json_file.is_file():
            continue
        if name in DatasetCatalog.list():
            if MetadataCatalog.get(name).get("json_file") == str(json_file):
                registered.append(name)
                continue
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_covid_lesion_instances(name, json_file, export_root)
        registered.append(name)
    if registered:
        logger.debug("Registered %s from %s", registered, export_root)
    return registered
