"""``CTVolume`` (a CT array with geometry and intensity meaning), ``Case`` and the case folder format.

Axis convention: arrays are ``(S, H, W)`` (slices x rows x columns). Slice 0 is the most superior
slice, rows run anterior -> posterior and columns run from patient right to patient left, so the
(column, row, slice) voxel axes point to nibabel axis codes ``("L", "P", "I")``. Spacing is in mm
as ``(slice, row, column)``.

A case folder ``<cases_root>/<case_id>/`` contains ``image.nii.gz`` (the ``(S, H, W)`` array stored
with its affine), optional ``lesion.nii.gz`` and ``lung.nii.gz`` (uint8 {0, 1}), optional extra
masks ``<name>.nii.gz`` listed in ``case.json`` under ``extra_masks``, and ``case.json``.
"""

import dataclasses
import json
import logging
import os
import pathlib
import shutil
import tempfile
from typing import Any, Dict, Optional, Tuple

import numpy as np

from covid_d2.data.errors import GeometryError, IntensityError
from covid_d2.data.orientation import spacing_from_affine, to_canonical, to_original

logger = logging.getLogger(__name__)

# Intensity kinds in use: Hounsfield units, 8-bit lung-window images (Inf-Net JPGs and
# covid_d2.data.intensity.window_hu output), per-slice min-max + CLAHE 8-bit images (the Zenodo
# PNGs and covid_d2.data.intensity.minmax_clahe output).
INTENSITY_KINDS = ("hu", "uint8_windowed", "minmax_clahe_uint8")

IMAGE_FILE = "image.nii.gz"
LESION_FILE = "lesion.nii.gz"
LUNG_FILE = "lung.nii.gz"
CASE_JSON = "case.json"


@dataclasses.dataclass
class CTVolume:
    """A CT volume on the canonical ``(S, H, W)`` grid with what is needed to map back to its source.

    Attributes:
        array: ``(S, H, W)`` voxel values, float32 for ``"hu"`` and uint8 for the 8-bit kinds.
        affine: (4, 4) map from the stored voxel index ``(s, r, c, 1)`` to world RAS mm.
        intensity_kind: one of :data:`INTENSITY_KINDS` (or a caller-defined name).
        original_affine: (4, 4) map from the source file's voxel index ``(i, j, k, 1)`` to RAS mm.
        original_shape: shape ``(i, j, k)`` of the source voxel grid.
        reorientation: nibabel ``ornt`` (3, 2) from the source axes to the canonical
            ``(column, row, slice)`` axes; :meth:`to_original_grid` inverts it.
        meta: source basenames and non-identifying facts only (never patient tags or UIDs).
    """

    array: np.ndarray
    affine: np.ndarray
    intensity_kind: str
    original_affine: np.ndarray
    original_shape: Tuple[int, int, int]
    reorientation: np.ndarray
    meta: Dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_source_grid(
        cls, data_ijk: np.ndarray, affine: np.ndarray, intensity_kind: str, meta: Optional[dict] = None
    ) -> "CTVolume":
        """Build a volume from a source-grid array ``(i, j, k)`` and its affine (RAS mm)."""
        array, affine_shw, ornt = to_canonical(data_ijk, affine)
        return cls(
            array=array,
            affine=affine_shw,
            intensity_kind=intensity_kind,
            original_affine=np.asarray(affine, dtype=np.float64),
            original_shape=tuple(int(n) for n in data_ijk.shape),
            reorientation=ornt,
            meta=dict(meta or {}),
        )

    @property
    def shape(self) -> Tuple[int, int, int]:
        """``(S, H, W)``."""
        return tuple(int(n) for n in self.array.shape)

    @property
    def spacing(self) -> Tuple[float, float, float]:
        """Voxel spacing in mm as ``(slice, row, column)``."""
        return spacing_from_affine(self.affine)

    def source_slice_indices(self) -> Optional[np.ndarray]:
        """Return, per canonical slice, its index along the source slice axis ``k``.

        None when the source slice axis is not the canonical slice axis (e.g. a sagittal scan).
        """
        target_axis, flip = self.reorientation[2]
        if int(target_axis) != 2:
            return None
        indices = np.arange(self.original_shape[2])
        return indices[::-1].copy() if flip < 0 else indices

    def to_original_grid(self, array_shw: np.ndarray) -> np.ndarray:
        """Map an ``(S, H, W)`` array (e.g. a mask) onto the source grid ``(i, j, k)``."""
        self.check_same_shape(array_shw, "array")
        return to_original(array_shw, self.reorientation)

    def from_original_grid(self, data_ijk: np.ndarray, source: str = "array") -> np.ndarray:
        """Map a source-grid array ``(i, j, k)`` (e.g. a mask file) onto the ``(S, H, W)`` grid."""
        if tuple(data_ijk.shape) != tuple(self.original_shape):
            raise GeometryError(
                f"{source}: shape {tuple(data_ijk.shape)} does not match the image's source grid "
                f"{tuple(self.original_shape)}. Use a mask made on the same scan."
            )
        array, _, _ = to_canonical(data_ijk, self.original_affine)
        return array

    def check_same_shape(self, array_shw: np.ndarray, source: str) -> None:
        """Raise ``GeometryError`` unless ``array_shw`` has this volume's ``(S, H, W)`` shape."""
        if tuple(array_shw.shape) != self.shape:
            raise GeometryError(
                f"{source}: shape {tuple(array_shw.shape)} does not match the image shape "
                f"{self.shape} (S, H, W). Use a mask made on the same scan and grid."
            )

    def with_array(self, array_shw: np.ndarray, intensity_kind: str) -> "CTVolume":
        """Return a copy with new voxel values of the same shape (e.g. after normalisation)."""
        self.check_same_shape(array_shw, "new array")
        return dataclasses.replace(self, array=array_shw, intensity_kind=intensity_kind, meta=dict(self.meta))


@dataclasses.dataclass
class Case:
    """One case: the image, optional ``(S, H, W)`` uint8 masks and the ``case.json`` fields.

    ``meta`` holds the ``case.json`` fields (``case_id``, ``source``, ``diagnosis``,
    ``slice_gaps``, ``slice_labels``, ...); :func:`save_case` fills in the geometry fields.
    ``extra_masks`` maps a file stem (e.g. ``"lesion_multiclass"``) to an ``(S, H, W)`` uint8
    label map.
    """

    image: CTVolume
    lesion: Optional[np.ndarray] = None
    lung: Optional[np.ndarray] = None
    meta: Dict[str, Any] = dataclasses.field(default_factory=dict)
    extra_masks: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def case_id(self) -> str:
        return self.meta["case_id"]


def check_intensities(array: np.ndarray, source: str) -> None:
    """Raise ``IntensityError`` when ``array`` contains NaN/inf or is constant."""
    if array.size == 0:
        raise IntensityError(f"{source}: the volume is empty (shape {array.shape}).")
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        count = int(np.count_nonzero(~np.isfinite(array)))
        raise IntensityError(
            f"{source}: {count} voxels are NaN or infinite. Re-export the scan; covid-d2 does not "
            "guess missing intensities."
        )
    if array.min() == array.max():
        raise IntensityError(
            f"{source}: the volume is constant (every voxel is {array.flat[0]!r}), so it contains "
            "no image. Check that the right file or series was exported."
        )


def _case_json(case: Case) -> Dict[str, Any]:
    volume = case.image
    record = {
        "case_id": case.case_id,
        "source": case.meta.get("source", "user"),
        "intensity_kind": volume.intensity_kind,
        "shape": list(volume.shape),
        "spacing_mm": [round(v, 6) for v in volume.spacing],
        "spacing_known": bool(case.meta.get("spacing_known", True)),
        "slice_gaps": [int(i) for i in case.meta.get("slice_gaps", [])],
        "isolated_slices": bool(case.meta.get("isolated_slices", False)),
        "slice_labels": case.meta.get("slice_labels"),
        "diagnosis": case.meta.get("diagnosis"),
        "source_files": case.meta.get("source_files", []),
    }
    for key, value in case.meta.items():
        record.setdefault(key, value)

    record["affine"] = np.asarray(volume.affine).tolist()
    record["original_affine"] = np.asarray(volume.original_affine).tolist()
    record["original_shape"] = list(volume.original_shape)
    record["reorientation"] = np.asarray(volume.reorientation).tolist()
    record["extra_masks"] = sorted(case.extra_masks)
    return record


def save_case(case: Case, case_dir, overwrite: bool = False) -> pathlib.Path:
    """Write ``case`` as a case folder, atomically.

    The files are written to a temporary folder beside ``case_dir`` which is then renamed, so an
    interrupted write leaves no partial case. Raises ``FileExistsError`` when ``case_dir`` exists
    and ``overwrite`` is false, and ``GeometryError`` when a mask shape differs from the image.
    """
    from covid_d2.data.writers import write_volume_nifti

    case_dir = pathlib.Path(case_dir)
    if case_dir.exists() and not overwrite:
        raise FileExistsError(f"Case folder {case_dir} already exists; pass overwrite=True to replace it.")
    volume = case.image
    masks = {"lesion": case.lesion, "lung": case.lung, **case.extra_masks}
    for name, mask in masks.items():
        if mask is not None:
            volume.check_same_shape(mask, f"{case.case_id} {name} mask")

    case_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = pathlib.Path(tempfile.mkdtemp(prefix=f".{case_dir.name}.", suffix=".tmp", dir=case_dir.parent))
    try:
        write_volume_nifti(volume.array, volume.affine, tmp_dir / IMAGE_FILE)
        for name, mask in masks.items():
            if mask is not None:
                write_volume_nifti(np.asarray(mask, dtype=np.uint8), volume.affine, tmp_dir / f"{name}.nii.gz")
        with open(tmp_dir / CASE_JSON, "w") as f:
            json.dump(_case_json(case), f, indent=1)

        if case_dir.exists():
            old_dir = case_dir.with_name(f".{case_dir.name}.old")
            shutil.rmtree(old_dir, ignore_errors=True)
            os.replace(case_dir, old_dir)
            os.replace(tmp_dir, case_dir)
            shutil.rmtree(old_dir)
        else:
            os.replace(tmp_dir, case_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return case_dir


def load_case(case_dir) -> Case:
    """Read a case folder written by :func:`save_case`.

    Returns a ``Case`` whose ``image`` keeps the source geometry recorded in ``case.json``
    (``original_affine``, ``original_shape``, ``reorientation``) and whose masks are
    ``(S, H, W)`` uint8 arrays or None. Raises ``FileNotFoundError`` for a missing folder or file
    and ``GeometryError`` when an image or mask disagrees with ``case.json``.
    """
    from covid_d2.data.nifti import read_mask_nifti, read_nifti

    case_dir = pathlib.Path(case_dir)
    json_path = case_dir / CASE_JSON
    if not json_path.is_file():
        raise FileNotFoundError(
            f"{json_path} not found: {case_dir} is not a case folder. Create it with "
            "tools/prepare_data.py or covid_d2.data.save_case."
        )
    with open(json_path) as f:
        meta = json.load(f)

    stored = read_nifti(case_dir / IMAGE_FILE, intensity_kind=meta["intensity_kind"], check_values=False)
    if list(stored.shape) != list(meta["shape"]):
        raise GeometryError(
            f"{case_dir / IMAGE_FILE}: shape {stored.shape} differs from {meta['shape']} in {json_path}. "
            "Re-create the case with tools/prepare_data.py --overwrite."
        )
    image = dataclasses.replace(
        stored,
        original_affine=np.asarray(meta.get("original_affine", stored.affine), dtype=np.float64),
        original_shape=tuple(meta.get("original_shape", stored.original_shape)),
        reorientation=np.asarray(meta.get("reorientation", stored.reorientation), dtype=np.float64),
        meta={"source_file": IMAGE_FILE, "case_id": meta["case_id"]},
    )

    def read_optional(name: str) -> Optional[np.ndarray]:
        path = case_dir / f"{name}.nii.gz"
        return read_mask_nifti(path, stored) if path.is_file() else None

    extra = {name: read_optional(name) for name in meta.get("extra_masks", [])}
    missing = [name for name, mask in extra.items() if mask is None]
    if missing:
        raise FileNotFoundError(f"{case_dir}: masks {missing} listed in {json_path} are missing.")
    return Case(image=image, lesion=read_optional("lesion"), lung=read_optional("lung"), meta=meta, extra_masks=extra)
