"""covid-d2: COVID-19 lesion detection and segmentation in chest CT, built on Detectron2.

Importing this package applies the detectron2 0.6 compatibility shims (see
:mod:`covid_d2.compat`), registers every covid-d2 component in Detectron2's registries and
exposes :func:`add_covid_config`.
"""

import warnings

# torch 2.14 deprecates torch.jit.script, which detectron2 0.6 calls at import time. Users
# cannot act on that warning, so it is hidden.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

from covid_d2 import compat as _compat  # noqa: E402

_compat.apply()

from covid_d2.config import add_covid_config  # noqa: E402

# Modules imported below register components in Detectron2's registries on import.
from covid_d2 import modeling  # noqa: E402,F401  (spatio-temporal backbone, resolver, heads)
import covid_d2.evaluation  # noqa: E402,F401  (no registry; exposes the evaluators)
from covid_d2 import lung  # noqa: E402,F401  (LungUNet)
import covid_d2.data.datasets  # noqa: E402,F401  (standard lesion datasets found under $COVID_D2_DATASETS)

__all__ = ["add_covid_config"]
__version__ = "0.1.0"
