"""Converters from the shared public data sets (and user scans) to case folders.

Each data set module exposes ``SOURCE`` (the ``source`` key in ``case.json``),
``list_cases(data_root) -> list of case ids`` and ``convert_case(data_root, case_id) -> Case``.
"""

from covid_d2.data.converters import covid_ct_md, infnet, zenodo
from covid_d2.data.converters.user_scan import convert_scan

CONVERTERS = {module.SOURCE: module for module in (zenodo, covid_ct_md, infnet)}

__all__ = ["CONVERTERS", "convert_scan", "covid_ct_md", "infnet", "zenodo"]
