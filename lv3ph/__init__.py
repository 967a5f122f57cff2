"""lv3ph: three-phase four-wire unbalanced LV feeders on OpenDSS.

Public API (everything else may move):

* :func:`run_powerflow` -- time-series power flow captured as an ``xarray.Dataset``.
* :func:`unbalance` -- PVUR, LVUR, VUF, neutral-to-earth voltage per bus and step.
* :class:`Engine`, :class:`FeederModel` -- an OpenDSS instance and the feeder as arrays.
"""

import os

# numpy asks for transparent huge pages on large arrays; where the kernel compacts memory
# on demand (THP defrag=madvise) every fresh result array stalls for ~0.1 s per 60 MB.
# lv3ph allocates several such arrays per run, so it opts out unless the user decided.
os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")

__version__ = "0.1.0"

from lv3ph.dss import Engine
from lv3ph.model import FeederModel
from lv3ph.powerflow import RunSpec, run_powerflow

__all__ = ["Engine", "FeederModel", "RunSpec", "__version__", "run_powerflow"]
