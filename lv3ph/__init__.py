"""lv3ph: three-phase four-wire unbalanced LV feeders on OpenDSS.

Public API (everything else may move):

* :func:`run_powerflow` -- time-series power flow captured as an ``xarray.Dataset``.
* :func:`open_result` -- a result store (``lv3ph powerflow``, :mod:`lv3ph.stream`) as a lazy
  dask-backed ``xarray.Dataset``.
* :func:`unbalance` -- PVUR, LVUR, VUF, neutral-to-earth voltage per bus and step.
* :class:`Engine`, :class:`FeederModel` -- an OpenDSS instance and the feeder as arrays.
"""

import os

# numpy asks for transparent huge pages on large arrays; where the kernel compacts memory
# on demand (THP defrag=madvise) every fresh result array stalls for ~0.1 s per 60 MB.
# lv3ph allocates several such arrays per run, so it opts out unless the user decided.
os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")


def _keep_freed_arrays() -> None:
    """Let glibc reuse freed large arrays instead of unmapping them.

    glibc hands out blocks above 32 MB with mmap and returns them to the kernel on free, so
    every 1440-step result array is page-faulted in afresh (here ~0.1 s per 100 MB on a VM).
    Raising the mmap and trim thresholds keeps such blocks in the heap for the next run:
    capture of a 1440-step run went from 0.21 to 0.10 s. Set LV3PH_MALLOC_TUNING=0 to opt out;
    no effect outside glibc.
    """
    if os.environ.get("LV3PH_MALLOC_TUNING", "1") == "0":
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: 1 GiB
        libc.mallopt(-1, 1 << 31)  # M_TRIM_THRESHOLD: 2 GiB
    except (OSError, AttributeError):
        pass


_keep_freed_arrays()

__version__ = "0.1.0"

from lv3ph.dss import Engine
from lv3ph.io import open_result
from lv3ph.model import FeederModel
from lv3ph.powerflow import RunSpec, run_powerflow

__all__ = ["Engine", "FeederModel", "RunSpec", "__version__", "open_result", "run_powerflow"]
