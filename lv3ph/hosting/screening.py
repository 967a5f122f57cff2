"""Time-step screening of a hosting-capacity candidate: linearised voltage prediction and net export.

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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from numpy.typing import NDArray

from lv3ph.hosting.criteria import Aggregation, Checker
from lv3ph.model import FeederModel, network_y

#: Screening keeps every step whose predicted value, widened by ``alpha x |predicted change|``,
#: comes within this floor of its threshold (unit of the check). ``alpha`` starts at
#: :data:`ALPHA0` and rises to 1.5 x the largest relative prediction error seen so far in
#: the placement (IEEE twin: 2-7 % of the change, largest for voltage_high).
NEAR_FLOOR: Final[dict[str, float]] = {"voltage_low": 0.1, "voltage_high": 0.1, "vne": 0.1, "vuf": 0.05, "pvur": 0.05}
ALPHA0: Final[float] = 0.1


class Screener:
    """The screening state of one engine: the base case over the PV window, the linearised
    voltage response (``zsel``; None if the network matrix is singular), and the running
    prediction of the current placement.

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
        self.vbase_eval = vbase[checker.eval_nodes]
        self.zsel, self.vport = self._linearise(model, vbase)
        self.reset_prediction()

    def _linearise(
        self, model: FeederModel, vbase: NDArray[np.complex128]
    ) -> tuple[NDArray[np.complex128] | None, NDArray[np.complex128]]:
        """``Z`` columns (eval nodes x injectors) for a unit phase-to-neutral injection (None if
        the network matrix cannot be factorised), and each port's voltage without PV (V)."""
        ph, ne = self.ports[:, 0], self.ports[:, 1]
        has_n = ne >= 0
        vpn = vbase[ph] - np.where(has_n[:, None], vbase[np.maximum(ne, 0)], 0.0)
        if not self.checker.bus_checks:
            return None, vpn
        rhs = np.zeros((model.n_nodes, ph.size), dtype=np.complex128)
        rhs[ph, np.arange(ph.size)] = 1.0
        rhs[ne[has_n], np.nonzero(has_n)[0]] = -1.0
        try:
            with np.errstate(all="raise"):
                z = spla.splu(sp.csc_matrix(network_y(model))).solve(rhs)
        except (RuntimeError, FloatingPointError, ValueError):
            return None, vpn
        if not np.all(np.isfinite(z)):
            return None, vpn
        return np.ascontiguousarray(z[self.checker.eval_nodes]), vpn

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
        gen = np.stack([ds.real[self.port_phase == p].sum(axis=0) for p in (1, 2, 3)])
        export = gen - self.load_phase
        keep(export.sum(axis=0), "export", self.window)
        for p in range(3):
            if np.any(gen[p] != 0):
                keep(export[p], f"export_{'abc'[p]}", self.window)
        if self.zsel is not None:
            v = self.vbase_eval + self._predicted_dv(ds)
            pred = self._pred = self.checker.bus_values(v, self._reduce)
            at = self.agg.row_step
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
