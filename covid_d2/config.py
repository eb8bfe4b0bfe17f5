"""Configuration keys added by covid-d2 to Detectron2's ``CfgNode``."""

from detectron2.config import CfgNode as CN


def add_covid_config(cfg: CN) -> None:
    """Add every covid-d2 config key, with its default, to ``cfg`` in place."""
    cfg.COVID = CN()
    # Root folder of the public data sets; "" means $COVID_D2_DATA or ../shared/data.
    cfg.COVID.DATA_ROOT = ""
