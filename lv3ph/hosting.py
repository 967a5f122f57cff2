"""Stochastic (Monte Carlo) PV hosting capacity of an LV feeder, PVUR-aware.

What is computed
----------------
A *placement* is a random order of the feeder's single-phase customers, each with a random
PV size (kWp, uniform in ``kwp_range``), drawn from ``numpy.random.default_rng([seed,
placement])``: placement ``k`` is the same whatever the number of placements, the order in
which they run or the worker that runs them.

Penetration grows along that order: at a total of ``P`` kWp the first customers carry their
full size and the next one carries the remainder, so ``P`` runs continuously from 0 to the
placement's total kWp, adding customers one by one with the last one part-sized. The
*hosting capacity* of a placement is the largest ``P`` at which no enabled limit is violated
at any step of the run (voltage band, VUF, PVUR, neutral-to-earth voltage, line and
transformer thermal: :class:`lv3ph.unbalance.Limits`, same definitions as
:func:`lv3ph.unbalance.violations`), found to within ``step_kw``. The *binding limit* is
the worst violation (largest excess over its threshold, in units of the limit) at the first
failing level ``P_fail <= P + step_kw``: its check, item (bus or element) and step.

* ``search="scan"`` (default) follows that definition literally: it adds whole customers
  one by one, solving each level, until the first one that fails, then bisects inside that
  customer's size. ``search="bisect"`` bisects on ``P`` in ``[0, total]`` directly (fewer
  levels: about ``log2(total / step_kw)``), which is right only where violations grow
  monotonically with PV. On a four-wire feeder they often do not: PV on another phase
  pulls the shifted neutral back and *lowers* a phase-to-neutral voltage that an earlier
  customer had pushed over the limit, and PVUR falls again as the phases fill up. On the
  IEEE twin (source at 1.00 pu, PVUR off) bisection overshot the first violation in 27 of
  100 placements, by up to 105 kWp (median 25 kWp); ``tests/test_hosting.py`` builds a
  two-customer case by hand where bisection reports 18 kWp and the first violation is at
  7.2 kWp, and on its six-customer feeder PVUR binds at 2-10 kWp where bisection reports
  up to the whole 30 kWp.
* If no level up to the total fails, the placement is *censored*: ``hosting_kw`` is the
  total and ``binding_limit`` is ``"none"``.

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

Time-step screening
-------------------
Each candidate level ``P`` is solved only at the steps that can bind, then the result is
verified on the whole PV window:

1. *Linearised prediction* (per candidate): the node voltages without PV are known at every
   step of the window (one solve at set-up). A PV of ``s`` kWp at customer ``j`` injects
   ``I_j(t) = 1000 s pv(t) / conj(V_pn,j(t))`` A into its phase node and takes it back from
   its neutral node; the voltage change is ``Z[:, ph_j] - Z[:, n_j]`` times that current,
   with ``Z`` the inverse of the network admittance matrix (lines, transformer, earthing,
   source; :func:`lv3ph.model.network_y`). The sum over the PV customers gives predicted
   node voltages at every step, from which every voltage check (band, VUF, PVUR,
   neutral-to-earth) is evaluated with the same code as the real check. Kept: the
   ``screen_steps`` steps with the worst predicted excess per check and, at the
   whole-customer levels of a scan, every step where the predicted value, widened by
   ``alpha x |predicted change|``, comes within a floor (0.1 V, 0.05 %-points) of its
   threshold. The prediction misses second-order terms (the PV and load currents follow the
   voltage change: on the IEEE twin 2-7 % of the change, up to 1 V at 200 kWp); ``alpha``
   starts at 0.1 and is raised to 1.5 x the largest error beyond the floor, relative to
   the change, measured at the steps solved so far in the placement. The widened rule
   matters because violations are not monotone in penetration (see ``search``): the
   levels a scan passes through are never checked on the whole window, so they must see
   every step where they could fail. (The levels of the final bisection need not: its
   result is checked on the whole window.)
2. *Net export* (per candidate): the ``screen_steps`` steps with the largest PV minus load
   in total and on each phase (``pv(t) S_p - L_p(t)``, kW). Thermal limits (reverse power
   through the transformer and the main cables) bind at the largest export; this rule also
   covers the voltage checks if the prediction is unavailable (singular network matrix).
   Thermal checks have no prediction of their own (a lateral cable can peak when its own
   customers export most, not the feeder); rule 3 catches that at the result level.
3. *Missed steps*: the final level is solved on the whole PV window. If that shows a
   violation, the violating steps (the worst one per check) join the kept steps for good,
   the level is known to fail, and the search continues below it; the new result is
   checked on the whole window again. The result level is therefore always confirmed on
   every step, and a failing level always failed at a solved step. The levels below the
   result (a scan passes through them) are confirmed at their screened steps only: a
   violation there that the prediction misses by more than its widened margin would go
   unnoticed. Measured: screened and whole-window searches give identical tables on the
   IEEE twin (20 placements, ~580 levels; 18 s against 231 s) and on the test feeders.

The kept steps per placement and why each was kept are in :attr:`HostingResult.steps`.

PV devices
----------
The PV of every candidate customer exists once in the OpenDSS model; a candidate changes
only its size through the API, never by text edits:

* ``device="pvsystem"`` (default): one ``PVSystem`` per customer (:func:`lv3ph.model.pv_commands`,
  1 kWp, irradiance 1, following a load shape of the profile); a candidate sets ``Pmpp`` and
  ``kVARated`` (1.1 x size; 0 = no PV) once, OpenDSS applies the shape at each step.
* ``device="generator"``: one constant-PQ ``Generator`` per customer, unity power factor;
  its kW (``profile(t) x size``) is set before every step (``Engine.setter``).

Measured on the four-wire IEEE twin (1440 one-minute steps, 55 devices, monitors off,
opendssdirect 0.9.4, best of 3): no PV 0.52 s, PVSystems 0.51 s, Generators 0.60 s (the
per-step setter costs 0.05 ms per step for 55 devices). Both give the same powers (within
1 W of ``pv(t) x size``) and the same hosting capacities. Hence PVSystems by default.
The model's monitors and energy meters are disabled (as in every lv3ph engine): they only
record, and sampling the IEEE feeder's 1810 monitors at every step took 0.97 s per 1440
steps against 0.57 s without.

Cost
----
IEEE twin, 1440 one-minute steps (947 with PV output), source at 1.00 pu, PVUR off,
``search="scan"``: 29 levels per placement, most solved at 15-20 kept steps (up to ~110
next to the limit), 150 distinct kept steps in all, plus one whole-window check; about 1 s
per placement; 100 placements in 51 s on two Dask workers (93 s serially). Solving every
level on the whole window gives the same table 13x slower.
``benchmarks/bench_hosting.py`` has the numbers and distributions.

Determinism and Dask
--------------------
Every evaluation starts with ``set mode=... number=1 stepsize=...``, which makes OpenDSS
start from its zero-load solution, so a result does not depend on what the engine solved
before, and the linearised prediction restarts from zero at every placement. Placements run
on a Dask ``LocalCluster`` (processes, one thread each; one OpenDSS engine per worker
thread, built on its first placement and reused), or in this process with ``serial=True``;
both give identical tables (apart from the ``seconds`` column). The cluster's workers start
without Dask's ``MALLOC_TRIM_THRESHOLD_`` (see :func:`_run_dask`); workers of a scheduler
given by address are used as they are.
"""

from __future__ import annotations

import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from numpy.typing import ArrayLike, NDArray

from lv3ph.dss import Engine
from lv3ph.errors import ConvergenceError, Lv3phError, ProfileError, StudyError
from lv3ph.model import FeederModel, branch_rows, loadshape_command, network_y, pv_commands, pv_generator_commands
from lv3ph.parallel import run_jobs
from lv3ph.powerflow import RunSpec, open_feeder
from lv3ph.unbalance import CHECKS, Limits, pvur_pct, vuf_pct

__all__ = [
    "DEVICES",
    "PRE_EXISTING",
    "PRE_EXISTING_TOL",
    "SEARCHES",
    "HostingResult",
    "hosting_capacity",
]

DEVICES: Final[tuple[str, ...]] = ("pvsystem", "generator")
SEARCHES: Final[tuple[str, ...]] = ("bisect", "scan")
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

_BUS_CHECKS: Final[tuple[str, ...]] = ("voltage_low", "voltage_high", "vuf", "pvur", "vne")
_THERMAL_CHECKS: Final[tuple[str, ...]] = ("line_thermal", "transformer_thermal")
_PV_SHAPE: Final[str] = "lv3ph_hosting_pv"
_MAX_ROUNDS: Final[int] = 25
#: Screening keeps every step whose predicted value, widened by ``alpha x |predicted change|``,
#: comes within this floor of its threshold (unit of the check). ``alpha`` starts at
#: :data:`_ALPHA0` and rises to 1.5 x the largest relative prediction error seen so far in
#: the placement (IEEE twin: 2-7 % of the change, largest for voltage_high).
_NEAR_FLOOR: Final[dict[str, float]] = {"voltage_low": 0.1, "voltage_high": 0.1, "vne": 0.1, "vuf": 0.05, "pvur": 0.05}
_ALPHA0: Final[float] = 0.1
_RESULT_COLUMNS: Final[list[str]] = [
    "placement",
    "hosting_kw",
    "n_customers",
    "binding_limit",
    "item",
    "step",
    "value",
    "limit",
    "censored",
    "total_kw",
    "fail_kw",
    "evaluations",
    "full_checks",
    "n_kept_steps",
    "seconds",
]


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class _Job:
    """Everything a worker needs to run placements (picklable)."""

    model_path: str
    vmaxpu: float | None
    pme_ohm: float | None
    commands: tuple[str, ...]
    run: RunSpec
    limits: Limits
    checks: tuple[str, ...]
    profile: NDArray[np.float64]
    kwp_range: tuple[float, float]
    step_kw: float
    screening: bool
    screen_steps: int
    device: str
    pre_existing: str
    search: str
    seed: int
    customers: tuple[str, ...] | None
    token: str
    switching: dict[str, Any] | None = None


# ----------------------------------------------------------------------------- checks
class _Checker:
    """Check values from node voltages, with the definitions of :func:`lv3ph.unbalance.violations`.

    Bus checks use phase-to-neutral voltages (``V_p - V_4`` where the bus has terminal 4)
    at the customer buses (``limits.where="customers"``) or every bus with a phase; line
    loading is the largest terminal-1 conductor current (phases and neutral) over
    ``normamps``; transformer loading is the apparent power of the most loaded winding over
    its kVA.
    """

    def __init__(self, model: FeederModel, limits: Limits, checks: tuple[str, ...]) -> None:
        self.checks = checks
        self.limit = {c: float(_limit_of(limits, c) or 0.0) for c in checks}
        self.direction = {c: -1.0 if c == "voltage_low" else 1.0 for c in checks}
        self.items: dict[str, NDArray[np.str_]] = {}
        # ---- buses
        node_of = {
            (str(b), int(t)): i for i, (b, t) in enumerate(zip(model.node_bus, model.node_terminal, strict=True))
        }
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
            if c in _BUS_CHECKS:
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
        return tuple(c for c in self.checks if c in _BUS_CHECKS)

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


def _limit_of(limits: Limits, check: str) -> float | None:
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
class _Outcome:
    """One evaluation: ``ok`` and the worst violation (check, item, step, value, limit)."""

    ok: bool
    check: str = "none"
    item: str = ""
    step: int = -1
    value: float = math.nan
    limit: float = math.nan
    worst_steps: tuple[int, ...] = ()


# ----------------------------------------------------------------------------- OpenDSS helpers
def _solve_steps(
    engine: Engine, mode: str, stepsize_s: float, steps: NDArray[np.int64], before_step: Callable[[int], None] | None
) -> NDArray[np.complex128]:
    """Node voltages (n_nodes, len(steps)) at arbitrary (non-contiguous) steps.

    ``Engine.run`` solves consecutive steps and checks every load shape on each call, which
    costs more than the solve when called once per screened step. Same time convention:
    step ``k`` is solved at ``k x stepsize_s``. Setting the mode first also makes OpenDSS
    start from its zero-load solution, so the result does not depend on earlier solves.
    """
    engine.set_mode(mode, stepsize_s)
    columns = []
    for k in steps:
        engine.solve_step(mode, stepsize_s, int(k), before_step)
        columns.append(engine.node_voltages())
    return np.stack(columns, axis=1)


# ----------------------------------------------------------------------------- one engine
class _Context:
    """A compiled feeder with one PV device per candidate customer, the no-PV base case
    over the PV window, thresholds, and the linearised voltage response."""

    def __init__(self, job: _Job) -> None:
        self.job = job
        run = job.run
        commands = tuple(job.commands)
        engine, model = open_feeder(job.model_path, vmaxpu=job.vmaxpu, commands=commands, pme_ohm=job.pme_ohm)
        single = [c for c in model.customers if len(c.phases) == 1]
        if job.customers is not None:
            known = {c.name: c for c in single}
            bad = [n for n in job.customers if n not in known]
            if bad:
                raise StudyError(f"customers {', '.join(bad)} are not single-phase customers of {job.model_path}")
            single = [known[n] for n in job.customers]
        if not single:
            raise StudyError(f"{job.model_path} has no single-phase customer to place PV at")
        self.names = [c.name for c in single]
        self.phase = np.array([c.phases[0] for c in single], dtype=np.int64)
        # ---- PV devices, size 0
        prof = job.profile
        if job.device == "pvsystem":
            shape = np.concatenate([np.zeros(run.start - 1), prof])
            engine.apply(
                [
                    loadshape_command(_PV_SHAPE, shape, run.stepsize_s),
                    *pv_commands(model, dict.fromkeys(self.names, 1.0), _PV_SHAPE),
                ]
            )
            self._size_pv = engine.pv_setter([f"pv_{n}" for n in self.names])
            self._set_gen: Callable[[NDArray[np.float64]], None] | None = None
        else:
            engine.apply(pv_generator_commands(model, [c.name for c in single]))
            self._set_gen = engine.setter("generator", [f"pv_{n}" for n in self.names])
        self.engine, self.model = engine, engine.model()
        if self.model.nodes != model.nodes:
            raise Lv3phError("adding the PV devices changed the node order")  # cannot happen: no new buses
        self._switching: tuple[np.ndarray, np.ndarray, np.ndarray, list[int]] | None = None
        if job.switching is not None:
            self._switching = self._make_switchable(job.switching)
        self.sizes = np.zeros(len(self.names))
        self._apply_sizes(self.sizes)
        self.checker = _Checker(self.model, job.limits, job.checks)
        # ---- PV window and loads per phase
        on = np.nonzero(prof > 0)[0]
        self.w0 = run.start + int(on[0])
        self.window = np.arange(self.w0, run.start + int(on[-1]) + 1)
        self.prof_w = prof[self.window - run.start]
        load_names, load_kw, _ = engine.load_setpoints(run.mode, run.stepsize_s, run.start, run.steps)
        by_name = {c.name: c for c in self.model.customers}
        self.load_phase = np.zeros((3, self.window.size))
        for j, n in enumerate(load_names):
            c = by_name.get(n)
            if c is None:
                continue
            for ph in c.phases:
                self.load_phase[ph - 1] += load_kw[self.window - run.start, j] / len(c.phases)
        # ---- base case over the window
        vbase = self._solve_window()
        base = self.checker.values(vbase)
        self.thr, self.pre_existing = self._thresholds(base)
        self.base_bus = {c: base[c] for c in self.checker.bus_checks}
        self.vbase_eval = vbase[self.checker.eval_nodes]
        self.zsel, self.iunit = self._linearise(vbase)
        self.reset_prediction()

    # ---------------------------------------------------------------- devices and solves
    def _make_switchable(self, settings: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
        """Dynamic phase switching (lv3ph.phases): switches scheduled from the load forecast
        (the scheduler does not know where PV will be placed); a switchable customer's PV is
        carried by its phase Loads. Returns (schedule, load kW, load kvar, PV customer positions)."""
        from lv3ph.phases import choose_switches, make_switchable, switching_schedule

        run, m0 = self.job.run, self.model
        names, kw, kvar = self.engine.load_setpoints(run.mode, run.stepsize_s, run.start, run.steps)
        order = [names.index(c.name) for c in m0.customers]
        load_kw, load_kvar = kw[:, order], kvar[:, order]
        switches = choose_switches(m0, share=float(settings.get("share", 1.0)), seed=int(settings.get("seed", 0)))
        schedule = switching_schedule(
            m0,
            load_kw,
            None,
            switches,
            stepsize_s=run.stepsize_s,
            interval_s=float(settings.get("interval_s", 900.0)),
            start=run.start,
            max_ops_per_day=int(settings.get("max_ops_per_day", 4)),
            objective=settings.get("objective", "neutral"),
        )
        self.model = make_switchable(self.engine, m0, switches)
        index = self.model.customer_index()
        return schedule, load_kw, load_kvar, [index[n] for n in self.names]

    def _apply_sizes(self, sizes: NDArray[np.float64]) -> None:
        self.sizes = sizes
        if self._set_gen is None:
            self._size_pv(sizes)

    def _before_step(self) -> Callable[[int], None] | None:
        base: Callable[[int], None] | None = None
        if self._set_gen is not None:
            setter, prof, start, sizes = self._set_gen, self.job.profile, self.job.run.start, self.sizes
            base = lambda k: setter(prof[k - start] * sizes)  # noqa: E731
        if self._switching is None:
            return base
        from lv3ph.phases import switching_setter

        schedule, load_kw, load_kvar, pos = self._switching
        pv = np.zeros_like(load_kw)
        pv[:, pos] = np.outer(self.job.profile, self.sizes)
        step, reset = switching_setter(
            self.engine, self.model, self.job.run, load_kw, pv, schedule, load_kvar=load_kvar, before_step=base
        )
        reset()
        return step

    def _solve_window(self) -> NDArray[np.complex128]:
        run = self.job.run
        v, _ = self.engine.run(
            run.mode, run.stepsize_s, int(self.window[0]), self.window.size, before_step=self._before_step()
        )
        return v

    def _solve(self, steps: NDArray[np.int64] | None) -> NDArray[np.complex128]:
        """Node voltages at ``steps`` (None = the whole PV window) with the current sizes."""
        if steps is None:
            return self._solve_window()
        run = self.job.run
        return _solve_steps(self.engine, run.mode, run.stepsize_s, steps, self._before_step())

    # ---------------------------------------------------------------- base case
    def _thresholds(self, base: dict[str, NDArray[np.float64]]) -> tuple[dict[str, NDArray[np.float64]], pd.DataFrame]:
        """Per check the threshold (window steps, items) a value must pass to count, and the
        pre-existing violations (check, item, n_steps, first_step, last_step, worst_value)."""
        ch, policy = self.checker, self.job.pre_existing
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
                rows.append(
                    (
                        c,
                        str(ch.items[c][i]),
                        ts.size,
                        int(self.window[ts[0]]),
                        int(self.window[ts[-1]]),
                        float(worst),
                        lim,
                    )
                )
        cols = ["check", "item", "n_steps", "first_step", "last_step", "worst_value", "limit"]
        return thr, pd.DataFrame(rows, columns=cols)

    def _linearise(
        self, vbase: NDArray[np.complex128]
    ) -> tuple[NDArray[np.complex128] | None, NDArray[np.complex128] | None]:
        """``Z`` columns (eval nodes x candidates) for a unit phase-to-neutral injection,
        and the current per kWp of each candidate at each window step (A); None if the
        network matrix cannot be factorised."""
        if not self.checker.bus_checks:
            return None, None
        by_name = {c.name: c for c in self.model.customers}
        ph = np.array([int(by_name[n].phase_nodes[0]) for n in self.names])
        ne = np.array([int(by_name[n].neutral_node) for n in self.names])
        rhs = np.zeros((self.model.n_nodes, len(self.names)), dtype=np.complex128)
        rhs[ph, np.arange(ph.size)] = 1.0
        has_n = ne >= 0
        rhs[ne[has_n], np.nonzero(has_n)[0]] = -1.0
        try:
            with np.errstate(all="raise"):
                z = spla.splu(sp.csc_matrix(network_y(self.model))).solve(rhs)
        except (RuntimeError, FloatingPointError, ValueError):
            return None, None
        if not np.all(np.isfinite(z)):
            return None, None
        vpn = vbase[ph] - np.where(has_n[:, None], vbase[np.maximum(ne, 0)], 0.0)
        return np.ascontiguousarray(z[self.checker.eval_nodes]), 1000.0 * self.prof_w[None, :] / np.conj(vpn)

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, sizes: NDArray[np.float64], steps: NDArray[np.int64] | None) -> _Outcome:
        """Solve ``steps`` (None = whole PV window) with PV ``sizes`` (kWp per candidate)."""
        self._apply_sizes(sizes)
        try:
            v = self._solve(steps)
        except ConvergenceError as exc:
            m = re.search(r"at step (\d+)", str(exc))
            step = int(m.group(1)) if m else -1
            return _Outcome(ok=False, check="convergence", step=step, worst_steps=(step,) if step > 0 else ())
        steps_arr = self.window if steps is None else steps
        pos = steps_arr - self.w0
        values = self.checker.values(v)
        if steps is not None:
            self.calibrate(steps, values)
        best: tuple[float, int, int, str, int] | None = None
        worst_steps = []
        for rank, c in enumerate(self.checker.checks):
            val, thr = values[c], self.thr[c][pos]
            d, lim = self.checker.direction[c], self.checker.limit[c]
            with np.errstate(invalid="ignore"):
                sev = np.where(np.isnan(val), -np.inf, d * (val - thr) / abs(lim))
            if not (sev > 0).any():
                continue
            ti, ii = (int(x) for x in np.unravel_index(int(np.argmax(sev)), sev.shape))
            worst_steps.append(int(steps_arr[ti]))
            key = (float(sev[ti, ii]), -int(steps_arr[ti]), -rank, c, ii)
            if best is None or key[:3] > best[:3]:
                best = key
        if best is None:
            return _Outcome(ok=True)
        _, negstep, _, c, i = best
        t = int(np.nonzero(steps_arr == -negstep)[0][0])
        return _Outcome(
            ok=False,
            check=c,
            item=str(self.checker.items[c][i]),
            step=-negstep,
            value=float(values[c][t, i]),
            limit=self.checker.limit[c],
            worst_steps=tuple(sorted(set(worst_steps))),
        )

    def reset_prediction(self) -> None:
        """Start a placement afresh: no running voltage-change sum, prediction-error factor
        back to :data:`_ALPHA0` (so nothing depends on what the engine ran before)."""
        self._dv: NDArray[np.complex128] | None = None
        self._dv_sizes = np.zeros(len(self.names))
        self.alpha = dict.fromkeys(self.checker.bus_checks, _ALPHA0)
        self._pred: dict[str, NDArray[np.float64]] = {}

    def _predicted_dv(self, sizes: NDArray[np.float64]) -> NDArray[np.complex128]:
        """Linearised voltage change at the eval nodes (rows, window steps) for PV ``sizes``.

        Kept as a running sum updated for the customers whose size changed: a scan adds one
        customer per level, so each level costs one outer product instead of one per PV.
        """
        assert self.zsel is not None and self.iunit is not None
        if getattr(self, "_dv", None) is None:
            self._dv = np.zeros_like(self.vbase_eval)
            self._dv_sizes = np.zeros(len(self.names))
        dv = self._dv
        assert dv is not None
        for j in np.nonzero(sizes != self._dv_sizes)[0]:
            dv += np.multiply.outer(self.zsel[:, j], (sizes[j] - self._dv_sizes[j]) * self.iunit[j])
        self._dv_sizes = sizes.copy()
        return dv

    def screen(self, sizes: NDArray[np.float64], m: int, near: bool = True) -> dict[int, set[str]]:
        """Steps that can bind at PV ``sizes``, with the reason each was kept (``near``: also
        every step predicted within the widened margin of a threshold)."""
        out: dict[int, set[str]] = {}

        def keep(score: NDArray[np.float64], why: str) -> None:
            score = np.where(np.isnan(score), -np.inf, score)
            for t in np.argsort(-score, kind="stable")[:m]:
                if np.isfinite(score[t]):
                    out.setdefault(int(self.window[t]), set()).add(why)

        kw_phase = np.array([sizes[self.phase == p].sum() for p in (1, 2, 3)])
        export = self.prof_w[None, :] * kw_phase[:, None] - self.load_phase
        keep(export.sum(axis=0), "export")
        for p in range(3):
            if kw_phase[p] > 0:
                keep(export[p], f"export_{'abc'[p]}")
        if self.zsel is not None and self.iunit is not None:
            pred = self._pred = self.checker.bus_values(self.vbase_eval + self._predicted_dv(sizes))
            for c in self.checker.bus_checks:
                d, lim = self.checker.direction[c], abs(self.checker.limit[c])
                with np.errstate(invalid="ignore"):
                    excess = d * (pred[c] - self.thr[c])
                    widened = excess + self.alpha[c] * np.abs(pred[c] - self.base_bus[c])
                    sev = np.nanmax(np.where(np.isnan(excess), -np.inf, excess), axis=1) / lim
                    close = np.nanmax(np.where(np.isnan(widened), -np.inf, widened), axis=1) > -_NEAR_FLOOR[c]
                keep(sev, c)
                for t in np.nonzero(close)[0] if near else ():
                    out.setdefault(int(self.window[t]), set()).add(f"near_{c}")
        return out

    def calibrate(self, steps: NDArray[np.int64], values: dict[str, NDArray[np.float64]]) -> None:
        """Raise each check's prediction-error factor to 1.5 x the largest error of the last
        prediction at the steps just solved, beyond the floor, relative to the predicted change."""
        if not self._pred:
            return
        pos = steps - self.w0
        for c in self.checker.bus_checks:
            pred, base = self._pred[c][pos], self.base_bus[c][pos]
            change = np.abs(pred - base)
            floor = _NEAR_FLOOR[c]
            with np.errstate(invalid="ignore", divide="ignore"):
                rel = np.where(change > floor, (np.abs(values[c] - pred) - floor) / change, np.nan)
            if np.isfinite(rel).any():
                self.alpha[c] = max(self.alpha[c], 1.5 * float(np.nanmax(rel)))


# ----------------------------------------------------------------------------- one placement
def _draw(job: _Job, n: int, placement: int) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """The placement's customer order (candidate positions) and sizes in that order (kWp)."""
    rng = np.random.default_rng([job.seed, placement])
    order = rng.permutation(n)
    sizes = rng.uniform(job.kwp_range[0], job.kwp_range[1], size=n)
    return order, sizes


def _run_placement(ctx: _Context, placement: int) -> dict[str, Any]:
    """Hosting capacity of one placement (one row), its kept steps and its order."""
    job = ctx.job
    t_start = time.perf_counter()
    order, sizes = _draw(job, len(ctx.names), placement)
    before = np.concatenate([[0.0], np.cumsum(sizes)[:-1]])
    total = float(sizes.sum())

    def at(p: float) -> NDArray[np.float64]:
        s = np.zeros(len(ctx.names))
        s[order] = np.clip(p - before, 0.0, sizes)
        return s

    ctx.reset_prediction()
    kept: dict[int, set[str]] = {}
    missed: set[int] = set()
    counts = {"evaluations": 0, "full_checks": 0}

    def screened(p: float, near: bool) -> _Outcome:
        counts["evaluations"] += 1
        s = at(p)
        if not job.screening:
            return ctx.evaluate(s, None)
        chosen = ctx.screen(s, job.screen_steps, near)
        for k in missed:
            chosen.setdefault(k, set()).add("missed")
        for k, why in chosen.items():
            kept.setdefault(k, set()).update(why)
        return ctx.evaluate(s, np.array(sorted(chosen), dtype=np.int64))

    lo, hi, fail = 0.0, total, None
    for _ in range(_MAX_ROUNDS):
        lo, hi, fail = _search(job, screened, before, sizes, hi, fail)
        if lo <= 0.0 or not job.screening:
            break
        counts["full_checks"] += 1
        full = ctx.evaluate(at(lo), None)
        if full.ok:
            break
        missed.update(full.worst_steps)
        for k in full.worst_steps:
            kept.setdefault(k, set()).add("missed")
        lo, hi, fail = 0.0, lo, full
    else:
        raise Lv3phError(f"placement {placement}: no confirmed hosting capacity after {_MAX_ROUNDS} full-window checks")
    censored = fail is None
    worst = fail or _Outcome(ok=True)
    n_customers = int(np.count_nonzero(at(lo) > 0))
    row = {
        "placement": placement,
        "hosting_kw": lo,
        "n_customers": n_customers,
        "binding_limit": worst.check,
        "item": worst.item,
        "step": worst.step,
        "value": worst.value,
        "limit": worst.limit,
        "censored": censored,
        "total_kw": total,
        "fail_kw": math.nan if censored else hi,
        "evaluations": counts["evaluations"],
        "full_checks": counts["full_checks"],
        "n_kept_steps": len(kept),
        "seconds": time.perf_counter() - t_start,
    }
    steps = [(placement, k, "+".join(sorted(kept[k]))) for k in sorted(kept)]
    orders = [(placement, r + 1, ctx.names[j], "abc"[ctx.phase[j] - 1], float(sizes[r])) for r, j in enumerate(order)]
    return {"row": row, "steps": steps, "order": orders}


def _search(
    job: _Job,
    evaluate: Callable[[float, bool], _Outcome],
    before: NDArray[np.float64],
    sizes: NDArray[np.float64],
    hi: float,
    fail: _Outcome | None,
) -> tuple[float, float, _Outcome | None]:
    """``(lo, hi, fail)``: ``lo`` passed, ``hi`` failed with ``fail`` (None: nothing up to
    ``hi`` failed, ``lo == hi``), ``hi - lo <= step_kw``. Level 0 (no PV) passes by definition.

    ``evaluate(level, near)``: ``near`` asks the screening for every step near a threshold.
    Only the whole-customer levels of a scan need it: they pass for good and are never
    checked on the whole window, while the result of the final bisection is.
    """
    lo = 0.0
    if job.search == "scan":
        for p in before[1:] + 0.0:
            if p >= hi:
                break
            out = evaluate(float(p), True)
            if not out.ok:
                hi, fail = float(p), out
                break
            lo = float(p)
    if fail is None:
        out = evaluate(hi, False)
        if out.ok:
            return hi, hi, None
        fail = out
    while hi - lo > job.step_kw:
        mid = 0.5 * (lo + hi)
        out = evaluate(mid, False)
        if out.ok:
            lo = mid
        else:
            hi, fail = mid, out
    return lo, hi, fail


_LOCAL = threading.local()


def _cache() -> dict[str, _Context]:
    """This thread's engines by job token (at most one: a new job replaces the old one)."""
    if not hasattr(_LOCAL, "contexts"):
        _LOCAL.contexts = {}
    contexts: dict[str, _Context] = _LOCAL.contexts
    return contexts


def _context(job: _Job) -> _Context:
    """This thread's engine for ``job``, built on first use and reused by later placements.

    One per thread, not per process: a Dask worker with several threads runs several
    placements at once, and an OpenDSS context must not be shared between them.
    """
    cache = _cache()
    ctx = cache.get(job.token)
    if ctx is None:
        cache.clear()
        ctx = cache[job.token] = _Context(job)
    return ctx


def _placement_task(job: _Job, placement: int) -> dict[str, Any]:
    """Dask task: one placement on this worker's engine."""
    return _run_placement(_context(job), placement)


# ----------------------------------------------------------------------------- result
@dataclass
class HostingResult:
    """Hosting capacity of every placement.

    Attributes:
        placements: one row per placement: ``placement``, ``hosting_kw`` (largest total
            installed PV, kWp, with no violation), ``n_customers`` (customers with PV at that
            level; the last one may be part-sized), ``binding_limit`` (check of the worst
            violation at the first failing level, ``"convergence"`` if OpenDSS failed there,
            ``"none"`` if censored), ``item`` (bus or element), ``step`` (step index, -1 if
            censored), ``value`` / ``limit`` (in the check's unit), ``censored`` (no
            violation up to ``total_kw``), ``total_kw`` (the placement's full kWp),
            ``fail_kw`` (first failing level), ``evaluations`` (candidate levels solved),
            ``full_checks`` (whole-window checks; more than 1 means screening missed a step
            at first), ``n_kept_steps``, ``seconds``.
        steps: kept steps per placement: ``placement``, ``step``, ``reasons`` (``+``-joined:
            a check name = predicted worst for it; ``near_<check>`` = predicted within the
            widened margin of its threshold; ``export``/``export_a``.. = largest PV minus
            load; ``missed`` = found by a whole-window check).
        orders: the placements: ``placement``, ``rank``, ``customer``, ``phase``, ``kwp``.
        pre_existing: violations without PV inside the PV window (check, item, n_steps,
            first_step, last_step, worst_value, limit).
        settings: what was run (model, limits, run, seed, kwp_range, step_kw, ...).
        label: name used in plots.
    """

    placements: pd.DataFrame
    steps: pd.DataFrame
    orders: pd.DataFrame
    pre_existing: pd.DataFrame
    settings: dict[str, Any] = field(default_factory=dict)
    label: str = "hosting capacity"

    @property
    def kept_steps(self) -> NDArray[np.int64]:
        """Every step kept by the screening in any placement, sorted."""
        return np.unique(self.steps["step"].to_numpy(dtype=np.int64))

    @property
    def summary(self) -> dict[str, float | int]:
        """min, p5, median, mean, p95, max of ``hosting_kw`` (kWp) and the censored count."""
        hc = self.placements["hosting_kw"].to_numpy(dtype=float)
        return {
            "placements": int(hc.size),
            "min_kw": float(hc.min()),
            "p5_kw": float(np.percentile(hc, 5)),
            "median_kw": float(np.median(hc)),
            "mean_kw": float(hc.mean()),
            "p95_kw": float(np.percentile(hc, 95)),
            "max_kw": float(hc.max()),
            "censored": int(self.placements["censored"].sum()),
        }

    def binding_counts(self) -> pd.Series:
        """How many placements each limit bound."""
        return self.placements["binding_limit"].value_counts()

    def plot(self, path: str | Path, *others: HostingResult) -> Path:
        """Write a PNG (histogram and ECDF of ``hosting_kw``) of this result and ``others``."""
        from lv3ph.report.plots import plot_hosting

        return plot_hosting([self, *others], path)


# ----------------------------------------------------------------------------- entry point
def _validate(
    placements: int,
    seed: int,
    kwp_range: tuple[float, float],
    step_kw: float,
    workers: int,
    screen_steps: int,
    device: str,
    search: str,
    pre_existing: str,
    run: RunSpec,
) -> None:
    def is_int(x: object) -> bool:
        return isinstance(x, int | np.integer) and not isinstance(x, bool)

    errors = []
    if not is_int(placements) or placements < 1:
        errors.append(f"placements must be an integer >= 1, got {placements!r}")
    if not is_int(seed):
        errors.append(f"seed must be an integer, got {seed!r}")
    try:
        lo, hi = (float(x) for x in kwp_range)
        if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 < lo <= hi):
            raise ValueError
    except (TypeError, ValueError):
        errors.append(f"kwp_range must be (low, high) kWp with 0 < low <= high, got {kwp_range!r}")
    if (
        isinstance(step_kw, bool)
        or not isinstance(step_kw, int | float)
        or not (math.isfinite(step_kw) and step_kw > 0)
    ):
        errors.append(f"step_kw must be a number of kW > 0, got {step_kw!r}")
    if not is_int(workers) or workers < 1:
        errors.append(f"workers must be an integer >= 1, got {workers!r}")
    if not is_int(screen_steps) or screen_steps < 1:
        errors.append(f"screen_steps must be an integer >= 1, got {screen_steps!r}")
    for name, value, known in (
        ("device", device, DEVICES),
        ("search", search, SEARCHES),
        ("pre_existing", pre_existing, PRE_EXISTING),
    ):
        if value not in known:
            errors.append(f"unknown {name} {value!r} (known: {', '.join(known)})")
    if not isinstance(run, RunSpec):
        errors.append(f"run must be a RunSpec, got {type(run).__name__}")
    elif run.mode not in ("daily", "yearly"):
        errors.append(f"run.mode must be daily or yearly (PV follows a profile over steps), got {run.mode!r}")
    elif run.steps < 1 or run.start < 1:
        errors.append(f"run needs start >= 1 and steps >= 1, got start={run.start}, steps={run.steps}")
    if errors:
        raise StudyError("hosting_capacity: " + "; ".join(errors))


def _checks(limits: Limits, checks: Sequence[str] | None) -> tuple[str, ...]:
    enabled = tuple(c for c in CHECKS if _limit_of(limits, c) is not None)
    if checks is None:
        chosen = enabled
    else:
        if isinstance(checks, str):
            checks = [checks]
        unknown = [c for c in checks if c not in CHECKS]
        if unknown:
            raise StudyError(f"unknown limit(s) {', '.join(map(repr, unknown))} (known: {', '.join(CHECKS)})")
        disabled = [c for c in checks if c not in enabled]
        if disabled:
            raise StudyError(f"limit(s) {', '.join(disabled)} are disabled in limits (None): give them a value")
        chosen = tuple(c for c in CHECKS if c in checks)
    if not chosen:
        raise StudyError("hosting_capacity: every limit is disabled; enable at least one")
    return chosen


def _profile(run: RunSpec, pv_profile: ArrayLike | None, pv_settings: Mapping[str, Any] | None) -> NDArray[np.float64]:
    if pv_profile is not None and pv_settings is not None:
        raise StudyError("give pv_profile or pv_settings, not both")
    if pv_profile is None:
        from lv3ph.prosumers import (
            DEFAULT_ALTITUDE_M,
            DEFAULT_LATITUDE,
            DEFAULT_LONGITUDE,
            DEFAULT_TZ,
            pv_profile_kw_per_kwp,
        )

        kw: dict[str, Any] = {
            "latitude": DEFAULT_LATITUDE,
            "longitude": DEFAULT_LONGITUDE,
            "tz": DEFAULT_TZ,
            "altitude": DEFAULT_ALTITUDE_M,
            "date": "2024-06-21",
        }
        kw.update(pv_settings or {})
        for key in ("stepsize_s", "start", "steps"):
            if key in kw:
                raise StudyError(f"pv_settings.{key} comes from run, do not give it")
        try:
            full = pv_profile_kw_per_kwp(stepsize_s=run.stepsize_s, start=1, steps=run.start + run.steps - 1, **kw)
        except TypeError as exc:
            raise StudyError(f"pv_settings: {exc}") from None
        return np.ascontiguousarray(full[run.start - 1 :], dtype=np.float64)
    prof = np.asarray(pv_profile, dtype=np.float64)
    if prof.shape != (run.steps,):
        raise ProfileError(f"pv_profile must have one value per step of the run ({run.steps}), got shape {prof.shape}")
    if not np.isfinite(prof).all() or (prof < 0).any():
        raise ProfileError("pv_profile must be finite and >= 0 (kW per kWp)")
    if not (prof > 0).any():
        raise ProfileError("pv_profile is 0 at every step: nothing to host")
    return np.ascontiguousarray(prof)


def hosting_capacity(
    model_path: str | Path,
    *,
    run: RunSpec,
    limits: Limits | Mapping[str, Any],
    placements: int,
    seed: int,
    kwp_range: tuple[float, float] = (3.0, 8.0),
    pv_profile: ArrayLike | None = None,
    pv_settings: Mapping[str, Any] | None = None,
    checks: Sequence[str] | None = None,
    vmaxpu: float | None = None,
    pme_ohm: float | None = None,
    commands: Sequence[str] = (),
    customers: Sequence[str] | None = None,
    step_kw: float = 0.5,
    screening: bool = True,
    screen_steps: int = 3,
    search: str = "scan",
    pre_existing: str = "worsened",
    device: str = "pvsystem",
    serial: bool = False,
    workers: int = 2,
    scheduler: str | None = None,
    progress: bool = True,
    label: str | None = None,
    switching: Mapping[str, Any] | None = None,
) -> HostingResult:
    """Monte Carlo PV hosting capacity of a feeder (see the module docstring for the method).

    Args:
        model_path: OpenDSS master file.
        run: time window (``daily`` or ``yearly`` mode, step size, first step, steps).
        limits: :class:`~lv3ph.unbalance.Limits` or a mapping for ``Limits.from_dict``;
            every limit that is not None is checked (unless ``checks`` narrows them).
        placements: number of random placements (>= 1).
        seed: placement ``k`` draws from ``numpy.random.default_rng([seed, k])``.
        kwp_range: PV size per customer, uniform in ``[low, high]`` kWp.
        pv_profile: PV output per step of the run, kW per kWp (the AC output of 1 kWp).
        pv_settings: or keyword arguments of :func:`lv3ph.prosumers.pv_profile_kw_per_kwp`
            (default: clear sky at the feeder's default site, Manchester, on 2024-06-21).
        checks: subset of :data:`lv3ph.unbalance.CHECKS` to apply (default every enabled one).
        vmaxpu, pme_ohm, commands: as :func:`lv3ph.powerflow.open_feeder`.
        customers: candidate customers (default every single-phase customer).
        step_kw: resolution of the search, kWp.
        screening: solve candidates at the screened steps only (False: whole PV window).
        screen_steps: steps kept per screening criterion.
        search: ``scan`` (customer by customer until the first violation, then bisection
            inside that customer) or ``bisect`` (bisection on the total; faster, assumes
            violations grow monotonically with PV).
        pre_existing: ``worsened``, ``exclude`` or ``count`` (violations without PV).
        device: ``pvsystem`` or ``generator``.
        serial: run in this process instead of on Dask.
        workers: Dask worker processes (a ``LocalCluster``), unless ``scheduler`` is given.
        scheduler: address of a running Dask scheduler.
        progress: progress bar.
        label: the result's name in plots (default: the model file name).

    Raises:
        StudyError: bad settings (placements < 1, unknown or disabled limit, bad range ...).
        ProfileError: a PV profile of the wrong length, negative, NaN or all zero.
        ModelError: the model does not compile.
    """
    if not isinstance(limits, Limits):
        limits = Limits.from_dict(limits)
    _validate(placements, seed, kwp_range, step_kw, workers, screen_steps, device, search, pre_existing, run)
    chosen = _checks(limits, checks)
    profile = _profile(run, pv_profile, pv_settings)
    job = _Job(
        model_path=str(Path(model_path).resolve()),
        vmaxpu=vmaxpu,
        pme_ohm=pme_ohm,
        commands=tuple(commands),
        run=run,
        limits=limits,
        checks=chosen,
        profile=profile,
        kwp_range=(float(kwp_range[0]), float(kwp_range[1])),
        step_kw=float(step_kw),
        screening=bool(screening),
        screen_steps=int(screen_steps),
        device=device,
        pre_existing=pre_existing,
        search=search,
        seed=int(seed),
        customers=None if customers is None else tuple(c.lower() for c in customers),
        token=uuid.uuid4().hex,
        switching=None if switching is None else dict(switching),
    )
    t0 = time.perf_counter()
    ctx = _context(job)  # validates the model and the customers here, before any worker starts
    pre = ctx.pre_existing
    try:
        if serial or placements == 1:
            outs = _run_serial(ctx, placements, progress)
        else:
            outs = _run_dask(job, placements, workers, scheduler, progress)
    finally:
        _cache().pop(job.token, None)
    table = pd.DataFrame([o["row"] for o in outs], columns=_RESULT_COLUMNS)
    steps = pd.DataFrame([s for o in outs for s in o["steps"]], columns=["placement", "step", "reasons"])
    orders = pd.DataFrame(
        [r for o in outs for r in o["order"]], columns=["placement", "rank", "customer", "phase", "kwp"]
    )
    settings = {
        "model": job.model_path,
        "run": run,
        "limits": limits.to_dict(),
        "checks": chosen,
        "placements": placements,
        "seed": seed,
        "kwp_range": job.kwp_range,
        "step_kw": job.step_kw,
        "screening": job.screening,
        "screen_steps": job.screen_steps,
        "search": search,
        "pre_existing": pre_existing,
        "device": device,
        "vmaxpu": vmaxpu,
        "pme_ohm": pme_ohm,
        "commands": job.commands,
        "pv_window": (int(ctx.window[0]), int(ctx.window[-1])),
        "pv_peak_kw_per_kwp": float(profile.max()),
        "candidates": len(ctx.names),
        "linearised_screening": ctx.zsel is not None,
        "wall_seconds": time.perf_counter() - t0,
    }
    return HostingResult(
        placements=table,
        steps=steps,
        orders=orders,
        pre_existing=pre,
        settings=settings,
        label=label or Path(model_path).stem,
    )


def _run_serial(ctx: _Context, placements: int, progress: bool) -> list[dict[str, Any]]:
    from tqdm.auto import tqdm

    return [_run_placement(ctx, p) for p in tqdm(range(placements), desc="placements", disable=not progress)]


def _run_dask(job: _Job, placements: int, workers: int, scheduler: str | None, progress: bool) -> list[dict[str, Any]]:
    results = run_jobs(
        _placement_task,
        [(job, p) for p in range(placements)],
        workers=workers,
        scheduler=scheduler,
        desc="placements",
        progress=progress,
        keys=[f"hosting-{job.token}-{p}" for p in range(placements)],
    )
    return sorted(results, key=lambda r: r["row"]["placement"])


# ----------------------------------------------------------------------------- arrangements and studies
ARRANGEMENTS: Final[tuple[str, ...]] = ("as-built", "static-rebalanced", "dynamic")


def arrangement_setup(
    model_path: str | Path,
    arrangement: str,
    *,
    run: RunSpec,
    vmaxpu: float | None = None,
    commands: Sequence[str] = (),
    objective: str = "pvur",
    switching: Mapping[str, Any] | None = None,
) -> tuple[list[str], dict[str, Any] | None]:
    """``(commands, switching)`` for :func:`hosting_capacity` under ``arrangement``.

    ``as-built``: nothing. ``static-rebalanced``: OpenDSS edits for one re-phasing from the
    customers' load profiles (:func:`lv3ph.phases.rebalance`; PV placements are random, so
    the arrangement cannot depend on them). ``dynamic``: phase selector switches on the
    movable customers (``switching``: share, interval_s, max_ops_per_day, objective, seed),
    scheduled from the load forecast for the same reason.
    """
    if arrangement not in ARRANGEMENTS:
        raise StudyError(f"unknown arrangement {arrangement!r} for hosting capacity (known: {', '.join(ARRANGEMENTS)})")
    if arrangement == "as-built":
        return [], None
    if arrangement == "dynamic":
        return [], {"share": 1.0, "interval_s": 900.0, "max_ops_per_day": 4, "objective": "neutral", "seed": 0} | dict(
            switching or {}
        )
    from lv3ph.phases import arrangement_commands, rebalance

    engine, model = open_feeder(model_path, vmaxpu=vmaxpu, commands=tuple(commands))
    names, load_kw, _ = engine.load_setpoints(run.mode, run.stepsize_s, run.start, run.steps)
    order = [names.index(c.name) for c in model.customers]
    edits, _ = arrangement_commands(model, rebalance(model, load_kw[:, order], objective=objective))  # type: ignore[arg-type]
    return edits, None
