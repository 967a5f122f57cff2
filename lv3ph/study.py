"""Study runner: a TOML study file -> scenario grid -> power flow, market, allocation, metrics.

A study file (``studies/*.toml``) has these tables (every key optional unless marked):

* ``[study]``: ``name`` (required), ``model`` (required; OpenDSS master file, relative to
  the study file), ``vmaxpu``, ``pme_ohm`` (earth electrodes at every customer), ``out``
  (output folder, default ``out/<name>`` beside the study file), ``seed``.
* ``[time]``: ``mode`` (snap/daily/yearly), ``stepsize`` (``1m``), ``start``, ``steps``.
* ``[limits]``: see :class:`lv3ph.unbalance.Limits`.
* ``[pv]``: ``date``, ``latitude``, ``longitude``, ``tz``, ``altitude``, ``tilt``,
  ``azimuth``, ``kwp`` (number, or ``[low, high]`` drawn per customer), ``weather_file``.
* ``[battery]``: ``kwh``, ``kw``, ``efficiency``, ``soc0``, ``soc_min``, ``soc_max`` (one
  battery beside every PV customer when a scenario turns batteries on).
* ``[tariffs]``: ``grid_import_eur_kwh``, ``grid_export_eur_kwh``, ``local_price_rule``.
* ``[allocation]``: ``methods`` (first is the reference; default ``["exact",
  "phase-only", "pro-rata"]``).
* ``[scenarios]``: lists whose product is the scenario grid: ``pv_share`` (share of
  customers with PV, 0..1), ``market`` (``none``, ``community-auction``,
  ``bilateral:random``, ``bilateral:electrical-distance``, ``bilateral:same-phase-first``,
  ``file:<contracts.csv>``), ``battery`` (``off``, ``self-consumption``, ``p2p``),
  ``pme_ohm`` (earth electrode at every customer's neutral, ohm; 0 = earthed at the
  transformer only; default ``[study].pme_ohm`` or 0), ``arrangement`` (``as-built``,
  ``static-rebalanced``: one re-phasing for the period from :func:`lv3ph.phases.rebalance`;
  ``dynamic``: phase selector switches re-phasing every interval, Horta et al. 2018).
* ``[phases]``: ``objective`` (``neutral`` or ``pvur``), ``switch_share`` (share of movable
  customers with a switch, default 1), ``interval`` (``15m``), ``max_ops_per_day`` (4),
  ``seed``. The market's contracts stay as traded; physics and allocation follow the phases.

Every problem in a study file is reported at once (:class:`~lv3ph.errors.StudyError`), each
naming the table and key. Scenarios are independent, so they run in parallel on Dask
(one OpenDSS engine per worker process); a serial run gives identical numbers.
"""

from __future__ import annotations

import itertools
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
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
from lv3ph.dss import parse_stepsize
from lv3ph.errors import Lv3phError, StudyError
from lv3ph.market import Tariffs, bilateral, bills, community_auction, no_market
from lv3ph.market.clearing import MarketResult, Preference
from lv3ph.model import battery_commands, loadshape_command, pv_commands
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
from lv3ph.powerflow import RunSpec, capture, customer_ports, open_feeder, solve_raw
from lv3ph.prosumers import (
    DEFAULT_LATITUDE,
    DEFAULT_LONGITUDE,
    DEFAULT_TZ,
    Battery,
    dispatch_p2p,
    dispatch_self_consumption,
    place_pv,
    pv_profile_kw_per_kwp,
)
from lv3ph.unbalance import Limits, phase_neutral_voltage, unbalance, violation_summary, violations

MARKETS = (
    "none",
    "community-auction",
    "bilateral:random",
    "bilateral:electrical-distance",
    "bilateral:same-phase-first",
)
BATTERY_STRATEGIES = ("off", "self-consumption", "p2p")
ARRANGEMENTS = ("as-built", "static-rebalanced", "dynamic")
#: Methods that work with dynamic switching (the others re-solve or reduce the model).
DYNAMIC_METHODS = ("exact", "phase-only", "pro-rata")
METHODS_DEFAULT = ("exact", "phase-only", "pro-rata")
_KEYS: dict[str, set[str]] = {
    "study": {"name", "model", "vmaxpu", "pme_ohm", "out", "seed"},
    "time": {"mode", "stepsize", "start", "steps"},
    "pv": {"date", "latitude", "longitude", "tz", "altitude", "tilt", "azimuth", "kwp", "weather_file"},
    "battery": {"kwh", "kw", "efficiency", "soc0", "soc_min", "soc_max"},
    "tariffs": {"grid_import_eur_kwh", "grid_export_eur_kwh", "local_price_rule"},
    "allocation": {"methods"},
    "scenarios": {"pv_share", "market", "battery", "pme_ohm", "arrangement"},
    "phases": {"objective", "switch_share", "interval", "max_ops_per_day", "seed"},
    "hosting": {"placements", "seed", "kwp", "source_pu", "pvur", "step_kw"},
    "limits": set(),  # checked by Limits.from_dict
}


@dataclass(frozen=True)
class PvSpec:
    """PV placement and profile settings (kWp, degrees, ISO date)."""

    date: str = "2024-06-21"
    latitude: float = DEFAULT_LATITUDE
    longitude: float = DEFAULT_LONGITUDE
    tz: str = DEFAULT_TZ
    altitude: float = 40.0
    tilt: float = 30.0
    azimuth: float = 180.0
    kwp: float | tuple[float, float] = (3.0, 5.0)
    weather_file: str | None = None


@dataclass(frozen=True)
class PhaseSpec:
    """Phase rebalancing and switching settings (objective, switch share, s, operations/day)."""

    objective: str = "neutral"
    switch_share: float = 1.0
    interval_s: float = 900.0
    max_ops_per_day: int = 4
    seed: int = 0


@dataclass(frozen=True)
class HostingSpec:
    """A hosting-capacity study (``[hosting]`` table): placements, kWp range, source pu."""

    placements: int = 100
    seed: int = 1
    kwp: tuple[float, float] = (3.0, 8.0)
    source_pu: float | None = None
    pvur: bool = True
    step_kw: float = 0.5


@dataclass(frozen=True)
class StudySpec:
    """A validated study file."""

    name: str
    path: Path
    model: Path
    out: Path
    run: RunSpec
    limits: Limits
    pv: PvSpec
    battery: Battery
    tariffs: Tariffs
    methods: tuple[str, ...]
    pv_share: tuple[float, ...]
    market: tuple[str, ...]
    battery_strategy: tuple[str, ...]
    pme_ohm: tuple[float, ...] = (0.0,)
    arrangement: tuple[str, ...] = ("as-built",)
    phases: PhaseSpec = PhaseSpec()
    hosting: HostingSpec | None = None
    vmaxpu: float | None = None
    seed: int = 1


@dataclass(frozen=True)
class Scenario:
    """One point of the scenario grid."""

    name: str
    pv_share: float
    market: str
    battery: str
    seed: int
    pme_ohm: float = 0.0
    arrangement: str = "as-built"


@dataclass
class ScenarioResult:
    """Everything a scenario produced (picklable: it comes back from Dask workers).

    Attributes:
        scenario: the scenario.
        summary: headline numbers (see :func:`summarise`), units in the keys.
        series: Dataset over ``time`` (and ``bus``/``phase`` for the voltage envelope):
            losses by part (kW), worst PVUR/VUF (%), neutral current at the head (A),
            source power, traded power (kW), local price (EUR/kWh).
        allocation: per contract (seller>buyer pair) and grid exchange, loss summed over
            the run per method, kWh (columns ``contract, seller, buyer, kwh_traded,
            <method>_kwh``).
        bills: per customer energy and bills (see :func:`lv3ph.market.bills`).
        violations: violation summary per (check, item).
    """

    scenario: Scenario
    summary: dict[str, float | int | str]
    series: xr.Dataset
    allocation: pd.DataFrame
    bills: pd.DataFrame
    violations: pd.DataFrame
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- reading
def _number(errors: list[str], where: str, value: Any, *, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        errors.append(f"{where} must be a number, got {value!r}")
        return float("nan")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        errors.append(f"{where} must be in [{lo}, {hi}], got {value!r}")
    return float(value)


def load_study(path: str | Path) -> StudySpec:
    """Read and validate a study file; every problem is reported at once."""
    p = Path(path)
    if not p.is_file():
        raise StudyError(f"study file not found: {p}")
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise StudyError(f"{p}: not valid TOML ({exc})") from None
    errors: list[str] = []
    for table, body in raw.items():
        if table not in _KEYS:
            errors.append(f"unknown table [{table}] (known: {', '.join(sorted(_KEYS))})")
        elif not isinstance(body, dict):
            errors.append(f"[{table}] must be a table")
        elif _KEYS[table]:
            errors += [
                f"unknown key [{table}].{k} (known: {', '.join(sorted(_KEYS[table]))})"
                for k in body
                if k not in _KEYS[table]
            ]
    sec = {t: raw.get(t, {}) if isinstance(raw.get(t, {}), dict) else {} for t in _KEYS}
    study = sec["study"]
    for key in ("name", "model"):
        if key not in study:
            errors.append(f"missing key [study].{key}")
    model = (p.parent / str(study.get("model", ""))).resolve()
    if "model" in study and not model.is_file():
        errors.append(f"[study].model: model file not found: {model}")
    name = str(study.get("name", p.stem))
    out = (p.parent / str(study.get("out", f"out/{name}"))).resolve()
    t = sec["time"]
    run = RunSpec(mode="yearly", stepsize_s=60.0, start=1, steps=1440)
    try:
        run = RunSpec.parse(
            t.get("mode", "yearly"), t.get("stepsize", "1m"), int(t.get("start", 1)), int(t.get("steps", 1440))
        )
    except (Lv3phError, ValueError, TypeError) as exc:
        errors.append(f"[time]: {exc}")
    if run.mode not in ("snap", "daily", "yearly"):
        errors.append(f"[time].mode must be snap, daily or yearly, got {run.mode!r}")
    limits = Limits()
    try:
        limits = Limits.from_dict(sec["limits"])
    except Lv3phError as exc:
        errors.append(f"[limits]: {exc}")
    pvt = sec["pv"]
    kwp = pvt.get("kwp", (3.0, 5.0))
    if isinstance(kwp, list | tuple):
        if len(kwp) != 2:
            errors.append(f"[pv].kwp must be a number or [low, high], got {kwp!r}")
        kwp = tuple(_number(errors, "[pv].kwp", x, lo=0) for x in kwp[:2])
    else:
        kwp = _number(errors, "[pv].kwp", kwp, lo=0)
    pv = PvSpec(
        date=str(pvt.get("date", PvSpec.date)),
        latitude=_number(errors, "[pv].latitude", pvt.get("latitude", DEFAULT_LATITUDE), lo=-90, hi=90),
        longitude=_number(errors, "[pv].longitude", pvt.get("longitude", DEFAULT_LONGITUDE), lo=-180, hi=180),
        tz=str(pvt.get("tz", DEFAULT_TZ)),
        altitude=_number(errors, "[pv].altitude", pvt.get("altitude", 40.0)),
        tilt=_number(errors, "[pv].tilt", pvt.get("tilt", 30.0), lo=0, hi=90),
        azimuth=_number(errors, "[pv].azimuth", pvt.get("azimuth", 180.0), lo=0, hi=360),
        kwp=kwp,
        weather_file=str((p.parent / pvt["weather_file"]).resolve()) if "weather_file" in pvt else None,
    )
    bt = sec["battery"]
    battery = Battery(kwh=5.0, kw=2.5)
    try:
        battery = Battery(
            **{k: _number(errors, f"[battery].{k}", v, lo=0) for k, v in bt.items() if k in _KEYS["battery"]}
            | {"kwh": bt.get("kwh", 5.0), "kw": bt.get("kw", 2.5)}
        )
    except (Lv3phError, TypeError) as exc:
        errors.append(f"[battery]: {exc}")
    tariffs = Tariffs()
    try:
        tariffs = Tariffs(**{k: v for k, v in sec["tariffs"].items() if k in _KEYS["tariffs"]})
    except (Lv3phError, TypeError) as exc:
        errors.append(f"[tariffs]: {exc}")
    methods = tuple(sec["allocation"].get("methods", METHODS_DEFAULT))
    from lv3ph.allocation.audit import METHODS

    errors += [
        f"[allocation].methods: unknown method {m!r} (known: {', '.join(METHODS)})" for m in methods if m not in METHODS
    ]
    sc = sec["scenarios"]
    shares = tuple(_number(errors, "[scenarios].pv_share", x, lo=0, hi=1) for x in _as_list(sc.get("pv_share", [0.0])))
    markets = tuple(str(m) for m in _as_list(sc.get("market", ["none"])))
    for m in markets:
        if m not in MARKETS and not m.startswith("file:"):
            errors.append(f"[scenarios].market: unknown market {m!r} (known: {', '.join(MARKETS)}, file:<csv>)")
        if m.startswith("file:") and not (p.parent / m[5:]).is_file():
            errors.append(f"[scenarios].market: contracts file not found: {p.parent / m[5:]}")
    strategies = tuple(str(b) for b in _as_list(sc.get("battery", ["off"])))
    errors += [
        f"[scenarios].battery: unknown strategy {b!r} (known: {', '.join(BATTERY_STRATEGIES)})"
        for b in strategies
        if b not in BATTERY_STRATEGIES
    ]
    pme = tuple(
        _number(errors, "[scenarios].pme_ohm", x, lo=0)
        for x in _as_list(sc.get("pme_ohm", [study.get("pme_ohm", 0.0)]))
    )
    arrangements = tuple(str(a) for a in _as_list(sc.get("arrangement", ["as-built"])))
    errors += [
        f"[scenarios].arrangement: unknown arrangement {a!r} (known: {', '.join(ARRANGEMENTS)})"
        for a in arrangements
        if a not in ARRANGEMENTS
    ]
    if "dynamic" in arrangements:
        errors += [
            f"[allocation].methods: {m!r} cannot follow dynamic phase switching (use {', '.join(DYNAMIC_METHODS)})"
            for m in methods
            if m not in DYNAMIC_METHODS
        ]
    ph = sec["phases"]
    phases = PhaseSpec()
    try:
        phases = PhaseSpec(
            objective=str(ph.get("objective", "neutral")),
            switch_share=_number(errors, "[phases].switch_share", ph.get("switch_share", 1.0), lo=0, hi=1),
            interval_s=parse_stepsize(ph.get("interval", "15m")),
            max_ops_per_day=int(_number(errors, "[phases].max_ops_per_day", ph.get("max_ops_per_day", 4), lo=0)),
            seed=int(ph.get("seed", 0)),
        )
    except (Lv3phError, ValueError, TypeError) as exc:
        errors.append(f"[phases]: {exc}")
    hosting = None
    if "hosting" in raw:
        h = sec["hosting"]
        rng = _as_list(h.get("kwp", [3.0, 8.0]))
        hosting = HostingSpec(
            placements=int(_number(errors, "[hosting].placements", h.get("placements", 100), lo=1)),
            seed=int(h.get("seed", 1)),
            kwp=(
                _number(errors, "[hosting].kwp", rng[0], lo=0),
                _number(errors, "[hosting].kwp", rng[-1], lo=0),
            ),
            source_pu=_number(errors, "[hosting].source_pu", h["source_pu"], lo=0.5, hi=1.2)
            if "source_pu" in h
            else None,
            pvur=bool(h.get("pvur", True)),
            step_kw=_number(errors, "[hosting].step_kw", h.get("step_kw", 0.5), lo=0.01),
        )
    if phases.objective not in ("neutral", "pvur"):
        errors.append(f"[phases].objective must be neutral or pvur, got {phases.objective!r}")
    if errors:
        raise StudyError(f"{p}: " + "; ".join(errors))
    return StudySpec(
        name=name,
        path=p,
        model=model,
        out=out,
        run=run,
        limits=limits,
        pv=pv,
        battery=battery,
        tariffs=tariffs,
        methods=methods,
        pv_share=shares,
        market=tuple(m if not m.startswith("file:") else f"file:{(p.parent / m[5:]).resolve()}" for m in markets),
        battery_strategy=strategies,
        pme_ohm=pme,
        arrangement=arrangements,
        phases=phases,
        hosting=hosting,
        vmaxpu=study.get("vmaxpu"),
        seed=int(study.get("seed", 1)),
    )


def _as_list(x: Any) -> list[Any]:
    return list(x) if isinstance(x, list | tuple) else [x]


def scenarios(spec: StudySpec) -> list[Scenario]:
    """The scenario grid: PV share x market x battery strategy x earthing x phase arrangement."""
    out = []
    grid = itertools.product(spec.pv_share, spec.market, spec.battery_strategy, spec.pme_ohm, spec.arrangement)
    for share, market, bat, pme, arrangement in grid:
        label = market if not market.startswith("file:") else f"file-{Path(market[5:]).stem}"
        name = f"pv{round(share * 100):02d}_{label.replace(':', '-')}_bat-{bat}"
        if len(spec.pme_ohm) > 1 or pme:
            name += f"_pme-{pme:g}" if pme else "_tx-earth"
        if len(spec.arrangement) > 1 or arrangement != "as-built":
            name += f"_{arrangement}"
        out.append(
            Scenario(
                name=name,
                pv_share=share,
                market=market,
                battery=bat,
                seed=spec.seed,
                pme_ohm=pme,
                arrangement=arrangement,
            )
        )
    return out


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
    if sc.market == "community-auction":
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
    bat_names = list(placement) if sc.battery != "off" else []
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
        commands += battery_commands(model, bat_names)
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
    phases = [str(model.customers[i].phases[0]) for i in range(len(names))]
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
    market = _market(spec, sc, net_kw, names, times, phases, distance)
    contracts = market.contracts.copy()
    contracts["contract"] = contracts.seller + ">" + contracts.buyer  # a standing pair agreement
    assert_valid_contracts(contracts, ports.names, times)
    bat_cols = [names.index(n) for n in bat_names]
    before_step = _battery_setter(engine, bat_names, bat_kw[:, bat_cols], run.start) if bat_names else None

    if schedule is None:
        vt, measured = solve_raw(engine, model, run, progress=progress, before_step=before_step)
    else:  # switchable customers: their load, PV and battery are carried by the phase loads
        vt, measured = run_switching(
            engine, model, run, load_kw, pv_kw - bat_kw, schedule, progress=progress, before_step=before_step
        )
    pf = capture(model, run, vt, measured)
    unb = unbalance(pf)
    viol = violations(pf, unb, spec.limits)
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
    series["battery_soc_mean"] = (
        "time",
        soc[1:].mean(axis=1) if soc.shape[1] else np.full(run.steps, np.nan),
        {"units": "1", "long_name": "mean state of charge of the batteries at the end of each step"},
    )
    summary = summarise(sc, pf, unb, viol, market, net_kw, pv_kw, bill, allocation, spec.methods, dt_h)
    notes = []
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
    )


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
    summary = summary_table(results)
    write_csv(summary, out / "summary.csv")
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
        )
        results[arrangement] = hosting_capacity(
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
            serial=serial,
            workers=workers,
            scheduler=scheduler,
            progress=progress,
            label=arrangement,
        )
    rows = []
    for arrangement, res in results.items():
        write_csv(res.placements, spec.out / f"hosting_{arrangement}.csv")
        write_csv(res.steps, spec.out / f"kept_steps_{arrangement}.csv")
        counts = res.binding_counts()
        rows.append(
            {"arrangement": arrangement, **res.summary, "binding": ", ".join(f"{k} {v}" for k, v in counts.items())}
        )
    summary = pd.DataFrame(rows)
    write_csv(summary, spec.out / "summary.csv")
    return summary, write_hosting_report(spec, results, summary, spec.out)


def run_study(
    path: str | Path,
    *,
    serial: bool = False,
    scheduler: str | None = None,
    workers: int = 2,
    progress: bool = True,
) -> tuple[StudySpec, list[ScenarioResult], Path]:
    """Load, run and report a study; returns the spec, the results and ``report.html``."""
    spec = load_study(path)
    if spec.hosting is not None:
        raise StudyError(f"{path} is a hosting-capacity study: run it with run_hosting_study (lv3ph study does)")
    results = run_scenarios(
        spec, scenarios(spec), serial=serial, scheduler=scheduler, workers=workers, progress=progress
    )
    return spec, results, write_outputs(spec, results)
