"""Loss allocation to P2P contracts (exact superposition method and audit comparisons)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import xarray as xr

from lv3ph.allocation.contracts import assert_valid_contracts, contract_shares, read_contracts
from lv3ph.allocation.exact import PARTS, exact_allocation, loss_network
from lv3ph.powerflow import RunSpec, capture, customer_ports, open_feeder, solve_raw

__all__ = ["PARTS", "allocate", "exact_allocation", "loss_network", "read_contracts"]


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
    table = contracts if isinstance(contracts, pd.DataFrame) else read_contracts(contracts)
    spec = RunSpec.parse(mode, stepsize, start, steps)
    engine, model = open_feeder(model_path, vmaxpu=vmaxpu, pme_ohm=pme_ohm, pme_customers=pme_customers)
    names = customer_ports(model).names
    times = list(range(spec.start, spec.start + spec.steps))
    assert_valid_contracts(table, names, times)
    vt, measured = solve_raw(engine, model, spec, progress=progress)
    pf = capture(model, spec, vt, measured)
    shares = contract_shares(table, pf.customer_p_kw.values, names, pf.time.values, oversold=oversold)
    return exact_allocation(model, pf, vt, table, shares, detail=detail), pf
