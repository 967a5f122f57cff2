"""Loss allocation to P2P contracts (exact superposition method and audit comparisons)."""

from __future__ import annotations

from pathlib import Path
from typing import Unpack

import pandas as pd
import xarray as xr

from lv3ph.allocation.contracts import read_contracts
from lv3ph.allocation.exact import PARTS, RunOptions, exact_allocation, loss_network, prepare

__all__ = ["PARTS", "RunOptions", "allocate", "exact_allocation", "loss_network", "prepare", "read_contracts"]


def allocate(
    model_path: str | Path,
    contracts: pd.DataFrame | str | Path,
    *,
    detail: bool = False,
    **options: Unpack[RunOptions],
) -> tuple[xr.Dataset, xr.Dataset]:
    """Solve the feeder and allocate its losses to ``contracts`` with the exact method.

    ``options``: how to solve (:class:`~lv3ph.allocation.exact.RunOptions`); ``detail``:
    also the per-branch, per-conductor losses. Returns ``(allocation, powerflow)``
    Datasets; see :func:`lv3ph.allocation.exact.exact_allocation` for the layout.
    """
    p = prepare(model_path, contracts, **options)
    return exact_allocation(p.model, p.pf, p.vt, p.contracts, p.shares, detail=detail), p.pf
