"""Run one market design end to end: prices -> flexible devices -> clearing -> injections.

The caller (the study runner) owns the feeder: it passes ``solve(device_kw)``, which sets
every customer's controllable-device power (kW drawn, (steps, customers)) in OpenDSS, runs
the period and returns ``(node voltages (n_nodes, steps), power-flow Dataset)``. A design
returns the contracts *and* the device powers -- batteries, EVs, shifted demand and PV
curtailment -- so the market changes what flows.

Per design (formulas and drawbacks in :mod:`lv3ph.market.designs`, ``screen``, ``opf``):

1. price forecast: the tariff rule on the inflexible net power (``base``);
2. flexible devices schedule against their marginal prices (:func:`marginal_prices`),
   with the design's charges;
3. clearing on the resulting net power; ``sensitivity-screened`` and ``opf-cleared`` then
   change injections from the OpenDSS solution of step 2 (the reference point).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import xarray as xr
from numpy.typing import NDArray

from lv3ph.allocation.contracts import contract_positions, contract_shares
from lv3ph.allocation.exact import LossNetwork, exact_allocation
from lv3ph.flex.schedule import (
    Fleet,
    FlexResult,
    device_sets,
    interval_hours,
    interval_index,
    schedule,
    uncontrolled,
    write_steps,
)
from lv3ph.market.clearing import MarketResult, Tariffs, community_auction, local_price, no_market
from lv3ph.market.designs import (
    LossIteration,
    MarketSpec,
    collected_fees,
    customer_charges,
    fee_clearing,
    fee_matrix,
    loss_charge_iteration,
    marginal_prices,
    pair_charges,
    zones_by_distance,
)
from lv3ph.market.linear import Rows, monitored, step_rows
from lv3ph.market.opf import opf_clear
from lv3ph.market.screen import screen_step
from lv3ph.market.sensitivity import PortNetwork, port_network, step_sensitivity
from lv3ph.model import ComplexArray, FeederModel
from lv3ph.powerflow import customer_ports
from lv3ph.unbalance import Limits, unbalance, violations

__all__ = ["CHECKS", "DesignInputs", "DesignOutcome", "design_summary", "promise_gap", "run_design"]

#: Checks reported per design (minutes with a violation).
CHECKS = ("voltage_high", "voltage_low", "pvur", "vuf", "vne", "line_thermal", "transformer_thermal")

Solver = Callable[[NDArray[np.float64]], tuple[ComplexArray, xr.Dataset]]


@dataclass
class DesignInputs:
    """Everything a design needs (powers in kW drawn, (steps, customers))."""

    design: str
    tariffs: Tariffs
    spec: MarketSpec
    limits: Limits
    names: list[str]
    times: NDArray[np.int64]
    dt_h: float
    base_kw: NDArray[np.float64]  # load - PV + fixed batteries, without the fleet's devices
    pv_kw: NDArray[np.float64]
    fixed_kw: NDArray[np.float64]  # devices that do not respond (fixed-strategy batteries)
    fleet: Fleet
    model: FeederModel
    net: LossNetwork
    distance: NDArray[np.float64]
    solve: Solver
    seed: int


@dataclass
class DesignOutcome:
    """A design's result: contracts and prices, device powers (kW drawn), numbers.

    ``device_kw`` = fixed + battery + EV + (shifted - base shiftable) + curtailment: the
    change of each customer's drawn power from ``load - PV``. ``promised`` (steps, rows):
    the linear rows (:func:`lv3ph.market.linear.step_rows` layout) a linearised design
    promised to keep within their limits (None for the other designs).
    ``summary``: design numbers (EUR, kWh, iterations); ``timings_s``: wall-clock seconds
    of the clearing (``clearing``, everything but power flows) and of the reference power
    flow (``reference_solve``), kept apart so that the summary is reproducible.
    """

    market: MarketResult
    device_kw: NDArray[np.float64]
    battery_kw: NDArray[np.float64]
    ev_kw: NDArray[np.float64]
    shift_kw: NDArray[np.float64]
    shift_base_kw: NDArray[np.float64]
    curtail_kw: NDArray[np.float64]
    promised: NDArray[np.bool_] | None = None
    summary: dict[str, float | int] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)


def _devices(inp: DesignInputs, flex_kw: NDArray[np.float64], curtail: NDArray[np.float64]) -> NDArray[np.float64]:
    return inp.fixed_kw + flex_kw - inp.fleet.shift_base_kw() + curtail


def run_design(inp: DesignInputs) -> DesignOutcome:
    """Run ``inp.design`` (see the module docstring)."""
    t0 = time.perf_counter()
    shift_base = inp.fleet.shift_base_kw()
    inflexible = inp.base_kw + uncontrolled(inp.fleet).ev_kw  # what the price forecast sees
    s, d = np.clip(-inflexible, 0, None).sum(axis=1), np.clip(inflexible, 0, None).sum(axis=1)
    price = local_price(s, d, inp.tariffs)
    design, _, kind = inp.design.partition(":")
    summary: dict[str, float | int] = {}
    fees = np.zeros((len(inp.names), len(inp.names)))
    buy_c: NDArray[np.float64] | float = 0.0
    sell_c: NDArray[np.float64] | float = 0.0
    if design == "network-charges":
        zone = zones_by_distance(_head_impedance(inp), inp.spec.zones)
        fees = fee_matrix(kind, inp.spec, inp.distance, zone)
        pre = fee_clearing(inflexible, inp.names, inp.times, inp.tariffs, fees, seed=inp.seed)
        buy_c, sell_c = pair_charges(pre.contracts, inp.names, len(inp.times), inp.times, fees)
    if design == "loss-charges":
        iteration, flex = _loss_iteration(inp, inflexible, price)
        summary["loss_iterations"] = iteration.iterations
        summary["loss_converged"] = int(iteration.converged)
        summary["loss_last_change_kw"] = iteration.changes[-1] if iteration.changes else 0.0
        summary["loss_last_gap"] = iteration.gaps[-1] if iteration.gaps else 0.0
        market = iteration.result
    else:
        buy, sell = marginal_prices(
            inflexible, price, inp.tariffs, market=design != "none", buy_charge=buy_c, sell_charge=sell_c
        )
        flex = schedule(inp.fleet, inp.base_kw - shift_base, buy, sell)
    curtail = np.zeros_like(inp.base_kw)
    net = inp.base_kw + flex.total_kw - shift_base
    promised = None
    timings: dict[str, float] = {}
    t_clear = time.perf_counter() - t0
    if design == "none":
        market = no_market(net, inp.names, inp.times, inp.tariffs)
    elif design in ("unconstrained", "sensitivity-screened", "opf-cleared"):
        market = community_auction(net, inp.names, inp.times, inp.tariffs)
    elif design == "network-charges":
        market = fee_clearing(net, inp.names, inp.times, inp.tariffs, fees, seed=inp.seed)
        summary["network_charges_eur"] = collected_fees(market.contracts, inp.names, fees, inp.dt_h)
    if design == "sensitivity-screened":
        t1 = time.perf_counter()
        vt, pf = inp.solve(_devices(inp, flex.total_kw, curtail))
        t_ref = time.perf_counter()
        curtail, promised, market = _screen(inp, vt, pf, market, net)
        t_clear += time.perf_counter() - t_ref
        timings["reference_solve"] = t_ref - t1
    if design == "opf-cleared":
        t1 = time.perf_counter()
        vt, pf = inp.solve(_devices(inp, flex.total_kw, curtail))
        t_ref = time.perf_counter()
        flex, curtail, promised, opf_summary = _opf(inp, vt, pf, flex)
        summary.update(opf_summary)
        net = inp.base_kw + flex.total_kw - shift_base + curtail
        market = community_auction(net, inp.names, inp.times, inp.tariffs)
        t_clear += time.perf_counter() - t_ref
        timings["reference_solve"] = t_ref - t1
    timings["clearing"] = t_clear
    return DesignOutcome(
        market=market,
        device_kw=_devices(inp, flex.total_kw, curtail),
        battery_kw=flex.battery_kw,
        ev_kw=flex.ev_kw,
        shift_kw=flex.shift_kw,
        shift_base_kw=shift_base,
        curtail_kw=curtail,
        promised=promised,
        summary=summary,
        timings_s=timings,
    )


def _head_impedance(inp: DesignInputs) -> NDArray[np.float64]:
    """|phase-to-neutral Thevenin impedance| at each customer's port, ohm."""
    pn = _port_network(inp)
    _, first = np.unique(pn.port_customer, return_index=True)
    return np.abs(np.diag(pn.k)[first])


def _loss_iteration(
    inp: DesignInputs, inflexible: NDArray[np.float64], price: NDArray[np.float64]
) -> tuple[LossIteration, FlexResult]:
    """The loss-charge fixed point (:func:`loss_charge_iteration`): every iteration the
    devices re-schedule against the loss charges of the contracts they trade, and the
    contracts' losses are allocated on the power flow of that schedule. Returns the
    iteration and the devices' last schedule (the one its final contracts clear)."""
    shift_base = inp.fleet.shift_base_kw()
    last: dict[str, FlexResult] = {}

    def respond(rates: NDArray[np.float64] | None, result: MarketResult | None) -> NDArray[np.float64]:
        buy_c: NDArray[np.float64] | float = 0.0
        sell_c: NDArray[np.float64] | float = 0.0
        if rates is not None and result is not None:
            buy_c, sell_c = customer_charges(result.contracts, inp.names, inp.spec.loss_price_eur_kwh * rates)
        buy, sell = marginal_prices(inflexible, price, inp.tariffs, buy_charge=buy_c, sell_charge=sell_c)
        last["flex"] = schedule(inp.fleet, inp.base_kw - shift_base, buy, sell)
        return inp.base_kw + last["flex"].total_kw - shift_base

    it = loss_charge_iteration(
        respond,
        inp.names,
        inp.times,
        inp.tariffs,
        _allocator(inp),
        inp.distance,
        dt_h=inp.dt_h,
        seed=inp.seed,
        max_iterations=inp.spec.max_iterations,
        tolerance_kw=inp.spec.tolerance_kw,
        tolerance_gap=inp.spec.tolerance_gap,
        damping=inp.spec.loss_damping,
    )
    return it, last["flex"]


def _allocator(inp: DesignInputs) -> Callable[[MarketResult, NDArray[np.float64]], pd.Series]:
    """Allocate contracts (exact method) on the OpenDSS solution of a net power (kW drawn,
    (steps, customers)); the last solution is reused while the net power is the same."""
    ports = customer_ports(inp.model)
    cache: list[tuple[NDArray[np.float64], ComplexArray, xr.Dataset]] = []

    def allocate(result: MarketResult, net_kw: NDArray[np.float64]) -> pd.Series:
        if not cache or not np.array_equal(cache[0][0], net_kw):
            cache[:] = [(net_kw.copy(), *inp.solve(net_kw - inp.base_kw + inp.fixed_kw))]
        _, vt, pf = cache[0]
        c = result.contracts.copy()
        c["contract"] = c.seller + ">" + c.buyer
        shares = contract_shares(c, pf.customer_p_kw.values, ports.names, pf.time.values, oversold="scale")
        ds = exact_allocation(inp.model, pf, vt, c, shares, net=inp.net)
        rows = ds.loss_total_kw.values * inp.dt_h
        labels = ds.contract.values.astype(str)
        is_c = ~np.char.startswith(labels, "grid:")
        return pd.Series(rows[is_c]).groupby(labels[is_c]).sum()

    return allocate


def _steps_rows(
    inp: DesignInputs, vt: ComplexArray, pf: xr.Dataset, steps: NDArray[np.int64], *, values_only: bool = False
) -> list[Rows]:
    """Linear rows of ``steps`` (positions); ``values_only``: ``g0`` only (no sensitivities)."""
    pn = _port_network(inp)
    mon = monitored(inp.model, pn)
    inj = pf.customer_injection.values
    out = []
    for i in steps:
        sens = None if values_only else step_sensitivity(pn, vt[:, i], inj[i, : len(inp.names)])
        out.append(step_rows(pn, mon, sens, vt[:, i], inp.limits))
    return out


_PN: dict[int, PortNetwork] = {}


def _port_network(inp: DesignInputs) -> PortNetwork:
    """The port network of ``inp.net`` (computed once per LossNetwork object)."""
    key = id(inp.net)
    if key not in _PN:
        _PN.clear()
        _PN[key] = port_network(inp.model, inp.net)
    return _PN[key]


def _violating_steps(pf: xr.Dataset, limits: Limits) -> NDArray[np.int64]:
    viol = violations(pf, unbalance(pf), limits)
    viol = viol[viol.check != "transformer_thermal"]
    return np.flatnonzero(np.isin(pf.time.values, viol.time.unique()))


def _screen(
    inp: DesignInputs, vt: ComplexArray, pf: xr.Dataset, market: MarketResult, net: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.bool_], MarketResult]:
    """Curtail sellers at the steps OpenDSS finds violations (rule in lv3ph.market.screen)."""
    steps = _violating_steps(pf, inp.limits)
    sold = np.zeros_like(net)
    c = market.contracts
    if not c.empty:
        t, si, _ = contract_positions(c, inp.names, inp.times)
        np.add.at(sold, (t, si), c.kw.to_numpy())
    sellable = np.minimum(sold, inp.pv_kw)
    curtail = np.zeros_like(net)
    n_rows = _steps_rows(inp, vt, pf, np.zeros(1, np.int64), values_only=True)[0].g0.size
    promised = np.ones((net.shape[0], n_rows), dtype=bool)  # steps without violations: as they were
    for i, rows in zip(steps, _steps_rows(inp, vt, pf, steps), strict=True):
        curtail[i], promised[i] = screen_step(rows, sellable[i])
    if not c.empty and curtail.any():
        t, si, _ = contract_positions(c, inp.names, inp.times)
        with np.errstate(divide="ignore", invalid="ignore"):
            keep = np.where(sold[t, si] > 0, 1.0 - curtail[t, si] / sold[t, si], 1.0)
        c = c.assign(kw=c.kw.to_numpy() * np.clip(keep, 0.0, 1.0))
        c = c[c.kw > 0].reset_index(drop=True)
        traded = c.groupby("time").kw.sum().reindex(inp.times, fill_value=0.0).to_numpy()
        market = MarketResult(contracts=c, price_eur_kwh=market.price_eur_kwh, traded_kw=traded)
    return curtail, promised, market


def _opf(
    inp: DesignInputs, vt: ComplexArray, pf: xr.Dataset, flex_ref: FlexResult
) -> tuple[FlexResult, NDArray[np.float64], NDArray[np.bool_], dict[str, float | int]]:
    """The OPF on the scheduling intervals around the reference solution."""
    fleet = inp.fleet
    steps = inp.base_kw.shape[0]
    idx = interval_index(steps, fleet.stepsize_s, fleet.spec.interval_s, fleet.start)
    starts = np.flatnonzero(np.diff(idx, prepend=-1))
    counts = np.bincount(idx)
    n_int = counts.size
    mids = starts + counts // 2
    rows_mid = _steps_rows(inp, vt, pf, mids)
    # worst minute of each interval (rows have the same layout at every step)
    g_all = np.stack([r.g0 for r in _steps_rows(inp, vt, pf, np.arange(steps), values_only=True)])
    g_worst = np.maximum.reduceat(g_all, starts, axis=0)
    rows = [Rows(check=r.check, item=r.item, g0=g_worst[i], a=r.a) for i, r in enumerate(rows_mid)]

    def per_interval(x: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.stack([np.bincount(idx, weights=x[:, k]) / counts for k in range(x.shape[1])], axis=1)

    devices = device_sets(fleet, idx)
    fixed_ev = uncontrolled(fleet).ev_kw  # uncontrolled EVs (zero when EVs are scheduled)
    shift_base = fleet.shift_base_kw()
    base_i = per_interval(inp.base_kw - shift_base + fixed_ev)  # inflexible net, scheduled devices apart
    ref_i = per_interval(flex_ref.total_kw - fixed_ev)
    pv_min = np.minimum.reduceat(inp.pv_kw, starts, axis=0)
    dt_h = interval_hours(idx, fleet.stepsize_s)
    res = opf_clear(
        devices,
        base_i,
        ref_i,
        pv_min,
        rows,
        dt_h=dt_h,
        import_eur_kwh=inp.tariffs.grid_import_eur_kwh,
        export_eur_kwh=inp.tariffs.grid_export_eur_kwh,
        wear_eur_kwh=fleet.spec.battery_wear_eur_kwh,
        penalty_eur=inp.spec.opf_penalty_eur,
    )
    parked = fleet.ev.parked(fleet.stepsize_s, fleet.start, steps) if fleet.ev is not None else None
    out = {"battery_kw": np.zeros_like(inp.base_kw), "ev_kw": fixed_ev.copy(), "shift_kw": shift_base.copy()}
    for k, dev in devices.items():
        power = {"battery_kw": res.battery_kw[:, k], "ev_kw": res.ev_kw[:, k], "shift_kw": res.shift_kw[:, k]}
        write_steps(out, fleet, k, dev, power, idx, parked)
    curtail = np.minimum(res.curtail_kw[idx], inp.pv_kw)
    promised_i = np.ones((n_int, rows[0].g0.size), dtype=bool)
    for i, r in res.broken:
        promised_i[i, r] = False
    promised = promised_i[idx]
    summary: dict[str, float | int] = {
        "opf_rows": res.rows,
        "opf_welfare_eur": res.welfare_eur,
        **{f"opf_slack_{k}": v for k, v in res.slack.items()},
    }
    return FlexResult(**out), curtail, promised, summary


def design_summary(
    out: DesignOutcome,
    design: str,
    viol: pd.DataFrame,
    bill: pd.DataFrame,
    allocation: pd.DataFrame,
    spec: MarketSpec,
    dt_h: float,
) -> dict[str, float | int]:
    """A design's headline numbers, judged on the OpenDSS solution (``viol``) of its outcome.

    Energies in kWh (``shifted_kwh`` = half the absolute change of the shiftable demand),
    money in EUR: ``bills_eur`` (sum of customers' bills with the market),
    ``network_charges_eur``, ``loss_charges_eur`` (loss-charges: the loss price x every
    contract's exact allocated loss), ``welfare_eur = -(bills + charges)`` (the
    community's side; charges go to the network operator). ``minutes_<check>``: minutes
    with at least one violation (see :func:`promise_gap` for the linearised designs).
    """
    res: dict[str, float | int] = dict(out.summary)
    res["curtailed_kwh"] = float(out.curtail_kw.sum() * dt_h)
    res["shifted_kwh"] = float(np.abs(out.shift_kw - out.shift_base_kw).sum() * dt_h / 2)
    res["ev_kwh"] = float(out.ev_kw.sum() * dt_h)
    res["battery_throughput_kwh"] = float(np.abs(out.battery_kw).sum() * dt_h)
    res.setdefault("network_charges_eur", 0.0)
    loss_charges = 0.0
    if design == "loss-charges":
        contracts = allocation[~allocation.contract.str.startswith("grid:")]
        loss_charges = (
            spec.loss_price_eur_kwh * float(contracts["exact_kwh"].sum()) if "exact_kwh" in contracts else 0.0
        )
    res["loss_charges_eur"] = loss_charges
    res["bills_eur"] = float(bill["bill_market_eur"].sum())
    res["welfare_eur"] = -(res["bills_eur"] + float(res["network_charges_eur"]) + loss_charges)
    minutes = 60.0 * dt_h
    for check in CHECKS:
        sel = viol[viol.check == check] if len(viol) else viol
        res[f"minutes_{check}"] = float(sel.time.nunique() * minutes) if len(sel) else 0.0
    return res


def promise_gap(
    inp: DesignInputs, out: DesignOutcome, vt: ComplexArray, pf: xr.Dataset, *, tolerance: float = 1e-6
) -> dict[str, float]:
    """Where a linearised design promised a limit and OpenDSS disagrees, by how much.

    ``vt``/``pf`` is the OpenDSS solution of the design's outcome. For every promised row
    (``out.promised``) its exact value ``g`` is recomputed from that solution:
    ``promise_broken_minutes`` counts the minutes with a promised row beyond its limit;
    ``promise_excess_<check>`` is the largest excess (V for voltage rows and ``vne``;
    percentage points for ``pvur``, ``100 g / v_nominal``, and ``vuf``; A for ``line_thermal``).
    """
    if out.promised is None:
        return {}
    steps = np.arange(vt.shape[1])
    rows = _steps_rows(inp, vt, pf, steps, values_only=True)
    g = np.stack([r.g0 for r in rows])
    check = rows[0].check
    bad = out.promised & (g > tolerance)
    res = {"promise_broken_minutes": float(bad.any(axis=1).sum() * inp.dt_h * 60.0)}
    for name in ("voltage_high", "voltage_low", "pvur", "vuf", "vne", "line_thermal"):
        sel = bad[:, check == name]
        worst = float(np.where(sel, g[:, check == name], 0.0).max(initial=0.0))
        res[f"promise_excess_{name}"] = 100.0 * worst / inp.limits.v_nominal_v if name == "pvur" else worst
    return res
