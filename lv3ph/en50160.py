"""EN 50160 / IEC 61000-4-30 voltage-quality statistics from a time-series power flow.

Unbalance stage: pure functions on arrays (nothing here talks to OpenDSS). They work in
two levels so that a run of any length streams through them in bounded memory:

1. :func:`customer_quality` -- per step and customer: rms phase-to-neutral voltage of each
   of the customer's phases (V), VUF and PVUR at the customer's bus (%).
2. :func:`interval_values` -- aggregation of per-step values into the measurement intervals
   of IEC 61000-4-30 (10 minutes by default), with the per-step minimum and maximum inside
   each interval. A block of steps whose boundaries fall on interval boundaries gives the
   same intervals as the whole run, which is how :mod:`lv3ph.stream` aggregates as it goes.
3. :func:`period_statistics` -- per customer and period (one week by default): share of
   the 10-minute voltages inside the band, their minimum and maximum, the 95th percentile of
   VUF and PVUR, and the EN 50160 verdict.

:func:`aggregate` chains 2 and 3 for per-step series already in memory (the function the
hosting-capacity criteria use); :func:`en50160_table` is the ``en50160.csv`` table.

Time: step ``k`` is solved at ``k * stepsize`` and stands for the period
``[(k - 1) * stepsize, k * stepsize)`` (the load-shape point it solves); a step belongs to
interval ``floor((k - 1) * stepsize / interval)`` and to period
``floor(interval_start / period)``. Intervals are aligned to time 0 (IEC 61000-4-30 aligns
them to the 10-minute clock tick), so the first and last interval of a run that does not
start or end on a tick hold fewer steps (``interval_steps`` says how many).

Aggregation: IEC 61000-4-30 (clause 4.5) aggregates every quantity as the square root of
the arithmetic mean of the squared input values; lv3ph does that (``aggregation="rms"``)
for voltage, VUF and PVUR alike. ``aggregation="mean"`` uses the arithmetic mean instead.

Rules (EN 50160:2010, LV supply, clauses 4.2.2 and 4.2.5): during each period of one week
95 % of the 10-minute mean rms voltages must lie within Un +/- 10 % and all of them within
Un + 10 % / - 15 %; 95 % of the 10-minute VUF values must be <= 2 %. EN 50160 sets no PVUR
limit: PVUR is reported and judged only if :attr:`En50160.pvur_pct` is set. A percentile
is the nearest-rank value (``numpy.percentile(method="inverted_cdf")``): "95th percentile
<= limit" is then exactly "at least 95 % of the values <= limit".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
import pandas as pd
import xarray as xr
from numpy.typing import NDArray

from lv3ph.errors import StudyError
from lv3ph.model import ComplexArray, FeederModel
from lv3ph.unbalance import pvur_pct, vuf_pct

__all__ = [
    "EN50160_COLUMNS",
    "En50160",
    "aggregate",
    "customer_quality",
    "en50160_table",
    "interval_bounds",
    "interval_values",
    "period_statistics",
    "reduce_intervals",
]

#: Columns of ``en50160.csv``.
EN50160_COLUMNS = [
    "customer",
    "week",
    "v_within_band_pct",
    "v10_min_v",
    "v10_max_v",
    "vuf_p95_pct",
    "pvur_p95_pct",
    "compliant",
]


@dataclass(frozen=True)
class En50160:
    """Limits and aggregation of the EN 50160 assessment (defaults: EN 50160, LV).

    Attributes:
        v_nominal_v: nominal phase-to-neutral voltage Un, V.
        band_pct: the band that ``percentile`` % of the interval voltages must keep, % of Un.
        high_pct, low_pct: the envelope every interval voltage must keep, % of Un above / below.
        vuf_pct: limit on the ``percentile``-th percentile of the interval VUF, %.
        pvur_pct: limit on the ``percentile``-th percentile of the interval PVUR, % (None:
            reported, not judged; EN 50160 has no PVUR limit).
        percentile: the share of interval values that must comply, %.
        interval_s: aggregation interval, s (a multiple of the run's step size).
        period_s: assessment period, s.
        aggregation: ``rms`` (IEC 61000-4-30) or ``mean``.
    """

    v_nominal_v: float = 230.0
    band_pct: float = 10.0
    high_pct: float = 10.0
    low_pct: float = 15.0
    vuf_pct: float = 2.0
    pvur_pct: float | None = None
    percentile: float = 95.0
    interval_s: float = 600.0
    period_s: float = 7 * 86400.0
    aggregation: Literal["rms", "mean"] = "rms"

    def __post_init__(self) -> None:
        problems = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "aggregation":
                if value not in ("rms", "mean"):
                    problems.append(f"en50160.aggregation must be 'rms' or 'mean', got {value!r}")
                continue
            if value is None and f.name == "pvur_pct":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                problems.append(f"en50160.{f.name} must be a positive number, got {value!r}")
        if not problems:
            if self.percentile > 100:
                problems.append(f"en50160.percentile must be <= 100, got {self.percentile!r}")
            if self.period_s % self.interval_s:
                problems.append(
                    f"en50160.period_s ({self.period_s:g}) must be a multiple of interval_s ({self.interval_s:g})"
                )
        if problems:
            raise StudyError("; ".join(problems))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> En50160:
        """Build from a mapping (the ``[en50160]`` table of a study file); unknown keys are errors."""
        valid = [f.name for f in fields(cls)]
        unknown = [k for k in d if k not in valid]
        if unknown:
            raise StudyError(f"unknown en50160 key {unknown[0]!r}; valid keys: {', '.join(valid)}")
        return cls(**d)

    def to_attrs(self) -> dict[str, Any]:
        """The settings as netCDF/zarr attributes (None written as the string 'none')."""
        return {f"en50160_{f.name}": ("none" if v is None else v) for f in fields(self) if (v := getattr(self, f.name))}

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> En50160:
        """Inverse of :meth:`to_attrs`."""
        out: dict[str, Any] = {}
        for f in fields(cls):
            key = f"en50160_{f.name}"
            if key in attrs:
                v = attrs[key]
                out[f.name] = None if v == "none" else (str(v) if f.name == "aggregation" else float(v))
            elif f.name == "pvur_pct":
                out[f.name] = None
        return cls(**out)

    def steps_per_interval(self, stepsize_s: float) -> int | None:
        """Steps in one interval, or None if the interval is not a whole number of steps."""
        n = self.interval_s / stepsize_s
        return round(n) if n >= 1 and abs(n - round(n)) < 1e-9 else None


# ----------------------------------------------------------------------------- per step


def _bus_phase_nodes(model: FeederModel, bus: str) -> list[int]:
    """Nodes of phases a, b, c of ``bus`` in that order (-1 where absent), by their traced
    role (``FeederModel.node_role``; terminals 1, 2, 3 if the model carries no roles)."""
    on_bus = np.nonzero(model.node_bus == bus)[0]
    roles = model.node_role[on_bus] if model.node_role.size else model.node_terminal[on_bus]
    return [int(on_bus[roles == r][0]) if (roles == r).any() else -1 for r in (1, 2, 3)]


def customer_quality(
    model: FeederModel, vt: ComplexArray
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Per-step voltage quality at every customer's supply terminals.

    Args:
        model: the feeder (its ``customers``: ``phase_nodes``, ``neutral_node``, ``bus``).
        vt: node-to-earth voltages (n_nodes, steps), V.

    Returns:
        ``(v, vuf, pvur)``: ``v`` (steps, customers, max phases) rms phase-to-neutral voltage
        of each of the customer's phases, in the order of ``Customer.phases``, V (NaN where
        the customer has fewer phases; phase-to-earth where it has no neutral node);
        ``vuf`` and ``pvur`` (steps, customers) of the three phase-to-neutral voltages of
        the customer's bus, %, NaN where the bus has fewer than three phases.
    """
    steps = vt.shape[1]
    customers = model.customers
    width = max((len(c.phase_nodes) for c in customers), default=1)
    v = np.full((steps, len(customers), width), np.nan)
    bus3 = np.full((len(customers), 3), -1, dtype=np.int64)
    neutral = np.array([c.neutral_node for c in customers], dtype=np.int64)
    for i, c in enumerate(customers):
        vn = vt[c.neutral_node] if c.neutral_node >= 0 else 0.0
        for j, node in enumerate(c.phase_nodes):
            v[:, i, j] = np.abs(vt[int(node)] - vn)
        bus3[i] = _bus_phase_nodes(model, c.bus)
    ok = (bus3 >= 0).all(axis=1)
    vuf = np.full((steps, len(customers)), np.nan)
    pvur = np.full((steps, len(customers)), np.nan)
    if ok.any():
        ref = np.where(neutral[ok] >= 0, vt[np.maximum(neutral[ok], 0)].T, 0.0)  # (steps, customers)
        vpn = np.moveaxis(vt[bus3[ok]], 2, 0) - ref[:, :, None]  # (steps, customers, 3)
        vuf[:, ok] = vuf_pct(vpn)
        pvur[:, ok] = pvur_pct(vpn)
    return v, vuf, pvur


# ----------------------------------------------------------------------------- intervals


def interval_index(steps: NDArray[np.int64], stepsize_s: float, interval_s: float) -> NDArray[np.int64]:
    """Interval of each step ``k``: ``floor((k - 1) * stepsize / interval)``."""
    return np.floor((np.asarray(steps) - 1) * stepsize_s / interval_s + 1e-9).astype(np.int64)


def interval_bounds(
    steps: NDArray[np.int64], stepsize_s: float, interval_s: float = 600.0
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """``(interval, first, n_steps)`` of consecutive steps ``k``: interval indices (see
    :func:`interval_index`), the position of each interval's first step in ``steps``, and
    steps per interval."""
    idx = interval_index(steps, stepsize_s, interval_s)
    first = np.concatenate([[0], np.nonzero(np.diff(idx))[0] + 1]) if idx.size else np.zeros(0, np.int64)
    counts = np.diff(np.concatenate([first, [idx.size]]))
    return idx[first], first, counts.astype(np.int64)


def reduce_intervals(
    values: NDArray[np.float64],
    first: NDArray[np.int64],
    counts: NDArray[np.int64],
    aggregation: Literal["rms", "mean"] = "rms",
) -> NDArray[np.float64]:
    """Per-step ``values`` (steps, ...) aggregated over the intervals of
    :func:`interval_bounds` (``first``, ``counts``): (intervals, ...), unit of ``values``."""
    x = np.asarray(values, dtype=np.float64)
    shape = (-1,) + (1,) * (x.ndim - 1)
    if aggregation == "rms":
        return np.sqrt(np.add.reduceat(x * x, first, axis=0) / counts.reshape(shape))
    return np.add.reduceat(x, first, axis=0) / counts.reshape(shape)


def interval_values(
    values: NDArray[np.float64],
    steps: NDArray[np.int64],
    stepsize_s: float,
    interval_s: float = 600.0,
    aggregation: Literal["rms", "mean"] = "rms",
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Aggregate per-step values into intervals.

    Args:
        values: (steps, ...) per-step values (any unit; NaN propagates).
        steps: the consecutive step indices ``k`` of ``values`` (step k at time k x stepsize).
        stepsize_s, interval_s: step size and aggregation interval, s.
        aggregation: ``rms`` (sqrt of the mean of squares, IEC 61000-4-30) or ``mean``.

    Returns:
        ``(interval, n_steps, value, step_min, step_max)``: interval indices (see
        :func:`interval_index`), steps per interval, the aggregated value and the per-step
        minimum and maximum inside each interval (shape (intervals, ...), unit of ``values``).
    """
    interval, first, counts = interval_bounds(steps, stepsize_s, interval_s)
    x = np.asarray(values, dtype=np.float64)
    return (
        interval,
        counts,
        reduce_intervals(x, first, counts, aggregation),
        np.minimum.reduceat(x, first, axis=0),
        np.maximum.reduceat(x, first, axis=0),
    )


def interval_dataset(
    customers: list[str],
    steps: NDArray[np.int64],
    stepsize_s: float,
    v: NDArray[np.float64],
    vuf: NDArray[np.float64],
    pvur: NDArray[np.float64],
    config: En50160,
) -> xr.Dataset:
    """Interval values of :func:`customer_quality`'s output as a Dataset over ``interval``.

    Variables: ``v10_v`` (interval, customer, phase), ``vuf10_pct``, ``pvur10_pct``
    (interval, customer), the per-step extremes inside each interval ``v_step_min_v``,
    ``v_step_max_v``, ``vuf_step_max_pct``, ``pvur_step_max_pct``, and ``interval_steps``.
    """
    iv, n, v10, vmin, vmax = interval_values(v, steps, stepsize_s, config.interval_s, config.aggregation)
    _, _, u10, _, umax = interval_values(vuf, steps, stepsize_s, config.interval_s, config.aggregation)
    _, _, p10, _, pmax = interval_values(pvur, steps, stepsize_s, config.interval_s, config.aggregation)
    agg = f"{config.aggregation} over the interval (IEC 61000-4-30)"
    dims3, dims2 = ("interval", "customer", "phase"), ("interval", "customer")
    return xr.Dataset(
        {
            "interval_steps": ("interval", n, {"long_name": "steps in the interval"}),
            "v10_v": (dims3, v10, {"units": "V", "long_name": f"phase-to-neutral voltage, {agg}"}),
            "v_step_min_v": (dims3, vmin, {"units": "V", "long_name": "lowest step voltage in the interval"}),
            "v_step_max_v": (dims3, vmax, {"units": "V", "long_name": "highest step voltage in the interval"}),
            "vuf10_pct": (dims2, u10, {"units": "%", "long_name": f"VUF at the customer's bus, {agg}"}),
            "vuf_step_max_pct": (dims2, umax, {"units": "%", "long_name": "highest step VUF in the interval"}),
            "pvur10_pct": (dims2, p10, {"units": "%", "long_name": f"PVUR at the customer's bus, {agg}"}),
            "pvur_step_max_pct": (dims2, pmax, {"units": "%", "long_name": "highest step PVUR in the interval"}),
        },
        coords={
            "interval": ("interval", iv, {"interval_s": config.interval_s}),
            "interval_start_s": ("interval", iv * config.interval_s, {"units": "s"}),
            "customer": customers,
            "phase": np.arange(1, v.shape[2] + 1),
        },
    )


# ----------------------------------------------------------------------------- periods


#: Per-step extremes carried from the intervals into each period: reduction and axes.
STEP_EXTREMES: dict[str, tuple[Any, tuple[int, ...]]] = {
    "v_step_min_v": (np.nanmin, (0, 2)),
    "v_step_max_v": (np.nanmax, (0, 2)),
    "vuf_step_max_pct": (np.nanmax, (0,)),
    "pvur_step_max_pct": (np.nanmax, (0,)),
}


def _nearest_rank(x: NDArray[np.float64], q: float) -> float:
    x = x[np.isfinite(x)]
    return float(np.percentile(x, q, method="inverted_cdf")) if x.size else math.nan


def period_statistics(intervals: xr.Dataset, config: En50160) -> xr.Dataset:
    """EN 50160 statistics per customer and period from :func:`interval_dataset` values.

    Returns a Dataset over (week, customer) -- ``week`` is the 1-based period number --
    with ``v_within_band_pct`` (share of the interval voltages within Un +/- band, of the
    customer's worst phase, %), ``v10_min_v``, ``v10_max_v`` (over all its phases, V),
    ``vuf_p95_pct``, ``pvur_p95_pct`` (``percentile``-th percentile, %), ``n_intervals``,
    ``v_outside_envelope`` (interval values outside +high/-low) and ``compliant``; and the
    per-step extremes of the period, ``week_v_step_min_v``, ``week_v_step_max_v``,
    ``week_vuf_step_max_pct``, ``week_pvur_step_max_pct``, when ``intervals`` has them.
    Works on lazy (dask) input: it loads one period at a time.
    """
    per_period = round(config.period_s / config.interval_s)
    iv = np.asarray(intervals["interval"].values)
    week_of = iv // per_period
    weeks = np.unique(week_of)
    customers = np.asarray(intervals["customer"].values)
    nc = customers.size
    un = config.v_nominal_v
    lo_b, hi_b = un * (1 - config.band_pct / 100), un * (1 + config.band_pct / 100)
    lo_e, hi_e = un * (1 - config.low_pct / 100), un * (1 + config.high_pct / 100)
    out = {
        k: np.full((weeks.size, nc), np.nan)
        for k in ("v_within_band_pct", "v10_min_v", "v10_max_v", "vuf_p95_pct", "pvur_p95_pct")
    }
    n_int = np.zeros((weeks.size, nc), dtype=np.int64)
    outside = np.zeros((weeks.size, nc), dtype=np.int64)
    compliant = np.zeros((weeks.size, nc), dtype=bool)
    q = config.percentile
    extremes: dict[str, NDArray[np.float64]] = {}
    for w, week in enumerate(weeks):
        sel = np.nonzero(week_of == week)[0]
        names = ["v10_v", "vuf10_pct", "pvur10_pct", *(k for k in STEP_EXTREMES if k in intervals)]
        part = intervals[names].isel(interval=slice(sel[0], sel[-1] + 1)).load()
        for k, (op, axes) in STEP_EXTREMES.items():
            if k in part:
                with np.errstate(all="ignore"):
                    extremes.setdefault(k, np.full((weeks.size, nc), np.nan))[w] = op(part[k].values, axis=axes)
        v = np.asarray(part["v10_v"].values)  # (intervals, customer, phase)
        present = np.isfinite(v)
        n = present.sum(axis=0)  # per (customer, phase)
        in_band = ((v >= lo_b) & (v <= hi_b)).sum(axis=0)
        out_env = (present & ((v < lo_e) | (v > hi_e))).sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(n > 0, 100.0 * in_band / np.maximum(n, 1), np.nan)
        out["v_within_band_pct"][w] = np.nanmin(np.where(n > 0, share, np.inf), axis=1)
        band_ok = ((in_band * 100.0 >= q * n - 1e-9) | (n == 0)).all(axis=1)
        out["v10_min_v"][w] = np.nanmin(np.where(present, v, np.inf), axis=(0, 2))
        out["v10_max_v"][w] = np.nanmax(np.where(present, v, -np.inf), axis=(0, 2))
        n_int[w] = n.max(axis=1)
        outside[w] = out_env.sum(axis=1)
        vuf = np.asarray(part["vuf10_pct"].values)
        pvur = np.asarray(part["pvur10_pct"].values)
        out["vuf_p95_pct"][w] = [_nearest_rank(vuf[:, i], q) for i in range(nc)]
        out["pvur_p95_pct"][w] = [_nearest_rank(pvur[:, i], q) for i in range(nc)]
        vuf_ok = ~(out["vuf_p95_pct"][w] > config.vuf_pct)
        pvur_ok = ~(out["pvur_p95_pct"][w] > config.pvur_pct) if config.pvur_pct is not None else True
        compliant[w] = band_ok & (outside[w] == 0) & vuf_ok & pvur_ok & (n_int[w] > 0)
    for k in ("v10_min_v", "v10_max_v", "v_within_band_pct"):
        out[k][~np.isfinite(out[k])] = np.nan
    dims = ("week", "customer")
    pct = f"{q:g}th percentile (nearest rank) of the interval values"
    return xr.Dataset(
        {
            "v_within_band_pct": (
                dims,
                out["v_within_band_pct"],
                {
                    "units": "%",
                    "long_name": f"share of interval voltages within Un +/- {config.band_pct:g} %, worst phase",
                },
            ),
            "v10_min_v": (dims, out["v10_min_v"], {"units": "V", "long_name": "lowest interval voltage"}),
            "v10_max_v": (dims, out["v10_max_v"], {"units": "V", "long_name": "highest interval voltage"}),
            "vuf_p95_pct": (dims, out["vuf_p95_pct"], {"units": "%", "long_name": f"VUF, {pct}"}),
            "pvur_p95_pct": (dims, out["pvur_p95_pct"], {"units": "%", "long_name": f"PVUR, {pct}"}),
            "n_intervals": (dims, n_int, {"long_name": "interval values in the period"}),
            "v_outside_envelope": (
                dims,
                outside,
                {"long_name": f"interval voltages outside Un +{config.high_pct:g} / -{config.low_pct:g} %"},
            ),
            "compliant": (dims, compliant, {"long_name": "EN 50160 verdict for the period"}),
            **{
                f"week_{k}": (
                    dims,
                    x,
                    {"units": "V" if k.endswith("_v") else "%", "long_name": f"per-step extreme: {k}"},
                )
                for k, x in extremes.items()
            },
        },
        coords={"week": weeks + 1, "customer": customers},
        attrs=config.to_attrs(),
    )


def aggregate(
    v: NDArray[np.float64],
    vuf: NDArray[np.float64],
    pvur: NDArray[np.float64],
    *,
    start: int,
    stepsize_s: float,
    customers: list[str] | None = None,
    config: En50160 | None = None,
) -> tuple[xr.Dataset, xr.Dataset]:
    """EN 50160 statistics of per-step series in memory (the public one-shot entry point).

    Args:
        v: (steps, customers, phases) rms phase-to-neutral voltage per step, V (NaN for absent phases).
        vuf, pvur: (steps, customers) VUF and PVUR per step, %.
        start: index of the first step (step k at time k x stepsize).
        stepsize_s: step size, s.
        customers: names (default ``c0, c1, ...``).
        config: limits and aggregation (default EN 50160).

    Returns:
        ``(intervals, periods)``: :func:`interval_dataset` and :func:`period_statistics`.
    """
    cfg = config or En50160()
    if cfg.steps_per_interval(stepsize_s) is None:
        raise StudyError(
            f"en50160.interval_s ({cfg.interval_s:g} s) is not a multiple of the step size ({stepsize_s:g} s)"
        )
    names = customers if customers is not None else [f"c{i}" for i in range(np.shape(v)[1])]
    steps = np.arange(start, start + np.shape(v)[0])
    intervals = interval_dataset(names, steps, stepsize_s, v, vuf, pvur, cfg)
    return intervals, period_statistics(intervals, cfg)


def en50160_table(periods: xr.Dataset) -> pd.DataFrame:
    """The ``en50160.csv`` table: one row per (customer, week), columns :data:`EN50160_COLUMNS`."""
    df = periods[[c for c in EN50160_COLUMNS if c not in ("customer", "week")]].to_dataframe().reset_index()
    order = {str(c): i for i, c in enumerate(periods["customer"].values)}  # the model's order
    df = df.assign(_pos=df["customer"].astype(str).map(order)).sort_values(["_pos", "week"], kind="stable")
    df["compliant"] = np.where(df["compliant"].astype(bool), "yes", "no")
    return df[EN50160_COLUMNS].reset_index(drop=True)
