#!/usr/bin/env python
"""Run the covid-d2 main job on the default input.

At this stage of the project the demo checks the environment and the shared data, and lists
the pipeline stages that are not built yet.
"""

import importlib
import logging
import sys

logger = logging.getLogger("covid_d2.demo")

# Pipeline stages in run order, each with the module that provides it.
PIPELINE_STAGES = [
    ("CT reading and case format", "covid_d2.data.volume"),
    ("lung ROI (U-Net, CRF, preprocessor)", "covid_d2.lung.crf"),
    ("three-slice lesion datasets", "covid_d2.data.three_slice_mapper"),
    ("spatio-temporal detector", "covid_d2.modeling.backbone.spatio_temporal"),
    ("lesion evaluator", "covid_d2.evaluation.lesion_evaluation"),
]


def check_environment() -> bool:
    import detectron2
    import torch

    import covid_d2
    from covid_d2 import compat
    from covid_d2.paths import data_root

    logger.info("torch %s, detectron2 %s, covid_d2 %s", torch.__version__,
                detectron2.__version__, covid_d2.__version__)
    logger.info("detectron2 compiled ops: %s", "present" if compat.has_compiled_ops() else "absent")
    import pydensecrf.densecrf  # noqa: F401
    import pydicom  # noqa: F401
    import libjpeg  # noqa: F401  (pylibjpeg-libjpeg decodes the JPEG-Lossless DICOMs)

    try:
        root = data_root()
    except FileNotFoundError as error:
        logger.error("%s", error)
        return False
    logger.info("data root: %s", root)
    return True


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ok = check_environment()
    missing = []
    for stage, module in PIPELINE_STAGES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError:
            missing.append(stage)
    if missing:
        logger.warning("Pipeline stages not built yet: %s", "; ".join(missing))
        logger.warning("The end-to-end demo runs once they exist; the environment check %s.",
                       "passed" if ok else "failed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
