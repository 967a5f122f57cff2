"""Network-aware local market designs: names, marginal prices, network and loss charges.

Design names (``[scenarios].market`` of a study):

* ``unconstrained`` -- today's community auction (pro-rata match, ``[tariffs]`` price
  rule); the baseline, identical to ``community-auction``.
* ``network-charges:uniform`` / ``:distance`` / ``:zonal`` -- per-kWh fee on each trade
  (Baroche et al., "Exogenous cost allocation in peer-to-peer electricity markets", IEEE
  Trans. Power Systems 34(4), 2019), computed from the network (:func:`fee_matrix`); half
  paid by the buyer, half by the seller. Clearing is bilateral: each buyer takes sellers
  cheapest fee first and a trade happens only if it still pays for both sides,
  ``fee <= 2 min(import - price, price - export)``. Drawback: fees are exogenous, they do
  not follow the state of the network (a charge at noon is the same as at night).
* ``loss-charges`` -- each contract pays its exact allocated loss (lv3ph's allocator) at
  ``loss_price_eur_kwh``; buyers prefer the sellers whose contracts lose least per kWh;
  clear -> allocate -> charge -> devices re-schedule -> re-clear, a damped fixed point,
  until the contracts stop changing or ``max_iterations`` (:func:`loss_charge_iteration`).
  Drawback: every iteration needs a power flow and a schedule of every device; losses are
  a few % of traded energy, so the signal is weak.
* ``sensitivity-screened`` -- :mod:`lv3ph.market.screen`.
* ``opf-cleared`` -- :mod:`lv3ph.market.opf`.

Flexible devices see the design through their marginal prices (:func:`marginal_prices`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from lv3ph.allocation.contracts import contract_positions
from lv3ph.errors import StudyError
from lv3ph.market.clearing import MarketResult, Tariffs, bilateral, community_auction
from lv3ph.market.contracts import contracts_from_matrix

__all__ = [
    "DESIGNS",
    "FEE_KINDS",
    "LossIteration",
    "MarketSpec",
    "collected_fees",
    "customer_charges",
    "fee_clearing",
    "fee_matrix",
    "loss_charge_iteration",
    "marginal_prices",
    "zones_by_distance",
]

FEE_KINDS = ("uniform", "distance", "zonal")
DESIGNS = (
    "unconstrained",
    *(f"network-charges:{k}" for k in FEE_KINDS),
    "loss-charges",
    "sensitivity-screened",
    "opf-cleared",
)


@dataclass(frozen=True)
class MarketSpec:
    """Settings of the network-aware designs (``[market]`` table of a study).

    ``fee_uniform_eur_kwh``; ``fee_eur_kwh_per_ohm`` (distance fee per ohm of loop
    impedance between seller and buyer); ``fee_zonal_eur_kwh`` (trades between zones);
    ``zones`` (number of zones by electrical distance from the transformer);
    ``loss_price_eur_kwh``; ``max_iterations``, ``tolerance_kw``, ``tolerance_gap``
    (share of the loss charge a re-clear would still save) and ``loss_damping`` (share
    of the way the contracts move to each re-clear, (0, 1]) of the loss-charge iteration; ``opf_penalty_eur`` per unit (V, %, A) and hour of a violated OPF row.
    """

    fee_uniform_eur_kwh: float = 0.02
    fee_eur_kwh_per_ohm: float = 0.10
    fee_zonal_eur_kwh: float = 0.04
    zones: int = 3
    loss_price_eur_kwh: float = 0.30
    max_iterations: int = 5
    tolerance_kw: float = 1e-3
    opf_penalty_eur: float = 10.0
    loss_damping: float = 0.8
    tolerance_gap: float = 0.01

    def __post_init__(self) -> None:
        problems = [
            f"{k} must be a finite number >= 0, got {getattr(self, k)}"
            for k in (
                "fee_uniform_eur_kwh",
                "fee_eur_kwh_per_ohm",
                "fee_zonal_eur_kwh",
                "loss_price_eur_kwh",
                "tolerance_kw",
                "tolerance_gap",
                "opf_penalty_eur",
            )
            if not (
                isinstance(getattr(self, k), int | float) and math.isfinite(getattr(self, k)) and getattr(self, k) >= 0
            )
        ]
        if not (isinstance(self.zones, int) and self.zones >= 1):
            problems.append(f"zones must be an integer >= 1, got {self.zones}")
        if not (isinstance(self.loss_damping, int | float) and 0.0 < self.loss_damping <= 1.0):
            problems.append(f"loss_damping must be a number in (0, 1], got {self.loss_damping}")
        if not (isinstance(self.max_iterations, int) and self.max_iterations >= 1):
            problems.append(f"max_iterations must be an integer >= 1, got {self.max_iterations}")
        if problems:
            raise StudyError("; ".join(problems))


def marginal_prices(
    net_kw: NDArray[np.float64],
    price_eur_kwh: NDArray[np.float64],
    tariffs: Tariffs,
    *,
    market: bool = True,
    buy_charge: NDArray[np.float64] | float = 0.0,
    sell_charge: NDArray[np.float64] | float = 0.0,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Marginal buy and sell prices (steps, customers), EUR/kWh, of a pro-rata community.

    In the pro-rata match a community that is short (surplus < demand) sells all surplus
    locally and buys the rest from the grid: one more kWh drawn comes from the grid
    (``import``), one more kWh exported sells locally (``price``). A community that is long
    serves all demand locally: one more kWh drawn is bought locally (``price``), one more
    exported goes to the grid (``export``). Charges (fees, loss charges; EUR/kWh >= 0) are
    added to the buy side and taken from the sell side of the local trade. Without a market
    (``market=False``) the prices are the grid tariffs.
    """
    steps, n = net_kw.shape
    imp, exp = tariffs.grid_import_eur_kwh, tariffs.grid_export_eur_kwh
    if not market:
        return np.full((steps, n), imp), np.full((steps, n), exp)
    supply = np.clip(-net_kw, 0, None).sum(axis=1)
    demand = np.clip(net_kw, 0, None).sum(axis=1)
    short = (supply < demand)[:, None]
    p = np.asarray(price_eur_kwh, dtype=float)[:, None]
    buy = np.where(short, imp, np.minimum(p + buy_charge, imp))
    sell = np.where(short, np.maximum(p - sell_charge, exp), exp)
    sell = np.minimum(sell, buy)  # a credit (negative charge) never makes exporting pay more than drawing costs
    return np.broadcast_to(buy, (steps, n)).copy(), np.broadcast_to(sell, (steps, n)).copy()


def zones_by_distance(z_head_ohm: NDArray[np.float64], zones: int) -> NDArray[np.int64]:
    """Zone of each customer: quantile bins of its electrical distance from the transformer
    (``z_head_ohm``, e.g. |Thevenin impedance| phase-to-neutral at its port), 0 = nearest."""
    if zones <= 1 or z_head_ohm.size == 0:
        return np.zeros(z_head_ohm.size, dtype=np.int64)
    edges = np.quantile(z_head_ohm, np.linspace(0, 1, zones + 1)[1:-1])
    return np.searchsorted(edges, z_head_ohm, side="right").astype(np.int64)


def fee_matrix(kind: str, spec: MarketSpec, distance_ohm: NDArray[np.float64], zone: NDArray[np.int64]) -> np.ndarray:
    """Per-kWh fee of a trade seller i -> buyer j (customers, customers), EUR/kWh.

    ``uniform``: ``fee_uniform``; ``distance``: ``fee_per_ohm x |Z_ii + Z_jj - 2 Z_ij|``
    (loop impedance between them, ohm); ``zonal``: ``fee_zonal`` between different zones,
    0 inside a zone.
    """
    n = distance_ohm.shape[0]
    if kind == "uniform":
        return np.full((n, n), spec.fee_uniform_eur_kwh)
    if kind == "distance":
        return spec.fee_eur_kwh_per_ohm * np.asarray(distance_ohm, dtype=float)
    if kind == "zonal":
        return spec.fee_zonal_eur_kwh * (zone[:, None] != zone[None, :]).astype(float)
    raise StudyError(f"unknown network-charge kind {kind!r} (known: {', '.join(FEE_KINDS)})")


def fee_clearing(
    net_kw: NDArray[np.float64],
    customers: list[str],
    times: NDArray[np.int64],
    tariffs: Tariffs,
    fees: NDArray[np.float64],
    *,
    seed: int,
) -> MarketResult:
    """Bilateral clearing cheapest fee first; trades whose fee does not pay are dropped.

    The local price is the tariff rule's (as :func:`~lv3ph.market.clearing.bilateral`). A
    trade is kept if ``fee <= 2 min(import - price, price - export)`` (both sides still gain
    with half the fee each); since each buyer takes sellers in fee order, dropping the rest
    is the same as never offering them.
    """
    res = bilateral(net_kw, customers, times, tariffs, preference="electrical-distance", seed=seed, distance=fees)
    c = res.contracts
    if c.empty:
        return res
    _, si, bi = contract_positions(c, customers, times)
    f = fees[si, bi]
    p = res.price_eur_kwh.reindex(c.time).to_numpy()
    room = 2 * np.minimum(tariffs.grid_import_eur_kwh - p, p - tariffs.grid_export_eur_kwh)
    kept = c[f <= room + 1e-12].reset_index(drop=True)
    traded = kept.groupby("time").kw.sum().reindex(times, fill_value=0.0).to_numpy()
    return MarketResult(contracts=kept, price_eur_kwh=res.price_eur_kwh, traded_kw=traded)


def collected_fees(contracts: pd.DataFrame, customers: list[str], fees: NDArray[np.float64], dt_h: float) -> float:
    """Network charges collected over the run, EUR: sum of kW x fee x dt over contracts."""
    if contracts.empty:
        return 0.0
    _, si, bi = contract_positions(contracts, customers, contracts.time.unique())
    f = fees[si, bi]
    return float((contracts.kw.to_numpy() * f).sum() * dt_h)


def pair_charges(
    contracts: pd.DataFrame, customers: list[str], steps: int, times: NDArray[np.int64], per_pair: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per (step, customer) traded-weighted mean of half the pair charge, for buyers and
    sellers: the charge a flexible device sees (EUR/kWh); 0 where the customer did not trade."""
    buy = np.zeros((steps, len(customers)))
    sell = np.zeros((steps, len(customers)))
    if contracts.empty:
        return buy, sell
    t, s, b = contract_positions(contracts, customers, times)
    kw = contracts.kw.to_numpy()
    half = per_pair[s, b] / 2
    for who, out in ((b, buy), (s, sell)):
        num = np.zeros_like(out)
        den = np.zeros_like(out)
        np.add.at(num, (t, who), kw * half)
        np.add.at(den, (t, who), kw)
        out[:] = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    return buy, sell


def customer_charges(
    contracts: pd.DataFrame, customers: list[str], per_pair: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Each customer's loss charge as buyer and as seller (customers,), EUR/kWh: the
    traded-weighted mean over the run of half its pairs' charge ``per_pair`` (seller,
    buyer); a customer that did not trade on that side gets the plain mean over its
    possible counterparties. One number per customer and side, the same at every step,
    like a published tariff (charges only where it traded last time would push its trades
    to other steps, and back)."""
    n = len(customers)
    off = ~np.eye(n, dtype=bool)
    half = per_pair / 2
    buy = np.where(off, half, 0.0).sum(axis=0) / max(n - 1, 1)
    sell = np.where(off, half, 0.0).sum(axis=1) / max(n - 1, 1)
    if contracts.empty:
        return buy, sell
    _, s, b = contract_positions(contracts, customers, contracts.time.unique())
    kw = contracts.kw.to_numpy()
    for who, out in ((b, buy), (s, sell)):
        den = np.bincount(who, weights=kw, minlength=n)
        num = np.bincount(who, weights=kw * half[s, b], minlength=n)
        out[:] = np.where(den > 0, num / np.where(den > 0, den, 1.0), out)
    return buy, sell


@dataclass
class LossIteration:
    """Outcome of :func:`loss_charge_iteration`.

    ``result``: the final clearing (on ``net_kw``, the last response of the devices);
    ``rates`` (customers, customers) loss kWh per traded kWh of each pair, measured on the
    final contracts; ``loss_kwh``: per contract id (standing pair ``seller>buyer``),
    allocated loss over the run; ``iterations``: clearings done; ``converged``;
    ``changes``: the largest change of any contract (kW) a re-clear asked for;
    ``gaps``: the share of their loss charge buyers would save by that re-clear.
    """

    result: MarketResult
    net_kw: NDArray[np.float64]
    rates: NDArray[np.float64]
    loss_kwh: pd.Series
    iterations: int
    converged: bool
    changes: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)


def _contract_matrix(c: pd.DataFrame, customers: list[str], times: NDArray[np.int64]) -> NDArray[np.float64]:
    out = np.zeros((times.size, len(customers), len(customers)))
    if c.empty:
        return out
    np.add.at(out, contract_positions(c, customers, times), c.kw.to_numpy())
    return out


def loss_charge_iteration(
    respond: Callable[[NDArray[np.float64] | None, MarketResult | None], NDArray[np.float64]],
    customers: list[str],
    times: NDArray[np.int64],
    tariffs: Tariffs,
    allocate: Callable[[MarketResult, NDArray[np.float64]], pd.Series],
    distance: NDArray[np.float64],
    *,
    dt_h: float,
    seed: int,
    max_iterations: int,
    tolerance_kw: float,
    tolerance_gap: float = 0.0,
    damping: float = 1.0,
) -> LossIteration:
    """Fixed point clear -> allocate -> charge -> devices respond -> re-clear.

    ``respond(rates, result)`` is the devices' answer to the loss charges of ``rates``
    (loss kWh per traded kWh, (customers, customers)) on the contracts of ``result``: the
    community's net power (steps, customers), kW drawn; ``respond(None, None)`` is their
    answer without loss charges. The first clearing is the unconstrained community auction
    on that answer. ``allocate(result, net_kw)`` returns each standing pair's
    (``"seller>buyer"``) allocated loss over the run, kWh, on the power flow of ``net_kw``.
    A pair's rate is its loss / traded kWh; pairs that did not trade get
    ``kappa x distance`` with ``kappa`` the least-squares fit of the traded pairs' rates on
    their ``distance``.

    Each iteration the devices respond to the last rates, a bilateral re-clear (every
    buyer taking sellers lowest rate first) gives target contracts, and the contracts move
    ``damping`` of the way to them (the method of successive averages; 1 = take the
    re-clear as it is). Damping is needed because a pair's loss per kWh grows with what
    it trades: the lowest-rate seller of one iteration is the dearest of the next, so
    undamped re-clears can swing the contracts back and forth for ever. The contracts are
    kept within each step's surpluses and demands (scaled down where the devices'
    answer moved them). Stops when the re-clear would move no contract by more than
    ``tolerance_kw``, or would save buyers at most ``tolerance_gap`` (share) of the loss
    they are charged (``gaps``: the relative gap, the traffic-assignment criterion), or
    after ``max_iterations`` clearings.
    """
    if not 0.0 < damping <= 1.0:
        raise StudyError(f"loss-charge damping must be in (0, 1], got {damping}")
    net_kw = respond(None, None)
    result = community_auction(net_kw, customers, times, tariffs)
    loss = allocate(result, net_kw)
    rates = _rates(result.contracts, loss, customers, distance, dt_h)
    changes: list[float] = []
    gaps: list[float] = []
    converged = False
    iterations = 1
    while iterations < max_iterations:
        net_kw = respond(rates, result)
        order = rates - min(float(rates.min()), 0.0)  # credits (negative rates) first, distances >= 0
        new = bilateral(net_kw, customers, times, tariffs, preference="electrical-distance", seed=seed, distance=order)
        iterations += 1
        prev = _feasible(_contract_matrix(result.contracts, customers, times), net_kw)
        target = _contract_matrix(new.contracts, customers, times)
        changes.append(float(np.abs(target - prev).max(initial=0.0)))
        charged = float((prev.sum(axis=0) * rates).sum())
        gaps.append(max(charged - float((target.sum(axis=0) * rates).sum()), 0.0) / charged if charged > 0 else 0.0)
        converged = changes[-1] <= tolerance_kw or gaps[-1] <= tolerance_gap
        mixed = target if converged else _feasible(prev + damping * (target - prev), net_kw)
        contracts = contracts_from_matrix(mixed, customers, times)
        result = MarketResult(contracts=contracts, price_eur_kwh=new.price_eur_kwh, traded_kw=mixed.sum(axis=(1, 2)))
        loss = allocate(result, net_kw)
        rates = _rates(result.contracts, loss, customers, distance, dt_h)
        if converged:
            break
    return LossIteration(
        result=result,
        net_kw=net_kw,
        rates=rates,
        loss_kwh=loss,
        iterations=iterations,
        converged=converged,
        changes=changes,
        gaps=gaps,
    )


def _feasible(trade_kw: NDArray[np.float64], net_kw: NDArray[np.float64]) -> NDArray[np.float64]:
    """``trade_kw[step, seller, buyer]`` scaled down to every seller's surplus and every
    buyer's demand of ``net_kw`` (kW drawn) at each step."""
    out = trade_kw.copy()
    for axis, have in ((2, np.clip(-net_kw, 0, None)), (1, np.clip(net_kw, 0, None))):
        used = out.sum(axis=axis)
        with np.errstate(divide="ignore", invalid="ignore"):
            f = np.where(used > have, have / np.where(used > 0, used, 1.0), 1.0)
        out *= np.expand_dims(f, axis)
    return out


def _rates(
    contracts: pd.DataFrame, loss_kwh: pd.Series, customers: list[str], distance: NDArray[np.float64], dt_h: float
) -> NDArray[np.float64]:
    rates = _measured(contracts, loss_kwh, customers, dt_h)
    known = np.isfinite(rates)
    d = distance[known]
    kappa = float((d * rates[known]).sum() / (d * d).sum()) if known.any() and (d * d).sum() > 0 else 0.0
    return np.where(known, rates, np.maximum(kappa, 0.0) * distance)


def _measured(contracts: pd.DataFrame, loss_kwh: pd.Series, customers: list[str], dt_h: float) -> NDArray[np.float64]:
    """Loss kWh per traded kWh of each pair that traded (customers, customers); NaN elsewhere."""
    n = len(customers)
    idx = {c: i for i, c in enumerate(customers)}
    rates = np.full((n, n), np.nan)
    if not contracts.empty:
        pair = contracts.seller + ">" + contracts.buyer
        traded = contracts.kw.groupby(pair.to_numpy()).sum() * dt_h
        for key, kwh in traded.items():
            s, b = str(key).split(">")
            if kwh > 0:
                rates[idx[s], idx[b]] = float(loss_kwh.get(key, 0.0)) / kwh
    return rates
