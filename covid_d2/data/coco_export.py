"""Export of case folders to COCO instance annotations with one image record per key slice.

Layout of an export root (``<COVID_D2_DATASETS>/covid_lesion`` by default)::

    images/<case_id>/<slice:04d>.png   every exported slice once, 8-bit grey, cropped to the ROI
    <split>.json                       all cases of a split ("train", "val", "test" or "all")
    <standard name>.json               e.g. covid_zenodo_train.json (see STANDARD_DATASETS)

Each image record is one key slice: ``file_name`` is its PNG (relative to the export root) and
``neighbor_files`` the PNGs of slices ``index - 1`` (superior) and ``index + 1`` (inferior), or
null where the three-slice input gets a zero channel: at the ends of the exported slice range,
across a ``slice_gaps`` entry, and for every slice of an ``isolated_slices`` case. Slice indices
(``slice_index``, ``neighbor_indices``, PNG names, stage CSV keys) count slices on the grid of the
case before any lung-ROI crop, i.e. on ``roi_crop["original_shape"]``.

Annotations are the connected components of the key slice's lesion mask (category 1 "lesion",
``bbox`` XYWH in pixels of the exported slice, compressed RLE, ``area`` in pixels, ``iscrowd``
0) with ``stage`` when one is known. Slices without lesions are exported as negatives.
"""

import dataclasses
import datetime
import json
import logging
import os
import pathlib
import shutil
import tempfile
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import pycocotools.mask as mask_util
from scipy import ndimage

from covid_d2.data.errors import IntensityError
from covid_d2.data.intensity import normalize_volume
from covid_d2.data.stages import StageLabeller, involvement_fraction
from covid_d2.data.volume import CASE_JSON, Case, load_case
from covid_d2.utils.atomic import write_json_atomic

logger = logging.getLogger(__name__)

IMAGES_FOLDER = "images"
SPLITS_FILE = "splits.json"
ROI_JSON = "roi.json"
SPLIT_CHOICES = ("train", "val", "test", "all")
LESION_CATEGORY = {"id": 1, "name": "lesion", "supercategory": "lesion"}


@dataclasses.dataclass
class ExportOptions:
    """How slices become COCO records.

    ``connectivity`` (4 or 8) and ``min_lesion_area`` (pixels) define lesion instances; the
    normalisation fields are those of ``cfg.INPUT.CT`` and apply to HU cases only, because 8-bit
    cases are exported with the intensities they have.
    """

    connectivity: int = 8
    min_lesion_area: int = 4
    normalization: str = "minmax_clahe"
    window_level: float = -600.0
    window_width: float = 1500.0
    clahe_clip_limit: float = 7.0
    clahe_tile_grid: Tuple[int, int] = (8, 8)

    def __post_init__(self):
        if self.connectivity not in (4, 8):
            raise ValueError(f"Lesion connectivity {self.connectivity} is invalid; use 4 or 8 (cfg.INPUT.THREE_SLICE.CONNECTIVITY).")
        if self.min_lesion_area < 1:
            raise ValueError(f"Minimum lesion area {self.min_lesion_area} px is invalid; use 1 or more (cfg.INPUT.THREE_SLICE.MIN_LESION_AREA).")

    @classmethod
    def from_config(cls, cfg) -> "ExportOptions":
        ct, three = cfg.INPUT.CT, cfg.INPUT.THREE_SLICE
        return cls(
            connectivity=int(three.CONNECTIVITY),
            min_lesion_area=int(three.MIN_LESION_AREA),
            normalization=ct.NORMALIZATION,
            window_level=float(ct.WINDOW_LEVEL),
            window_width=float(ct.WINDOW_WIDTH),
            clahe_clip_limit=float(ct.CLAHE_CLIP_LIMIT),
            clahe_tile_grid=tuple(int(v) for v in ct.CLAHE_TILE_GRID),
        )


@dataclasses.dataclass
class SliceEntry:
    """One key slice: its COCO image record (without ``id``) and annotations (without ids)."""

    image: Dict[str, Any]
    annotations: List[Dict[str, Any]]


@dataclasses.dataclass
class CaseEntry:
    case_id: str
    meta: Dict[str, Any]
    slices: List[SliceEntry]


def lesion_components(mask: np.ndarray, connectivity: int = 8, min_area: int = 1) -> List[np.ndarray]:
    """Split a 2D ``(H, W)`` mask into connected components of at least ``min_area`` pixels.

    Returns boolean ``(H, W)`` masks ordered by the raster position (row, then column) of each
    component's first pixel; this order defines ``lesion_index`` in stage CSVs.
    """
    structure = ndimage.generate_binary_structure(2, 2 if connectivity == 8 else 1)
    labels, count = ndimage.label(np.asarray(mask) > 0, structure=structure)
    components = []
    for label in range(1, count + 1):
        component = labels == label
        if int(component.sum()) >= min_area:
            components.append(component)
    return components


def encode_rle(mask: np.ndarray) -> Dict[str, Any]:
    """Return the compressed COCO RLE of a 2D mask with ``counts`` as text (JSON-ready)."""
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def neighbor_indices(index: int, num_slices: int, gaps: Iterable[int], isolated: bool) -> List[Optional[int]]:
    """Return ``[index - 1, index + 1]`` with None for a neighbour the key slice must not use.

    ``index`` counts from 0 within ``num_slices`` consecutive slices; ``gaps`` holds each i whose
    slices i and i+1 are not adjacent in the body (same numbering).
    """
    if isolated:
        return [None, None]
    gaps = set(gaps)
    before = index - 1 if index > 0 and (index - 1) not in gaps else None
    after = index + 1 if index + 1 < num_slices and index not in gaps else None
    return [before, after]


@dataclasses.dataclass(frozen=True)
class ExportCrop:
    """Where the exported block lies: ``index`` on the stored array and ``offset`` on the original grid.

    ``record`` is the crop record written to every image record (``roi_crop``), with ranges on
    the original grid ``original_shape``.
    """

    index: Tuple[slice, slice, slice]
    offset: int
    record: Dict[str, Any]


def resolve_crop(case_dir: pathlib.Path, shape: Sequence[int]) -> ExportCrop:
    """Read ``roi.json`` of a case folder and decide what to crop from its ``(S, H, W)`` array.

    Two layouts are accepted: an array already cut to the crop (the lung-ROI preprocessor's
    output, whose shape equals the crop's extent) and a full array whose shape equals
    ``original_shape``, which is then cropped here. Without ``roi.json`` the whole grid is the crop.
    Raises ``ValueError`` when the array shape matches neither.
    """
    shape = tuple(int(n) for n in shape)
    roi_path = case_dir / ROI_JSON
    if not roi_path.is_file():
        record = {"crop": {"slice": [0, shape[0]], "row": [0, shape[1]], "col": [0, shape[2]]}, "original_shape": list(shape)}
        return ExportCrop(index=(slice(None),) * 3, offset=0, record=record)

    with open(roi_path) as f:
        roi = json.load(f)
    ranges = [tuple(int(v) for v in roi["crop"][axis]) for axis in ("slice", "row", "col")]
    original = tuple(int(n) for n in roi["original_shape"])
    record = {"crop": {axis: list(r) for axis, r in zip(("slice", "row", "col"), ranges)}, "original_shape": list(original)}
    extent = tuple(stop - start for start, stop in ranges)
    if shape == extent:
        return ExportCrop(index=(slice(None),) * 3, offset=ranges[0][0], record=record)
    if shape == original:
        return ExportCrop(index=tuple(slice(*r) for r in ranges), offset=0, record=record)
    raise ValueError(
        f"{roi_path}: crop extent {extent} and original shape {original} both differ from the case image shape "
        f"{shape}. Re-run the lung-ROI preprocessing for this case."
    )


def _normalised_uint8(case: Case, case_dir: pathlib.Path, options: ExportOptions) -> Tuple[np.ndarray, str]:
    """Return the case image as uint8 ``(S, H, W)`` and its intensity kind."""
    volume = case.image
    if volume.intensity_kind == "hu":
        volume = normalize_volume(
            volume, options.normalization, level=options.window_level, width=options.window_width,
            clip_limit=options.clahe_clip_limit, tile_grid=options.clahe_tile_grid,
        )
        if volume.intensity_kind == "hu":
            raise IntensityError(
                f"{case_dir}: HU image with normalisation {options.normalization!r} cannot be stored as 8-bit PNG. "
                "Set cfg.INPUT.CT.NORMALIZATION to 'hu_window' or 'minmax_clahe'."
            )
    if volume.array.dtype != np.uint8:
        raise IntensityError(
            f"{case_dir}: intensity kind {volume.intensity_kind!r} with dtype {volume.array.dtype}; only 'hu' and 8-bit "
            "kinds can be exported. Convert the case with tools/prepare_data.py."
        )
    return volume.array, volume.intensity_kind


def _local_slice_field(values: Optional[list], num_stored: int, crop: ExportCrop, num_block: int) -> Optional[list]:
    """Cut a per-slice ``case.json`` list (length S of the stored array) to the exported block."""
    if values is None or len(values) != num_stored:
        return None
    return list(values[crop.index[0]])[:num_block]


def _write_png_atomic(path: pathlib.Path, image: np.ndarray) -> None:
    tmp_path = path.with_name(f".{path.stem}.tmp.png")
    if not cv2.imwrite(str(tmp_path), image):
        raise OSError(f"Writing {tmp_path} failed; check free disk space and permissions of {path.parent}.")
    os.replace(tmp_path, path)


def _write_case_images(images_root: pathlib.Path, case_id: str, block: np.ndarray, first_index: int) -> None:
    """Write the slices of ``block`` (S, H, W) uint8 as ``<case_id>/<index:04d>.png``, replacing the folder atomically."""
    images_root.mkdir(parents=True, exist_ok=True)
    target = images_root / case_id
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{case_id}.", suffix=".tmp", dir=images_root))
    try:
        for local, plane in enumerate(block):
            _write_png_atomic(staging / f"{first_index + local:04d}.png", np.ascontiguousarray(plane))
        if target.exists():
            old = images_root / f".{case_id}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def export_case(case_dir, output_dir, options: ExportOptions, labeller: Optional[StageLabeller] = None) -> CaseEntry:
    """Write the PNGs of one case folder under ``<output_dir>/images/<case_id>/`` and return its records."""
    case_dir, output_dir = pathlib.Path(case_dir), pathlib.Path(output_dir)
    labeller = labeller or StageLabeller()
    case = load_case(case_dir)
    case_id, meta = case.case_id, case.meta
    crop = resolve_crop(case_dir, case.image.shape)

    image, intensity_kind = _normalised_uint8(case, case_dir, options)
    block = image[crop.index]
    lesion = None if case.lesion is None else case.lesion[crop.index]
    lung = None if case.lung is None else case.lung[crop.index]
    num_block = block.shape[0]
    first = crop.offset + (crop.index[0].start or 0)

    stored_slices = case.image.shape[0]
    labels = _local_slice_field(meta.get("slice_labels"), stored_slices, crop, num_block)
    stored_start = crop.index[0].start or 0
    gaps = [g - stored_start for g in meta.get("slice_gaps", []) if stored_start <= g < stored_start + num_block - 1]
    isolated = bool(meta.get("isolated_slices", False))
    spacing = [round(float(v), 6) for v in case.image.spacing] if meta.get("spacing_known", True) else None
    case_involvement = None
    if case.lesion is not None and case.lung is not None:
        case_involvement = involvement_fraction(int(np.count_nonzero(case.lesion)), int(np.count_nonzero(case.lung)))

    _write_case_images(output_dir / IMAGES_FOLDER, case_id, block, first)

    slices = []
    for local in range(num_block):
        index = first + local
        # NOTE: a slice just outside the ROI crop's slice range is not exported, so the first and
        # last exported slices get a zero neighbour even when the full volume continues.
        neighbours = neighbor_indices(local, num_block, gaps, isolated)
        neighbours = [None if n is None else first + n for n in neighbours]
        components = [] if lesion is None else lesion_components(lesion[local], options.connectivity, options.min_lesion_area)
        lesion_px = None if lesion is None else int(np.count_nonzero(lesion[local]))
        lung_px = None if lung is None else int(np.count_nonzero(lung[local]))

        if labels is not None and labels[local] is not None:
            slice_label = int(labels[local])
        elif lesion_px is not None:
            slice_label = int(lesion_px > 0)
        else:
            slice_label = None
        has_lesion = (lesion_px > 0) if lesion_px is not None else (None if slice_label is None else bool(slice_label))
        slice_involvement = involvement_fraction(lesion_px, lung_px) if lesion_px and lung_px else None
        slice_stage = labeller.slice_stage(case_id, index, meta, has_lesion, slice_involvement, case_involvement)

        annotations = []
        for lesion_index, component in enumerate(components):
            rle = encode_rle(component)
            annotation = {
                "category_id": LESION_CATEGORY["id"],
                "bbox": [float(v) for v in mask_util.toBbox(rle)],
                "segmentation": rle,
                "area": int(component.sum()),
                "iscrowd": 0,
            }
            stage = labeller.lesion_stage(case_id, index, lesion_index, slice_stage)
            if stage is not None:
                annotation["stage"] = int(stage)
            annotations.append(annotation)

        record = {
            "file_name": f"{IMAGES_FOLDER}/{case_id}/{index:04d}.png",
            "height": int(block.shape[1]),
            "width": int(block.shape[2]),
            "case_id": case_id,
            "source": meta.get("source"),
            "slice_index": index,
            "neighbor_indices": neighbours,
            "neighbor_files": [None if n is None else f"{IMAGES_FOLDER}/{case_id}/{n:04d}.png" for n in neighbours],
            "spacing_mm": spacing,
            "slice_label": slice_label,
            "lung_area_px": lung_px,
            "slice_stage": int(slice_stage),
            "intensity_kind": intensity_kind,
            "roi_crop": crop.record,
            "lesion_annotated": lesion is not None,
        }
        slices.append(SliceEntry(image=record, annotations=annotations))
    return CaseEntry(case_id=case_id, meta=meta, slices=slices)


def build_coco(entries: Sequence[CaseEntry], info: Dict[str, Any], ids: Dict[Tuple[str, int], Tuple[int, List[int]]]) -> Dict[str, Any]:
    """Assemble a COCO dict from case entries; ``ids`` maps (case_id, slice_index) -> (image id, annotation ids)."""
    images, annotations = [], []
    for entry in entries:
        for item in entry.slices:
            image_id, annotation_ids = ids[(entry.case_id, item.image["slice_index"])]
            images.append({"id": image_id, **item.image})
            for annotation_id, annotation in zip(annotation_ids, item.annotations):
                annotations.append({"id": annotation_id, "image_id": image_id, **annotation})
    return {"info": info, "licenses": [], "images": images, "annotations": annotations, "categories": [dict(LESION_CATEGORY)]}


def read_splits(cases_root: pathlib.Path) -> Dict[str, List[str]]:
    """Return ``splits.json`` of a cases root, or an empty dict when there is none."""
    path = pathlib.Path(cases_root) / SPLITS_FILE
    if not path.is_file():
        return {}
    with open(path) as f:
        return json.load(f)


def select_case_dirs(cases_root, split: str) -> List[pathlib.Path]:
    """Return the case folders of ``split`` ("all" = every folder with ``case.json``), sorted by name."""
    cases_root = pathlib.Path(cases_root)
    if not cases_root.is_dir():
        raise FileNotFoundError(f"Cases root {cases_root} not found. Create it with tools/prepare_data.py --output-dir {cases_root}.")
    if split not in SPLIT_CHOICES:
        raise ValueError(f"Split {split!r} is invalid; use one of {SPLIT_CHOICES}.")
    if split == "all":
        return sorted(path.parent for path in cases_root.glob(f"*/{CASE_JSON}"))

    splits = read_splits(cases_root)
    if split not in splits:
        raise ValueError(
            f"{cases_root / SPLITS_FILE} has no split {split!r} (found {sorted(splits)}). Run tools/prepare_data.py "
            "to write splits.json, or export with --split all."
        )
    missing = [case_id for case_id in splits[split] if not (cases_root / case_id / CASE_JSON).is_file()]
    if missing:
        raise FileNotFoundError(f"Cases {missing} of split {split!r} are listed in {cases_root / SPLITS_FILE} but have no {CASE_JSON}.")
    return [cases_root / case_id for case_id in sorted(splits[split])]


def matches_standard_dataset(spec: Dict[str, Any], case_id: str, meta: Dict[str, Any], splits: Dict[str, List[str]]) -> bool:
    """Tell whether a case belongs to a standard dataset ``spec`` (keys ``source``, ``split``, ``case_id``)."""
    if "source" in spec and meta.get("source") != spec["source"]:
        return False
    if "case_id" in spec and case_id != spec["case_id"]:
        return False
    if spec.get("split") is not None and case_id not in splits.get(spec["split"], []):
        return False
    return True


def export_cases(
    cases_root,
    output_dir,
    split: str = "all",
    options: Optional[ExportOptions] = None,
    labeller: Optional[StageLabeller] = None,
    progress: bool = False,
) -> Dict[str, Any]:
    """Export the cases of ``split`` to ``output_dir`` and write the split and standard-dataset JSONs.

    Returns a summary: ``{"json_files": [...], "cases": n, "images": n, "annotations": n,
    "negatives": n}``. Image and annotation ids are numbered once per run, so the JSONs written by
    one run agree on ids.
    """
    from tqdm import tqdm

    from covid_d2.data.datasets.covid_lesion import STANDARD_DATASETS

    options = options or ExportOptions()
    cases_root, output_dir = pathlib.Path(cases_root), pathlib.Path(output_dir)
    case_dirs = select_case_dirs(cases_root, split)
    if not case_dirs:
        raise FileNotFoundError(f"No case folders for split {split!r} in {cases_root}.")

    entries = []
    for case_dir in tqdm(case_dirs, desc=f"export {split}", unit="case", disable=not progress):
        entry = export_case(case_dir, output_dir, options, labeller)
        entries.append(entry)
        num_annotations = sum(len(item.annotations) for item in entry.slices)
        logger.info("%s: %d key slices, %d lesion annotations", entry.case_id, len(entry.slices), num_annotations)

    ids, image_id, annotation_id = {}, 0, 0
    for entry in entries:
        for item in entry.slices:
            image_id += 1
            annotation_ids = list(range(annotation_id + 1, annotation_id + 1 + len(item.annotations)))
            annotation_id += len(item.annotations)
            ids[(entry.case_id, item.image["slice_index"])] = (image_id, annotation_ids)

    info = {
        "description": "covid-d2 three-slice lesion export",
        "date_created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cases_root": str(cases_root.resolve()),
        "split": split,
        "options": dataclasses.asdict(options),
        "stage_proxy": bool(labeller and labeller.proxy),
    }
    written = [write_json_atomic(output_dir / f"{split}.json", build_coco(entries, info, ids), indent=None)]
    splits = read_splits(cases_root)
    for name, spec in STANDARD_DATASETS.items():
        members = [entry for entry in entries if matches_standard_dataset(spec, entry.case_id, entry.meta, splits)]
        if members:
            written.append(write_json_atomic(output_dir / f"{name}.json", build_coco(members, {**info, "dataset": name}, ids),
                                             indent=None))

    num_images = sum(len(entry.slices) for entry in entries)
    negatives = sum(1 for entry in entries for item in entry.slices if not item.annotations)
    summary = {
        "json_files": [str(path) for path in written],
        "cases": len(entries),
        "images": num_images,
        "annotations": annotation_id,
        "negatives": negatives,
    }
    logger.info(
        "Exported %d cases, %d key slices (%d without lesion annotations), %d lesions to %s: %s",
        summary["cases"], num_images, negatives, annotation_id, output_dir, ", ".join(p.name for p in written),
    )
    return summary
