"""P2P contracts: the contract table format, building it from trade matrices, reading CSV.

Contract format (a pandas DataFrame with exactly these columns):

============  =====  ==========================================================
column        dtype  meaning
============  =====  ==========================================================
``contract``  str    contract id (market results use ``"t{time}-{seller}-{buyer}"``)
``time``      int    step index (1-based)
``seller``    str    customer (OpenDSS Load name, lower case) delivering power
``buyer``     str    customer receiving power
``kw``        float  active power delivered during the step, kW, >= 0
============  =====  ==========================================================
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from lv3ph.allocation.contracts import CONTRACT_COLUMNS, empty_contracts
from lv3ph.allocation.contracts import read_contracts as contracts_from_file

__all__ = [
    "CONTRACT_COLUMNS",
    "contracts_from_file",
    "contracts_from_matrix",
    "empty_contracts",
]


def contracts_from_matrix(
    trade_kw: NDArray[np.float64],
    customers: Sequence[str],
    times: Sequence[int] | NDArray[np.int64],
) -> pd.DataFrame:
    """Contracts from a trade tensor ``trade_kw[step, seller, buyer]`` (kW).

    One row per entry > 0, ordered by (time, seller, buyer) position; ids
    ``"t{time}-{seller}-{buyer}"``.
    """
    names = np.asarray(list(customers), dtype=object)
    tarr = np.asarray(times, dtype=np.int64)
    ti, si, bi = np.nonzero(trade_kw > 0.0)
    if ti.size == 0:
        return empty_contracts()
    n = len(names)
    # Build ids from two small string tables (time part, pair part) -> one concatenation
    # per contract instead of one f-string each.
    time_part = np.array([f"t{t}" for t in tarr], dtype=object)
    pair_part = np.array([f"-{s}-{b}" for s in names for b in names], dtype=object)
    ids = time_part[ti] + pair_part[si * n + bi]
    return pd.DataFrame(
        {
            "contract": ids,
            "time": tarr[ti],
            "seller": names[si],
            "buyer": names[bi],
            "kw": trade_kw[ti, si, bi].astype(np.float64),
        }
    )
