"""Markdown results tables (rows = models, columns = metrics) and averaging over runs.

Inputs are Detectron2 evaluation results, such as ``{"bbox": {"AP": 31.2}, "lesion": {...}}``,
or flat ``{metric: value}`` dicts. Nested dicts are flattened to ``"task/metric"`` keys, as
Detectron2's ``flatten_results_dict`` does. A metric that is missing, None, the string "n/a"
or not finite (NaN, inf) is not available: it prints as "n/a" and is left out of averages.
"""

import math
import numbers
from collections import OrderedDict
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from covid_d2.evaluation.lesion_metrics import NOT_AVAILABLE


def flatten_results(results: Mapping[str, Any]) -> "OrderedDict[str, Any]":
    """Flatten nested result dicts into ``{"task/metric": value}``."""
    flat = OrderedDict()
    for key, value in results.items():
        if isinstance(value, Mapping):
            for inner_key, inner_value in flatten_results(value).items():
                flat[f"{key}/{inner_key}"] = inner_value
        else:
            flat[key] = value
    return flat


def is_available(value: Any) -> bool:
    """Return whether ``value`` is a finite number (not None, "n/a", NaN or a non-number)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return math.isfinite(float(value))


def average_results(runs: Iterable[Mapping[str, Any]]) -> "OrderedDict[str, Any]":
    """Average flattened metrics over runs (seeds, folds), each over the runs where it is available.

    A metric available in no run gets ``NOT_AVAILABLE``. Keys keep their first-seen order.
    """
    values: Dict[str, List[float]] = OrderedDict()
    for run in runs:
        for key, value in flatten_results(run).items():
            values.setdefault(key, [])
            if is_available(value):
                values[key].append(float(value))
    return OrderedDict(
        (key, sum(found) / len(found) if found else NOT_AVAILABLE) for key, found in values.items()
    )


def _format_cell(value: Any, digits: int) -> str:
    if is_available(value):
        return f"{float(value):.{digits}f}"
    return NOT_AVAILABLE


def format_results_table(
    rows: Mapping[str, Mapping[str, Any]],
    metrics: Optional[Sequence[str]] = None,
    *,
    digits: int = 3,
    row_header: str = "model",
) -> str:
    """Format a markdown table with one row per model and one column per metric.

    Args:
        rows: model name -> its results (nested Detectron2 results or a flat dict).
        metrics: column keys after flattening (e.g. ``"lesion/lesion_sensitivity"``,
            ``"segm/AP"``); None takes every key, in first-seen order.
        digits: decimals of every number (COCO AP is 0..100, lesion metrics are 0..1).
        row_header: header of the first column.

    Returns:
        The table as a string ending in a newline; unavailable cells read "n/a".
    """
    flat_rows = OrderedDict((str(name), flatten_results(result)) for name, result in rows.items())
    if metrics is None:
        columns: List[str] = []
        for result in flat_rows.values():
            columns.extend(key for key in result if key not in columns)
    else:
        columns = list(metrics)

    lines = [
        "| " + " | ".join([row_header] + columns) + " |",
        "|" + "---|" + "---:|" * len(columns),
    ]
    for name, result in flat_rows.items():
        cells = [_format_cell(result.get(column), digits) for column in columns]
        lines.append("| " + " | ".join([name.replace("|", "\\|")] + cells) + " |")
    return "\n".join(lines) + "\n"
