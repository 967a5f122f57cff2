"""Customer energy bills with and without a local market.

Sign conventions: ``net_kw`` is drawn power (positive = consumption, negative = export);
bills are in EUR, positive = the customer pays; energies are in kWh and non-negative.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from lv3ph.errors import ContractError
from lv3ph.market.clearing import Tariffs, _inputs
from lv3ph.market.contracts import CONTRACT_COLUMNS

__all__ = ["BILL_COLUMNS", "bills", "traded_per_customer"]

#: Columns of the :func:`bills` table (index: customer).
BILL_COLUMNS: tuple[str, ...] = (
    "import_kwh",
    "export_kwh",
    "bought_kwh",
    "sold_kwh",
    "local_paid_eur",
    "local_earned_eur",
    "bill_market_eur",
    "bill_no_market_eur",
    "savings_eur",
)


def traded_per_customer(
    contracts: pd.DataFrame, customers: Sequence[str], times: Sequence[int] | ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    """Sold and bought power ``(steps, customers)`` in kW summed from a contract table.

    Raises :class:`~lv3ph.errors.ContractError` for a contract naming an unknown customer
    or a time that is not one of ``times`` (the message names the contract).
    """
    names = pd.Index([str(c) for c in customers])
    tidx = pd.Index(np.asarray(times, dtype=np.int64))
    steps, n = len(tidx), len(names)
    sold = np.zeros((steps, n))
    bought = np.zeros((steps, n))
    missing = [c for c in CONTRACT_COLUMNS if c not in contracts.columns]
    if missing:
        raise ContractError(f"contracts: missing column(s) {', '.join(missing)}")
    if contracts.empty:
        return sold, bought
    seller = names.get_indexer(pd.Index(contracts["seller"].astype(str)))
    buyer = names.get_indexer(pd.Index(contracts["buyer"].astype(str)))
    t = tidx.get_indexer(pd.Index(contracts["time"].astype(np.int64)))
    kw = contracts["kw"].to_numpy(dtype=np.float64)
    for arr, label in ((seller, "seller"), (buyer, "buyer")):
        if (arr < 0).any():
            i = int(np.flatnonzero(arr < 0)[0])
            raise ContractError(
                f"contract {contracts['contract'].iloc[i]!r}: unknown {label} {contracts[label].iloc[i]!r}"
            )
    if (t < 0).any():
        i = int(np.flatnonzero(t < 0)[0])
        raise ContractError(
            f"contract {contracts['contract'].iloc[i]!r}: time {contracts['time'].iloc[i]} is not a study step"
        )
    if not np.isfinite(kw).all() or (kw < 0).any():
        i = int(np.flatnonzero(~(np.isfinite(kw) & (kw >= 0)))[0])
        raise ContractError(f"contract {contracts['contract'].iloc[i]!r}: kw {kw[i]} must be finite and >= 0")
    np.add.at(sold, (t, seller), kw)
    np.add.at(bought, (t, buyer), kw)
    return sold, bought


def bills(
    net_kw: ArrayLike,
    customers: Sequence[str],
    times: Sequence[int] | ArrayLike,
    contracts: pd.DataFrame,
    price_eur_kwh: pd.Series,
    tariffs: Tariffs,
    dt_h: float,
) -> pd.DataFrame:
    """Per-customer energy and bills over the study, with and without the local market.

    ``net_kw`` ``(steps, customers)`` kW drawn positive; ``contracts`` in the contract
    format (seller delivers ``kw`` to buyer during step ``time``); ``price_eur_kwh`` the
    local price per step (Series indexed by time, EUR/kWh); ``dt_h`` step length in hours.

    After local trades each customer's residual ``net_kw - bought + sold`` is exchanged
    with the grid: its positive part imported at ``grid_import_eur_kwh``, its negative part
    exported at ``grid_export_eur_kwh``. Buyers pay and sellers earn the step's local price.

    Returns a DataFrame indexed by customer with columns (kWh >= 0; EUR positive = pays):
    ``import_kwh``, ``export_kwh`` (grid, with the market), ``bought_kwh``, ``sold_kwh``
    (local), ``local_paid_eur``, ``local_earned_eur``, ``bill_market_eur`` (grid import
    cost - grid export revenue + local paid - local earned), ``bill_no_market_eur``
    (``import * import price - export * export price`` on ``net_kw`` alone) and
    ``savings_eur = bill_no_market_eur - bill_market_eur``.
    """
    if not (math.isfinite(dt_h) and dt_h > 0.0):
        raise ContractError(f"bills: dt_h must be > 0 h, got {dt_h}")
    net, names, tarr = _inputs(net_kw, customers, times, "bills")
    sold, bought = traded_per_customer(contracts, names, tarr)
    price = pd.Series(price_eur_kwh).reindex(tarr).to_numpy(dtype=np.float64)
    if not np.isfinite(price).all():
        t = tarr[int(np.flatnonzero(~np.isfinite(price))[0])]
        raise ContractError(f"bills: no local price for step {t}")
    imp, exp = tariffs.grid_import_eur_kwh, tariffs.grid_export_eur_kwh
    residual = net - bought + sold
    grid_in = np.maximum(residual, 0.0).sum(axis=0) * dt_h
    grid_out = np.maximum(-residual, 0.0).sum(axis=0) * dt_h
    paid = (bought * price[:, None]).sum(axis=0) * dt_h
    earned = (sold * price[:, None]).sum(axis=0) * dt_h
    bill_market = grid_in * imp - grid_out * exp + paid - earned
    base_in = np.maximum(net, 0.0).sum(axis=0) * dt_h
    base_out = np.maximum(-net, 0.0).sum(axis=0) * dt_h
    bill_base = base_in * imp - base_out * exp
    out = pd.DataFrame(
        {
            "import_kwh": grid_in,
            "export_kwh": grid_out,
            "bought_kwh": bought.sum(axis=0) * dt_h,
            "sold_kwh": sold.sum(axis=0) * dt_h,
            "local_paid_eur": paid,
            "local_earned_eur": earned,
            "bill_market_eur": bill_market,
            "bill_no_market_eur": bill_base,
            "savings_eur": bill_base - bill_market,
        },
        index=pd.Index(names, name="customer"),
    )
    return out
