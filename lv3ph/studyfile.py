"""Study files: read and validate a TOML study file into a :class:`~lv3ph.results.StudySpec`,
and expand it into the scenario grid (:func:`scenarios`).

A study file (``studies/*.toml``) has these tables (every key optional unless marked):

* ``[study]``: ``name`` (required), ``model`` (required; OpenDSS master file, relative to
  the study file), ``vmaxpu``, ``pme_ohm`` (earth electrodes at every customer), ``out``
  (output folder, default ``out/<name>`` beside the study file), ``seed``.
* ``[time]``: ``mode`` (snap/daily/yearly), ``stepsize`` (``1m``), ``start``, ``steps``,
  ``repeat_profiles`` (cycle load shapes shorter than the run; default false: an error).
* ``[limits]``: see :class:`lv3ph.unbalance.Limits` (``basis = "step" | "en50160"``).
* ``[en50160]``: aggregation and limits of the EN 50160 statistics, see
  :class:`lv3ph.en50160.En50160` (``interval_s``, ``period_s``, ``percentile``, ...).
* ``[output]``: ``capture`` (``full``, ``customers`` or ``stats``: also write each
  scenario's power flow as a store ``<scenario>/powerflow.zarr`` at that level, see
  :mod:`lv3ph.stream`), ``block_steps`` (its blocks; default one day).
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
  ``dynamic``: phase selector switches re-phasing every interval, Horta et al. 2018),
  ``flex`` (``none``, ``ev``, ``shift``, ``ev+shift``: which flexible devices are scheduled
  against the market's prices; EVs that are not scheduled charge on arrival). The market
  list also takes the network-aware designs of :mod:`lv3ph.market.designs`
  (``unconstrained``, ``network-charges:uniform|distance|zonal``, ``loss-charges``,
  ``sensitivity-screened``, ``opf-cleared``) and the battery list ``price``
  (price-responsive batteries, :mod:`lv3ph.flex.schedule`); these, and ``flex`` other than
  ``none``, go with market ``none`` or a design.
* ``[market]``: settings of the designs, see :class:`lv3ph.market.designs.MarketSpec`.
* ``[flex]``: ``ev_share``, ``ev_kw``, ``ev_kwh_per_km``, ``ev_battery_kwh``,
  ``shift_share``, ``shift_window_h``, ``shift_kw``, ``interval`` (``15m``),
  ``battery_wear_eur_kwh``, ``seed``; see :class:`lv3ph.flex.devices.FlexSpec`.
* ``[phases]``: ``objective`` (``neutral`` or ``pvur``), ``switch_share`` (share of movable
  customers with a switch, default 1), ``interval`` (``15m``), ``max_ops_per_day`` (4),
  ``seed``. The market's contracts stay as traded; physics and allocation follow the phases.

Every problem in a study file is reported at once (:class:`~lv3ph.errors.StudyError`), each
naming the table and key. :mod:`lv3ph.study` runs the scenarios.
"""

from __future__ import annotations

import itertools
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from lv3ph.dss import parse_stepsize
from lv3ph.en50160 import En50160
from lv3ph.errors import Lv3phError, StudyError
from lv3ph.flex.devices import FlexSpec
from lv3ph.market import Tariffs
from lv3ph.market.designs import DESIGNS, MarketSpec
from lv3ph.powerflow import RunSpec
from lv3ph.prosumers import DEFAULT_LATITUDE, DEFAULT_LONGITUDE, DEFAULT_TZ, Battery
from lv3ph.results import HostingSpec, PhaseSpec, PvSpec, Scenario, StudySpec
from lv3ph.stream import CAPTURES, check_block_steps
from lv3ph.unbalance import Limits

MARKETS = (
    "none",
    "community-auction",
    "bilateral:random",
    "bilateral:electrical-distance",
    "bilateral:same-phase-first",
    *DESIGNS,
)
BATTERY_STRATEGIES = ("off", "self-consumption", "p2p", "price")
FLEX_MODES = ("none", "ev", "shift", "ev+shift")
#: Markets that run through :func:`lv3ph.market.outcome.run_design` (prices reach devices).
DESIGN_MARKETS = ("none", *DESIGNS)
ARRANGEMENTS = ("as-built", "static-rebalanced", "dynamic")
#: Methods that work with dynamic switching (the others re-solve or reduce the model).
DYNAMIC_METHODS = ("exact", "phase-only", "pro-rata")
METHODS_DEFAULT = ("exact", "phase-only", "pro-rata")
_KEYS: dict[str, set[str]] = {
    "study": {"name", "model", "vmaxpu", "pme_ohm", "out", "seed"},
    "time": {"mode", "stepsize", "start", "steps", "repeat_profiles"},
    "output": {"capture", "block_steps"},
    "en50160": set(),  # checked by En50160.from_dict
    "pv": {"date", "latitude", "longitude", "tz", "altitude", "tilt", "azimuth", "kwp", "weather_file"},
    "battery": {"kwh", "kw", "efficiency", "soc0", "soc_min", "soc_max"},
    "tariffs": {"grid_import_eur_kwh", "grid_export_eur_kwh", "local_price_rule"},
    "allocation": {"methods"},
    "scenarios": {"pv_share", "market", "battery", "pme_ohm", "arrangement", "flex"},
    "market": {
        "fee_uniform_eur_kwh",
        "fee_eur_kwh_per_ohm",
        "fee_zonal_eur_kwh",
        "zones",
        "loss_price_eur_kwh",
        "max_iterations",
        "tolerance_kw",
        "opf_penalty_eur",
        "loss_damping",
        "tolerance_gap",
    },
    "flex": {
        "ev_share",
        "ev_kw",
        "ev_kwh_per_km",
        "ev_battery_kwh",
        "shift_share",
        "shift_window_h",
        "shift_kw",
        "interval",
        "battery_wear_eur_kwh",
        "seed",
    },
    "phases": {"objective", "switch_share", "interval", "max_ops_per_day", "seed"},
    "hosting": {
        "placements",
        "seed",
        "kwp",
        "source_pu",
        "pvur",
        "step_kw",
        "criterion",
        "basis",
        "controls",
        "pv_aware",
    },
    "limits": set(),  # checked by Limits.from_dict
}


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
    repeat = t.get("repeat_profiles", False)
    if not isinstance(repeat, bool):
        errors.append(f"[time].repeat_profiles must be true or false, got {repeat!r}")
    run = replace(run, repeat_profiles=repeat is True)
    en = En50160()
    try:
        en = En50160.from_dict(sec["en50160"])
    except (Lv3phError, TypeError) as exc:
        errors.append(f"[en50160]: {exc}")
    o = sec["output"]
    capture = o.get("capture")
    if capture is not None and capture not in CAPTURES:
        errors.append(f"[output].capture must be one of {', '.join(CAPTURES)}, got {capture!r}")
    block_steps = o.get("block_steps")
    if block_steps is not None:
        if isinstance(block_steps, bool) or not isinstance(block_steps, int):
            errors.append(f"[output].block_steps must be a whole number of steps, got {block_steps!r}")
        else:
            try:
                check_block_steps(block_steps, run.stepsize_s, en)
            except Lv3phError as exc:
                errors.append(f"[output].block_steps: {exc}")
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
            criterion=str(h.get("criterion", "item")),
            basis=str(h.get("basis", "step")),
            controls=tuple(str(c) for c in _as_list(h.get("controls", ["none"]))),
            pv_aware=tuple(bool(a) for a in _as_list(h.get("pv_aware", [False]))),
        )
        from lv3ph.hosting import BASES, CONTROLS, PRE_EXISTING

        for key, values, known in (
            ("criterion", [hosting.criterion], PRE_EXISTING),
            ("basis", [hosting.basis], BASES),
            ("controls", list(hosting.controls), ("none", *CONTROLS)),
        ):
            errors.extend(
                f"[hosting].{key}: unknown {v!r} (known: {', '.join(known)})" for v in values if v not in known
            )
    flex_modes = tuple(str(f) for f in _as_list(sc.get("flex", ["none"])))
    errors += [
        f"[scenarios].flex: unknown flex {f!r} (known: {', '.join(FLEX_MODES)})"
        for f in flex_modes
        if f not in FLEX_MODES
    ]
    needs_design = [f for f in flex_modes if f != "none"] + [b for b in strategies if b == "price"]
    errors += [
        f"[scenarios].market: {m!r} cannot drive flexible devices ({', '.join(needs_design)}): use none or a design"
        for m in markets
        if needs_design and m not in DESIGN_MARKETS
    ]
    uses_design = any(m in DESIGNS for m in markets)
    if uses_design and "dynamic" in arrangements:
        errors.append("[scenarios].arrangement: 'dynamic' cannot be combined with the market designs")
    market_spec = MarketSpec()
    mk = sec["market"]
    try:
        market_spec = MarketSpec(**{k: v for k, v in mk.items() if k in _KEYS["market"]})
    except (Lv3phError, TypeError) as exc:
        errors.append(f"[market]: {exc}")
    fx = sec["flex"]
    flex = FlexSpec()
    try:
        flex = FlexSpec(
            **{
                k: _number(errors, f"[flex].{k}", v, lo=0)
                for k, v in fx.items()
                if k in _KEYS["flex"] and k not in ("interval", "seed")
            },
            interval_s=parse_stepsize(fx.get("interval", "15m")),
            seed=int(fx.get("seed", FlexSpec.seed)),
        )
    except (Lv3phError, ValueError, TypeError) as exc:
        errors.append(f"[flex]: {exc}")
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
        en50160=en,
        capture=capture,
        block_steps=block_steps,
        flex_modes=flex_modes,
        market_spec=market_spec,
        flex=flex,
    )


def _as_list(x: Any) -> list[Any]:
    return list(x) if isinstance(x, list | tuple) else [x]


def scenarios(spec: StudySpec) -> list[Scenario]:
    """The scenario grid: PV share x market x battery strategy x earthing x phase arrangement x flex."""
    out = []
    grid = itertools.product(
        spec.pv_share, spec.market, spec.battery_strategy, spec.pme_ohm, spec.arrangement, spec.flex_modes
    )
    for share, market, bat, pme, arrangement, flex in grid:
        label = market if not market.startswith("file:") else f"file-{Path(market[5:]).stem}"
        name = f"pv{round(share * 100):02d}_{label.replace(':', '-')}_bat-{bat}"
        if len(spec.pme_ohm) > 1 or pme:
            name += f"_pme-{pme:g}" if pme else "_tx-earth"
        if len(spec.arrangement) > 1 or arrangement != "as-built":
            name += f"_{arrangement}"
        if len(spec.flex_modes) > 1 or flex != "none":
            name += f"_flex-{flex}"
        out.append(
            Scenario(
                name=name,
                pv_share=share,
                market=market,
                battery=bat,
                seed=spec.seed,
                pme_ohm=pme,
                arrangement=arrangement,
                flex=flex,
            )
        )
    return out
