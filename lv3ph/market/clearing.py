"""Local (P2P) energy market clearing for a community of customers on one feeder.

Inputs common to every market:

* ``net_kw`` -- array ``(steps, customers)``, each customer's net power in kW, *drawn*
  positive (load convention: consumption - PV - battery discharge); negative = surplus
  offered to the market. A customer's surplus is ``max(-net_kw, 0)``, its demand
  ``max(net_kw, 0)``.
* ``customers`` -- OpenDSS Load names (lower case), one per column.
* ``times`` -- integer step indices (1-based), one per row.
* ``tariffs`` -- :class:`Tariffs`: grid import / export prices (EUR/kWh) and the
  local-price rule.

Every market returns a :class:`MarketResult`: the contracts (the contract format of
:mod:`lv3ph.market.contracts`, one contract per (step, seller, buyer) with kW > 0), the
local price per step (EUR/kWh, always within ``[grid_export, grid_import]``) and the
traded power per step (kW). Invariants, per step: sum sold = sum bought = traded; no
seller sells more than its surplus; no buyer buys more than its demand. Whatever is not
traded locally is exchanged with the grid at the tariffs (see :func:`lv3ph.market.bills`).

Local price rules (``Tariffs.local_price_rule``):

* ``"mid"`` -- ``(import + export) / 2`` every step.
* ``"auction"`` -- supply/demand-ratio (SDR) pricing of N. Liu, X. Yu, C. Wang, C. Li,
  L. Ma, J. Lei, "Energy-sharing model with price-based demand response for microgrids
  of peer-to-peer prosumers", IEEE Trans. Power Systems 32(5), 2017: with SDR = total
  surplus / total demand of the step, ``price = import * export / ((import - export) *
  SDR + export)`` for SDR <= 1 and ``export`` for SDR > 1 (no demand counts as SDR > 1).
  The price falls from ``import`` (no local supply) to ``export`` (supply covers demand).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from lv3ph.errors import ProfileError, StudyError
from lv3ph.market.contracts import contracts_from_matrix, empty_contracts

__all__ = [
    "MarketResult",
    "Preference",
    "PriceRule",
    "Tariffs",
    "bilateral",
    "community_auction",
    "local_price",
    "no_market",
]

PriceRule = Literal["mid", "auction"]
Preference = Literal["random", "electrical-distance", "same-phase-first"]


@dataclass(frozen=True)
class Tariffs:
    """Grid tariffs (EUR/kWh) and the rule that sets the local market price.

    ``grid_import_eur_kwh`` is paid for energy drawn from the grid, ``grid_export_eur_kwh``
    earned for energy fed into it (must not exceed the import price).
    ``local_price_rule`` is ``"mid"`` or ``"auction"`` (supply/demand-ratio pricing, see
    the module docstring).
    """

    grid_import_eur_kwh: float = 0.30
    grid_export_eur_kwh: float = 0.05
    local_price_rule: PriceRule = "mid"

    def __post_init__(self) -> None:
        imp, exp = self.grid_import_eur_kwh, self.grid_export_eur_kwh
        if not (math.isfinite(imp) and math.isfinite(exp)):
            raise StudyError(f"Tariffs: prices must be finite, got import {imp}, export {exp}")
        if exp > imp:
            raise StudyError(f"Tariffs: grid_export_eur_kwh {exp} exceeds grid_import_eur_kwh {imp}")
        if self.local_price_rule not in ("mid", "auction"):
            raise StudyError(f"Tariffs: local_price_rule must be 'mid' or 'auction', got {self.local_price_rule!r}")

    @property
    def mid_eur_kwh(self) -> float:
        """``(import + export) / 2``, EUR/kWh."""
        return (self.grid_import_eur_kwh + self.grid_export_eur_kwh) / 2.0


@dataclass(frozen=True)
class MarketResult:
    """Outcome of a market run.

    * ``contracts`` -- contract table (columns contract, time, seller, buyer, kw; ids
      ``"t{time}-{seller}-{buyer}"``); the seller delivers ``kw`` kW to the buyer during
      step ``time``.
    * ``price_eur_kwh`` -- local price per step (EUR/kWh), a Series indexed by time.
    * ``traded_kw`` -- total traded power per step (kW), shape ``(steps,)``.
    """

    contracts: pd.DataFrame
    price_eur_kwh: pd.Series
    traded_kw: NDArray[np.float64]


# ----------------------------------------------------------------------- validation


def _inputs(
    net_kw: ArrayLike,
    customers: Sequence[str],
    times: Sequence[int] | ArrayLike,
    what: str,
) -> tuple[NDArray[np.float64], list[str], NDArray[np.int64]]:
    net = np.asarray(net_kw, dtype=np.float64)
    names = [str(c) for c in customers]
    if net.ndim != 2:
        raise ProfileError(f"{what}: net_kw must have shape (steps, customers), got {net.shape}")
    if net.shape[1] != len(names):
        raise ProfileError(f"{what}: net_kw has {net.shape[1]} customer columns but {len(names)} customers are named")
    if len(set(names)) != len(names):
        raise StudyError(f"{what}: customer names are not unique")
    if not np.isfinite(net).all():
        t, c = np.argwhere(~np.isfinite(net))[0]
        raise ProfileError(f"{what}: net_kw is NaN/inf (first at step row {t}, customer {names[c]})")
    tarr = np.asarray(times)
    if tarr.shape != (net.shape[0],):
        raise ProfileError(f"{what}: {tarr.size} times given for {net.shape[0]} steps")
    is_int = np.issubdtype(tarr.dtype, np.integer) or (
        np.issubdtype(tarr.dtype, np.floating) and bool(np.all(tarr == np.round(tarr)))
    )
    if tarr.size and not is_int:
        raise ProfileError(f"{what}: times must be integer step indices")
    tarr = tarr.astype(np.int64)
    if len(np.unique(tarr)) != tarr.size:
        raise ProfileError(f"{what}: times are not unique")
    return net, names, tarr


def _surplus_demand(
    net: NDArray[np.float64],
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    return np.maximum(-net, 0.0), np.maximum(net, 0.0)


# -------------------------------------------------------------------------- prices


def local_price(supply_kw: ArrayLike, demand_kw: ArrayLike, tariffs: Tariffs) -> NDArray[np.float64]:
    """Local price per step (EUR/kWh) from total surplus and demand (kW) by the tariff rule.

    ``"mid"``: (import + export) / 2. ``"auction"``: SDR pricing (module docstring); the
    result lies in ``[export, import]``.
    """
    s = np.asarray(supply_kw, dtype=np.float64)
    d = np.asarray(demand_kw, dtype=np.float64)
    imp, exp = tariffs.grid_import_eur_kwh, tariffs.grid_export_eur_kwh
    if tariffs.local_price_rule == "mid":
        return np.full(np.broadcast(s, d).shape, tariffs.mid_eur_kwh)
    with np.errstate(divide="ignore", invalid="ignore"):
        sdr = np.where(d > 0.0, s / d, np.inf)
    denom = (imp - exp) * np.minimum(sdr, 1.0) + exp
    with np.errstate(divide="ignore", invalid="ignore"):
        price = np.where(denom > 0.0, imp * exp / denom, exp)
    price = np.where(sdr >= 1.0, exp, price)
    return np.clip(price, exp, imp)


def _price_series(price: NDArray[np.float64], times: NDArray[np.int64]) -> pd.Series:
    return pd.Series(price, index=pd.Index(times, name="time"), name="price_eur_kwh")


def _pro_rata(s: NDArray[np.float64], d: NDArray[np.float64]) -> NDArray[np.float64]:
    """Trade tensor ``[step, seller, buyer]`` (kW) of the pro-rata uniform-price match.

    Traded = min(S, D); sellers sell ``s_i * traded / S``; buyers buy ``d_j * traded / D``;
    seller i delivers to buyer j ``sold_i * bought_j / traded``.
    """
    supply = s.sum(axis=1)
    demand = d.sum(axis=1)
    traded = np.minimum(supply, demand)
    ok = traded > 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        sold = np.where(ok[:, None], s * np.where(ok, traded / supply, 0.0)[:, None], 0.0)
        # buyer share of each seller's sale: bought_j / traded = d_j / D
        share = np.where(ok[:, None], d / np.where(ok, demand, 1.0)[:, None], 0.0)
    # Clip to the exact surplus / demand so rounding can never oversell.
    sold = np.minimum(sold, s)
    return sold[:, :, None] * share[:, None, :]


def _bid_clearing(
    s: NDArray[np.float64],
    d: NDArray[np.float64],
    bids: NDArray[np.float64],
    tariffs: Tariffs,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Uniform-price double auction with limit prices; returns (price, s_accepted, d_accepted).

    Candidate prices are the participants' limit prices; the clearing price is the middle
    of the price interval that maximises traded energy (k = 1/2 double auction).
    """
    imp, exp = tariffs.grid_import_eur_kwh, tariffs.grid_export_eur_kwh
    # A seller asking more than the import price or a buyer bidding less than the export
    # price cannot trade (the price stays within the tariffs); other limits are clipped.
    s = np.where(bids > imp, 0.0, s)
    d = np.where(bids < exp, 0.0, d)
    ask = np.where(np.isnan(bids), exp, np.clip(bids, exp, imp))
    bid = np.where(np.isnan(bids), imp, np.clip(bids, exp, imp))
    cand = np.concatenate([np.where(s > 0.0, ask, np.nan), np.where(d > 0.0, bid, np.nan)], axis=1)
    supply_c = np.einsum("tcn,tn->tc", ask[:, None, :] <= cand[:, :, None], s)
    demand_c = np.einsum("tcn,tn->tc", bid[:, None, :] >= cand[:, :, None], d)
    traded_c = np.where(np.isnan(cand), -1.0, np.minimum(supply_c, demand_c))
    best = traded_c.max(axis=1, initial=-1.0)
    at_best = traded_c >= best[:, None] - 1e-9 * np.maximum(best[:, None], 1.0)
    lo = np.where(at_best, cand, np.inf).min(axis=1)
    hi = np.where(at_best, cand, -np.inf).max(axis=1)
    trades = best > 0.0
    fallback = local_price(s.sum(axis=1), d.sum(axis=1), tariffs)
    price = np.where(trades, (lo + hi) / 2.0, fallback)
    price = np.clip(price, exp, imp)
    s_acc = np.where(trades[:, None] & (ask <= price[:, None]), s, 0.0)
    d_acc = np.where(trades[:, None] & (bid >= price[:, None]), d, 0.0)
    return price, s_acc, d_acc


# ------------------------------------------------------------------------- markets


def community_auction(
    net_kw: ArrayLike,
    customers: Sequence[str],
    times: Sequence[int] | ArrayLike,
    tariffs: Tariffs,
    *,
    bids: ArrayLike | None = None,
) -> MarketResult:
    """Uniform-price double auction per step with pro-rata matching.

    Without ``bids`` every customer with surplus sells and every customer with demand buys.
    With total surplus S and demand D of the step, traded = min(S, D): if S < D every
    seller sells all its surplus and each buyer gets ``d_j / D`` of S; otherwise every
    buyer is fully served and each seller sells ``s_i / S`` of D. Seller i delivers to
    buyer j ``sold_i * bought_j / traded`` kW (the proportional matrix), one contract per
    pair with kW > 0. The price follows ``tariffs.local_price_rule`` ("mid" or SDR
    "auction" pricing, see the module docstring).

    ``bids`` (optional, ``(steps, customers)``, EUR/kWh, NaN = no limit) are limit prices:
    a seller's minimum ask (default the export tariff), a buyer's maximum bid (default the
    import tariff). A seller asking more than the import price or a buyer bidding less
    than the export price does not trade; other limits are clipped to ``[export,
    import]``. Then the clearing price is the
    middle of the price interval that maximises traded energy (k = 1/2 double auction;
    ``local_price_rule`` only applies to steps without trade), and only sellers with ask
    <= price and buyers with bid >= price are matched, pro rata as above.
    """
    net, names, tarr = _inputs(net_kw, customers, times, "community_auction")
    s, d = _surplus_demand(net)
    if bids is None:
        price = local_price(s.sum(axis=1), d.sum(axis=1), tariffs)
    else:
        b = np.asarray(bids, dtype=np.float64)
        if b.shape != net.shape:
            raise ProfileError(f"community_auction: bids shape {b.shape} differs from net_kw {net.shape}")
        price, s, d = _bid_clearing(s, d, b, tariffs)
    trade = _pro_rata(s, d)
    return MarketResult(
        contracts=contracts_from_matrix(trade, names, tarr),
        price_eur_kwh=_price_series(price, tarr),
        traded_kw=trade.sum(axis=(1, 2)),
    )


def _preference_order(
    buyer: NDArray[np.int64],
    phase_code: NDArray[np.int64] | None,
    dist: NDArray[np.float64] | None,
    preference: Preference,
    rng: np.random.Generator,
) -> NDArray[np.int64]:
    """Seller order (steps, customers) for each step's current buyer."""
    steps = buyer.size
    n = dist.shape[0] if dist is not None else (phase_code.size if phase_code is not None else 0)
    tie = rng.random((steps, n))
    if preference == "random":
        return np.argsort(tie, axis=1)
    if preference == "electrical-distance":
        assert dist is not None
        return np.lexsort((tie, dist[buyer]), axis=-1)
    assert phase_code is not None
    other_phase = (phase_code[None, :] != phase_code[buyer][:, None]).astype(np.int8)
    near = dist[buyer] if dist is not None else rng.random((steps, n))
    return np.lexsort((tie, near, other_phase), axis=-1)


def bilateral(
    net_kw: ArrayLike,
    customers: Sequence[str],
    times: Sequence[int] | ArrayLike,
    tariffs: Tariffs,
    *,
    preference: Preference,
    seed: int,
    distance: ArrayLike | None = None,
    phases: Sequence[str] | None = None,
) -> MarketResult:
    """Greedy bilateral matching per step.

    Each step, buyers take turns in a seeded random order; a buyer is matched to sellers
    in its order of preference, taking ``min(remaining demand, seller's remaining
    surplus)`` from each, until its demand or all surplus is exhausted. Preferences:

    * ``"random"`` -- a fresh seeded random seller order per (step, buyer);
    * ``"electrical-distance"`` -- nearest sellers first by ``distance[buyer, seller]``
      (``(customers, customers)``, ohm or m; required), ties at random;
    * ``"same-phase-first"`` -- sellers on the buyer's phase first (``phases``, one label
      per customer, e.g. "1"/"2"/"3"; required), each group by ``distance`` if given,
      else at random.

    The local price follows ``tariffs.local_price_rule`` on the step's total surplus and
    demand. Same ``seed`` and inputs give the same contracts.
    """
    what = "bilateral"
    net, names, tarr = _inputs(net_kw, customers, times, what)
    n = len(names)
    if preference not in ("random", "electrical-distance", "same-phase-first"):
        raise StudyError(f"{what}: unknown preference {preference!r}")
    dist: NDArray[np.float64] | None = None
    if distance is not None:
        dist = np.asarray(distance, dtype=np.float64)
        if dist.shape != (n, n) or not np.isfinite(dist).all() or (dist < 0).any():
            raise StudyError(f"{what}: distance must be a finite, >= 0 ({n}, {n}) matrix, got shape {dist.shape}")
    elif preference == "electrical-distance":
        raise StudyError(f"{what}: preference 'electrical-distance' needs a distance matrix")
    phase_code: NDArray[np.int64] | None = None
    if phases is not None:
        labels = [str(p).strip().lower() for p in phases]
        if len(labels) != n:
            raise StudyError(f"{what}: {len(labels)} phases given for {n} customers")
        phase_code = np.unique(labels, return_inverse=True)[1].astype(np.int64)
    elif preference == "same-phase-first":
        raise StudyError(f"{what}: preference 'same-phase-first' needs phases")
    if phase_code is None:
        phase_code = np.zeros(n, dtype=np.int64)

    s, d = _surplus_demand(net)
    steps = net.shape[0]
    rng = np.random.default_rng(seed)
    buyer_order = np.argsort(rng.random((steps, n)), axis=1)
    remaining = s.copy()
    trade = np.zeros((steps, n, n))
    rows = np.arange(steps)
    for rank in range(n):
        b = buyer_order[:, rank]
        want = d[rows, b]
        order = _preference_order(b, phase_code, dist, preference, rng)
        avail = np.take_along_axis(remaining, order, axis=1)
        before = np.cumsum(avail, axis=1) - avail
        take = np.clip(want[:, None] - before, 0.0, avail)
        alloc = np.zeros_like(remaining)
        np.put_along_axis(alloc, order, take, axis=1)
        remaining -= alloc
        np.maximum(remaining, 0.0, out=remaining)
        trade[rows, :, b] = alloc
    price = local_price(s.sum(axis=1), d.sum(axis=1), tariffs)
    return MarketResult(
        contracts=contracts_from_matrix(trade, names, tarr),
        price_eur_kwh=_price_series(price, tarr),
        traded_kw=trade.sum(axis=(1, 2)),
    )


def no_market(
    net_kw: ArrayLike,
    customers: Sequence[str],
    times: Sequence[int] | ArrayLike,
    tariffs: Tariffs,
) -> MarketResult:
    """The reference case: no local trades (everything goes to the grid at the tariffs).

    Contracts are empty, traded power is zero; ``price_eur_kwh`` is what
    ``tariffs.local_price_rule`` would give (informative only, nothing trades at it).
    """
    net, _, tarr = _inputs(net_kw, customers, times, "no_market")
    s, d = _surplus_demand(net)
    return MarketResult(
        contracts=empty_contracts(),
        price_eur_kwh=_price_series(local_price(s.sum(axis=1), d.sum(axis=1), tariffs), tarr),
        traded_kw=np.zeros(net.shape[0]),
    )
