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
from collections.abc import Callable, Mapping
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from lv3ph.dss import Engine
from lv3ph.errors import ConvergenceError, Lv3phError, StudyError
from lv3ph.hosting.criteria import Checker, Outcome, thresholds
from lv3ph.hosting.screening import Screener
from lv3ph.hosting.settings import Job
from lv3ph.model import loadshape_command, pv_commands, pv_generator_commands
from lv3ph.powerflow import open_feeder

_PV_SHAPE: Final[str] = "lv3ph_hosting_pv"


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
    over the PV window, thresholds, and the linearised voltage response."""

    def __init__(self, job: Job) -> None:
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
        self.checker = Checker(self.model, job.limits, job.checks)
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
        self.thr, self.pre_existing = thresholds(self.checker, base, job.pre_existing, self.window)
        self.screener = Screener(
            self.checker,
            self.model,
            self.names,
            self.phase,
            self.window,
            self.prof_w,
            self.load_phase,
            self.thr,
            base,
            vbase,
        )

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
        return solve_steps(self.engine, run.mode, run.stepsize_s, steps, self._before_step())

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, sizes: NDArray[np.float64], steps: NDArray[np.int64] | None) -> Outcome:
        """Solve ``steps`` (None = whole PV window) with PV ``sizes`` (kWp per candidate)."""
        self._apply_sizes(sizes)
        try:
            v = self._solve(steps)
        except ConvergenceError as exc:
            m = re.search(r"at step (\d+)", str(exc))
            step = int(m.group(1)) if m else -1
            return Outcome(ok=False, check="convergence", step=step, worst_steps=(step,) if step > 0 else ())
        steps_arr = self.window if steps is None else steps
        pos = steps_arr - self.w0
        values = self.checker.values(v)
        if steps is not None:
            self.screener.calibrate(steps, values)
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
            return Outcome(ok=True)
        _, negstep, _, c, i = best
        t = int(np.nonzero(steps_arr == -negstep)[0][0])
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
        ctx = contexts[job.token] = Context(job)
    return ctx
