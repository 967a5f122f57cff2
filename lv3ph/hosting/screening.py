"""Time-step screening of a hosting-capacity candidate: linearised voltages, bounded line loading, net export.

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
2. *Line loading bound* (per candidate): a rated line's loading (its largest terminal-1
   conductor current over ``normamps``) is bounded from above by, per conductor, its
   current without PV plus the sum over injectors of the current it carries per ampere
   injected there (``|Y_line Z|``, the same ``Z``) times the injector's current magnitude,
   widened by :data:`LINE_BOUND_MARGIN` for what the linearisation leaves out; then the
   largest conductor and the row's basis (a 10-minute value is a quadratic mean, and the
   quadratic mean of a sum is at most the sum of the quadratic means). A line whose bound
   stays 0.5 %-points below its threshold at every row cannot violate its rating and is
   never solved for; for the others the ``screen_steps`` rows of worst linearised loading
   (the conductor currents without PV plus the predicted change) are kept and, at the
   whole-customer levels of a scan, every row whose bound comes within that floor. This
   replaces the steps of largest export per phase (a proxy, which on the small test feeder
   with its line ratings lowered to 15 % let a scanned level pass a rating violation, and
   which keeps three phases' worth of steps as soon as a switched customer's PV visits
   every phase).
   *Net export*: the ``screen_steps`` steps with the largest PV minus load in total
   (``sum_p pv(t) S_p - L_p(t)``, kW) when the transformer rating is checked: reverse power
   through the transformer binds at the largest export. Without the linearisation
   (singular network matrix) the steps of largest export in total and on each phase stand
   in for every check.
3. *Missed steps*: the final level is solved on the whole PV window. If that shows a
   violation, the violating steps (the worst one per check) join the kept steps for good,
   the level is known to fail, and the search continues below it; the new result is
   checked on the whole window again. The result level is therefore always confirmed on
   every step, and a failing level always failed at a solved step. The levels below the
   result (a scan passes through them) are confirmed at their screened steps only: a
   violation there that the prediction misses by more than its widened margin (or a line
   loading beyond its bound) would go unnoticed. Measured: screened and whole-window searches give identical tables on the
   IEEE twin (20 placements, ~580 levels; 18 s against 231 s) and on the test feeders.

The kept steps per placement and why each was kept are in :attr:`HostingResult.steps`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from numpy.typing import NDArray

from lv3ph.hosting.criteria import Aggregation, Checker, segment_max
from lv3ph.model import FeederModel, network_y

#: Screening keeps every step whose predicted value, widened by ``alpha x |predicted change|``,
#: comes within this floor of its threshold (unit of the check). ``alpha`` starts at
#: :data:`ALPHA0` and rises to 1.5 x the largest relative prediction error seen so far in
#: the placement (IEEE twin: 2-7 % of the change, largest for voltage_high).
NEAR_FLOOR: Final[dict[str, float]] = {
    "voltage_low": 0.1,
    "voltage_high": 0.1,
    "vne": 0.1,
    "vuf": 0.05,
    "pvur": 0.05,
    "line_thermal": 0.5,
}
ALPHA0: Final[float] = 0.1
#: Widening of the first-order line-loading bound: the bound takes every injector's current at
#: the voltage without PV and in phase with the line's current; what it leaves out (the loads'
#: currents following the voltage change) is a few % of the change on the IEEE twin.
LINE_BOUND_MARGIN: Final[float] = 1.25


class Screener:
    """The screening state of one engine: the base case over the PV window, the linearised
    voltage response (``zsel``; None if the network matrix is singular or no bus is
    checked), the line-loading sensitivity (``kline``; None likewise, or no rated line is
    checked), and the running prediction of the current placement.

    The network sees a candidate level as complex power injections at *injectors*: each a
    phase-to-neutral port of one bus (a fixed-phase candidate's PV: one; a switchable
    customer: one per phase, carrying its PV and, PV-aware, the load it moved away from
    the no-PV schedule). ``injection(sizes)`` gives their injection over the window minus
    the one without PV (kVA, generator convention); the voltage change is
    ``Z[:, u] x 1000 conj(dS_u(t)) / conj(V_u(t))`` summed over the injectors ``u``,
    ``Z`` the inverse network admittance and ``V_u`` the port's voltage without PV.

    Args:
        checker: the check definitions.
        model: the feeder (node order of ``vbase``).
        ports: (injectors, 2) node indices: phase node, neutral node (-1: earth).
        port_phase: phase (1-3) of each injector.
        injection: ``sizes -> (injectors, window steps)`` complex kVA.
        window: the PV-window steps.
        load_phase: load per phase without PV (3, window steps), kW.
        thr: per check the thresholds (rows, items), see :func:`~lv3ph.hosting.criteria.thresholds`.
        agg: the rows checks are judged on (steps or 10-minute intervals).
        base: check values without PV (rows, items); ``vbase``: node voltages
            without PV (n_nodes, window steps), V.
    """

    def __init__(
        self,
        checker: Checker,
        model: FeederModel,
        ports: NDArray[np.int64],
        port_phase: NDArray[np.int64],
        injection: Callable[[NDArray[np.float64]], NDArray[np.complex128]],
        window: NDArray[np.int64],
        load_phase: NDArray[np.float64],
        thr: dict[str, NDArray[np.float64]],
        agg: Aggregation,
        base: dict[str, NDArray[np.float64]],
        vbase: NDArray[np.complex128],
    ) -> None:
        self.checker, self.ports, self.port_phase, self.injection = checker, ports, port_phase, injection
        self.window, self.w0, self.load_phase = window, int(window[0]), load_phase
        self.thr, self.agg = thr, agg
        self._reduce = agg.reducer(window)[1]
        self.base_bus = {c: base[c] for c in checker.bus_checks}
        self.base_line = base.get("line_thermal")
        self.vbase_eval = vbase[checker.eval_nodes]
        self.zsel, kcond, self.vport = self._linearise(model, vbase)
        #: per rated line and injector: the largest conductor-current change per A injected,
        #: %-points of the line's loading (None: no rated line checked, or no linearisation)
        self.kline: NDArray[np.float64] | None = None
        if kcond is not None:
            rows = checker.line_rows
            self._kcond, self._kcond_abs, self._vbase = kcond, np.abs(kcond), vbase
            self._line_conductors = (  # (lines, conductors) rows of kcond
                np.arange(checker.line_pos.size)[:, None] * rows + np.arange(rows)[None, :]
                if isinstance(rows, int)
                else rows
            )
            self.kline = segment_max(self._kcond_abs, rows) * (100.0 / checker.line_amps[:, None])
            with np.errstate(invalid="ignore"):  # (lines,) %: worst loading without PV minus threshold
                self._line_room = np.nanmax(base["line_thermal"] - thr["line_thermal"], axis=0)
        self.reset_prediction()

    def _linearise(
        self, model: FeederModel, vbase: NDArray[np.complex128]
    ) -> tuple[NDArray[np.complex128] | None, NDArray[np.complex128] | None, NDArray[np.complex128]]:
        """``Z`` columns (eval nodes x injectors) for a unit phase-to-neutral injection; the
        current change per A injected in each terminal-1 conductor of the rated lines
        (conductor rows x injectors); each port's voltage without PV (V). The
        first two are None if nothing needs them or the network matrix cannot be factorised."""
        ph, ne = self.ports[:, 0], self.ports[:, 1]
        has_n = ne >= 0
        vpn = vbase[ph] - np.where(has_n[:, None], vbase[np.maximum(ne, 0)], 0.0)
        ch = self.checker
        if not ch.bus_checks and not ch.line_pos.size:
            return None, None, vpn
        rhs = np.zeros((model.n_nodes, ph.size), dtype=np.complex128)
        rhs[ph, np.arange(ph.size)] = 1.0
        rhs[ne[has_n], np.nonzero(has_n)[0]] = -1.0
        try:
            with np.errstate(all="raise"):
                z = spla.splu(sp.csc_matrix(network_y(model))).solve(rhs)
        except (RuntimeError, FloatingPointError, ValueError):
            return None, None, vpn
        if not np.all(np.isfinite(z)):
            return None, None, vpn
        zsel = np.ascontiguousarray(z[ch.eval_nodes]) if ch.bus_checks else None
        kcond = np.asarray(ch.line_yv @ z) if ch.line_pos.size else None
        return zsel, kcond, vpn

    def reset_prediction(self) -> None:
        """Start a placement afresh: no running voltage-change sum, prediction-error factor
        back to :data:`ALPHA0` (so nothing depends on what the engine ran before)."""
        self._dv = np.zeros_like(self.vbase_eval)
        self._ds = np.zeros(self.vport.shape, dtype=np.complex128)
        self._di = np.zeros(self.vport.shape, dtype=np.complex128)
        self.alpha = dict.fromkeys(self.checker.bus_checks, ALPHA0)
        self._pred: dict[str, NDArray[np.float64]] = {}

    def _predicted_dv(self, ds: NDArray[np.complex128]) -> NDArray[np.complex128]:
        """Linearised voltage change at the eval nodes (rows, window steps) for the
        injections ``ds`` (injectors, window steps), kVA.

        Kept as a running sum updated for the injectors whose injection changed: a scan
        adds one customer per level, so a level costs one outer product, not one per PV
        (and the currents of the others are not recomputed).
        """
        assert self.zsel is not None
        changed = np.nonzero(np.any(ds != self._ds, axis=1))[0]
        if changed.size:
            di = 1000.0 * np.conj(ds[changed]) / np.conj(self.vport[changed])
            self._dv += self.zsel[:, changed] @ (di - self._di[changed])
            self._di[changed] = di
            self._ds[changed] = ds[changed]
        return self._dv

    def screen(self, sizes: NDArray[np.float64], m: int, near: bool = True) -> dict[int, set[str]]:
        """Steps that can bind at PV ``sizes``, with the reason each was kept (``near``: also
        every step predicted within the widened margin of a threshold)."""
        out: dict[int, set[str]] = {}

        def keep(score: NDArray[np.float64], why: str, at: NDArray[np.int64]) -> None:
            score = np.where(np.isnan(score), -np.inf, score)
            for t in np.argsort(-score, kind="stable")[:m]:
                if np.isfinite(score[t]):
                    out.setdefault(int(at[t]), set()).add(why)

        ds = self.injection(sizes)
        at = self.agg.row_step
        ch = self.checker
        proxy = (bool(ch.bus_checks) and self.zsel is None) or (ch.line_pos.size > 0 and self.kline is None)
        if ch.tx_pos.size or proxy:
            gen = np.stack([ds.real[self.port_phase == p].sum(axis=0) for p in (1, 2, 3)])
            export = gen - self.load_phase
            keep(export.sum(axis=0), "export", self.window)
            for p in range(3) if proxy else ():
                if np.any(gen[p] != 0):
                    keep(export[p], f"export_{'abc'[p]}", self.window)
        if self.kline is not None:
            lines, bound, predicted = self.line_bound(ds)
            thr, lim = self.thr["line_thermal"][:, lines], abs(ch.limit["line_thermal"])
            if lines.size:
                keep(np.max(predicted - thr, axis=1) / lim, "line_thermal", at)
            if near:
                close = np.max(bound - thr, axis=1, initial=-np.inf) > -NEAR_FLOOR["line_thermal"]
                for t in np.nonzero(close)[0]:
                    out.setdefault(int(at[t]), set()).add("near_line_thermal")
        if self.zsel is not None:
            v = self.vbase_eval + self._predicted_dv(ds)
            pred = self._pred = self.checker.bus_values(v, self._reduce)
            for c in self.checker.bus_checks:
                d, lim = self.checker.direction[c], abs(self.checker.limit[c])
                with np.errstate(invalid="ignore"):
                    excess = d * (pred[c] - self.thr[c])
                    widened = excess + self.alpha[c] * np.abs(pred[c] - self.base_bus[c])
                    sev = np.nanmax(np.where(np.isnan(excess), -np.inf, excess), axis=1) / lim
                    close = np.nanmax(np.where(np.isnan(widened), -np.inf, widened), axis=1) > -NEAR_FLOOR[c]
                keep(sev, c, at)
                for t in np.nonzero(close)[0] if near else ():
                    out.setdefault(int(at[t]), set()).add(f"near_{c}")
        return out

    def line_bound(
        self, ds: NDArray[np.complex128]
    ) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float64]]:
        """``(lines, bound, predicted)``: the rated lines (positions in ``checker.line_pos``)
        whose loading may come within the floor of its threshold with the injections ``ds``
        (injectors, window steps; kVA), an upper bound of their loading and its linearised
        prediction (rows, lines), %.

        Bound: per conductor, its current without PV plus :data:`LINE_BOUND_MARGIN` x the
        sum over injectors of the current per A injected times the injector's current
        magnitude (A), at each step; the largest conductor; then the row's basis (the
        quadratic mean of a sum is at most the sum of the quadratic means). Lines are first
        sifted with each injector's largest current over the window; the others cannot
        reach the floor. Prediction: the conductor currents without PV plus the linearised
        change, which ranks the rows (module docstring, rule 2).
        """
        assert self.kline is not None and self.base_line is not None
        di = 1000.0 * np.conj(ds) / np.conj(self.vport)  # (injectors, steps), A
        amps = np.abs(di)
        reach = self._line_room + LINE_BOUND_MARGIN * (self.kline @ amps.max(axis=1))
        lines = np.nonzero(reach > -NEAR_FLOOR["line_thermal"])[0]
        if not lines.size:
            none = np.zeros((self.base_line.shape[0], 0))
            return lines, none, none
        rows = self._line_conductors[lines].ravel()  # conductor rows, line by line
        shape = (lines.size, self._line_conductors.shape[1], amps.shape[1])
        base = np.asarray(self.checker.line_yv[rows] @ self._vbase)  # (rows, steps), A
        change = self._kcond_abs[rows] @ amps
        pred = np.abs(base + self._kcond[rows] @ di)
        scale = 100.0 / self.checker.line_amps[lines]

        def loading(x: NDArray[np.float64]) -> NDArray[np.float64]:
            pct = x.reshape(shape).max(axis=1).T * scale  # (steps, lines)
            return pct if self._reduce is None else self._reduce(pct)

        bound = self.base_line[:, lines] + LINE_BOUND_MARGIN * loading(change)
        return lines, bound, loading(pred)

    def calibrate(self, rows: NDArray[np.int64], values: dict[str, NDArray[np.float64]]) -> None:
        """Raise each check's prediction-error factor to 1.5 x the largest error of the last
        prediction at the rows just solved, beyond the floor, relative to the predicted change."""
        if not self._pred:
            return
        pos = rows
        for c in self.checker.bus_checks:
            pred, base = self._pred[c][pos], self.base_bus[c][pos]
            change = np.abs(pred - base)
            floor = NEAR_FLOOR[c]
            with np.errstate(invalid="ignore", divide="ignore"):
                rel = np.where(change > floor, (np.abs(values[c] - pred) - floor) / change, np.nan)
            if np.isfinite(rel).any():
                self.alpha[c] = max(self.alpha[c], 1.5 * float(np.nanmax(rel)))
