"""Study runner: scenario grid -> power flow, market, allocation, metrics -> outputs.

:mod:`lv3ph.studyfile` reads a study file into a :class:`~lv3ph.results.StudySpec` and
its scenario grid; this module runs each scenario (:func:`run_scenario`) and the whole
study (:func:`run_study`, :func:`run_hosting_study`) and writes the result files and the
report. Scenarios are independent, so they run in parallel on Dask (one OpenDSS engine
per worker process); a serial run gives identical numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import scipy.sparse as sp
import scipy.sparse.csgraph as csg
import xarray as xr
from threadpoolctl import threadpool_limits

from lv3ph.allocation.audit import allocate_method
from lv3ph.allocation.contracts import assert_valid_contracts, contract_shares, read_contracts
from lv3ph.allocation.exact import loss_network
from lv3ph.en50160 import aggregate, customer_quality, en50160_table
from lv3ph.errors import StudyError
from lv3ph.flex import Fleet, ev_fleet
from lv3ph.market import bilateral, bills, community_auction, no_market
from lv3ph.market.clearing import MarketResult, Preference
from lv3ph.market.outcome import DesignInputs, design_summary, promise_gap, run_design
from lv3ph.model import Customer, battery_commands, loadshape_command, pv_commands
from lv3ph.parallel import run_jobs
from lv3ph.phases import (
    Objective,
    arrangement_commands,
    choose_switches,
    head_currents,
    make_switchable,
    rebalance,
    run_switching,
    switching_operations,
    switching_schedule,
)
from lv3ph.powerflow import capture, customer_ports, neutral_conductors, open_feeder, solve_raw
from lv3ph.prosumers import dispatch_p2p, dispatch_self_consumption, place_pv, pv_profile_kw_per_kwp
from lv3ph.results import Scenario, ScenarioResult, StudySpec, write_metadata
from lv3ph.stream import write_captured
from lv3ph.studyfile import DESIGN_MARKETS, load_study, scenarios
from lv3ph.topology import phase_labels
from lv3ph.unbalance import line_loading_pct, phase_neutral_voltage, unbalance, violation_summary, violations


# ---------------------------------------------------------------------------- one scenario
def _market(
    spec: StudySpec,
    sc: Scenario,
    net_kw: np.ndarray,
    names: list[str],
    times: np.ndarray,
    phases: list[str],
    distance: np.ndarray,
) -> MarketResult:
    if sc.market == "none":
        return no_market(net_kw, names, times, spec.tariffs)
    if sc.market in ("community-auction", "unconstrained"):
        return community_auction(net_kw, names, times, spec.tariffs)
    if sc.market.startswith("bilateral:"):
        return bilateral(
            net_kw,
            names,
            times,
            spec.tariffs,
            preference=cast(Preference, sc.market.split(":", 1)[1]),
            seed=sc.seed,
            distance=distance,
            phases=phases,
        )
    table = read_contracts(sc.market[5:])
    price = pd.Series(spec.tariffs.mid_eur_kwh, index=times)
    return MarketResult(
        contracts=table,
        price_eur_kwh=price,
        traded_kw=table.groupby("time").kw.sum().reindex(times, fill_value=0).to_numpy(),
    )


def run_scenario(spec: StudySpec, sc: Scenario, *, progress: bool = False) -> ScenarioResult:
    """Run one scenario: devices, market, power flow, allocation, metrics.

    BLAS runs single-threaded inside a scenario (scenarios are the unit of parallelism),
    which also makes the numbers bit-identical wherever the scenario runs.
    """
    with threadpool_limits(limits=1):
        return _run_scenario(spec, sc, progress=progress)


def _run_scenario(spec: StudySpec, sc: Scenario, *, progress: bool) -> ScenarioResult:
    run = spec.run
    engine, model = open_feeder(spec.model, vmaxpu=spec.vmaxpu, pme_ohm=sc.pme_ohm or None)
    names = [c.name for c in model.customers]
    single = [c.name for c in model.customers if len(c.phases) == 1]
    load_names, load_kw, _ = engine.load_setpoints(run.mode, run.stepsize_s, run.start, run.steps)
    load_kw = pd.DataFrame(load_kw, columns=load_names)[names].to_numpy()
    times = np.arange(run.start, run.start + run.steps)
    dt_h = run.stepsize_s / 3600.0
    placement = place_pv(single, share=sc.pv_share, kwp=spec.pv.kwp, seed=sc.seed) if sc.pv_share > 0 else {}
    commands: list[str] = []
    pv_kw = np.zeros_like(load_kw)
    if placement:
        profile = pv_profile_kw_per_kwp(
            latitude=spec.pv.latitude,
            longitude=spec.pv.longitude,
            date=spec.pv.date,
            stepsize_s=run.stepsize_s,
            start=1,
            steps=run.start + run.steps - 1,
            tz=spec.pv.tz,
            altitude=spec.pv.altitude,
            tilt=spec.pv.tilt,
            azimuth=spec.pv.azimuth,
            weather_file=Path(spec.pv.weather_file) if spec.pv.weather_file else None,
        )
        commands += [loadshape_command("lv3ph_pv", profile, run.stepsize_s), *pv_commands(model, placement, "lv3ph_pv")]
        idx = {n: i for i, n in enumerate(names)}
        for n, kwp in placement.items():
            pv_kw[:, idx[n]] = kwp * profile[run.start - 1 :]
    net_kw = load_kw - pv_kw
    design = uses_design(spec, sc)
    bat_names = list(placement) if sc.battery not in ("off", "price") else []
    bat_kw = np.zeros_like(net_kw)
    soc = np.zeros((run.steps + 1, 0))
    if bat_names:
        cols = [names.index(n) for n in bat_names]
        if sc.battery == "self-consumption":
            b, soc = dispatch_self_consumption(net_kw[:, cols], spec.battery, dt_h)
        else:
            mid = spec.tariffs.mid_eur_kwh
            b, soc = dispatch_p2p(
                net_kw[:, cols],
                mid,
                spec.tariffs.grid_import_eur_kwh,
                spec.tariffs.grid_export_eur_kwh,
                spec.battery,
                dt_h,
            )
        bat_kw[:, cols] = b
        if not design:
            commands += battery_commands(model, bat_names)
    if design:  # one controllable generator per customer: batteries, EVs, shifted demand, curtailment
        commands += battery_commands(model, single)
    net_kw = net_kw + bat_kw
    if commands:
        engine.apply(commands)
        model = engine.model()
    switches: list[str] = []
    schedule = None
    demand, supply = np.clip(net_kw, 0, None), np.clip(-net_kw, 0, None)
    objective = cast(Objective, spec.phases.objective)
    if sc.arrangement == "static-rebalanced":
        edits, _ = arrangement_commands(model, rebalance(model, demand, supply, objective=objective))
        if edits:
            engine.apply(edits)
            model = engine.model()
    phases = phase_labels(model)  # network and traced phase(s) of each customer
    customers = model.customers  # as arranged for the period (dynamic switching starts from these)
    if sc.arrangement == "dynamic":
        switches = choose_switches(model, share=spec.phases.switch_share, seed=spec.phases.seed)
        schedule = switching_schedule(
            model,
            demand,
            supply,
            switches,
            stepsize_s=run.stepsize_s,
            interval_s=spec.phases.interval_s,
            start=run.start,
            max_ops_per_day=spec.phases.max_ops_per_day,
            objective=objective,
        )
        model = make_switchable(engine, model, switches)
    ports = customer_ports(model)
    net = loss_network(model)
    distance = _electrical_distance(model, net)
    outcome = None
    if design:
        inputs = _design_inputs(spec, sc, engine, model, net, distance, load_kw, pv_kw, bat_kw, placement)
        outcome = run_design(inputs)
        market = outcome.market
        bat_names, bat_kw = single, outcome.device_kw
        ev = inputs.fleet.ev
        owners = ([names[i] for i in sorted(inputs.fleet.batteries)], [names[i] for i in ev.owners] if ev else [])
        net_kw = load_kw - pv_kw + bat_kw
    else:
        market = _market(spec, sc, net_kw, names, times, phases, distance)
        owners = (list(bat_names), [])
    contracts = market.contracts.copy()
    contracts["contract"] = contracts.seller + ">" + contracts.buyer  # a standing pair agreement
    assert_valid_contracts(contracts, ports.names, times)
    bat_cols = [names.index(n) for n in bat_names]
    before_step = _battery_setter(engine, bat_names, bat_kw[:, bat_cols], run.start) if bat_names else None

    t_pf = time.perf_counter()
    if schedule is None:
        vt, measured = solve_raw(engine, model, run, progress=progress, before_step=before_step)
    else:  # switchable customers: their load, PV and battery are carried by the phase loads
        vt, measured = run_switching(
            engine, model, run, load_kw, pv_kw - bat_kw, schedule, progress=progress, before_step=before_step
        )
    t_pf = time.perf_counter() - t_pf
    pf = capture(model, run, vt, measured)
    unb = unbalance(pf)
    viol = violations(pf, unb, spec.limits.per_step())
    quality = pd.DataFrame()
    if spec.en50160.steps_per_interval(run.stepsize_s):
        v, vuf, pvur = customer_quality(model, vt)
        _, weeks = aggregate(
            v, vuf, pvur, start=run.start, stepsize_s=run.stepsize_s, customers=names, config=spec.en50160
        )
        quality = en50160_table(weeks)
    if spec.capture is not None:
        write_captured(
            model,
            run,
            vt,
            measured,
            spec.out / sc.name / "powerflow.zarr",
            capture_level=spec.capture,
            block_steps=spec.block_steps,
            config=spec.en50160,
        )
    shares = contract_shares(contracts, pf.customer_p_kw.values, ports.names, times, oversold="scale")
    results: dict[str, xr.Dataset] = {}
    for m in sorted(spec.methods, key=lambda x: x != "exact"):  # exact first: phase-only reuses it
        results[m] = allocate_method(
            m,
            engine=engine,
            model=model,
            pf=pf,
            vt=vt,
            contracts=contracts,
            shares=shares,
            net=net,
            run=run,
            exact=results.get("exact"),
            before_step=before_step,
            reduced_before_step=(lambda eng: _battery_setter(eng, bat_names, bat_kw[:, bat_cols], run.start))
            if bat_names
            else None,
        )
    results = {m: results[m] for m in spec.methods}
    allocation = allocation_table(results, dt_h)
    bill = bills(net_kw, names, times, market.contracts, market.price_eur_kwh, spec.tariffs, dt_h)
    series = _series(model, engine.line_lengths_km(), pf, unb, market, pv_kw, load_kw, bat_kw)
    series = series.merge(
        feeder_variables(model, customers, engine.bus_coordinates(), pf, unb, placement, *owners, dt_h)
    )
    series["battery_soc_mean"] = (
        "time",
        soc[1:].mean(axis=1) if soc.shape[1] else np.full(run.steps, np.nan),
        {"units": "1", "long_name": "mean state of charge of the batteries at the end of each step"},
    )
    summary = summarise(sc, pf, unb, viol, market, net_kw, pv_kw, bill, allocation, spec.methods, dt_h)
    summary |= en50160_summary(quality)
    summary["limits_basis"] = spec.limits.basis
    summary["repeat_profiles"] = "yes" if run.repeat_profiles else "no"
    if outcome is not None:
        summary["flex"] = sc.flex
        summary.update(design_summary(outcome, sc.market, viol, bill, allocation, spec.market_spec, dt_h))
        summary.update(promise_gap(inputs, outcome, vt, pf))
        for key, arr in (("curtailed_kw", outcome.curtail_kw), ("ev_kw", outcome.ev_kw)):
            series[key] = ("time", arr.sum(axis=1), {"units": "kW"})
        series["shifted_kw"] = (
            "time",
            (outcome.shift_kw - outcome.shift_base_kw).sum(axis=1),
            {"units": "kW", "long_name": "shifted minus base shiftable demand"},
        )
    notes = []
    if run.repeat_profiles:
        notes.append("load shapes shorter than the run were repeated (repeat_profiles = true)")
    if schedule is not None:
        ops = int(switching_operations(schedule, stepsize_s=run.stepsize_s, start=run.start).sum())
        summary["switch_operations"] = ops
        notes.append(f"{len(switches)} customers with phase selector switches made {ops} switching operations")
    if shares.scaled:
        notes.append(f"{shares.scaled} contract rows scaled down to the measured export/import")

    return ScenarioResult(
        scenario=sc,
        summary=summary,
        series=series,
        allocation=allocation,
        bills=bill,
        violations=violation_summary(viol),
        notes=notes,
        en50160=quality,
        timings_s={"powerflow": t_pf, **(outcome.timings_s if outcome is not None else {})},
    )


def uses_design(spec: StudySpec, sc: Scenario) -> bool:
    """True when the scenario runs through :func:`lv3ph.market.outcome.run_design`: a
    network-aware design, price-responsive batteries, scheduled flex or EVs on the feeder
    (``unconstrained`` without any of these is exactly the ``community-auction`` path)."""
    if sc.market not in DESIGN_MARKETS:
        return False
    return (
        sc.market not in ("none", "unconstrained")
        or sc.battery == "price"
        or sc.flex != "none"
        or (spec.flex.ev_share > 0)
    )


def _design_inputs(
    spec: StudySpec,
    sc: Scenario,
    engine: Any,
    model: Any,
    net: Any,
    distance: np.ndarray,
    load_kw: np.ndarray,
    pv_kw: np.ndarray,
    fixed_kw: np.ndarray,
    placement: dict[str, float],
) -> DesignInputs:
    """What the scenario's market design needs; its ``solve`` runs OpenDSS on this engine."""
    run = spec.run
    names = [c.name for c in model.customers]
    single = [c.name for c in model.customers if len(c.phases) == 1]
    cols = [names.index(n) for n in single]

    def solve(device_kw: np.ndarray) -> tuple[np.ndarray, xr.Dataset]:
        before = _battery_setter(engine, single, device_kw[:, cols], run.start)
        vt, measured = solve_raw(engine, model, run, progress=False, before_step=before)
        return vt, capture(model, run, vt, measured)

    batteries = {names.index(n): spec.battery for n in placement} if sc.battery == "price" else {}
    ev = ev_fleet(len(names), spec.flex, eligible=np.array(cols)) if spec.flex.ev_share > 0 else None
    fleet = Fleet(
        spec=spec.flex,
        batteries=batteries,
        ev=ev,
        smart_ev="ev" in sc.flex.split("+"),
        shift="shift" in sc.flex.split("+"),
        load_kw=load_kw,
        stepsize_s=run.stepsize_s,
        start=run.start,
    )
    return DesignInputs(
        design=sc.market,
        tariffs=spec.tariffs,
        spec=spec.market_spec,
        limits=spec.limits,
        names=names,
        times=np.arange(run.start, run.start + run.steps),
        dt_h=run.stepsize_s / 3600.0,
        base_kw=load_kw - pv_kw + fixed_kw,
        pv_kw=pv_kw,
        fixed_kw=fixed_kw,
        fleet=fleet,
        model=model,
        net=net,
        distance=distance,
        solve=solve,
        seed=sc.seed,
    )


def en50160_summary(table: pd.DataFrame) -> dict[str, float | int | str]:
    """Headline EN 50160 numbers of a scenario from its per-customer, per-week table."""
    if table.empty:
        return {"en50160_noncompliant_customers": "not computed"}
    bad = table[table.compliant == "no"].customer.unique()
    return {
        "en50160_noncompliant_customers": int(bad.size),
        "en50160_worst_v_within_band_pct": float(table.v_within_band_pct.min()),
        "en50160_v10_min_v": float(table.v10_min_v.min()),
        "en50160_v10_max_v": float(table.v10_max_v.max()),
        "en50160_worst_vuf_p95_pct": float(table.vuf_p95_pct.max()),
    }


def _battery_setter(engine: Any, names: list[str], charge_kw: np.ndarray, start: int) -> Callable[[int], None]:
    """Per-step setter of the battery generators: ``charge_kw`` (steps, batteries) drawn
    power, so the generator's kW is its negative (discharge positive)."""
    set_kw = engine.setter("generator", [f"bat_{n}" for n in names])

    def before_step(k: int) -> None:
        set_kw(-charge_kw[k - start])

    return before_step


def _electrical_distance(model: Any, net: Any) -> np.ndarray:
    """Customer-to-customer electrical distance: |Z| of the loop through the network, ohm.

    ``d(i, j) = |Z_ii + Z_jj - 2 Z_ij|`` on the customers' phase nodes (Thevenin impedance
    between them), from the factorised network.
    """
    where = {int(n): i for i, n in enumerate(net.ext_nodes)}
    nodes = [int(c.phase_nodes[0]) for c in model.customers]
    cols = [where[n] for n in nodes]
    z = net.z_ext[np.ix_(nodes, cols)]
    d = np.abs(np.diag(z)[:, None] + np.diag(z)[None, :] - 2 * z)
    return d


def allocation_table(results: dict[str, xr.Dataset], dt_h: float) -> pd.DataFrame:
    """Per contract id (and grid row), energy traded and loss per method summed over the run, kWh."""
    frames = []
    for method, ds in results.items():
        df = pd.DataFrame(
            {
                "contract": ds.contract.values,
                "seller": ds.seller.values,
                "buyer": ds.buyer.values,
                "kw": ds.kw.values,
                f"{method}_kwh": ds.loss_total_kw.values,
            }
        )
        g = df.groupby("contract", sort=True).agg(
            seller=("seller", "first"),
            buyer=("buyer", "first"),
            kwh_traded=("kw", "sum"),
            loss=(f"{method}_kwh", "sum"),
        )
        g["kwh_traded"] *= dt_h
        g[f"{method}_kwh"] = g.pop("loss") * dt_h
        frames.append(g)
    out = frames[0]
    for f in frames[1:]:
        out = out.join(f[[c for c in f.columns if c.endswith("_kwh") and c != "kwh_traded"]])
    return out.reset_index()


def _series(
    model: Any,
    lengths_km: dict[str, float],
    pf: xr.Dataset,
    unb: xr.Dataset,
    market: MarketResult,
    pv_kw: np.ndarray,
    load_kw: np.ndarray,
    bat_kw: np.ndarray,
) -> xr.Dataset:
    kinds = pf.element_kind
    head_phase, neutral = head_currents(model, pf)
    vpn = abs(phase_neutral_voltage(pf))
    ds = xr.Dataset(
        {
            "loss_phase_kw": pf.loss_phase_kw.where(kinds == "line").sum("element"),
            "loss_neutral_kw": pf.loss_neutral_kw.sum("element"),
            "loss_earth_kw": pf.loss_earth_kw.sum("element"),
            "loss_transformer_kw": pf.loss_kw.where(kinds == "transformer").sum("element"),
            "loss_total_kw": pf.loss_total_kw,
            "pvur_max_pct": unb.pvur_pct.max("bus"),
            "vuf_max_pct": unb.vuf_pct.max("bus"),
            "vne_max_v": unb.vne_v.max("bus"),
            "head_current_a": head_phase,
            "head_neutral_current_a": neutral if neutral is not None else xr.zeros_like(head_phase.isel(phase=0)),
            "source_p_kw": pf.source_p_kw,
            "pv_kw": ("time", pv_kw.sum(axis=1)),
            "load_kw": ("time", load_kw.sum(axis=1)),
            "battery_kw": ("time", bat_kw.sum(axis=1)),
            "traded_kw": ("time", np.asarray(market.traded_kw, dtype=float)),
            "price_eur_kwh": ("time", market.price_eur_kwh.reindex(pf.time.values).to_numpy(dtype=float)),
            "vmin_pn_v": vpn.min("time"),
            "vmax_pn_v": vpn.max("time"),
        }
    )
    ds["bus_distance_km"] = ("bus", bus_distances_km(model, lengths_km, pf.bus.values))
    return ds.drop_vars([c for c in ds.coords if c not in ("time", "bus", "phase")])


def feeder_variables(
    model: Any,
    customers: Sequence[Customer],
    coords: Mapping[str, tuple[float, float]],
    pf: xr.Dataset,
    unb: xr.Dataset,
    pv_kwp: Mapping[str, float],
    batteries: Sequence[str],
    evs: Sequence[str],
    dt_h: float,
) -> xr.Dataset:
    """What the feeder map draws: bus coordinates, lines, customers, earth electrodes and
    per bus / per line worst values over the run.

    Dims ``bus`` (``bus_x``, ``bus_y``: OpenDSS BusCoords in the model's units, NaN where
    not given; ``pvur_bus_max_pct``, ``vuf_bus_max_pct``), ``line`` (``line_bus1``,
    ``line_bus2``; ``line_neutral_current_max_a``: largest current in a neutral conductor,
    A; ``line_loading_max_pct``: :func:`lv3ph.unbalance.line_loading_pct`, NaN without a
    rating; ``line_loss_kwh``: loss over the run), ``customer`` (``customer_bus``,
    ``customer_phases``: :attr:`~lv3ph.model.Customer.phases` joined, ``customer_pv_kwp``,
    ``customer_devices``: ``+``-joined ``pv``/``battery``/``ev``/``generator``/...;
    ``batteries`` and ``evs`` name the customers whose battery or EV the study adds),
    ``electrode``
    (``electrode_bus``) and ``transformer`` (``transformer_bus``: its last winding's bus).
    """
    buses = [str(b) for b in pf.bus.values]
    lines = [i for i, e in enumerate(model.elements) if e.kind == "line" and len(e.buses) == 2]
    names = [model.elements[i].name for i in lines]
    cur = np.abs(pf.current.transpose("time", "element", "conductor").values[:, lines, :])
    neutral = neutral_conductors(model, cur.shape[2])[lines]
    i_n = np.where(neutral[None], np.nan_to_num(cur), 0.0).max(axis=(0, 2), initial=0.0)
    loading = line_loading_pct(pf).max("time").reindex(element=names)
    devices = []
    for c in customers:
        own = [d for d in c.devices[1:] if not d.startswith("generator.bat_")]  # the study's device generator
        kinds = {"pv" if d.startswith(("pvsystem.", "generator.pv_")) else d.split(".", 1)[0] for d in own}
        kinds = {"battery" if k in ("storage",) else k for k in kinds} | ({"pv"} if c.name in pv_kwp else set())
        kinds |= ({"battery"} if c.name in batteries else set()) | ({"ev"} if c.name in evs else set())
        devices.append("+".join(sorted(kinds)))
    earth = [e for e in model.elements if e.kind == "earthing"]
    tx = [e for e in model.elements if e.kind == "transformer"]
    xy = np.array([coords.get(b, (np.nan, np.nan)) for b in buses], dtype=float).reshape(-1, 2)
    return xr.Dataset(
        {
            "bus_x": ("bus", xy[:, 0], {"long_name": "BusCoords x (model units)"}),
            "bus_y": ("bus", xy[:, 1], {"long_name": "BusCoords y (model units)"}),
            "pvur_bus_max_pct": ("bus", unb.pvur_pct.max("time").reindex(bus=buses).values, {"units": "%"}),
            "vuf_bus_max_pct": ("bus", unb.vuf_pct.max("time").reindex(bus=buses).values, {"units": "%"}),
            "line_bus1": ("line", [model.elements[i].buses[0] for i in lines]),
            "line_bus2": ("line", [model.elements[i].buses[1] for i in lines]),
            "line_neutral_current_max_a": ("line", i_n, {"units": "A"}),
            "line_loading_max_pct": ("line", loading.values, {"units": "%"}),
            "line_loss_kwh": ("line", pf.loss_kw.values[:, lines].sum(axis=0) * dt_h, {"units": "kWh"}),
            "customer_bus": ("customer", [c.bus for c in customers]),
            "customer_phases": ("customer", ["".join(str(p) for p in c.phases) for c in customers]),
            "customer_pv_kwp": ("customer", [float(pv_kwp.get(c.name, 0.0)) for c in customers], {"units": "kWp"}),
            "customer_devices": ("customer", devices),
            "electrode_bus": ("electrode", [e.buses[0] for e in earth]),
            "transformer_bus": ("transformer", [e.buses[-1] for e in tx]),
        },
        coords={"bus": buses, "line": names, "customer": [c.name for c in customers]},
    )


def bus_distances_km(model: Any, lengths_km: dict[str, float], buses: np.ndarray) -> np.ndarray:
    """Distance of each bus from the transformer's LV bus (or the source) along lines, km."""
    bus_idx = {b: i for i, b in enumerate(buses)}
    rows, cols, w = [], [], []
    for e in model.elements:
        if e.kind == "line" and len(e.buses) == 2 and e.name in lengths_km:
            rows.append(bus_idx[e.buses[0]])
            cols.append(bus_idx[e.buses[1]])
            w.append(max(lengths_km[e.name], 1e-9))
    g = sp.csr_matrix((w, (rows, cols)), shape=(len(buses), len(buses)))
    tx = [e for e in model.elements if e.kind == "transformer"]
    root = bus_idx[tx[0].buses[-1]] if tx else bus_idx[model.node_bus[model.sources[0].nodes[0]]]
    dist = csg.dijkstra(g, directed=False, indices=root)
    return np.where(np.isfinite(dist), dist, np.nan)


def summarise(
    sc: Scenario,
    pf: xr.Dataset,
    unb: xr.Dataset,
    viol: pd.DataFrame,
    market: MarketResult,
    net_kw: np.ndarray,
    pv_kw: np.ndarray,
    bill: pd.DataFrame,
    allocation: pd.DataFrame,
    methods: tuple[str, ...],
    dt_h: float,
) -> dict[str, float | int | str]:
    """Headline numbers of a scenario (units in the keys)."""
    traded = float(np.sum(market.traded_kw)) * dt_h
    demand = float(np.clip(net_kw, 0, None).sum()) * dt_h
    load = float((net_kw + pv_kw).clip(min=0).sum()) * dt_h
    import_kw = pf.source_p_kw.values
    lv = np.unique(pf.customer_bus.values[pf.customer_bus.values != ""])  # customers' supply terminals
    loss = {k: float(pf[f"loss_{k}_kw"].sum()) * dt_h for k in ("phase", "neutral", "earth")}
    out: dict[str, float | int | str] = {
        "scenario": sc.name,
        "pv_share": sc.pv_share,
        "market": sc.market,
        "battery": sc.battery,
        "pme_ohm": sc.pme_ohm,
        "arrangement": sc.arrangement,
        "pv_kwh": float(pv_kw.sum()) * dt_h,
        "traded_kwh": traded,
        "self_sufficiency_pct": 100.0 * (1.0 - demand / load) if load > 0 else 0.0,
        "peak_import_kw": float(import_kw.max()),
        "peak_export_kw": float(max(0.0, -import_kw.min())),
        "loss_kwh": float(pf.loss_total_kw.sum()) * dt_h,
        "loss_phase_kwh": loss["phase"],
        "loss_neutral_kwh": loss["neutral"],
        "loss_earth_kwh": loss["earth"],
        "pvur_max_pct": float(unb.pvur_pct.max()),
        "pvur_p95_pct": float(np.nanpercentile(unb.pvur_pct.max("bus"), 95)),
        "vuf_max_pct": float(unb.vuf_pct.max()),
        "vuf_p95_pct": float(np.nanpercentile(unb.vuf_pct.max("bus"), 95)),
        "vne_max_v": float(unb.vne_v.max()),
        "vmin_v": float(unb.vmin_pn_v.sel(bus=lv).min()),
        "vmax_v": float(unb.vmax_pn_v.sel(bus=lv).max()),
        "violation_steps": int(viol.time.nunique()) if len(viol) else 0,
        "violation_minutes": float(viol.time.nunique() * dt_h * 60) if len(viol) else 0.0,
        "bill_savings_eur": float(bill["savings_eur"].sum()),
    }
    for check in ("voltage_high", "voltage_low", "vuf", "pvur", "vne", "line_thermal", "transformer_thermal"):
        out[f"violations_{check}"] = int((viol.check == check).sum()) if len(viol) else 0
    contracts = allocation[~allocation.contract.str.startswith("grid:")]
    for m in methods:
        out[f"contract_loss_{m}_kwh"] = float(contracts[f"{m}_kwh"].sum()) if len(contracts) else 0.0
    return out


# ---------------------------------------------------------------------------- the whole study
def run_scenarios(
    spec: StudySpec,
    grid: list[Scenario],
    *,
    serial: bool = False,
    scheduler: str | None = None,
    workers: int = 2,
    progress: bool = True,
) -> list[ScenarioResult]:
    """Run scenarios serially or on Dask, in grid order (results do not depend on which)."""
    return run_jobs(
        run_scenario,
        [(spec, sc) for sc in grid],
        serial=serial,
        workers=workers,
        scheduler=scheduler,
        desc="scenarios",
        progress=progress,
        keys=[f"scenario-{spec.name}-{sc.name}" for sc in grid],
    )


def write_outputs(spec: StudySpec, results: list[ScenarioResult]) -> Path:
    """Write per-scenario netCDF and CSV tables, the combined summary, plots and report.

    Every file is written to a temporary name and renamed, so a crash leaves no partial
    file. Returns the path of ``report.html``.
    """
    from lv3ph.io import write_csv, write_dataset
    from lv3ph.report import write_report

    out = spec.out
    for r in results:
        folder = out / r.scenario.name
        write_dataset(r.series.assign_attrs({k: str(v) for k, v in r.summary.items()}), folder / "series.nc")
        write_csv(r.allocation, folder / "allocation.csv")
        write_csv(r.bills.reset_index(), folder / "bills.csv")
        write_csv(r.violations, folder / "violations.csv")
        if not r.en50160.empty:
            write_csv(r.en50160, folder / "en50160.csv")
    summary = summary_table(results)
    write_csv(summary, out / "summary.csv")
    write_metadata(spec, out, results=results)
    return write_report(spec, results, summary, out)


def summary_table(results: list[ScenarioResult]) -> pd.DataFrame:
    """One row per scenario with its headline numbers."""
    return pd.DataFrame([r.summary for r in results])


def run_hosting_study(
    spec: StudySpec, *, serial: bool = False, scheduler: str | None = None, workers: int = 2, progress: bool = True
) -> tuple[pd.DataFrame, Path]:
    """Hosting capacity per phase arrangement; writes CSVs, ``hosting.png``, ``report.html``."""
    from lv3ph.hosting import arrangement_setup, hosting_capacity
    from lv3ph.io import write_csv
    from lv3ph.report import write_hosting_report

    h = spec.hosting
    assert h is not None
    limits = spec.limits if h.pvur else replace(spec.limits, pvur_pct=None)
    base = [f"Edit Vsource.source pu={h.source_pu}"] if h.source_pu else []
    results = {}
    for arrangement in spec.arrangement:
        for label, aware, controls in h.variants(arrangement):
            edits, switching = arrangement_setup(
                spec.model,
                arrangement,
                run=spec.run,
                vmaxpu=spec.vmaxpu,
                commands=base,
                switching={
                    "share": spec.phases.switch_share,
                    "interval_s": spec.phases.interval_s,
                    "max_ops_per_day": spec.phases.max_ops_per_day,
                    "objective": spec.phases.objective,
                    "seed": spec.phases.seed,
                },
                pv_aware=aware,
                expected_kwp=0.5 * (h.kwp[0] + h.kwp[1]),
            )
            results[label] = hosting_capacity(
                spec.model,
                run=spec.run,
                limits=limits,
                placements=h.placements,
                seed=h.seed,
                kwp_range=h.kwp,
                step_kw=h.step_kw,
                vmaxpu=spec.vmaxpu,
                pme_ohm=spec.pme_ohm[0] or None,
                commands=base + edits,
                switching=switching,
                pre_existing=h.criterion,
                basis=h.basis,
                controls=controls,
                serial=serial,
                workers=workers,
                scheduler=scheduler,
                progress=progress,
                label=label,
            )
    rows = []
    for arrangement, res in results.items():
        write_csv(res.placements, spec.out / f"hosting_{arrangement}.csv")
        write_csv(res.steps, spec.out / f"kept_steps_{arrangement}.csv")
        counts = res.binding_counts()
        rows.append(
            {
                "arrangement": arrangement,
                **res.summary,
                "criterion": res.settings["pre_existing"],
                "basis": res.settings["basis"],
                "curtailed_kwh": float(res.placements["curtailed_kwh"].sum()),
                "binding": ", ".join(f"{k} {v}" for k, v in counts.items()),
            }
        )
    summary = pd.DataFrame(rows)
    write_csv(summary, spec.out / "summary.csv")
    write_metadata(spec, spec.out, arrangements=tuple(results), summary=summary)
    return summary, write_hosting_report(spec, results, summary, spec.out)


def run_study(
    path: str | Path,
    *,
    serial: bool = False,
    scheduler: str | None = None,
    workers: int = 2,
    progress: bool = True,
    out: str | Path | None = None,
) -> tuple[StudySpec, list[ScenarioResult], Path]:
    """Load, run and report a study; returns the spec, the results and ``report.html``.

    ``out`` replaces the study file's output folder."""
    spec = load_study(path)
    if out is not None:
        spec = replace(spec, out=Path(out).resolve())
    if spec.hosting is not None:
        raise StudyError(f"{path} is a hosting-capacity study: run it with run_hosting_study (lv3ph study does)")
    results = run_scenarios(
        spec, scenarios(spec), serial=serial, scheduler=scheduler, workers=workers, progress=progress
    )
    return spec, results, write_outputs(spec, results)
