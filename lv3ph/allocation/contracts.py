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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from lv3ph.errors import ContractError

#: Step numbers: a list or an integer array.
Steps = Sequence[int] | NDArray[np.integer]

#: The contract table's columns, in order.
CONTRACT_COLUMNS: Final[tuple[str, ...]] = ("contract", "time", "seller", "buyer", "kw")
OVERSOLD_POLICIES = ("error", "scale")
#: Relative and absolute slack (kW) on a seller's export / buyer's import: the measured
#: power differs from the set-point by OpenDSS's convergence tolerance.
TOLERANCE_REL = 1e-3
TOLERANCE_KW = 1e-3


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


def read_contracts(path: str | Path) -> pd.DataFrame:
    """Read a contract CSV (exactly the columns of :data:`CONTRACT_COLUMNS`, any order).

    Parses and type-checks only (customer names and times are checked against a feeder /
    study elsewhere): ``time`` must be an integer >= 1, ``kw`` a number >= 0, ``seller``
    and ``buyer`` non-empty and different, ``contract`` non-empty. Names are stripped and
    lower-cased (OpenDSS names are case-insensitive). Raises
    :class:`~lv3ph.errors.ContractError` naming the file, the line (1-based, the header is
    line 1) and the problem. Returns the table in :data:`CONTRACT_COLUMNS` order; its
    ``attrs`` remember the file so later checks can name lines too.
    """
    where = f"contracts file {path}"
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except FileNotFoundError as exc:
        raise ContractError(f"{where}: file not found") from exc
    except OSError as exc:
        raise ContractError(f"{where}: cannot be read ({exc.strerror or exc})") from exc
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

    def fail(mask: NDArray[np.bool_] | pd.Series, problem: str | Callable[[int], str]) -> None:
        bad = np.flatnonzero(np.asarray(mask))
        if bad.size:
            i = int(bad[0])
            more = f" (and {bad.size - 1} more row(s))" if bad.size > 1 else ""
            raise ContractError(f"{where}: line {i + 2}: {problem(i) if callable(problem) else problem}{more}")

    for col in ("contract", "seller", "buyer"):
        fail(text[col] == "", f"empty {col}")
    kw_text = text["kw"]
    kw = pd.to_numeric(kw_text, errors="coerce").to_numpy(dtype=np.float64)
    is_nan_text = kw_text.str.lower().isin(["nan", "", "na", "n/a", "null", "none"]).to_numpy()
    fail(is_nan_text, "kw is NaN/empty")
    fail(np.isnan(kw), lambda i: f"kw {kw_text.iloc[i]!r} is not a number")
    fail(~np.isfinite(kw), lambda i: f"kw {kw_text.iloc[i]!r} is not finite")
    fail(
        kw < 0.0,
        lambda i: f"kw {kw[i]} is negative (contracts deliver kw >= 0 from seller to buyer)",
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
    out = pd.DataFrame(
        {
            "contract": text["contract"].to_numpy(dtype=object),
            "time": tnum.astype(np.int64),
            "seller": seller.to_numpy(dtype=object),
            "buyer": buyer.to_numpy(dtype=object),
            "kw": kw,
        }
    )
    out.attrs["source"] = str(path)
    out.attrs["first_line"] = 2
    return out


def validate_contracts(contracts: pd.DataFrame, customers: Sequence[str], times: Steps) -> list[str]:
    """Every structural problem of ``contracts`` as one message each (empty = valid).

    Checks: unknown seller/buyer, seller == buyer, kW NaN or negative, time outside the
    run, empty contract id, the same contract id twice at one step (naming both rows).
    Rows are named by file line when read from a file.
    """
    known = pd.Index([c.lower() for c in customers])
    tset = pd.Index([int(t) for t in times])
    src = contracts.attrs.get("source", "contracts")
    first = int(contracts.attrs.get("first_line", 2))
    label = "line" if "source" in contracts.attrs else "row"
    kw = contracts.kw.to_numpy(dtype=float)
    row = np.arange(len(contracts))
    key = [contracts.contract.astype(str).to_numpy(), contracts.time.to_numpy()]
    first_row = pd.Series(row).groupby(key, sort=False).transform("min").to_numpy()
    checks: list[tuple[np.ndarray, Callable[[int], str]]] = [
        (contracts.contract.astype(str).to_numpy() == "", lambda i: "empty contract id"),
        (~contracts.seller.isin(known).to_numpy(), lambda i: f"unknown seller {contracts.seller.iloc[i]!r}"),
        (~contracts.buyer.isin(known).to_numpy(), lambda i: f"unknown buyer {contracts.buyer.iloc[i]!r}"),
        (
            (contracts.seller == contracts.buyer).to_numpy(),
            lambda i: f"seller and buyer are both {contracts.seller.iloc[i]!r}",
        ),
        (np.isnan(kw), lambda i: "kw is NaN"),
        (kw < 0, lambda i: f"negative kw {kw[i]:g}"),
        (
            ~contracts.time.isin(tset).to_numpy(),
            lambda i: f"time {contracts.time.iloc[i]} is outside the run (steps {tset.min()}..{tset.max()})",
        ),
        (
            first_row != row,
            lambda i: (
                f"duplicate id: {label} {first_row[i] + first} has the same contract at step {contracts.time.iloc[i]}"
            ),
        ),
    ]
    errors = []
    for mask, message in checks:
        for i in np.nonzero(mask)[0][:20]:
            errors.append(f"{src} {label} {i + first} (contract {contracts.contract.iloc[i]}): {message(int(i))}")
    return errors


def assert_valid_contracts(contracts: pd.DataFrame, customers: Sequence[str], times: Steps) -> None:
    """Raise one :class:`ContractError` listing every problem found by :func:`validate_contracts`."""
    errors = validate_contracts(contracts, customers, times)
    if errors:
        more = f"; ... {len(errors) - 20} more" if len(errors) > 20 else ""
        raise ContractError("; ".join(errors[:20]) + more)


def contract_positions(
    contracts: pd.DataFrame, customers: Sequence[str], times: Steps
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row positions of each contract's step, seller and buyer (validated contracts)."""
    cust = pd.Index([c.lower() for c in customers])
    steps = pd.Index([int(t) for t in times])
    return (
        steps.get_indexer(pd.Index(contracts.time)).astype(np.int64),
        cust.get_indexer(pd.Index(contracts.seller)).astype(np.int64),
        cust.get_indexer(pd.Index(contracts.buyer)).astype(np.int64),
    )


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
    times: Steps,
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
    ti, si, bi = contract_positions(contracts, customers, times)
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
