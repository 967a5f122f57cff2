"""Flexible devices of prosumers: EVs (seeded travel pattern) and shiftable demand.

Sign convention (as everywhere in lv3ph): device power is *drawn* power, kW, positive =
consumption; step ``k`` (1-based) ends at ``k * stepsize`` after midnight.

EV availability model (one car per EV customer, one trip pattern per day, repeated every day
of the run). Parameters read from the shapes of the published UK National Travel Survey
tables (DfT, NTS 2019: NTS0501 trip start time by purpose -- commuting leaves 07:00-09:00
and returns 16:00-19:00; NTS0303 average distance travelled ~ 11-12 thousand km a year per
car, i.e. ~30 km a day); they are round numbers chosen to match those shapes, not a fit:

* departure time ~ Normal(07:45, 1.0 h), truncated to [05:00, 11:00];
* arrival time ~ Normal(17:45, 1.5 h), truncated to [14:00, 23:30];
* daily distance ~ LogNormal(median 25 km, sigma 0.6), capped at 150 km;
* energy need = distance x ``kwh_per_km`` (0.18 kWh/km), capped at ``battery_kwh``;
* the car is parked (and may charge at up to ``kw`` on the customer's single phase) from
  arrival to midnight and from midnight to departure (a cyclic day: the morning's parking
  is the previous evening's, so its energy need is delivered within the same day).

Shiftable demand: a share ``shift_share`` of a customer's household demand (e.g. wet
appliances, a heat pump with a hot-water tank) can move anywhere within its window (the day
cut into windows of ``shift_window_h`` hours), keeping the window's energy; at most
``shift_kw`` kW of shifted demand in any step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from lv3ph.errors import StudyError

__all__ = ["EvFleet", "FlexSpec", "dumb_ev_charging", "ev_fleet", "shift_windows"]


@dataclass(frozen=True)
class FlexSpec:
    """Flexible-device settings (``[flex]`` table of a study).

    ``ev_share``: share of customers with an EV (0..1); ``ev_kw``: charger kW (single
    phase, 3.7 kW = 16 A at 230 V); ``ev_kwh_per_km``; ``ev_battery_kwh`` (cap on the daily
    need); ``shift_share``: share of every customer's demand that is shiftable (0..1);
    ``shift_window_h``: window length (h, divides 24); ``shift_kw``: most shifted kW in a
    step; ``interval_s``: scheduling interval (set-points are held over it);
    ``battery_wear_eur_kwh``: cost per kWh through the battery (stops zero-gain cycling);
    ``seed``: EV owners and trips.
    """

    ev_share: float = 0.0
    ev_kw: float = 3.7
    ev_kwh_per_km: float = 0.18
    ev_battery_kwh: float = 40.0
    shift_share: float = 0.0
    shift_window_h: float = 4.0
    shift_kw: float = 2.0
    interval_s: float = 900.0
    battery_wear_eur_kwh: float = 0.005
    seed: int = 7

    def __post_init__(self) -> None:
        problems = []
        for name in ("ev_share", "shift_share"):
            v = getattr(self, name)
            if not (math.isfinite(v) and 0.0 <= v <= 1.0):
                problems.append(f"{name} must be in [0, 1], got {v}")
        for name in ("ev_kw", "ev_kwh_per_km", "ev_battery_kwh", "shift_window_h", "shift_kw", "interval_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0.0):
                problems.append(f"{name} must be > 0, got {v}")
        if not (math.isfinite(self.battery_wear_eur_kwh) and self.battery_wear_eur_kwh >= 0):
            problems.append(f"battery_wear_eur_kwh must be >= 0, got {self.battery_wear_eur_kwh}")
        if problems:
            raise StudyError("; ".join(problems))


@dataclass(frozen=True)
class EvFleet:
    """EVs: owner customer positions, trip times (h after midnight) and daily need (kWh)."""

    owners: NDArray[np.int64]
    depart_h: NDArray[np.float64]
    arrive_h: NDArray[np.float64]
    need_kwh: NDArray[np.float64]
    kw: float

    def parked(self, stepsize_s: float, start: int, steps: int) -> NDArray[np.bool_]:
        """(steps, evs): the car is parked during the whole step (step k ends at k x stepsize)."""
        k = np.arange(start, start + steps)
        t0 = np.mod((k - 1) * stepsize_s / 3600.0, 24.0)[:, None]
        t1 = t0 + stepsize_s / 3600.0
        return (t0 >= self.arrive_h[None, :]) | (t1 <= self.depart_h[None, :])

    def need_in_run(self, stepsize_s: float, start: int, steps: int) -> NDArray[np.float64]:
        """Energy each EV must get over the run, kWh: the daily need x parked steps of the run
        / parked steps of a day (whole days get the full need), capped by what it can charge."""
        parked = self.parked(stepsize_s, start, steps)
        per_day = round(86400.0 / stepsize_s)
        day = self.parked(stepsize_s, 1, per_day).sum(axis=0)
        frac = parked.sum(axis=0) / np.maximum(day, 1)
        cap = parked.sum(axis=0) * self.kw * stepsize_s / 3600.0
        return np.minimum(self.need_kwh * frac, cap)


def _truncnorm(rng: np.random.Generator, mean: float, sd: float, lo: float, hi: float, n: int) -> np.ndarray:
    out = rng.normal(mean, sd, n)
    for _ in range(100):
        bad = (out < lo) | (out > hi)
        if not bad.any():
            break
        out[bad] = rng.normal(mean, sd, int(bad.sum()))
    return np.clip(out, lo, hi)


def ev_fleet(n_customers: int, spec: FlexSpec, *, eligible: NDArray[np.int64] | None = None) -> EvFleet:
    """Seeded EV owners and trips (see the module docstring); same spec, same fleet.

    ``round(ev_share x n_customers)`` owners are drawn among ``eligible`` positions
    (default all; the study passes the single-phase customers).
    """
    rng = np.random.default_rng(spec.seed)
    pool = np.arange(n_customers) if eligible is None else np.asarray(eligible, dtype=np.int64)
    count = min(math.floor(spec.ev_share * n_customers + 0.5 + 1e-9), pool.size)
    owners = np.sort(rng.choice(pool, size=count, replace=False)).astype(np.int64)
    depart = _truncnorm(rng, 7.75, 1.0, 5.0, 11.0, count)
    arrive = _truncnorm(rng, 17.75, 1.5, 14.0, 23.5, count)
    km = np.minimum(rng.lognormal(math.log(25.0), 0.6, count), 150.0)
    need = np.minimum(km * spec.ev_kwh_per_km, spec.ev_battery_kwh)
    return EvFleet(owners=owners, depart_h=depart, arrive_h=arrive, need_kwh=need, kw=spec.ev_kw)


def dumb_ev_charging(fleet: EvFleet, stepsize_s: float, start: int, steps: int) -> NDArray[np.float64]:
    """Uncontrolled charging (steps, evs), kW: full power from arrival until the need is met,
    wrapping past midnight into the morning's parking (cyclic day)."""
    parked = fleet.parked(stepsize_s, start, steps)
    need = fleet.need_in_run(stepsize_s, start, steps)
    dt_h = stepsize_s / 3600.0
    k = np.arange(start, start + steps)
    tod = np.mod((k - 1) * stepsize_s / 3600.0, 24.0)
    out = np.zeros((steps, fleet.owners.size))
    for e in range(fleet.owners.size):
        # order of charging: from arrival on, then after midnight
        order = np.argsort(np.mod(tod - fleet.arrive_h[e], 24.0), kind="stable")
        order = order[parked[order, e]]
        full = int(need[e] // (fleet.kw * dt_h))
        out[order[:full], e] = fleet.kw
        rest = need[e] - full * fleet.kw * dt_h
        if full < order.size and rest > 1e-12:
            out[order[full], e] = rest / dt_h
    return out


def shift_windows(stepsize_s: float, start: int, steps: int, window_h: float) -> NDArray[np.int64]:
    """Window index of each step (steps,): day cut into windows of ``window_h`` hours."""
    k = np.arange(start, start + steps)
    t = (k - 1) * stepsize_s / 3600.0
    return np.floor(t / window_h + 1e-9).astype(np.int64)
