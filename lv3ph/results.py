"""Result types shared by the study runner and the report: the validated study file
(:class:`StudySpec` and its parts), one scenario of the grid (:class:`Scenario`) and what
it produced (:class:`ScenarioResult`).

They sit in their own module so that :mod:`lv3ph.study` (which produces them) and
:mod:`lv3ph.report` (which draws them) both import them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import xarray as xr

from lv3ph.en50160 import En50160
from lv3ph.market import Tariffs
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
    """

    scenario: Scenario
    summary: dict[str, float | int | str]
    series: xr.Dataset
    allocation: pd.DataFrame
    bills: pd.DataFrame
    violations: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    en50160: pd.DataFrame = field(default_factory=pd.DataFrame)
