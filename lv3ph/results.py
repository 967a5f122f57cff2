"""Result types shared by the study runner and the report: the validated study file
(:class:`StudySpec` and its parts), one scenario of the grid (:class:`Scenario`) and what
it produced (:class:`ScenarioResult`).

They sit in their own module so that :mod:`lv3ph.study` (which produces them) and
:mod:`lv3ph.report` (which draws them) both import them without importing each other.

A study's result folder holds ``study.json`` (:func:`write_metadata`: the spec, each
scenario with its headline numbers and notes), per scenario ``series.nc`` and CSV tables,
and ``summary.csv``. :func:`read_results` and :func:`read_hosting` read a folder back, so
a report can be drawn again without solving anything (``lv3ph report RESULT_DIR``).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from lv3ph.en50160 import En50160
from lv3ph.errors import StudyError
from lv3ph.flex.devices import FlexSpec
from lv3ph.io import read_dataset, write_atomic
from lv3ph.market import Tariffs
from lv3ph.market.designs import MarketSpec
from lv3ph.powerflow import RunSpec
from lv3ph.prosumers import DEFAULT_LATITUDE, DEFAULT_LONGITUDE, DEFAULT_TZ, Battery
from lv3ph.unbalance import Limits


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
    criterion: str = "item"
    basis: str = "step"
    controls: tuple[str, ...] = ("none",)
    pv_aware: tuple[bool, ...] = (False,)

    def variants(self, arrangement: str) -> list[tuple[str, bool, str | None]]:
        """``(label, pv_aware, controls)`` of every run of ``arrangement``: PV-aware
        planning only changes the re-phased arrangements; ``controls`` ``none`` is None."""
        out = []
        for aware in self.pv_aware if arrangement != "as-built" else (False,):
            for ctl in self.controls:
                label = arrangement + ("-pv-aware" if aware else "") + ("" if ctl == "none" else f"+{ctl}")
                out.append((label, aware, None if ctl == "none" else ctl))
        return out


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
    en50160: En50160 = field(default_factory=En50160)
    capture: str | None = None
    block_steps: int | None = None
    flex_modes: tuple[str, ...] = ("none",)
    market_spec: MarketSpec = field(default_factory=MarketSpec)
    flex: FlexSpec = field(default_factory=FlexSpec)


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
    flex: str = "none"


@dataclass
class ScenarioResult:
    """Everything a scenario produced (picklable: it comes back from Dask workers).

    Attributes:
        scenario: the scenario.
        summary: headline numbers (see :func:`lv3ph.study.summarise`), units in the keys.
        series: Dataset over ``time`` (and ``bus``/``phase`` for the voltage envelope):
            losses by part (kW), worst PVUR/VUF (%), neutral current at the head (A),
            source power, traded power (kW), local price (EUR/kWh).
        allocation: per contract (seller>buyer pair) and grid exchange, loss summed over
            the run per method, kWh (columns ``contract, seller, buyer, kwh_traded,
            <method>_kwh``).
        bills: per customer energy and bills (see :func:`lv3ph.market.bills`).
        violations: violation summary per (check, item).
        en50160: EN 50160 verdict per customer and week (:func:`lv3ph.en50160.en50160_table`),
            empty when the step size does not divide the aggregation interval.
        notes: remarks for the report.
        timings_s: wall-clock seconds of parts of the run (``powerflow``: the final
            OpenDSS run; a market design's ``clearing`` and ``reference_solve``); not part
            of the reproducible numbers.
    """

    scenario: Scenario
    summary: dict[str, float | int | str]
    series: xr.Dataset
    allocation: pd.DataFrame
    bills: pd.DataFrame
    violations: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    en50160: pd.DataFrame = field(default_factory=pd.DataFrame)
    timings_s: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------- result folders
METADATA = "study.json"
#: Files of each scenario's folder (``series.nc`` and these CSVs).
SCENARIO_TABLES = ("allocation.csv", "bills.csv", "violations.csv")


def _plain(x: Any) -> Any:
    """JSON-able copy of a spec value (dataclasses to dicts, paths to strings)."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: _plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, np.generic):
        return x.item()
    return x


def _build(tp: Any, value: Any) -> Any:
    """``value`` (from JSON) as the annotated type ``tp``: dataclasses, tuples, paths."""
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        for a in args:  # the first member the value fits
            if (isinstance(value, dict) and dataclasses.is_dataclass(a)) or (
                isinstance(value, list) and typing.get_origin(a) is tuple
            ):
                return _build(a, value)
        return _build(args[0], value) if len(args) == 1 else value
    if isinstance(value, dict) and dataclasses.is_dataclass(tp) and isinstance(tp, type):
        hints = typing.get_type_hints(tp)
        return tp(**{k: _build(hints[k], v) for k, v in value.items() if k in hints})
    if origin is tuple and isinstance(value, list):
        members = typing.get_args(tp)
        inner = members[0] if members and (len(members) == 1 or members[-1] is Ellipsis) else None
        return tuple(_build(inner, v) if inner is not None else v for v in value)
    if tp is Path:
        return Path(value)
    return value


def spec_to_dict(spec: StudySpec) -> dict[str, Any]:
    """The spec as plain JSON-able values."""
    out: dict[str, Any] = _plain(spec)
    return out


def spec_from_dict(d: dict[str, Any]) -> StudySpec:
    """A spec from :func:`spec_to_dict` (keys it does not know are ignored)."""
    spec: StudySpec = _build(StudySpec, d)
    return spec


def write_metadata(
    spec: StudySpec,
    out: Path,
    *,
    results: list[ScenarioResult] | None = None,
    arrangements: tuple[str, ...] = (),
    summary: pd.DataFrame | None = None,
) -> Path:
    """``study.json`` in ``out``: the spec and each scenario (definition, summary, notes),
    or the hosting arrangements and their summary rows; written atomically."""
    meta: dict[str, Any] = {
        "kind": "hosting" if spec.hosting is not None else "scenarios",
        "spec": spec_to_dict(spec),
        "scenarios": [
            {"scenario": _plain(r.scenario), "summary": _plain(r.summary), "notes": list(r.notes)}
            for r in results or []
        ],
        "arrangements": list(arrangements),
        "summary": _plain(summary.to_dict(orient="records")) if summary is not None else [],
    }
    text = json.dumps(meta, indent=1, default=str)
    return write_atomic(out / METADATA, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_metadata(folder: str | Path) -> dict[str, Any]:
    """``study.json`` of a result folder (StudyError naming what is missing)."""
    path = Path(folder) / METADATA
    if not Path(folder).is_dir():
        raise StudyError(f"result folder not found: {folder}")
    if not path.is_file():
        raise StudyError(f"{folder}: no {METADATA} (not a result folder written by lv3ph study)")
    try:
        meta: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        meta["spec"] = spec_from_dict(meta["spec"])
    except (ValueError, KeyError, TypeError) as exc:
        raise StudyError(f"{path}: not a valid lv3ph result description ({exc})") from None
    return meta


def _need(path: Path) -> Path:
    if not path.is_file():
        raise StudyError(f"result file missing: {path}")
    return path


def read_results(folder: str | Path) -> tuple[StudySpec, list[ScenarioResult], pd.DataFrame]:
    """The spec, every scenario's result and the summary table of a study's result folder.

    The summary is built from ``study.json`` (the numbers as computed; ``summary.csv`` is
    for people and spreadsheets)."""
    folder = Path(folder)
    meta = read_metadata(folder)
    if meta["kind"] != "scenarios":
        raise StudyError(f"{folder}: holds a {meta['kind']} study, not scenarios")
    results = []
    for item in meta["scenarios"]:
        sc = Scenario(**item["scenario"])
        where = folder / sc.name
        series = read_dataset(_need(where / "series.nc"))
        series.attrs = {}
        tables = {n: pd.read_csv(_need(where / n)) for n in SCENARIO_TABLES}
        bills = tables["bills.csv"]
        results.append(
            ScenarioResult(
                scenario=sc,
                summary=item["summary"],
                series=series,
                allocation=tables["allocation.csv"],
                bills=bills.set_index(bills.columns[0]) if len(bills.columns) else bills,
                violations=tables["violations.csv"],
                notes=list(item.get("notes", [])),
            )
        )
    return meta["spec"], results, pd.DataFrame([r.summary for r in results])


def read_hosting(folder: str | Path) -> tuple[StudySpec, dict[str, pd.DataFrame], pd.DataFrame]:
    """The spec, the placements table per arrangement and the summary of a hosting study."""
    folder = Path(folder)
    meta = read_metadata(folder)
    if meta["kind"] != "hosting":
        raise StudyError(f"{folder}: holds a {meta['kind']} study, not hosting capacity")
    placements = {a: pd.read_csv(_need(folder / f"hosting_{a}.csv")) for a in meta["arrangements"]}
    return meta["spec"], placements, pd.DataFrame(meta["summary"])
