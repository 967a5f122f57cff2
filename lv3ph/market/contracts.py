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

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from lv3ph.errors import ContractError

__all__ = [
    "CONTRACT_COLUMNS",
    "contracts_from_file",
    "contracts_from_matrix",
    "empty_contracts",
]

#: The contract table's columns, in order.
CONTRACT_COLUMNS: Final[tuple[str, ...]] = ("contract", "time", "seller", "buyer", "kw")


def empty_contracts() -> pd.DataFrame:
    """A contract table with no rows and the right dtypes."""
    return pd.DataFrame(
        {
            "contract": pd.Series([], dtype=object),
            "time": pd.Series([], dtype=np.int64),
            "seller": pd.Series([], dtype=object),
            "buyer": pd.Series([], dtype=object),
            "kw": pd.Series([], dtype=np.float64),
        }
    )


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


def contracts_from_file(path: str | Path) -> pd.DataFrame:
    """Read a contract CSV (exactly the columns of :data:`CONTRACT_COLUMNS`, any order).

    Parses and type-checks only (customer names and times are checked against a feeder /
    study elsewhere): ``time`` must be an integer >= 1, ``kw`` a number >= 0, ``seller``
    and ``buyer`` non-empty and different, ``contract`` non-empty. Names are stripped and
    lower-cased (OpenDSS names are case-insensitive). Raises
    :class:`~lv3ph.errors.ContractError` naming the file, the line (1-based, the header is
    line 1) and the problem. Returns the table in :data:`CONTRACT_COLUMNS` order.
    """
    where = f"contracts file {path}"
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except FileNotFoundError as exc:
        raise ContractError(f"{where}: file not found") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ContractError(f"{where}: not a readable CSV ({exc})") from exc
    raw.columns = [str(c).strip().lower() for c in raw.columns]
    missing = [c for c in CONTRACT_COLUMNS if c not in raw.columns]
    if missing:
        raise ContractError(f"{where}: line 1: missing column(s) {', '.join(missing)}")
    extra = [c for c in raw.columns if c not in CONTRACT_COLUMNS]
    if extra or len(raw.columns) != len(CONTRACT_COLUMNS):
        raise ContractError(
            f"{where}: line 1: unexpected or duplicate column(s) {', '.join(extra) or '(duplicate)'}; "
            f"expected exactly {', '.join(CONTRACT_COLUMNS)}"
        )
    if raw.empty:
        return empty_contracts()
    text = {c: raw[c].astype(str).str.strip() for c in CONTRACT_COLUMNS}

    def fail(
        mask: NDArray[np.bool_] | pd.Series, problem: str | Callable[[int], str]
    ) -> None:
        bad = np.flatnonzero(np.asarray(mask))
        if bad.size:
            i = int(bad[0])
            more = f" (and {bad.size - 1} more row(s))" if bad.size > 1 else ""
            raise ContractError(
                f"{where}: line {i + 2}: {problem(i) if callable(problem) else problem}{more}"
            )

    for col in ("contract", "seller", "buyer"):
        fail(text[col] == "", f"empty {col}")
    kw_text = text["kw"]
    kw = pd.to_numeric(kw_text, errors="coerce").to_numpy(dtype=np.float64)
    is_nan_text = (
        kw_text.str.lower().isin(["nan", "", "na", "n/a", "null", "none"]).to_numpy()
    )
    fail(is_nan_text, "kw is NaN/empty")
    fail(np.isnan(kw), lambda i: f"kw {kw_text.iloc[i]!r} is not a number")
    fail(~np.isfinite(kw), lambda i: f"kw {kw_text.iloc[i]!r} is not finite")
    fail(
        kw < 0.0,
        lambda i: (
            f"kw {kw[i]} is negative (contracts deliver kw >= 0 from seller to buyer)"
        ),
    )
    t_text = text["time"]
    tnum = pd.to_numeric(t_text, errors="coerce").to_numpy(dtype=np.float64)
    fail(
        ~np.isfinite(tnum) | (tnum != np.round(tnum)),
        lambda i: f"time {t_text.iloc[i]!r} is not an integer step",
    )
    fail(
        tnum < 1,
        lambda i: f"time {int(tnum[i])} is not a step index (steps start at 1)",
    )
    seller = text["seller"].str.lower()
    buyer = text["buyer"].str.lower()
    fail(
        seller == buyer,
        lambda i: f"seller and buyer are the same customer {seller.iloc[i]!r}",
    )
    return pd.DataFrame(
        {
            "contract": text["contract"].to_numpy(dtype=object),
            "time": tnum.astype(np.int64),
            "seller": seller.to_numpy(dtype=object),
            "buyer": buyer.to_numpy(dtype=object),
            "kw": kw,
        }
    )
