"""Loss allocation to P2P contracts (exact superposition method and audit comparisons)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import xarray as xr

from lv3ph.allocation.contracts import read_contracts
from lv3ph.allocation.exact import PARTS, exact_allocation, loss_network, prepare

__all__ = ["PARTS", "allocate", "exact_allocation", "loss_network", "prepare", "read_contracts"]


def allocate(
    model_path: str | Path,
    contracts: pd.DataFrame | str | Path,
    *,
    mode: str = "yearly",
    stepsize: str | float = "1m",
    start: int = 1,
    steps: int = 1440,
    vmaxpu: float | None = None,
    pme_ohm: float | None = None,
    pme_customers: list[str] | None = None,
    oversold: str = "error",
    detail: bool = False,
    progress: bool = True,
) -> tuple[xr.Dataset, xr.Dataset]:
    """Solve the feeder and allocate its losses to ``contracts`` with the exact method.

    Returns ``(allocation, powerflow)`` Datasets; see
    :func:`lv3ph.allocation.exact.exact_allocation` for the allocation layout.
    """
    p = prepare(
        model_path,
        contracts,
        mode=mode,
        stepsize=stepsize,
        start=start,
        steps=steps,
        vmaxpu=vmaxpu,
        pme_ohm=pme_ohm,
        pme_customers=pme_customers,
        oversold=oversold,
        progress=progress,
    )
    return exact_allocation(p.model, p.pf, p.vt, p.contracts, p.shares, detail=detail), p.pf
