"""Detectron2 dataset registration of covid-d2; importing it registers the standard names found on disk."""

from covid_d2.data.datasets.covid_lesion import (
    DATASETS_ENV,
    STANDARD_DATASETS,
    datasets_root,
    load_covid_lesion_json,
    register_all_covid_lesion,
    register_covid_lesion_instances,
)

register_all_covid_lesion()

__all__ = [
    "DATASETS_ENV",
    "STANDARD_DATASETS",
    "datasets_root",
    "load_covid_lesion_json",
    "register_all_covid_lesion",
    "register_covid_lesion_instances",
]
