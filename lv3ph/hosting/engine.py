"""One OpenDSS engine per worker thread for hosting capacity: PV devices, solves, evaluation.

PV devices
----------
The PV of every candidate customer exists once in the OpenDSS model; a candidate changes
only its size through the API, never by text edits:

* ``device="pvsystem"`` (default): one ``PVSystem`` per customer (:func:`lv3ph.model.pv_commands`,
  1 kWp, irradiance 1, following a load shape of the profile); a candidate sets ``Pmpp`` and
  ``kVARated`` (1.1 x size; 0 = no PV) once, OpenDSS applies the shape at each step.
* ``device="generator"``: one constant-PQ ``Generator`` per customer, unity power factor;
  its kW (``profile(t) x size``) is set before every step (``Engine.setter``).

With dynamic switching (:mod:`lv3ph.hosting.switching`) a switched candidate's PV has no
device of its own without inverter controls: it is folded into the net-demand load shape
that its three phase Loads follow (:class:`~lv3ph.phases.switchable.PhaseMover`; a size
change rewrites that shape's P multipliers through the API), so that a solve of the
switchable model costs what a solve of the as-built one costs. Folding is exact while the
customer's phase voltage stays inside its Load's constant-power band: an engine whose base
case leaves it is rebuilt with PVSystems (:func:`context`), a later solve that leaves it is
a :class:`~lv3ph.errors.StudyError`. With inverter controls the candidate keeps three
PVSystems, one per phase, only the live one sized.

System matrix of the switchable model: without inverter controls every phase Load enters
OpenDSS's factorised matrix at 0 kW, whatever was solved before. The mover rebuilds it so
(snap mode, :meth:`lv3ph.dss.Engine.rebuild_matrix`) after the engine's last text edit;
everything a candidate changes afterwards (PV sizes, folded net demand, phases) goes through
the API, which keeps the matrix (OpenDSS rebuilds it only at a solve after a text edit, from
every Load's kW at that moment), so a result does not depend on what was solved before.
Under inverter controls the PV var limits are text edits and the InvControl's iterations
rebuild the matrix at a run's first step anyway (measured), from the live phase Loads of
that step: there, as on the as-built model, results carry the controls' history within
OpenDSS's convergence tolerance (IEEE twin, Q(U): one window solved twice at the same
sizes, another solve in between, differs by 1.8 mV dynamic, 2.9 mV as-built).

Measured on the four-wire IEEE twin (1440 one-minute steps, 55 devices, monitors off,
opendssdirect 0.9.4, best of 3): no PV 0.52 s, PVSystems 0.51 s, Generators 0.60 s (the
per-step setter costs 0.05 ms per step for 55 devices). Both give the same powers (within
1 W of ``pv(t) x size``) and the same hosting capacities. Hence PVSystems by default.
The model's monitors and energy meters are disabled (as in every lv3ph engine): they only
record, and sampling the IEEE feeder's 1810 monitors at every step took 0.97 s per 1440
steps against 0.57 s without.

Determinism and Dask
--------------------
Every evaluation starts with ``set mode=... number=1 stepsize=...``, which makes OpenDSS
start from its zero-load solution, so a result does not depend on what the engine solved
before, and the linearised prediction restarts from zero at every placement. Placements run
on a Dask ``LocalCluster`` (processes, one thread each; one OpenDSS engine per worker
thread, built on its first placement and reused), or in this process with ``serial=True``;
both give identical tables (apart from the ``seconds`` column). The cluster's workers start
without Dask's ``MALLOC_TRIM_THRESHOLD_`` (see :func:`lv3ph.hosting.runner.run_dask`); workers of a scheduler
given by address are used as they are.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Final

import numpy as np
from numpy.typing import NDArray

from lv3ph.dss import Engine
from lv3ph.errors import ConvergenceError, Lv3phError, StudyError
from lv3ph.hosting.criteria import Aggregation, Checker, Outcome, thresholds
from lv3ph.hosting.screening import Screener
from lv3ph.hosting.settings import QU_CURVE, VW_CURVE, Job
from lv3ph.hosting.switching import Switching, check_device
from lv3ph.model import loadshape_command, pv_commands, pv_generator_commands
from lv3ph.powerflow import open_feeder

_PV_SHAPE: Final[str] = "lv3ph_hosting_pv"
#: kWp of a PVSystem without PV under inverter controls (0.1 W: below any reported digit)
IDLE_KWP: Final[float] = 1e-4


class Unfoldable(Lv3phError):
    """The base case puts a switchable candidate outside the band where its PV can be folded
    into its phase Loads (:class:`~lv3ph.phases.switchable.PhaseMover`): use PVSystems."""


# ----------------------------------------------------------------------------- OpenDSS helpers
def solve_steps(
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
class Context:
    """A compiled feeder with one PV device per candidate customer, the no-PV base case
    over the PV window, thresholds, and the linearised voltage response.

    ``fold``: with dynamic switching and no inverter controls, fold the switched
    candidates' PV into their phase Loads (module docstring); raises :class:`Unfoldable`
    if the base case leaves the band where that is exact."""

    def __init__(self, job: Job, *, fold: bool = True) -> None:
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
        # ---- PV devices, size 0 (dynamic switching: the switchable model first)
        prof = job.profile
        on = np.nonzero(prof > 0)[0]
        self.w0 = run.start + int(on[0])
        self.window = np.arange(self.w0, run.start + int(on[-1]) + 1)
        self.prof_w = prof[self.window - run.start]
        from lv3ph.phases import customer_profiles

        load_kw, load_kvar = customer_profiles(engine, model, run)  # (steps, customers), as built
        rows = self.window - run.start
        self.switching: Switching | None = None
        #: size of a PVSystem "without PV": 0, or with inverter controls a negligible size
        #: (an InvControl over a 0 kVA inverter does not converge in OpenDSS)
        self._idle_kwp = 0.0 if job.controls is None else IDLE_KWP
        self._set_gen: Callable[[NDArray[np.float64]], None] | None = None
        if job.device == "pvsystem":
            shape = np.concatenate([np.zeros(run.start - 1), prof])
            engine.apply([loadshape_command(_PV_SHAPE, shape, run.stepsize_s)])
            if job.switching is not None:
                self.switching = Switching(
                    engine,
                    model,
                    self.names,
                    job.switching,
                    run,
                    prof,
                    _PV_SHAPE,
                    self._idle_kwp,
                    fold=fold and job.controls is None,
                )
            smodel = model if self.switching is None else self.switching.model
            switched = set() if self.switching is None else set(self.switching.switched)
            fixed = [n for n in self.names if n not in switched]
            engine.apply(pv_commands(smodel, dict.fromkeys(fixed, 1.0), _PV_SHAPE))
            self._size_pv = engine.pv_setter([f"pv_{n}" for n in fixed], var_limits=job.controls is not None)
        else:
            if job.switching is not None:
                check_device(job.device)
            fixed = list(self.names)
            engine.apply(pv_generator_commands(model, fixed))
            self._set_gen = engine.setter("generator", [f"pv_{n}" for n in self.names])
        self._fixed = np.array([self.names.index(n) for n in fixed], dtype=np.int64)
        # ---- inverter controls over every PV device, and a reader of their output
        devices = [f"pv_{n}" for n in fixed]
        owner = [self.names.index(n) for n in fixed]
        if self.switching is not None:
            devices += self.switching.pv_devices
            owner += [self.names.index(n) for n in self.switching.pv_owner]
        self._owner = np.array(owner, dtype=np.int64)
        if job.controls is not None:
            engine.add_inverter_control(
                "lv3ph_pv",
                devices,
                volt_var=QU_CURVE if "qu" in job.controls else None,
                volt_watt=VW_CURVE if "vw" in job.controls else None,
            )
        self._read_pv = engine.pv_powers_kw(devices) if job.device == "pvsystem" else None
        #: PV output per candidate at every window step of the last whole-window solve (kW), or None
        self.last_pv_kw: NDArray[np.float64] | None = None
        self.last_full_sizes: NDArray[np.float64] | None = None
        self.engine = engine
        self.model = engine.model() if self.switching is None else self.switching.model
        if self.model.nodes != model.nodes:
            raise Lv3phError("adding the PV devices changed the node order")  # cannot happen: no new buses
        self.sizes = np.zeros(len(self.names))
        if self.switching is not None:
            self.switching.mover.rebuild_matrix()  # after the last text edit
        self._apply_sizes(self.sizes)
        self.checker = Checker(self.model, job.limits, job.checks)
        # ---- injection ports and loads per phase without PV
        index = self.model.customer_index()
        ports = [
            (int(self.model.customers[index[n]].phase_nodes[0]), int(self.model.customers[index[n]].neutral_node))
            for n in fixed
        ]
        port_phase = [int(self.phase[self.names.index(n)]) for n in fixed]
        home = np.array([c.phases[0] if len(c.phases) == 1 else 0 for c in model.customers], dtype=np.int64)[
            None, :
        ] * np.ones((rows.size, 1), dtype=np.int64)
        if self.switching is not None:
            sw = self.switching
            for pos in sw.sw_pos:
                c = self.model.customers[pos]
                ports += [(int(c.phase_nodes[k]), int(c.neutral_node)) for k in range(3)]
                port_phase += [1, 2, 3]
            home[:, sw.sw_pos] = sw.blind[rows][:, sw.sw_pos]
            self._sw_load = (load_kw[rows] + 1j * load_kvar[rows])[:, sw.sw_pos].T  # (switchable, window)
            self._sw_cand = np.array(
                [
                    self.names.index(self.model.customers[p].name) if self.model.customers[p].name in switched else -1
                    for p in sw.sw_pos
                ],
                dtype=np.int64,
            )
        self.load_phase = np.zeros((3, rows.size))
        for i, c in enumerate(model.customers):
            kw_i = load_kw[rows, i]
            if len(c.phases) == 1:
                for p in (1, 2, 3):
                    self.load_phase[p - 1] += np.where(home[:, i] == p, kw_i, 0.0)
            else:
                for ph in c.phases:
                    self.load_phase[ph - 1] += kw_i / len(c.phases)
        self._n_fixed = len(fixed)
        # ---- base case over the window
        vbase = self._solve_window()
        if self.switching is not None and self.switching.mover.outside_band(vbase, self.window, every=True):
            raise Unfoldable(f"{job.model_path}: a switchable candidate's phase voltage leaves its Load's band")
        self.agg = Aggregation(self.window, run.stepsize_s, job.basis)
        base = self.checker.values(vbase, self.agg.reducer(self.window)[1])
        self.thr, self.pre_existing = thresholds(
            self.checker, base, job.pre_existing, self.agg.row_step, dict(job.tolerance)
        )
        self.screener = Screener(
            self.checker,
            self.model,
            np.array(ports, dtype=np.int64).reshape(-1, 2),
            np.array(port_phase, dtype=np.int64),
            self.injection,
            self.window,
            self.load_phase,
            self.thr,
            self.agg,
            base,
            vbase,
        )

    # ---------------------------------------------------------------- devices and solves
    def injection(self, sizes: NDArray[np.float64]) -> NDArray[np.complex128]:
        """Complex power injected at each screening port over the window with PV ``sizes``,
        minus the one without PV (kVA, generator convention; see :class:`Screener`)."""
        n_ports = self._n_fixed + (0 if self.switching is None else 3 * self.switching.sw_pos.size)
        ds = np.zeros((n_ports, self.window.size), dtype=np.complex128)
        ds[: self._n_fixed] = sizes[self._fixed][:, None] * self.prof_w[None, :]
        if self.switching is not None:
            now, base = self.switching.phases_over(self.window, sizes)
            kwp = np.where(self._sw_cand >= 0, sizes[np.maximum(self._sw_cand, 0)], 0.0)
            pv = kwp[:, None] * self.prof_w[None, :]
            for p in (1, 2, 3):
                on, was = now == p, base == p
                ds[self._n_fixed + p - 1 :: 3] = pv * on - self._sw_load * (on.astype(float) - was)
        return ds

    def _apply_sizes(self, sizes: NDArray[np.float64]) -> None:
        self.sizes = sizes
        if self._set_gen is None:
            self._size_pv(np.maximum(sizes[self._fixed], self._idle_kwp))
        if self.switching is not None:
            self.switching.apply(sizes)

    def _before_step(self) -> Callable[[int], None] | None:
        if self.switching is not None:
            return self.switching.mover.step
        if self._set_gen is not None:
            setter, prof, start, sizes = self._set_gen, self.job.profile, self.job.run.start, self.sizes
            return lambda k: setter(prof[k - start] * sizes)
        return None

    def _solve_window(self) -> NDArray[np.complex128]:
        """The whole PV window; with inverter controls it also records each candidate's PV
        output (:attr:`last_pv_kw`, for the curtailed energy)."""
        run = self.job.run
        on_step = None
        self.last_pv_kw = None
        if self.job.controls is not None and self._read_pv is not None:
            read, owner, w0 = self._read_pv, self._owner, int(self.window[0])
            out = self.last_pv_kw = np.zeros((self.window.size, len(self.names)))

            def on_step(k: int) -> None:
                np.add.at(out[k - w0], owner, read().real)

        v, _ = self.engine.run(
            run.mode,
            run.stepsize_s,
            int(self.window[0]),
            self.window.size,
            before_step=self._before_step(),
            on_step=on_step,
        )
        return v

    def curtailed_kwh(self, sizes: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """``(available, curtailed)`` PV energy per candidate over the window (kWh) from the
        last whole-window solve at ``sizes``: available ``kWp x profile``, curtailed the
        part the inverter did not deliver (volt-watt, or reactive power taking precedence)."""
        dt_h = self.job.run.stepsize_s / 3600.0
        avail = sizes[None, :] * self.prof_w[:, None]
        if self.last_pv_kw is None:
            return avail.sum(axis=0) * dt_h, np.zeros(len(self.names))
        return avail.sum(axis=0) * dt_h, np.clip(avail - self.last_pv_kw, 0.0, None).sum(axis=0) * dt_h

    def _solve(self, steps: NDArray[np.int64] | None) -> NDArray[np.complex128]:
        """Node voltages at ``steps`` (None = the whole PV window) with the current sizes."""
        run = self.job.run
        if steps is None:
            v = self._solve_window()
        else:
            v = solve_steps(self.engine, run.mode, run.stepsize_s, steps, self._before_step())
        bad = (
            None
            if self.switching is None
            else self.switching.mover.outside_band(v, self.window if steps is None else steps)
        )
        if bad is not None:
            raise StudyError(
                f"customer {bad[0]}: phase voltage {bad[2]:.1f} V at step {bad[1]} is outside its Load's "
                "constant-power band while its PV produces, where the PV folded into its phase Loads "
                "is no longer the PVSystem's constant power (the base case was inside the band)"
            )
        return v

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, sizes: NDArray[np.float64], steps: NDArray[np.int64] | None) -> Outcome:
        """Solve ``steps`` (None = whole PV window; with ``basis="en50160"`` widened to whole
        10-minute intervals) with PV ``sizes`` (kWp per candidate)."""
        agg = self.agg
        if steps is not None:
            steps = agg.steps_of(agg.rows_of(steps))
        self._apply_sizes(sizes)
        if steps is None:
            self.last_full_sizes = sizes.copy()
        try:
            v = self._solve(steps)
        except ConvergenceError as exc:
            m = re.search(r"at step (\d+)", str(exc))
            step = int(m.group(1)) if m else -1
            return Outcome(ok=False, check="convergence", step=step, worst_steps=(step,) if step > 0 else ())
        rows, reduce = agg.reducer(self.window if steps is None else steps)
        values = self.checker.values(v, reduce)
        if steps is not None:
            self.screener.calibrate(rows, values)
        best: tuple[float, int, int, str, int] | None = None
        worst_steps = []
        row_step = agg.row_step[rows]
        for rank, c in enumerate(self.checker.checks):
            val, thr = values[c], self.thr[c][rows]
            d, lim = self.checker.direction[c], self.checker.limit[c]
            with np.errstate(invalid="ignore"):
                sev = np.where(np.isnan(val), -np.inf, d * (val - thr) / abs(lim))
            if not (sev > 0).any():
                continue
            ti, ii = (int(x) for x in np.unravel_index(int(np.argmax(sev)), sev.shape))
            worst_steps.append(int(row_step[ti]))
            key = (float(sev[ti, ii]), -int(row_step[ti]), -rank, c, ii)
            if best is None or key[:3] > best[:3]:
                best = key
        if best is None:
            return Outcome(ok=True)
        _, negstep, _, c, i = best
        t = int(np.nonzero(row_step == -negstep)[0][0])
        return Outcome(
            ok=False,
            check=c,
            item=str(self.checker.items[c][i]),
            step=-negstep,
            value=float(values[c][t, i]),
            limit=self.checker.limit[c],
            worst_steps=tuple(sorted(set(worst_steps))),
        )


_LOCAL = threading.local()


def cache() -> dict[str, Context]:
    """This thread's engines by job token (at most one: a new job replaces the old one)."""
    if not hasattr(_LOCAL, "contexts"):
        _LOCAL.contexts = {}
    contexts: dict[str, Context] = _LOCAL.contexts
    return contexts


def context(job: Job) -> Context:
    """This thread's engine for ``job``, built on first use and reused by later placements.

    One per thread, not per process: a Dask worker with several threads runs several
    placements at once, and an OpenDSS context must not be shared between them.
    """
    contexts = cache()
    ctx = contexts.get(job.token)
    if ctx is None:
        contexts.clear()
        try:
            ctx = Context(job)
        except Unfoldable:
            ctx = Context(job, fold=False)
        contexts[job.token] = ctx
    return ctx
