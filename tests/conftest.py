import logging

import pytest
import torch

import covid_d2  # noqa: F401  (applies the detectron2 0.6 shims before any test imports it)
from covid_d2.paths import data_root

torch.set_num_threads(2)
logging.getLogger("covid_d2").setLevel(logging.INFO)


@pytest.fixture(scope="session")
def shared_data():
    """Root of the shared public data; the tests need it and fail when it is missing."""
    return data_root()


@pytest.fixture(scope="session")
def zenodo_root(shared_data):
    return shared_data / "covid19_ct_seg_zenodo_kaggle_png256"


@pytest.fixture(scope="session")
def dicom_root(shared_data):
    return shared_data / "covid_ct_md_sample"


@pytest.fixture(scope="session")
def infnet_root(shared_data):
    return shared_data / "covid_semiseg_infnet"
