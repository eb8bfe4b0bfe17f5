"""Where covid-d2 finds the public data sets."""

import os
import pathlib

DATA_ROOT_ENV = "COVID_D2_DATA"

# A source checkout sits beside the shared data folder: <parent>/<checkout>/covid_d2/paths.py
# and <parent>/shared/data.
_CHECKOUT_ROOT = pathlib.Path(__file__).resolve().parent.parent


def data_root(configured: str = "") -> pathlib.Path:
    """Return the data root: ``configured`` if set, else ``$COVID_D2_DATA``, else ``../shared/data``.

    The default is relative to the source checkout. Raises ``FileNotFoundError`` naming the
    folder that was tried and how to set it, when it does not exist.
    """
    if configured:
        root, source = pathlib.Path(configured), "the config key COVID.DATA_ROOT"
    elif os.environ.get(DATA_ROOT_ENV):
        root, source = pathlib.Path(os.environ[DATA_ROOT_ENV]), f"${DATA_ROOT_ENV}"
    else:
        root, source = _CHECKOUT_ROOT.parent / "shared" / "data", "the default beside the checkout"
    if not root.is_dir():
        raise FileNotFoundError(
            f"Data root {root} (from {source}) does not exist. Set {DATA_ROOT_ENV} to the folder "
            "that holds covid19_ct_seg_zenodo_kaggle_png256/, covid_ct_md_sample/ and "
            "covid_semiseg_infnet/."
        )
    return root
