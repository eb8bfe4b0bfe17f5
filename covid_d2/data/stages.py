"""Disease-stage labels of lesions and key slices: a CSV reader and a proxy labeller.

Stages are integers: 0 healthy, 1 early, 2 advanced, 3 severe (names in :data:`STAGE_NAMES`);
-1 means unlabelled. None of the public data sets used by covid-d2 has clinical stages, so
stages come from a user CSV (:func:`read_stage_csv`) or, when asked for explicitly, from
:func:`proxy_stage_from_involvement`, which is a proxy derived from the lung-involvement
fraction and not a clinical stage.
"""

import csv
import dataclasses
import logging
import pathlib
from typing import Dict, Mapping, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)

STAGE_NAMES = ["healthy", "early", "advanced", "severe"]
UNLABELLED = -1

# Diagnoses (case.json "diagnosis") of cases without disease: every slice of them is stage 0.
HEALTHY_DIAGNOSES = ("normal", "healthy")

DEFAULT_PROXY_THRESHOLDS = (0.05, 0.25)
PROXY_LEVELS = ("case", "slice")


@dataclasses.dataclass
class StageTable:
    """Stage labels read from a CSV, keyed by case, by (case, slice) and by (case, slice, lesion).

    ``slice_index`` is the slice index on the case's grid (0 = most superior slice) and
    ``lesion_index`` the index of a lesion among the annotations of that key slice, in the order
    the exporter writes them (connected components in raster order of their first pixel).
    """

    case: Dict[str, int] = dataclasses.field(default_factory=dict)
    slice: Dict[Tuple[str, int], int] = dataclasses.field(default_factory=dict)
    lesion: Dict[Tuple[str, int, int], int] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.case) + len(self.slice) + len(self.lesion)

    def case_stage(self, case_id: str) -> Optional[int]:
        return self.case.get(case_id)

    def slice_stage(self, case_id: str, slice_index: int) -> Optional[int]:
        return self.slice.get((case_id, int(slice_index)))

    def lesion_stage(self, case_id: str, slice_index: int, lesion_index: int) -> Optional[int]:
        return self.lesion.get((case_id, int(slice_index), int(lesion_index)))


def _parse_int(text: str, column: str, where: str) -> Optional[int]:
    text = (text or "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{where}: {column} {text!r} is not an integer. Write whole numbers or leave it empty.") from None


def read_stage_csv(csv_path) -> StageTable:
    """Read stage labels from ``csv_path``.

    Columns: ``case_id`` and ``stage`` (0..3) are required; ``slice_index`` and ``lesion_index``
    are optional and may be empty. A row with only a case applies to the whole case, a row with a
    slice to that key slice, and a row with a slice and a lesion to one lesion. The most specific
    row wins. Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a missing
    column, a stage outside 0..3, a lesion row without a slice or a key given twice.
    """
    csv_path = pathlib.Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"Stage CSV {csv_path} not found. Check cfg.INPUT.THREE_SLICE.STAGE_CSV or --stage-csv.")
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        columns = set(reader.fieldnames or [])
        missing = {"case_id", "stage"} - columns
        if missing:
            raise ValueError(
                f"{csv_path}: columns {sorted(missing)} not found (found {sorted(columns)}). The header needs "
                "case_id and stage, optionally slice_index and lesion_index."
            )
        rows = list(reader)

    table = StageTable()
    for line, row in enumerate(rows, start=2):
        where = f"{csv_path} line {line}"
        case_id = (row["case_id"] or "").strip()
        if not case_id:
            raise ValueError(f"{where}: case_id is empty.")
        stage = _parse_int(row["stage"], "stage", where)
        if stage is None or not 0 <= stage <= 3:
            raise ValueError(f"{where}: stage {row['stage']!r} is invalid; use 0 (healthy), 1 (early), 2 (advanced) or 3 (severe).")
        slice_index = _parse_int(row.get("slice_index", ""), "slice_index", where)
        lesion_index = _parse_int(row.get("lesion_index", ""), "lesion_index", where)

        if lesion_index is not None and slice_index is None:
            raise ValueError(f"{where}: lesion_index {lesion_index} needs a slice_index, because lesions are numbered per slice.")
        if lesion_index is not None:
            key, target = (case_id, slice_index, lesion_index), table.lesion
        elif slice_index is not None:
            key, target = (case_id, slice_index), table.slice
        else:
            key, target = case_id, table.case
        if key in target:
            raise ValueError(f"{where}: stage for {key} is given twice. Keep one row per case, slice or lesion.")
        target[key] = stage

    logger.info(
        "Read %d case, %d slice and %d lesion stage labels from %s",
        len(table.case), len(table.slice), len(table.lesion), csv_path,
    )
    return table


def involvement_fraction(lesion_px: int, lung_px: int) -> Optional[float]:
    """Return lesion pixels / lung pixels, clipped to 1, or None when there is no lung."""
    if lung_px <= 0:
        return None
    return min(1.0, float(lesion_px) / float(lung_px))


def proxy_stage_from_involvement(fraction: float, thresholds: Sequence[float] = DEFAULT_PROXY_THRESHOLDS) -> int:
    """Return a PROXY stage (1, 2 or 3) from the lung-involvement fraction; it is not a clinical stage.

    ``fraction`` is the share of lung covered by lesion (0..1], ``thresholds`` = ``(t1, t2)``:
    ``fraction < t1`` gives 1 (early), ``t1 <= fraction < t2`` gives 2 (advanced), larger
    fractions give 3 (severe). The default (0.05, 0.25) follows the 5 % and 25 % bins of lobar
    CT severity scores. Disease stage is a clinical judgement (time course, symptoms, findings
    such as crazy paving or fibrosis) that the involvement fraction only correlates with, so
    models trained on these labels learn involvement, not stage.
    """
    low, high = (float(v) for v in thresholds)
    if not 0.0 < low < high <= 1.0:
        raise ValueError(f"Proxy stage thresholds {tuple(thresholds)} are invalid; use two fractions 0 < t1 < t2 <= 1.")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"Involvement fraction {fraction} is outside (0, 1]; a slice or case without lesion has no proxy stage.")
    if fraction < low:
        return 1
    if fraction < high:
        return 2
    return 3


class StageLabeller:
    """Assign slice-level and lesion-level stages to the key slices of one case.

    Order of precedence for a key slice: a CSV slice row; 0 for a slice of a healthy case (case
    diagnosis in :data:`HEALTHY_DIAGNOSES` or case stage 0); -1 for a lesion-free slice of a
    diseased case; the CSV case row, then ``case.json`` ``stage``; the proxy stage when enabled;
    else -1. A lesion takes its CSV lesion row, else the stage of its key slice when that is 1..3,
    else it stays unlabelled (no ``stage`` key in the export).
    """

    def __init__(
        self,
        table: Optional[StageTable] = None,
        proxy: bool = False,
        proxy_thresholds: Sequence[float] = DEFAULT_PROXY_THRESHOLDS,
        proxy_level: str = "case",
    ):
        if proxy_level not in PROXY_LEVELS:
            raise ValueError(f"Proxy stage level {proxy_level!r} is invalid; use one of {PROXY_LEVELS}.")
        self.table = table or StageTable()
        self.proxy = bool(proxy)
        self.proxy_thresholds = tuple(float(v) for v in proxy_thresholds)
        self.proxy_level = proxy_level
        if self.proxy:
            proxy_stage_from_involvement(self.proxy_thresholds[0], self.proxy_thresholds)  # validates the thresholds
            logger.warning(
                "Proxy stages from lung involvement are enabled (thresholds %s, per %s): these labels are a "
                "proxy, not clinical stages.", self.proxy_thresholds, self.proxy_level,
            )

    def case_stage(self, case_id: str, case_meta: Mapping) -> Optional[int]:
        """Return the case's stage from the CSV, else from ``case.json``, else None."""
        stage = self.table.case_stage(case_id)
        if stage is None and case_meta.get("stage") is not None:
            stage = int(case_meta["stage"])
        return stage

    def is_healthy(self, case_id: str, case_meta: Mapping) -> bool:
        diagnosis = str(case_meta.get("diagnosis") or "").lower()
        return diagnosis in HEALTHY_DIAGNOSES or self.case_stage(case_id, case_meta) == 0

    def slice_stage(
        self,
        case_id: str,
        slice_index: int,
        case_meta: Mapping,
        has_lesion: Optional[bool],
        slice_involvement: Optional[float] = None,
        case_involvement: Optional[float] = None,
    ) -> int:
        """Return the stage (0..3 or -1) of one key slice.

        ``has_lesion`` is None when it is unknown (no lesion mask and no slice label);
        ``*_involvement`` are lesion / lung fractions or None when the lung mask is missing.
        """
        stage = self.table.slice_stage(case_id, slice_index)
        if stage is not None:
            return stage
        if self.is_healthy(case_id, case_meta):
            return 0
        if has_lesion is False:
            return UNLABELLED

        stage = self.case_stage(case_id, case_meta)
        if stage is not None:
            return stage
        if self.proxy and has_lesion:
            fraction = case_involvement if self.proxy_level == "case" else slice_involvement
            if fraction:
                return proxy_stage_from_involvement(fraction, self.proxy_thresholds)
        return UNLABELLED

    def lesion_stage(self, case_id: str, slice_index: int, lesion_index: int, slice_stage: int) -> Optional[int]:
        """Return a lesion's stage (0..3) or None when unlabelled."""
        stage = self.table.lesion_stage(case_id, slice_index, lesion_index)
        if stage is not None:
            return stage
        return slice_stage if 1 <= slice_stage <= 3 else None
