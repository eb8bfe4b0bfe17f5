"""Config set-up shared by the covid-d2 command-line tools."""

import logging

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.engine import default_setup

from covid_d2.config import add_covid_config

logger = logging.getLogger(__name__)


def load_covid_config(config_file: str, opts=()) -> CfgNode:
    """Return a frozen config: Detectron2 defaults, covid-d2 keys, ``config_file``, then ``opts``.

    A CUDA device asked for on a machine without CUDA falls back to the CPU with a warning, so
    the same config runs on a laptop and on a GPU server.
    """
    cfg = get_cfg()
    add_covid_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE is %s but CUDA is not available; using the CPU.",
                       cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def covid_setup(args) -> CfgNode:
    """Build the config from ``default_argument_parser`` arguments and run ``default_setup``."""
    cfg = load_covid_config(args.config_file, args.opts)
    default_setup(cfg, args)
    return cfg
