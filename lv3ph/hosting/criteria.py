"""Hosting-capacity criteria: check values from node voltages, thresholds relative to the base case.

Criteria relative to the base case
----------------------------------
The feeder without PV may already violate a limit (the published IEEE EU LV feeder sits at
252-253 V against a 253 V limit at 1.05 pu source, and 1-minute load spikes push PVUR above
2 % at some buses). ``pre_existing`` says what that means:

* ``"item"`` (default; base-relative, the way EPRI-style studies treat an existing network):
  per item (bus, line, transformer) and check, an item that never violates without PV in the
  PV window binds as soon as it violates the absolute limit; an item that already violates
  without PV binds only when the PV makes its worst value worse than its worst value without
  PV by more than the tolerance (``tolerance``, default :data:`PRE_EXISTING_TOL`: 0.1 V,
  0.01 %-points of VUF/PVUR, 0.1 %-points of loading);
* ``"worsened"``: the same per (item, step): a step that violates without PV counts when
  the PV makes *that step* worse by more than the tolerance (stricter than ``"item"``);
* ``"exclude"``: a (item, step) that violates without PV never counts;
* ``"count"``: absolute limits: every violation counts (the hosting capacity is 0 whenever
  the PV window holds a pre-existing violation).

Basis
-----
``basis="step"`` checks every step. ``basis="en50160"`` checks 10-minute values, as
EN 50160 judges voltage quality: the quadratic mean of the steps in each clock-aligned
10-minute interval (steps ``k`` with the same ``floor((k - 1) x stepsize / 600 s)``) of each
phase-to-neutral voltage magnitude (then the lowest/highest phase), of VUF, PVUR and the
neutral-to-earth voltage, and of each element's loading. EN 50160's 95 % share applies over a
week; a one-day run has no week, so every 10-minute value must meet the limit. The
intervals and the aggregation are those of :mod:`lv3ph.en50160` (:func:`~lv3ph.en50160.interval_index`,
:func:`~lv3ph.en50160.reduce_intervals`, ``rms`` as IEC 61000-4-30); :class:`Aggregation`
applies them to the steps a candidate solves. The basis used is in
``HostingResult.settings["basis"]``.

Night steps (PV profile 0) never count: the PV injects nothing, so the network is the one
without PV and any violation there is pre-existing. Only the *PV window* (first to last step
with a PV output) is ever solved.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from lv3ph.en50160 import interval_index, reduce_intervals
from lv3ph.model import FeederModel, branch_rows
from lv3ph.unbalance import Limits, pvur_pct, vuf_pct

PRE_EXISTING: Final[tuple[str, ...]] = ("item", "worsened", "exclude", "count")
BASES: Final[tuple[str, ...]] = ("step", "en50160")
#: Length of an aggregation interval of ``basis="en50160"``, s.
AGGREGATION_S: Final[float] = 600.0

#: How much worse than without PV a pre-existing violation must get to count
#: (``pre_existing="item"`` or ``"worsened"``), in the unit of its check: V or %-points.
PRE_EXISTING_TOL: Final[dict[str, float]] = {
    "voltage_low": 0.1,
    "voltage_high": 0.1,
    "vuf": 0.01,
    "pvur": 0.01,
    "vne": 0.1,
    "line_thermal": 0.1,
    "transformer_thermal": 0.1,
}

BUS_CHECKS: Final[tuple[str, ...]] = ("voltage_low", "voltage_high", "vuf", "pvur", "vne")
THERMAL_CHECKS: Final[tuple[str, ...]] = ("line_thermal", "transformer_thermal")


#: Per-step values (steps, items) -> per-interval values (intervals, items).
Reduce = Callable[[NDArray[np.float64]], NDArray[np.float64]]


def _identity(x: NDArray[np.float64]) -> NDArray[np.float64]:
    return x


class Checker:
    """Check values from node voltages, with the definitions of :func:`lv3ph.unbalance.violations`.

    Bus checks use phase-to-neutral voltages (``V_p - V_n`` by traced role where the bus has a neutral)
    at the customer buses (``limits.where="customers"``) or every bus with a phase; line
    loading is the largest terminal-1 conductor current (phases and neutral) over
    ``normamps``; transformer loading is the apparent power of the most loaded winding over
    its kVA.
    """

    def __init__(self, model: FeederModel, limits: Limits, checks: tuple[str, ...]) -> None:
        self.checks = checks
        self.limit = {c: float(limit_of(limits, c) or 0.0) for c in checks}
        self.direction = {c: -1.0 if c == "voltage_low" else 1.0 for c in checks}
        self.items: dict[str, NDArray[np.str_]] = {}
        # ---- buses
        node_of: dict[tuple[str, int], int] = {}  # (bus, traced role 1-3 phase / 4 neutral) -> first node
        for i, (b, r) in enumerate(zip(model.node_bus, model.node_role, strict=True)):
            if r >= 0:
                node_of.setdefault((str(b), int(r) if r >= 1 else 4), i)
        if limits.where == "customers":
            names = {c.bus for c in model.customers}
            for nodes in model.orphan_devices.values():
                names.update(str(model.node_bus[n]) for n in nodes if n >= 0)
            buses = [b for b in model.buses if b in names]
        else:
            buses = [b for b in model.buses if any((b, t) in node_of for t in (1, 2, 3))]
        grid = np.array([[node_of.get((b, t), -1) for t in (1, 2, 3, 4)] for b in buses], dtype=np.int64).reshape(-1, 4)
        self.eval_nodes = np.unique(grid[grid >= 0])
        row_of = np.full(model.n_nodes, -1, dtype=np.int64)
        row_of[self.eval_nodes] = np.arange(self.eval_nodes.size)
        self.bus_rows = np.where(grid >= 0, row_of[np.maximum(grid, 0)], -1)
        self.buses = np.array(buses, dtype=str)
        for c in checks:
            if c in BUS_CHECKS:
                self.items[c] = self.buses
        # ---- lines: terminal-1 rows of rated lines
        lines = [
            i for i, e in enumerate(model.elements) if e.kind == "line" and np.isfinite(e.normamps) and e.normamps > 0
        ]
        self.line_pos = np.array(lines if "line_thermal" in checks else [], dtype=np.int64)
        if self.line_pos.size:
            br = branch_rows(model, self.line_pos)
            first = np.nonzero(br.terminal == 1)[0]
            self.line_yv = br.yv[first]
            starts = np.nonzero(np.r_[True, np.diff(br.element[first]) != 0])[0]
            self.line_rows = segment_rows(starts, first.size)
            self.line_amps = np.array([model.elements[i].normamps for i in self.line_pos])
            self.items["line_thermal"] = np.array([model.elements[i].name for i in self.line_pos], dtype=str)
        # ---- transformers: apparent power per winding
        trafos = [
            i for i, e in enumerate(model.elements) if e.kind == "transformer" and np.isfinite(e.kva) and e.kva > 0
        ]
        self.tx_pos = np.array(trafos if "transformer_thermal" in checks else [], dtype=np.int64)
        if self.tx_pos.size:
            br = branch_rows(model, self.tx_pos)
            self.tx_yv, self.tx_inc = br.yv, br.incidence
            key = br.element * 1000 + br.terminal
            self.tx_wdg_starts = np.nonzero(np.r_[True, np.diff(key) != 0])[0]
            wdg_element = br.element[self.tx_wdg_starts]
            self.tx_starts = np.nonzero(np.r_[True, np.diff(wdg_element) != 0])[0]
            self.tx_kva = np.array([model.elements[i].kva for i in self.tx_pos])
            self.items["transformer_thermal"] = np.array([model.elements[i].name for i in self.tx_pos], dtype=str)
        self.checks = tuple(c for c in checks if c in self.items)

    @property
    def bus_checks(self) -> tuple[str, ...]:
        return tuple(c for c in self.checks if c in BUS_CHECKS)

    def bus_values(self, ve: NDArray[np.complex128], reduce: Reduce | None = None) -> dict[str, NDArray[np.float64]]:
        """Bus check values (steps, buses) from voltages at ``eval_nodes`` (rows, steps).

        ``reduce`` (e.g. :meth:`Aggregation.reduce`) turns per-step values (steps, buses) into
        per-interval values; it is applied to each phase's voltage magnitude before the
        lowest/highest phase is taken, and to the per-step VUF, PVUR and neutral voltage.
        """
        if not self.bus_checks:
            return {}
        r: Reduce = reduce or _identity
        rows = self.bus_rows
        vt = ve.T
        nan = complex(math.nan, math.nan)

        def col(j: int) -> NDArray[np.complex128]:
            i = rows[:, j]
            return np.where(i >= 0, vt[:, np.maximum(i, 0)], nan)

        neutral = col(3)
        has_n = rows[:, 3] >= 0
        shift = np.where(has_n, neutral, 0.0)
        va, vb, vc = (col(j) - shift for j in range(3))
        ma, mb, mc = np.abs(va), np.abs(vb), np.abs(vc)
        out: dict[str, NDArray[np.float64]] = {}
        want = self.bus_checks
        ra, rb, rc = (r(m) for m in (ma, mb, mc))
        vmin = np.fmin(np.fmin(ra, rb), rc)
        if "voltage_low" in want:
            out["voltage_low"] = vmin
        if "voltage_high" in want:
            out["voltage_high"] = np.fmax(np.fmax(ra, rb), rc)
        if "vuf" in want:
            out["vuf"] = r(vuf_pct(np.stack([va, vb, vc], axis=-1)))
        if "pvur" in want:
            out["pvur"] = r(pvur_pct(np.stack([ma, mb, mc], axis=-1)))
        if "vne" in want:
            vn = np.where(np.isnan(np.fmin(np.fmin(ma, mb), mc)), np.nan, np.where(has_n, np.abs(neutral), 0.0))
            out["vne"] = r(vn)
        return out

    def values(self, v: NDArray[np.complex128], reduce: Reduce | None = None) -> dict[str, NDArray[np.float64]]:
        """Every check's values (steps, items) from all node voltages (n_nodes, steps);
        ``reduce`` as in :meth:`bus_values` (applied to each element's loading)."""
        r: Reduce = reduce or _identity
        out = self.bus_values(v[self.eval_nodes], reduce)
        if self.line_pos.size:
            mag = np.abs(np.asarray(self.line_yv @ v))
            imax = segment_max(mag, self.line_rows)
            out["line_thermal"] = r((imax / self.line_amps[:, None] * 100.0).T)
        if self.tx_pos.size:
            s_rows = np.asarray(self.tx_inc @ v) * np.conj(np.asarray(self.tx_yv @ v))
            s_wdg = np.abs(np.add.reduceat(s_rows, self.tx_wdg_starts, axis=0)) / 1000.0
            s_max = np.maximum.reduceat(s_wdg, self.tx_starts, axis=0)
            out["transformer_thermal"] = r((s_max / self.tx_kva[:, None] * 100.0).T)
        return out


def segment_rows(starts: NDArray[np.int64], n: int) -> NDArray[np.int64] | int:
    """Rows of each segment of ``n`` rows starting at ``starts``, for :func:`segment_max`:
    the segment length if all segments are equally long, else (segments, longest) row
    indices, a shorter segment repeating its first row (which leaves its maximum unchanged)."""
    length = np.diff(np.r_[starts, n])
    if length.size and np.all(length == length[0]):
        return int(length[0])
    return starts[:, None] + np.where(np.arange(length.max())[None, :] < length[:, None], np.arange(length.max()), 0)


def segment_max(x: NDArray[np.float64], rows: NDArray[np.int64] | int) -> NDArray[np.float64]:
    """Largest row of each segment of ``x`` (rows, steps) -> (segments, steps), with ``rows``
    from :func:`segment_rows`; the same numbers as ``np.maximum.reduceat`` over the
    segment starts (NaN propagates), 10x faster on the IEEE twin's 905 four-wire lines."""
    if isinstance(rows, int):
        return np.max(x.reshape(-1, rows, x.shape[1]), axis=1)
    return np.max(x[rows], axis=1)


def limit_of(limits: Limits, check: str) -> float | None:
    return {
        "voltage_low": limits.v_low_v,
        "voltage_high": limits.v_high_v,
        "vuf": limits.vuf_pct,
        "pvur": limits.pvur_pct,
        "vne": limits.vne_v,
        "line_thermal": limits.line_loading_pct,
        "transformer_thermal": limits.transformer_loading_pct,
    }[check]


@dataclass
class Outcome:
    """One evaluation: ``ok`` and the worst violation (check, item, step, value, limit)."""

    ok: bool
    check: str = "none"
    item: str = ""
    step: int = -1
    value: float = math.nan
    limit: float = math.nan
    worst_steps: tuple[int, ...] = ()


class Aggregation:
    """The rows a check is judged on: the PV-window steps (``basis="step"``) or their
    10-minute intervals (``basis="en50160"``, see the module docstring).

    Args:
        window: the PV-window steps (consecutive step indices).
        stepsize_s: step size, s.
        basis: one of :data:`BASES`.
    """

    def __init__(self, window: NDArray[np.int64], stepsize_s: float, basis: str) -> None:
        self.basis = basis
        self.window = window
        self.stepsize_s = float(stepsize_s)
        if basis == "step":
            row = np.arange(window.size)
        else:
            interval = interval_index(window, self.stepsize_s, AGGREGATION_S)
            row = interval - interval[0]
        self.row = row  # row of each window position
        self.n_rows = int(row[-1]) + 1
        self.starts = np.nonzero(np.r_[True, np.diff(row) != 0])[0]  # first window position of each row
        self.count = np.diff(np.r_[self.starts, window.size])
        #: the step a row is reported at: its last step (a 10-minute value is stamped at its end)
        self.row_step = window[np.r_[self.starts[1:], window.size] - 1]

    def rows_of(self, steps: NDArray[np.int64]) -> NDArray[np.int64]:
        """The (sorted, distinct) rows that ``steps`` touch."""
        return np.unique(self.row[steps - self.window[0]])

    def steps_of(self, rows: NDArray[np.int64]) -> NDArray[np.int64]:
        """Every step of ``rows``, sorted."""
        if self.basis == "step":
            return np.sort(self.window[rows])
        return np.sort(np.concatenate([self.window[self.starts[r] : self.starts[r] + self.count[r]] for r in rows]))

    def reducer(self, steps: NDArray[np.int64]) -> tuple[NDArray[np.int64], Reduce | None]:
        """``(rows, reduce)`` for values at ``steps`` (sorted, whole rows): ``reduce`` maps
        (len(steps), items) to (len(rows), items) by the quadratic mean (None: per step)."""
        rows = self.rows_of(steps)
        if self.basis == "step":
            return rows, None
        r = self.row[steps - self.window[0]]
        first = np.nonzero(np.r_[True, np.diff(r) != 0])[0]  # the rows' bounds in ``steps``
        counts = np.diff(np.r_[first, r.size])
        if np.any(counts != self.count[rows]):
            raise ValueError("aggregated values need every step of each interval")

        def reduce(x: NDArray[np.float64]) -> NDArray[np.float64]:
            return reduce_intervals(x, first, counts, "rms")

        return rows, reduce


def thresholds(
    checker: Checker,
    base: dict[str, NDArray[np.float64]],
    policy: str,
    row_step: NDArray[np.int64],
    tolerance: dict[str, float] | None = None,
) -> tuple[dict[str, NDArray[np.float64]], pd.DataFrame]:
    """Per check the threshold (rows, items) a value must pass to count, and the
    pre-existing violations (check, item, n_steps, first_step, last_step, worst_value, limit).

    ``base``: the check values without PV per row (:class:`Aggregation`), ``row_step`` the
    step each row is reported at; ``policy``: one of :data:`PRE_EXISTING` (module docstring);
    ``tolerance``: per check, default :data:`PRE_EXISTING_TOL`. ``n_steps`` counts rows.
    """
    ch = checker
    tol = PRE_EXISTING_TOL | dict(tolerance or {})
    thr: dict[str, NDArray[np.float64]] = {}
    rows = []
    for c in ch.checks:
        lim, d = ch.limit[c], ch.direction[c]
        b = base[c]
        bad = d * (b - lim) > 0
        t = np.full(b.shape, lim)
        if policy == "item":
            worst = np.fmax.reduce(d * b, axis=0) * d  # (items,) worst value without PV (NaN: no such phase)
            t = np.where(bad.any(axis=0), worst + d * tol[c], lim)[None, :] * np.ones((b.shape[0], 1))
        elif policy == "worsened":
            t = np.where(bad, b + d * tol[c], t)
        elif policy == "exclude":
            t = np.where(bad, d * np.inf, t)
        thr[c] = t
        for i in np.nonzero(bad.any(axis=0))[0]:
            ts = np.nonzero(bad[:, i])[0]
            worst = b[ts, i].max() if d > 0 else b[ts, i].min()
            rows.append(
                (c, str(ch.items[c][i]), ts.size, int(row_step[ts[0]]), int(row_step[ts[-1]]), float(worst), lim)
            )
    cols = ["check", "item", "n_steps", "first_step", "last_step", "worst_value", "limit"]
    return thr, pd.DataFrame(rows, columns=cols)
