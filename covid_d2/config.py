"""Configuration keys added by covid-d2 to Detectron2's ``CfgNode``.

Each section has its own function so that the keys of one stage sit together; every key has a
comment saying what it sets and in what unit.
"""

from detectron2.config import CfgNode as CN


def add_covid_config(cfg: CN) -> None:
    """Add every covid-d2 config key, with its default, to ``cfg`` in place."""
    cfg.COVID = CN()
    # Root folder of the public data sets; "" means $COVID_D2_DATA or ../shared/data.
    cfg.COVID.DATA_ROOT = ""
    _add_input_config(cfg)
    _add_lung_config(cfg)
    _add_dataset_config(cfg)
    _add_model_config(cfg)
    _add_evaluation_config(cfg)


def _add_input_config(cfg: CN) -> None:
    """CT reading and intensity normalisation (cfg.INPUT.CT)."""
    cfg.INPUT.CT = CN()


def _add_lung_config(cfg: CN) -> None:
    """Lung U-Net, view fusion, dense CRF and ROI preprocessing (cfg.LUNG)."""
    cfg.LUNG = CN()


def _add_dataset_config(cfg: CN) -> None:
    """Three-slice lesion datasets and their mapper (cfg.INPUT.THREE_SLICE)."""
    cfg.INPUT.THREE_SLICE = CN()


def _add_model_config(cfg: CN) -> None:
    """Spatio-temporal backbone, resolver, tiny U-Net mask head and baselines (cfg.MODEL.*)."""


def _add_evaluation_config(cfg: CN) -> None:
    """Lesion evaluator settings (cfg.TEST.LESION)."""
    cfg.TEST.LESION = CN()
