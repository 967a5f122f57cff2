"""Dynamic phase switching inside a hosting-capacity engine, PV-blind or PV-aware.

The switch-equipped customers (:func:`lv3ph.phases.choose_switches`) get the switchable
model of :mod:`lv3ph.phases.switchable`, and a :class:`~lv3ph.phases.switchable.PhaseMover`
moves their load and PV at a switch only (built once per engine; a candidate level changes
only the PV sizes and, PV-aware, the schedule). A switchable candidate's PV is folded into
its phase Loads' net-demand load shape (``fold``: no PV element, as cheap per solve as the
as-built model), or, under inverter controls (which act on PVSystems), three PVSystems, one
per phase of its bus, of which only the live phase's has a size.

* ``pv_aware=False`` (PV-blind): one schedule for the whole run, planned from the customers'
  load forecast (:func:`lv3ph.phases.switching_schedule`), as a DSO would without knowing
  where the PV is.
* ``pv_aware=True``: at every candidate level the schedule is planned from the net demand
  with that level's PV forecast (perfect, like the load forecast), with the same cap on
  operations per day (:func:`lv3ph.phases.pv_aware_schedule`: never worse than the PV-blind
  plan on its own objective). Without PV both are the same, so the base case is shared.

Settings (``switching`` mapping): ``share`` (of the movable customers, default 1),
``interval_s`` (900), ``max_ops_per_day`` (4), ``objective`` (``neutral``), ``seed`` (0),
``pv_aware`` (False).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lv3ph.dss import Engine
from lv3ph.errors import StudyError
from lv3ph.model import PV_VMAXPU, FeederModel, node_bus1, pvsystem_command
from lv3ph.phases import (
    PhaseMover,
    choose_switches,
    make_switchable,
    pv_aware_schedule,
    switchable_customers,
    switching_schedule,
)
from lv3ph.powerflow import RunSpec

_SUFFIX = ("_p1", "_p2", "_p3")


class Switching:
    """The switchable engine of one hosting job.

    Args:
        engine, model: the as-built feeder (``model`` of ``engine``), before any PV device.
        candidates: candidate customers (PV sites).
        settings: see the module docstring.
        run: the run; ``profile``: PV output per step of the run, kW per kWp; ``pv_shape``:
            the PV load shape's name; ``idle_kwp``: size of a PVSystem without PV;
            ``fold``: fold the switched candidates' PV into their net demand (no PVSystems;
            not where a phase Load's ``vmaxpu`` is below the PVSystem's: :attr:`fold`).

    After construction ``model`` is the switchable model and ``switched`` the candidates
    with a switch (their PV is the mover's); the others need their own PV device.
    """

    def __init__(
        self,
        engine: Engine,
        model: FeederModel,
        candidates: list[str],
        settings: Mapping[str, Any],
        run: RunSpec,
        profile: NDArray[np.float64],
        pv_shape: str,
        idle_kwp: float = 0.0,
        fold: bool = False,
    ) -> None:
        self.run, self.profile = run, profile
        self.m0 = model
        self.pv_aware = bool(settings.get("pv_aware", False))
        names, kw, kvar = engine.load_setpoints(run.mode, run.stepsize_s, run.start, run.steps)
        order = [names.index(c.name) for c in model.customers]
        self.load_kw, self.load_kvar = kw[:, order], kvar[:, order]
        self.switches = choose_switches(
            model, share=float(settings.get("share", 1.0)), seed=int(settings.get("seed", 0))
        )
        self.plan_args: dict[str, Any] = {
            "stepsize_s": run.stepsize_s,
            "interval_s": float(settings.get("interval_s", 900.0)),
            "start": run.start,
            "max_ops_per_day": int(settings.get("max_ops_per_day", 4)),
            "objective": settings.get("objective", "neutral"),
            "load_kvar": self.load_kvar,
        }
        self.blind = switching_schedule(model, self.load_kw, None, self.switches, **self.plan_args)
        self.model = make_switchable(engine, model, self.switches)
        index = self.model.customer_index()
        sw = switchable_customers(self.model)
        self.sw_pos = np.array([index[n] for n in sw], dtype=np.int64)  # customer positions, mover order
        cand = set(candidates)
        self.switched = [n for n in sw if n in cand]
        # above its Load's vmaxpu a folded PV would turn into an impedance with the load
        self.fold = fold and all(engine.load_band(f"{n}_p1")[2] >= PV_VMAXPU for n in self.switched)
        fold = self.fold
        #: the switched candidates' PVSystems (none with ``fold``) and their candidates
        self.pv_devices: list[str] = []
        self.pv_owner: list[str] = []
        pv_systems: dict[str, list[str]] | None = None
        if not fold:
            pv_systems, commands = {}, []
            for n in self.switched:
                c = self.model.customers[index[n]]
                pv_systems[n] = [f"pv_{n}{s}" for s in _SUFFIX]
                for k, s in enumerate(_SUFFIX):
                    bus1 = node_bus1(self.model, int(c.phase_nodes[k]), int(c.neutral_node))
                    commands.append(pvsystem_command(f"pv_{n}{s}", bus1, idle_kwp, pv_shape))
                self.pv_devices += pv_systems[n]
                self.pv_owner += [n] * 3
            engine.apply(commands)
        self.mover = PhaseMover(
            engine,
            self.model,
            run,
            self.load_kw,
            self.load_kvar,
            self.switched,
            pv_profile=profile if fold else None,
            pv_systems=pv_systems,
            idle_kwp=idle_kwp,
        )
        self.mover.set_schedule(self.blind[:, self.sw_pos])
        self._cand_pos = np.array([candidates.index(n) if n in cand else -1 for n in sw], dtype=np.int64)
        self._cand_customer = np.array([model.customer_index()[n] for n in candidates], dtype=np.int64)
        self.schedule = self.blind
        self._plans: dict[bytes, np.ndarray] = {}
        self._blind_over: dict[tuple[int, int], NDArray[np.int64]] = {}  # phases_over's PV-blind phases
        self.planned = 0  # PV-aware levels whose own plan was kept (not the PV-blind one)
        self.levels = 0

    def apply(self, sizes: NDArray[np.float64]) -> None:
        """PV ``sizes`` (kWp per candidate) on the live phases; PV-aware: the level's schedule."""
        kwp = np.where(self._cand_pos >= 0, sizes[np.maximum(self._cand_pos, 0)], 0.0)
        if self.pv_aware:
            self.schedule = self._plan(sizes)
            self.mover.set_schedule(self.schedule[:, self.sw_pos])
        self.mover.set_pv(kwp)

    def _plan(self, sizes: NDArray[np.float64]) -> np.ndarray:
        if not sizes.any():
            return self.blind
        key = sizes.tobytes()
        plan = self._plans.get(key)
        if plan is None:
            pv = np.zeros_like(self.load_kw)
            pv[:, self._cand_customer] = np.outer(self.profile, sizes)
            plan, own = pv_aware_schedule(self.m0, self.load_kw, pv, self.switches, blind=self.blind, **self.plan_args)
            self.levels += 1
            self.planned += int(own)
            if len(self._plans) > 256:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def phases_over(
        self, window: NDArray[np.int64], sizes: NDArray[np.float64]
    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Phase (1..3) of every switchable customer (mover order) at the ``window`` steps:
        ``(level, base)`` for the schedule at PV ``sizes`` and the one without PV (PV-blind)."""
        key = (int(window[0]), window.size)
        if key not in self._blind_over:
            self._blind_over = {key: self.blind[window - self.run.start][:, self.sw_pos].T.astype(np.int64)}
        base = self._blind_over[key]
        if not self.pv_aware:
            return base, base
        return self._plan(sizes)[window - self.run.start][:, self.sw_pos].T.astype(np.int64), base


def check_device(device: str) -> None:
    """Dynamic switching moves PVSystems; the Generator device has no mover."""
    if device != "pvsystem":
        raise StudyError("dynamic phase switching in hosting capacity needs device='pvsystem'")
