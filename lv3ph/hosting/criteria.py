"""Hosting-capacity criteria: check values from node voltages, thresholds relative to the base case.

Pre-existing violations
-----------------------
The feeder without PV may already violate a limit (the published IEEE EU LV feeder sits at
252-253 V against a 253 V limit, and 1-minute load spikes push PVUR above 2 % at some
buses). ``pre_existing`` says what that means:

* ``"worsened"`` (default): a (check, item, step) that violates without PV counts only
  when the PV makes it worse than without PV by more than :data:`PRE_EXISTING_TOL` (0.1 V,
  0.01 %-points of VUF/PVUR, 0.1 %-points of loading);
* ``"exclude"``: it never counts;
* ``"count"``: it always counts (the hosting capacity is 0 whenever the PV window holds a
  pre-existing violation).

Night steps (PV profile 0) never count: the PV injects nothing, so the network is the one
without PV and any violation there is pre-existing. Only the *PV window* (first to last step
with a PV output) is ever solved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from lv3ph.model import FeederModel, branch_rows
from lv3ph.unbalance import Limits, pvur_pct, vuf_pct

PRE_EXISTING: Final[tuple[str, ...]] = ("worsened", "exclude", "count")

#: How much worse than without PV a pre-existing violation must get to count
#: (``pre_existing="worsened"``), in the unit of its check: V or %-points.
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


# ----------------------------------------------------------------------------- checks
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
            self.line_starts = np.nonzero(np.r_[True, np.diff(br.element[first]) != 0])[0]
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

    def bus_values(self, ve: NDArray[np.complex128]) -> dict[str, NDArray[np.float64]]:
        """Bus check values (steps, buses) from voltages at ``eval_nodes`` (rows, steps)."""
        if not self.bus_checks:
            return {}
        rows = self.bus_rows
        vt = ve.T
        nan = complex(math.nan, math.nan)

        def col(j: int) -> NDArray[np.complex128]:
            r = rows[:, j]
            return np.where(r >= 0, vt[:, np.maximum(r, 0)], nan)

        neutral = col(3)
        has_n = rows[:, 3] >= 0
        shift = np.where(has_n, neutral, 0.0)
        va, vb, vc = (col(j) - shift for j in range(3))
        ma, mb, mc = np.abs(va), np.abs(vb), np.abs(vc)
        out: dict[str, NDArray[np.float64]] = {}
        vmin = np.fmin(np.fmin(ma, mb), mc)
        want = self.bus_checks
        if "voltage_low" in want:
            out["voltage_low"] = vmin
        if "voltage_high" in want:
            out["voltage_high"] = np.fmax(np.fmax(ma, mb), mc)
        if "vuf" in want:
            out["vuf"] = vuf_pct(np.stack([va, vb, vc], axis=-1))
        if "pvur" in want:
            out["pvur"] = pvur_pct(np.stack([ma, mb, mc], axis=-1))
        if "vne" in want:
            out["vne"] = np.where(np.isnan(vmin), np.nan, np.where(has_n, np.abs(neutral), 0.0))
        return out

    def values(self, v: NDArray[np.complex128]) -> dict[str, NDArray[np.float64]]:
        """Every check's values (steps, items) from all node voltages (n_nodes, steps)."""
        out = self.bus_values(v[self.eval_nodes])
        if self.line_pos.size:
            mag = np.abs(np.asarray(self.line_yv @ v))
            imax = np.maximum.reduceat(mag, self.line_starts, axis=0)
            out["line_thermal"] = (imax / self.line_amps[:, None] * 100.0).T
        if self.tx_pos.size:
            s_rows = np.asarray(self.tx_inc @ v) * np.conj(np.asarray(self.tx_yv @ v))
            s_wdg = np.abs(np.add.reduceat(s_rows, self.tx_wdg_starts, axis=0)) / 1000.0
            s_max = np.maximum.reduceat(s_wdg, self.tx_starts, axis=0)
            out["transformer_thermal"] = (s_max / self.tx_kva[:, None] * 100.0).T
        return out


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


def thresholds(
    checker: Checker, base: dict[str, NDArray[np.float64]], policy: str, window: NDArray[np.int64]
) -> tuple[dict[str, NDArray[np.float64]], pd.DataFrame]:
    """Per check the threshold (window steps, items) a value must pass to count, and the
    pre-existing violations (check, item, n_steps, first_step, last_step, worst_value).

    ``base``: the check values without PV at the ``window`` steps; ``policy``: one of
    :data:`PRE_EXISTING`.
    """
    ch = checker
    thr: dict[str, NDArray[np.float64]] = {}
    rows = []
    for c in ch.checks:
        lim, d = ch.limit[c], ch.direction[c]
        b = base[c]
        bad = d * (b - lim) > 0
        t = np.full(b.shape, lim)
        if policy == "worsened":
            t = np.where(bad, b + d * PRE_EXISTING_TOL[c], t)
        elif policy == "exclude":
            t = np.where(bad, d * np.inf, t)
        thr[c] = t
        for i in np.nonzero(bad.any(axis=0))[0]:
            ts = np.nonzero(bad[:, i])[0]
            worst = b[ts, i].max() if d > 0 else b[ts, i].min()
            rows.append((c, str(ch.items[c][i]), ts.size, int(window[ts[0]]), int(window[ts[-1]]), float(worst), lim))
    cols = ["check", "item", "n_steps", "first_step", "last_step", "worst_value", "limit"]
    return thr, pd.DataFrame(rows, columns=cols)
