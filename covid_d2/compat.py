"""Compatibility shims that let detectron2 0.6 run on current numpy, Pillow and torch.

``import covid_d2`` calls :func:`apply` before any detectron2 module is imported. Each shim is
applied only when the running detectron2 needs it, so a detectron2 built from source (which
has the compiled ``detectron2._C`` and no removed aliases) is left untouched:

- ``detectron2._C`` missing (the pure-Python install from the PyPI sdist): a stand-in module is
  registered whose attributes raise :class:`MissingCompiledOpsError` naming the feature, and
  ``COCOEvaluator`` is switched to the pycocotools evaluator.
- ``np.bool``/``np.int``/``np.float``/``np.str`` removed in numpy 1.24 (``np.bool`` is back in
  numpy 2): added back as the builtins they aliased, only if detectron2's sources use them.
- ``PIL.Image.LINEAR`` removed in Pillow 10: added back as ``Image.BILINEAR`` (the same value),
  only if detectron2's sources use it.

The list of applied shims is logged once at INFO and kept in :data:`APPLIED`.
"""

import importlib.util
import logging
import pathlib
import re
import types
from typing import List

logger = logging.getLogger(__name__)

APPLIED: List[str] = []

_NUMPY_ALIASES = {"bool": bool, "int": int, "float": float, "str": str}

# Feature served by each public name of detectron2._C, named in the error message.
_C_FEATURES = {
    "box_iou_rotated": "rotated boxes (box_iou_rotated)",
    "nms_rotated": "rotated boxes (nms_rotated)",
    "roi_align_rotated_forward": "rotated boxes (ROIAlignRotated)",
    "roi_align_rotated_backward": "rotated boxes (ROIAlignRotated)",
    "deform_conv_forward": "deformable convolution (DeformConv)",
    "deform_conv_backward_input": "deformable convolution (DeformConv)",
    "deform_conv_backward_filter": "deformable convolution (DeformConv)",
    "modulated_deform_conv_forward": "deformable convolution (ModulatedDeformConv)",
    "modulated_deform_conv_backward": "deformable convolution (ModulatedDeformConv)",
    "COCOevalAccumulate": "the fast C++ COCO evaluator",
    "COCOevalEvaluateImages": "the fast C++ COCO evaluator",
    "InstanceAnnotation": "the fast C++ COCO evaluator",
}

_applied_once = False


class MissingCompiledOpsError(RuntimeError):
    """Raised when code needs an op of ``detectron2._C`` and detectron2 was installed without it."""


class _MissingCompiledOps(types.ModuleType):
    """Stand-in for ``detectron2._C`` whose every attribute raises a clear error on use."""

    IS_COVID_D2_STAND_IN = True

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        feature = _C_FEATURES.get(name, f"the compiled op '{name}'")

        def _raise(*args, **kwargs):
            raise MissingCompiledOpsError(
                f"{feature} needs detectron2's compiled extension detectron2._C, which this "
                "detectron2 install does not have (it was installed from the pure-Python "
                "pb1-detectron2 sdist). Build detectron2 from source to use it: "
                "pip install 'git+https://github.com/facebookresearch/detectron2.git' on a "
                "machine with a C++ compiler, or use axis-aligned boxes and regular convolutions."
            )

        return _raise


def _detectron2_root() -> pathlib.Path:
    spec = importlib.util.find_spec("detectron2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "detectron2 is not installed. Run `make setup` (see README) or install detectron2 "
            "from source before importing covid_d2."
        )
    return pathlib.Path(list(spec.submodule_search_locations)[0])


def _detectron2_sources_use(pattern: "re.Pattern[str]") -> bool:
    for path in _detectron2_root().rglob("*.py"):
        try:
            text = path.read_text(encoding="utf-8", errors="ignore")
        except OSError:
            continue
        if pattern.search(text):
            return True
    return False


def _has_compiled_ops() -> bool:
    import detectron2

    if getattr(getattr(detectron2, "_C", None), "IS_COVID_D2_STAND_IN", False):
        return False
    return importlib.util.find_spec("detectron2._C") is not None


def _shim_compiled_ops() -> None:
    if _has_compiled_ops():
        return
    import detectron2

    if not hasattr(detectron2, "_C"):
        # Set as a package attribute only, not in sys.modules: ``from detectron2 import _C``
        # (used by the layers) finds the stand-in, while ``import detectron2._C`` (used by
        # collect_env to report the build) still raises ImportError as for a missing extension.
        detectron2._C = _MissingCompiledOps("detectron2._C")

    from detectron2.evaluation import coco_evaluation

    original_init = coco_evaluation.COCOEvaluator.__init__
    if not getattr(original_init, "_covid_d2_forces_pycocotools", False):

        def init_with_pycocotools(self, *args, **kwargs):
            kwargs["use_fast_impl"] = False
            original_init(self, *args, **kwargs)

        init_with_pycocotools._covid_d2_forces_pycocotools = True
        coco_evaluation.COCOEvaluator.__init__ = init_with_pycocotools
    APPLIED.append("detectron2._C stand-in (rotated boxes and deformable conv raise; "
                   "COCOEvaluator uses pycocotools)")


def _shim_numpy_aliases() -> None:
    import numpy as np

    missing = [name for name in _NUMPY_ALIASES if name not in np.__dict__]
    if not missing:
        return
    pattern = re.compile(r"\bnp\.(%s)\b(?!_)" % "|".join(missing))
    if not _detectron2_sources_use(pattern):
        return
    for name in missing:
        setattr(np, name, _NUMPY_ALIASES[name])
    APPLIED.append("numpy aliases " + ", ".join(f"np.{name}" for name in missing))


def _shim_pil_linear() -> None:
    from PIL import Image

    if hasattr(Image, "LINEAR"):
        return
    if not _detectron2_sources_use(re.compile(r"\bImage\.LINEAR\b")):
        return
    Image.LINEAR = Image.BILINEAR
    APPLIED.append("PIL.Image.LINEAR = Image.BILINEAR")


def apply() -> List[str]:
    """Apply the shims the installed detectron2 needs; return their descriptions.

    Safe to call more than once: shims are applied and logged on the first call only.
    """
    global _applied_once
    if _applied_once:
        return list(APPLIED)
    _applied_once = True
    _shim_numpy_aliases()
    _shim_pil_linear()
    _shim_compiled_ops()
    if APPLIED:
        logger.info("covid_d2 compatibility shims applied: %s", "; ".join(APPLIED))
    else:
        logger.info("covid_d2 compatibility shims: none needed by this detectron2")
    return list(APPLIED)


def has_compiled_ops() -> bool:
    """Return whether the running detectron2 has its real compiled extension."""
    return _has_compiled_ops()
