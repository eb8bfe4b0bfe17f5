"""Slice-stack reader: a folder of 2D PNG/JPG slices (+ mask folders) -> ``CTVolume`` and masks.

The stack's source grid has voxel axes (column, row, file index). Its nominal affine assumes
radiological display (columns run from patient right to patient left); the caller states the
file order along the body axis and whether row 0 is anterior, which fixes the rest.
"""

import csv
import logging
import pathlib
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from covid_d2.data.errors import GeometryError, IntensityError, UnreadableFileError
from covid_d2.data.orientation import check_affine
from covid_d2.data.volume import CTVolume, check_intensities

logger = logging.getLogger(__name__)

PathLike = Union[str, pathlib.Path]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SLICE_ORDERS = ("superior_to_inferior", "inferior_to_superior")


def natural_key(name: str) -> list:
    """Sort key that orders ``"2.png"`` before ``"10.png"``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def read_order_csv(csv_path: PathLike, file_column: str, order_column: str, where: Optional[Dict[str, str]] = None) -> List[str]:
    """Return the file names of ``csv_path`` sorted by the integer ``order_column``.

    ``where`` keeps only rows whose columns equal the given values (e.g. ``{"case": "case_01"}``).
    """
    csv_path = pathlib.Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"Slice order file {csv_path} not found.")
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = {file_column, order_column, *(where or {})} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{csv_path}: columns {sorted(missing)} not found. Check the column names.")
    rows = [row for row in rows if all(row[key] == value for key, value in (where or {}).items())]
    return [row[file_column] for row in sorted(rows, key=lambda row: int(row[order_column]))]


def _read_image(path: pathlib.Path) -> np.ndarray:
    """Return a 2D (H, W) array: grey values, or palette indices for mode "P" images."""
    if not path.is_file():
        raise FileNotFoundError(f"Slice image {path} not found. Every slice needs an image file with that name.")
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("RGB", "RGBA"):
                rgb = np.asarray(image.convert("RGB"))
                if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
                    raise IntensityError(f"{path}: colour image; CT slices must be greyscale.")
                return rgb[..., 0].copy()
            return np.asarray(image).copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise UnreadableFileError(f"Image {path} cannot be read ({error}). It is corrupt or truncated.") from error


def _as_labels(mask: np.ndarray, path: pathlib.Path) -> np.ndarray:
    """Map a {0,255} mask to {0,1}; keep other integer label maps (e.g. palette indices) as they are."""
    values = np.unique(mask)
    if set(values.tolist()) <= {0, 255}:
        return (mask > 0).astype(np.uint8)
    if mask.dtype != np.uint8:
        raise IntensityError(f"Mask {path}: dtype {mask.dtype}; masks must be 8-bit label images.")
    return mask


def _find(folder: pathlib.Path, name: str) -> pathlib.Path:
    """Return ``folder/name``, or the file with the same stem and another image suffix."""
    path = folder / name
    if path.is_file():
        return path
    stem = pathlib.Path(name).stem
    for suffix in IMAGE_SUFFIXES:
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    raise FileNotFoundError(f"Mask {folder / name} not found: every slice image needs a mask with the same name in {folder}.")


def stack_affine(spacing_mm: Sequence[float], slice_order: str, rows_anterior_first: bool) -> np.ndarray:
    """Nominal RAS affine of a stack grid (column, row, file index) with spacing (s, r, c) mm."""
    if slice_order not in SLICE_ORDERS:
        raise ValueError(f"slice_order={slice_order!r}; expected one of {SLICE_ORDERS}.")
    slice_mm, row_mm, column_mm = (float(v) for v in spacing_mm)
    affine = np.eye(4)
    affine[0, 0] = -column_mm  # columns toward patient left (RAS -x)
    affine[1, 1] = -row_mm if rows_anterior_first else row_mm
    affine[2, 2] = -slice_mm if slice_order == "superior_to_inferior" else slice_mm
    return affine


def read_slice_stack(
    folder: PathLike,
    intensity_kind: str,
    file_names: Optional[Sequence[str]] = None,
    mask_folders: Optional[Dict[str, PathLike]] = None,
    slice_order: str = "superior_to_inferior",
    rows_anterior_first: bool = True,
    spacing_mm: Sequence[float] = (1.0, 1.0, 1.0),
    check_values: bool = True,
) -> Tuple[CTVolume, Dict[str, np.ndarray]]:
    """Read 2D slices of ``folder`` as one volume on the canonical ``(S, H, W)`` grid.

    Args:
        folder: folder of 8-bit greyscale slices (PNG, JPG, ...).
        intensity_kind: what the pixel values mean (e.g. ``"minmax_clahe_uint8"``); stored as is.
        file_names: slice files in stack order; default all images in natural name order.
        mask_folders: mask name -> folder holding one mask per slice with the same name (or the
            same stem). {0,255} masks become {0,1}; other 8-bit label maps are kept.
        slice_order: whether the file order runs ``"superior_to_inferior"`` or the reverse.
        rows_anterior_first: false when row 0 is posterior (vertically flipped images).
        spacing_mm: (slice, row, column) spacing in mm, nominal when unknown.

    Returns:
        ``(volume, masks)``: uint8 ``(S, H, W)`` arrays on the same grid; ``volume.meta
        ["source_files"]`` gives each canonical slice's file name.
    """
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Slice folder {folder} not found.")
    if file_names is None:
        file_names = sorted((p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=natural_key)
    if not file_names:
        raise FileNotFoundError(f"No slice images ({', '.join(IMAGE_SUFFIXES)}) found in {folder}.")

    images = [_read_image(folder / name) for name in file_names]
    for name, image in zip(file_names, images):
        if image.ndim != 2 or image.shape != images[0].shape:
            raise GeometryError(
                f"Slice {folder / name}: shape {image.shape} differs from {images[0].shape} of "
                f"{file_names[0]}. All slices of a stack must have the same size."
            )
    data_ijk = np.transpose(np.stack(images), (2, 1, 0))
    if check_values:
        check_intensities(data_ijk, f"slice stack {folder}")

    affine = check_affine(stack_affine(spacing_mm, slice_order, rows_anterior_first), f"slice stack {folder}")
    volume = CTVolume.from_source_grid(data_ijk, affine, intensity_kind, meta={"source_file": folder.name})
    order = volume.source_slice_indices()
    volume.meta["source_files"] = [file_names[k] for k in order]

    masks = {}
    for mask_name, mask_folder in (mask_folders or {}).items():
        mask_folder = pathlib.Path(mask_folder)
        planes = []
        for name, image in zip(file_names, images):
            path = _find(mask_folder, name)
            plane = _as_labels(_read_image(path), path)
            if plane.shape != image.shape:
                raise GeometryError(
                    f"Mask {path}: shape {plane.shape} does not match its image {folder / name} {image.shape}."
                )
            planes.append(plane)
        masks[mask_name] = volume.from_original_grid(np.transpose(np.stack(planes), (2, 1, 0)), str(mask_folder))
    return volume, masks
