"""P2P contracts: reading, validation and the split of customers' currents into contracts.

A contract row ``(contract, time, seller, buyer, kw)`` says that during step ``time`` the
seller customer delivers ``kw`` (kW, >= 0) of active power to the buyer customer.
Customers are Load names (case-insensitive). The same contract id may appear at many
steps (a standing agreement); per-branch detail is summed per id.

Validation follows power-grid-model's habit: every problem is collected and reported at
once (:class:`~lv3ph.errors.ContractError` lists them, one line each, naming the row),
then the calculation trusts its input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lv3ph.errors import ContractError

COLUMNS = ("contract", "time", "seller", "buyer", "kw")
OVERSOLD_POLICIES = ("error", "scale")
#: Relative and absolute slack (kW) on a seller's export / buyer's import: the measured
#: power differs from the set-point by OpenDSS's convergence tolerance.
TOLERANCE_REL = 1e-3
TOLERANCE_KW = 1e-3


def read_contracts(path: str | Path) -> pd.DataFrame:
    """Read a contract CSV with exactly the columns ``contract,time,seller,buyer,kw``.

    Rows are numbered as in the file (header = line 1). Raises :class:`ContractError`
    for a missing file, wrong columns, or values that are not numbers.
    """
    p = Path(path)
    if not p.is_file():
        raise ContractError(f"contract file not found: {p}")
    try:
        df = pd.read_csv(p, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ContractError(f"{p}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    cols = [c.strip() for c in df.columns]
    if tuple(cols) != COLUMNS:
        raise ContractError(f"{p}: columns must be exactly {','.join(COLUMNS)}; found {','.join(cols)}")
    df.columns = list(COLUMNS)
    errors = []
    out = pd.DataFrame({"contract": df.contract.str.strip(), "seller": df.seller.str.strip().str.lower(), "buyer": df.buyer.str.strip().str.lower()})
    time = pd.to_numeric(df.time, errors="coerce")
    kw = pd.to_numeric(df.kw.replace({"": "nan"}), errors="coerce")
    for i in np.nonzero((time.isna() | (time != np.floor(time))).to_numpy())[0]:
        errors.append(f"{p} line {i + 2}: time {df.time.iloc[i]!r} is not a whole step number")
    for i in np.nonzero(kw.isna().to_numpy() & (df.kw.str.strip().str.lower() != "nan").to_numpy())[0]:
        errors.append(f"{p} line {i + 2}: kw {df.kw.iloc[i]!r} is not a number")
    if errors:
        raise ContractError("; ".join(errors[:20]) + (f"; ... {len(errors) - 20} more" if len(errors) > 20 else ""))
    out.insert(1, "time", time.astype("int64"))
    out["kw"] = kw.astype(float)
    out.attrs["source"] = str(p)
    out.attrs["first_line"] = 2
    return out


def validate_contracts(
    contracts: pd.DataFrame, customers: Sequence[str], times: Sequence[int]
) -> list[str]:
    """Every structural problem of ``contracts`` as one message each (empty = valid).

    Checks: unknown seller/buyer, seller == buyer, kW NaN or negative, time outside the
    run, empty contract id. Rows are named by file line when read from a file.
    """
    known = {c.lower() for c in customers}
    tset = set(int(t) for t in times)
    src = contracts.attrs.get("source", "contracts")
    first = int(contracts.attrs.get("first_line", 2))
    label = "line" if "source" in contracts.attrs else "row"
    errors = []
    for i, row in enumerate(contracts.itertuples(index=False)):
        where = f"{src} {label} {i + first} (contract {row.contract})"
        if not str(row.contract):
            errors.append(f"{where}: empty contract id")
        for role in ("seller", "buyer"):
            name = getattr(row, role)
            if name not in known:
                errors.append(f"{where}: unknown {role} {name!r}")
        if row.seller == row.buyer:
            errors.append(f"{where}: seller and buyer are both {row.seller!r}")
        if not np.isfinite(row.kw):
            errors.append(f"{where}: kw is NaN")
        elif row.kw < 0:
            errors.append(f"{where}: negative kw {row.kw:g}")
        if int(row.time) not in tset:
            errors.append(f"{where}: time {row.time} is outside the run (steps {min(tset)}..{max(tset)})")
    return errors


def assert_valid_contracts(contracts: pd.DataFrame, customers: Sequence[str], times: Sequence[int]) -> None:
    """Raise one :class:`ContractError` listing every problem found by :func:`validate_contracts`."""
    errors = validate_contracts(contracts, customers, times)
    if errors:
        more = f"; ... {len(errors) - 20} more" if len(errors) > 20 else ""
        raise ContractError("; ".join(errors[:20]) + more)


@dataclass(frozen=True)
class Shares:
    """Each contract's share of its seller's export and of its buyer's import (0..1).

    ``seller_share[i] = kw_i / export_seller`` and ``buyer_share[i] = kw_i / import_buyer``
    at the contract's step (powers measured in the solved power flow). ``scaled`` counts
    contracts reduced under the ``scale`` policy.
    """

    seller_share: np.ndarray
    buyer_share: np.ndarray
    kw: np.ndarray
    scaled: int


def contract_shares(
    contracts: pd.DataFrame,
    drawn_kw: np.ndarray,
    customers: Sequence[str],
    times: Sequence[int],
    *,
    oversold: str = "error",
) -> Shares:
    """Shares of the sellers' export and buyers' import that each contract carries.

    Args:
        contracts: validated contracts.
        drawn_kw: (steps, customers) active power each customer draws, kW (export < 0).
        customers: customer names in ``drawn_kw`` order.
        times: step index of each row of ``drawn_kw``.
        oversold: ``error`` (default): a seller whose contracts at a step exceed its net
            export, or a buyer whose purchases exceed its net import, is an error naming
            the contracts; ``scale``: such a seller's (buyer's) contracts are scaled down
            pro rata to what it exports (imports) -- reported, never silent.
    """
    if oversold not in OVERSOLD_POLICIES:
        raise ContractError(f"unknown oversold policy {oversold!r}: use {' or '.join(OVERSOLD_POLICIES)}")
    cidx = {c.lower(): i for i, c in enumerate(customers)}
    tidx = {int(t): i for i, t in enumerate(times)}
    ti = contracts.time.map(tidx).to_numpy(dtype=np.int64)
    si = contracts.seller.map(cidx).to_numpy(dtype=np.int64)
    bi = contracts.buyer.map(cidx).to_numpy(dtype=np.int64)
    kw = contracts.kw.to_numpy(dtype=float).copy()
    export = np.maximum(-drawn_kw[ti, si], 0.0)
    imports = np.maximum(drawn_kw[ti, bi], 0.0)
    scaled = 0
    for side, idx, avail, verb in (("seller", si, export, "exports"), ("buyer", bi, imports, "imports")):
        key = ti * len(customers) + idx
        total = np.bincount(key, weights=kw, minlength=len(times) * len(customers))[key]
        over = total > avail * (1 + TOLERANCE_REL) + TOLERANCE_KW
        if over.any():
            if oversold == "error":
                rows = np.nonzero(over)[0]
                r = rows[0]
                name = contracts[side].iloc[r]
                raise ContractError(
                    f"{side} {name} at step {contracts.time.iloc[r]} is contracted for {total[r]:.4g} kW "
                    f"but {verb} {avail[r]:.4g} kW (contract {contracts.contract.iloc[r]}"
                    f"{f' and {len(rows) - 1} more rows' if len(rows) > 1 else ''}); "
                    "pass oversold='scale' (--oversold scale) to scale such contracts down"
                )
            factor = np.where(over, avail / np.where(total > 0, total, 1.0), 1.0)
            scaled += int(over.sum())
            kw = kw * factor
    with np.errstate(divide="ignore", invalid="ignore"):
        export = np.maximum(-drawn_kw[ti, si], 0.0)
        imports = np.maximum(drawn_kw[ti, bi], 0.0)
        s_share = np.where(kw > 0, kw / export, 0.0)
        b_share = np.where(kw > 0, kw / imports, 0.0)
    return Shares(seller_share=s_share, buyer_share=b_share, kw=kw, scaled=scaled)
