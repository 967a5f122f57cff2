"""The switchable model: three phase Loads per switch-equipped customer, set per step
through the fast API.


Fast switching formulation
--------------------------
Re-phasing a Load through a text edit (``Load.x.bus1=...``) makes OpenDSS rebuild and
refactorise its system matrix at the next solve: 6-9 ms per step on the IEEE EU LV
twin, 8-13 times a normal time step (``benchmarks/bench_switching.py``). Instead,
:func:`switchable_commands` gives every switch-equipped customer ``x`` three Loads
``x_p1``, ``x_p2``, ``x_p3`` (copies of ``x``, phase-to-neutral on each phase of its
bus, ``status=fixed`` so OpenDSS ignores their load shapes) and disables ``x`` and the
customer's own PV/storage/generator elements; :func:`run_switching` then puts the customer's whole net power
``load_kw - pv_kw`` (and ``load_kvar``) on the live phase's Load through the fast API
(no system-matrix rebuild) and 0 on the other two.

The phase Load of the as-built phase starts as an exact copy of ``x`` and the other two
at 0 kW, so the system matrix is the as-built one: with the schedule at the as-built
phases, the voltages equal a plain run to rounding (~1e-13). After a switch OpenDSS
keeps iterating with the admittance it factorised (OpenDSS compensates a load's
admittance in its injection current), so the converged result is the physics of the new
arrangement, equal to a text-edited model within OpenDSS's convergence tolerance
(the idle as-built phase Load keeps its admittance in the factorised matrix, so it shows
a residue of that tolerance, ~1e-4 A per kW on the IEEE feeder, instead of exactly 0 A).

Customer identity: in lv3ph a customer is a Load, so the three phase Loads would become
three customers (and a device on another phase than the Load is not owned by it).
:func:`make_switchable` therefore returns a :class:`~lv3ph.model.FeederModel` in which each
switchable customer stays **one** customer, at its original position and under its
original name, connected to the three phase nodes and the neutral of its bus
(``phases=(1, 2, 3)``, devices = the three phase Loads). lv3ph's capture then works
unchanged: ``customer_p_kw`` is the customer's total drawn power, and
``customer_injection`` shows on which phase port it flows at each step. (Its ``kv`` is
the line-to-line equivalent of its phase-to-neutral rating so that
``customer_pq_departure_pct`` uses the right voltage base; the departure is then the
mean over the three phase voltages, exact while they are inside ``vminpu``-``vmaxpu``.)
A switchable customer needs its own bus with all three phases (a switch is installed
where three phases are available); a bus shared with another customer is refused.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Final

import numpy as np

from lv3ph.dss import Engine
from lv3ph.errors import ModelError, StudyError
from lv3ph.model import PV_VMAXPU, PV_VMINPU, ComplexArray, Customer, FeederModel, node_spec
from lv3ph.phases.customers import _bus_phase_nodes, _check_movable, _profiles
from lv3ph.phases.switching import as_built_schedule
from lv3ph.powerflow import RunSpec, solve_raw

_SUFFIX: Final[tuple[str, str, str]] = ("_p1", "_p2", "_p3")


def switchable_commands(model: FeederModel, customers: Sequence[str]) -> list[str]:
    """OpenDSS commands that make ``customers`` switchable (see the module docstring).

    Per customer ``x`` on phase ``k`` of bus ``b``: ``New Load.x_p{1,2,3} like=x
    bus1=b.<node of phase a, b, c>.<neutral node> status=fixed`` (traced phases, OpenDSS
    terminal numbers of those nodes; the phase-``k`` copy keeps ``x``'s kW, the
    other two get 0 kW), then ``x`` and the customer's PV/storage/generator elements are
    disabled (the customer's whole net power moves with it, set per step by
    :func:`run_switching`).
    """
    chosen = _check_movable(model, list(customers), "the switch list", at_bus=True)
    existing = set(model.customer_index())
    out: list[str] = []
    for i in chosen:
        c = model.customers[i]
        for sfx in _SUFFIX:
            if c.name + sfx in existing:
                raise ModelError(f"customer {c.name}: a Load {c.name + sfx} already exists (already switchable?)")
        at = _bus_phase_nodes(model, c)
        for ph, sfx in zip((1, 2, 3), _SUFFIX, strict=True):
            zero = "" if ph == c.phases[0] else " kW=0 kvar=0"
            bus1 = node_spec(model, c.bus, [at[ph], c.neutral_node])
            out.append(f"New Load.{c.name}{sfx} like={c.name} bus1={bus1} status=fixed{zero}")
        out.append(f"Load.{c.name}.enabled=no")
        out.extend(f"{d}.enabled=no" for d in c.devices if not d.startswith("load."))
    return out


def switchable_customers(model: FeederModel) -> list[str]:
    """Customers of a switchable model (:func:`make_switchable`) that have a phase selector switch."""
    return [c.name for c in model.customers if c.devices == tuple(f"load.{c.name}{s}" for s in _SUFFIX)]


def make_switchable(engine: Engine, model: FeederModel, customers: Sequence[str]) -> FeederModel:
    """Apply :func:`switchable_commands` to ``engine`` and return the switchable model.

    ``model`` is the as-built model of ``engine``. In the result every customer keeps its
    position and name; a switchable customer is connected to the three phases and the
    neutral of its bus (module docstring). Raises :class:`~lv3ph.errors.ModelError` if a
    switchable customer shares its bus's phase nodes with another customer or device.
    """
    chosen = _check_movable(model, list(customers), "the switch list", at_bus=True)
    for i in chosen:
        c = model.customers[i]
        nodes = set(_bus_phase_nodes(model, c).values())
        for j, other in enumerate(model.customers):
            if j != i and {int(x) for x in other.phase_nodes} & nodes:
                raise ModelError(
                    f"customer {c.name} shares bus {c.bus} with customer {other.name}: "
                    "a switchable customer needs its own bus"
                )
        for dev, dn in model.orphan_devices.items():
            if {int(x) for x in dn} & nodes:
                raise ModelError(
                    f"customer {c.name} shares bus {c.bus} with {dev}: a switchable customer needs its own bus"
                )
    engine.apply(switchable_commands(model, [model.customers[i].name for i in chosen]))
    new = engine.model()
    by_name = {c.name: c for c in new.customers}
    switch_names = {model.customers[i].name for i in chosen}
    merged: list[Customer] = []
    for c in model.customers:
        if c.name not in switch_names:
            merged.append(by_name[c.name])
            continue
        parts = [by_name[c.name + s] for s in _SUFFIX]
        extra = [d for p_ in parts for d in p_.devices if not d.startswith("load.")]
        if extra:
            raise ModelError(f"customer {c.name}: devices {', '.join(extra)} on its bus would be moved with it")
        merged.append(
            dataclasses.replace(
                parts[0],
                name=c.name,
                phases=(1, 2, 3),
                phase_nodes=np.array([int(p_.phase_nodes[0]) for p_ in parts], dtype=np.int64),
                neutral_node=parts[0].neutral_node,
                devices=tuple(f"load.{p_.name}" for p_ in parts),
                kv=c.kv * math.sqrt(3.0),
            )
        )
    return dataclasses.replace(new, customers=tuple(merged))


# ---------------------------------------------------------------------------- OpenDSS access
def run_switching(
    engine: Engine,
    model: FeederModel,
    run: RunSpec,
    load_kw: np.ndarray,
    pv_kw: np.ndarray | None,
    schedule: np.ndarray,
    *,
    load_kvar: np.ndarray | None = None,
    progress: bool = False,
    before_step: Callable[[int], None] | None = None,
) -> tuple[ComplexArray, dict[str, ComplexArray]]:
    """Solve ``run`` with the switchable customers on the phases of ``schedule``.

    Args:
        engine, model: after :func:`make_switchable` (``model`` is the switchable model).
        load_kw, pv_kw, load_kvar: (steps, customers) in model order. Only the switchable
            customers' columns are used: their net power ``load_kw - pv_kw`` (and
            ``load_kvar``; default: ``load_kw`` times the kvar/kW ratio of the customer's
            Load) goes on the live phase Load at each step. Every other customer follows its
            own OpenDSS load shape and devices, as in a plain run.
        schedule: (steps, customers) phase per step (:func:`switching_schedule`); customers
            without a switch must stay on their phase (0 for multi-phase customers).
        before_step: optional extra per-step callback (e.g. battery set-points), called first.

    Returns:
        ``(V, measured)`` as :func:`lv3ph.powerflow.solve_raw`; pass them to
        :func:`lv3ph.powerflow.capture` with the switchable ``model``.

    The phase Loads are put back to their initial values (as-built copy / 0 kW) at the end,
    so a later matrix rebuild reproduces the as-built system matrix.
    """
    step, reset = switching_setter(
        engine, model, run, load_kw, pv_kw, schedule, load_kvar=load_kvar, before_step=before_step
    )
    reset()
    try:
        return solve_raw(engine, model, run, progress=progress, before_step=step)
    finally:
        reset()


def switching_setter(
    engine: Engine,
    model: FeederModel,
    run: RunSpec,
    load_kw: np.ndarray,
    pv_kw: np.ndarray | None,
    schedule: np.ndarray,
    *,
    load_kvar: np.ndarray | None = None,
    before_step: Callable[[int], None] | None = None,
) -> tuple[Callable[[int], None], Callable[[], None]]:
    """The per-step callback of :func:`run_switching` and a ``reset`` that puts the phase
    Loads back to their initial values (arguments as :func:`run_switching`; step ``k`` of
    ``run`` uses row ``k - run.start``). Call ``reset()`` before the first step.
    """
    n = len(model.customers)
    steps = run.steps
    sched = np.asarray(schedule)
    if sched.shape != (steps, n):
        raise StudyError(f"schedule must have shape ({steps}, {n}) (steps, customers), got {sched.shape}")
    if not np.issubdtype(sched.dtype, np.integer):
        if not np.all(np.isfinite(sched)) or np.any(sched != np.round(sched)):
            raise StudyError("schedule must hold integer phases 1, 2, 3")
        sched = sched.astype(np.int64)
    names = switchable_customers(model)
    sw = [model.customer_index()[nm] for nm in names]
    fixed = np.setdiff1d(np.arange(n), sw)
    expect = as_built_schedule(model, 1)[0, fixed].astype(np.int64)
    bad = np.argwhere(sched[:, fixed] != expect[None, :])
    if bad.size:
        t, j = bad[0]
        c = model.customers[fixed[j]]
        raise StudyError(
            f"customer {c.name} has no phase selector switch but the schedule puts it on phase "
            f"{int(sched[t, fixed[j]])} at step {run.start + int(t)} (it is on {expect[j] or 'several phases'})"
        )
    if sw:
        badp = np.argwhere((sched[:, sw] < 1) | (sched[:, sw] > 3))
        if badp.size:
            t, j = badp[0]
            raise StudyError(
                f"customer {names[j]}: phase {int(sched[t, sw[j]])} at step {run.start + int(t)} is not 1, 2 or 3"
            )
    p, q = _profiles(model, load_kw, pv_kw, load_kvar, steps=steps)
    if pv_kw is None and sw:
        hidden = engine.disabled_devices({model.customers[i].bus for i in sw})
        if hidden:
            raise StudyError(
                f"{hidden[0]} belongs to a switchable customer and was folded into its phase Loads: "
                "pass its output in pv_kw"
            )
    base = []
    for nm, i in zip(names, sw, strict=True):  # as-built traced phase of x from the (disabled) Load x's bus1
        terminal, kw0, kvar0 = engine.load_connection(nm)
        node = model.nodes.index(f"{model.customers[i].bus}.{terminal}")
        base.append((int(model.node_role[node]), kw0, kvar0))
    if q is None:
        ratio = np.array([kvar / kw if kw else 0.0 for _, kw, kvar in base])
        q = np.zeros_like(p)
        q[:, sw] = np.asarray(load_kw, dtype=float)[:, sw] * ratio[None, :]  # PV at unity power factor
    set_pq = engine.pq_setter([nm + s for nm in names for s in _SUFFIX])
    net_p = p[:, sw].tolist()
    net_q = q[:, sw].tolist()
    phase = (sched[:, sw] - 1).tolist()
    live = [-1] * len(sw)

    def reset() -> None:
        for j, (ph0, kw0, kvar0) in enumerate(base):
            for ph in range(3):
                set_pq(3 * j + ph, kw0 if ph == ph0 - 1 else 0.0, kvar0 if ph == ph0 - 1 else 0.0)
        live[:] = [b[0] - 1 for b in base]

    def step(k: int) -> None:
        if before_step is not None:
            before_step(k)
        i = k - run.start
        ph_i, p_i, q_i = phase[i], net_p[i], net_q[i]
        for j in range(len(ph_i)):
            ph = ph_i[j]
            if ph != live[j]:
                set_pq(3 * j + live[j], 0.0, 0.0)
                live[j] = ph
            set_pq(3 * j + ph, p_i[j], q_i[j])

    return step, reset


class PhaseMover:
    """Dynamic switching of profile-following customers, touching OpenDSS only at a switch.

    :func:`switching_setter` sets every switchable customer's phase Loads at every step
    (their net power comes from the caller). Where the customers' load and PV follow known
    profiles (a hosting-capacity run), that costs more than the solve itself on the IEEE
    twin (0.26 ms of set-points per step for 55 customers against a 0.6 ms solve). A mover
    instead gives every switchable customer ``x`` a load shape of its own,
    ``lv3ph_net_x`` (point ``k`` = step ``k`` of the run, at the run's step size): P
    multipliers its net demand ``load_kw - kWp x pv_profile`` (kW), Q multipliers its
    ``load_kvar`` (kvar). Its three phase Loads follow that shape (``status=variable``),
    the live phase's Load with base kW 1 and kvar 1, the idle two at 0; at a step whose
    scheduled phase differs from the live one, the base moves from the live phase to the
    new one through the fast API (no system-matrix rebuild). Steps may be solved in any
    order: each step brings the devices to that step's row of the schedule.

    PV: folded into the net demand (``pv_systems`` None: a size change rewrites the
    customer's P multipliers through the API, no PV element at all), or three PVSystems
    per customer (``pv_systems``, e.g. under inverter controls, which need a PV element),
    only the live phase's sized, the size moving with the Load at a switch. Folding is
    exact while the customer's phase voltage is inside its Load's ``vminpu``-``vmaxpu``
    (and the PVSystem's :data:`~lv3ph.model.PV_VMINPU`-:data:`~lv3ph.model.PV_VMAXPU`) band, where both are constant power:
    :meth:`outside_band` finds where it is not.

    System matrix: OpenDSS puts a Load's admittance at its present kW into the factorised
    matrix whenever it rebuilds it (at the next solve after any text edit) and compensates
    it in the injection current. The mover builds the matrix with every phase Load at 0 kW
    (and :meth:`rebuild_matrix` re-establishes that after later text edits): a matrix with
    the as-built phase's load in it costs 10 % more iterations once customers have moved
    (2.29 against 2.07 per step on the IEEE twin), and a matrix rebuilt from the live
    phases would depend on what was solved before. The result is the same physics within
    OpenDSS's convergence tolerance. (Under inverter controls OpenDSS rebuilds the matrix
    during the control iterations of a run's first step, from the live phase Loads at that
    step, whatever the mover does.)

    Args:
        engine, model: after :func:`make_switchable` (``model`` is the switchable model).
        run: the run (time mode, step size, first step = schedule row 0).
        load_kw, load_kvar: (run steps, customers) set-points in model order (only the
            switchable customers' columns are used).
        pv: switchable customers that may have PV.
        pv_profile: PV output per step of ``run``, kW per kWp (folded PV).
        pv_systems: per customer of ``pv`` its three PVSystems (phases 1, 2, 3), or None to fold.
        idle_kwp: size of an idle phase's PVSystem (0; a tiny size keeps inverter controls
            away from a 0 kVA inverter, and then each PV move also sets its var limits,
            see :meth:`lv3ph.dss.Engine.pv_size_setter`).
    """

    def __init__(
        self,
        engine: Engine,
        model: FeederModel,
        run: RunSpec,
        load_kw: np.ndarray,
        load_kvar: np.ndarray,
        pv: Sequence[str],
        *,
        pv_profile: np.ndarray | None = None,
        pv_systems: Mapping[str, Sequence[str]] | None = None,
        idle_kwp: float = 0.0,
    ) -> None:
        self.names = switchable_customers(model)
        self.engine = engine
        self.idle_kwp = float(idle_kwp)
        self.start = run.start
        index = model.customer_index()
        pos = [index[nm] for nm in self.names]
        base = [[engine.load_connection(nm + s) for s in _SUFFIX] for nm in self.names]
        home = [next((ph for ph, (_, kw, kvar) in enumerate(b) if kw or kvar), 0) for b in base]
        lead = np.zeros(run.start - 1)
        self._load_p = [np.concatenate([lead, np.asarray(load_kw, dtype=float)[:, i]]) for i in pos]
        shapes = [f"lv3ph_net_{nm}" for nm in self.names]
        npts = run.start - 1 + run.steps
        cmds = [f"New Loadshape.{sh} npts={npts} sinterval={run.stepsize_s:g}" for sh in shapes]
        cmds += [
            f"Load.{nm}{s}.yearly={sh} daily={sh} status=variable kW=0 kvar=0"
            for nm, sh in zip(self.names, shapes, strict=True)
            for s in _SUFFIX
        ]
        engine.apply(cmds)
        self._set_shape = engine.loadshape_setter(shapes)
        for j, i in enumerate(pos):
            self._set_shape(j, self._load_p[j], np.concatenate([lead, np.asarray(load_kvar, dtype=float)[:, i]]))
        self._set_pq = engine.pq_setter([nm + s for nm in self.names for s in _SUFFIX])
        with_pv = set(pv)
        self.pv_pos = {nm: j for j, nm in enumerate(self.names) if nm in with_pv}
        self.pv_profile = None if pv_profile is None else np.concatenate([lead, np.asarray(pv_profile, dtype=float)])
        self._set_pv = None
        if pv_systems is not None:
            devices = [dev for nm in self.names if nm in self.pv_pos for dev in pv_systems[nm]]
            self._set_pv = engine.pv_size_setter(devices, var_limits=idle_kwp > 0) if devices else None
        elif self.pv_pos and pv_profile is None:
            raise StudyError("PhaseMover: folded PV needs pv_profile")
        self._pv_slot = {nm: 3 * k for k, nm in enumerate(n for n in self.names if n in self.pv_pos)}
        self.live = np.array(home, dtype=np.int64)  # phase index 0..2 now in OpenDSS
        self.kwp = np.zeros(len(self.names))  # PV size per switchable customer, kWp
        self.schedule = np.repeat(self.live[None, :] + 1, 1, axis=0)  # (rows, switchable) phases 1..3
        bands = [engine.load_band(nm + _SUFFIX[0]) for nm in self.names]
        self.band_v = np.array(
            [[1000.0 * kv * max(lo, PV_VMINPU), 1000.0 * kv * min(hi, PV_VMAXPU)] for kv, lo, hi in bands]
        )
        self.nodes = np.array([[*model.customers[i].phase_nodes[:3], model.customers[i].neutral_node] for i in pos])
        for j in range(len(self.names)):  # the matrix was just built with every phase Load at 0 kW
            self._set_pq(3 * j + int(self.live[j]), 1.0, 1.0)

    @property
    def folded(self) -> bool:
        """Whether the PV is folded into the phase Loads' net demand (no PV elements)."""
        return self._set_pv is None and self.pv_profile is not None

    def rebuild_matrix(self) -> None:
        """Rebuild OpenDSS's system matrix with every phase Load at 0 kW (class docstring)."""
        for j in range(len(self.names)):
            self._set_pq(3 * j + int(self.live[j]), 0.0, 0.0)
        self.engine.rebuild_matrix()
        for j in range(len(self.names)):
            self._set_pq(3 * j + int(self.live[j]), 1.0, 1.0)

    def set_schedule(self, schedule: np.ndarray) -> None:
        """Phases 1..3 per (row, switchable customer in :attr:`names` order)."""
        self.schedule = np.asarray(schedule, dtype=np.int64)

    def set_pv(self, kwp: np.ndarray) -> None:
        """PV size per switchable customer (kWp, :attr:`names` order), on its live phase."""
        for nm, j in self.pv_pos.items():
            if kwp[j] == self.kwp[j]:
                continue
            if self._set_pv is not None:
                self._set_pv(self._pv_slot[nm] + int(self.live[j]), max(float(kwp[j]), self.idle_kwp))
            elif self.pv_profile is not None:
                self._set_shape(j, self._load_p[j] - float(kwp[j]) * self.pv_profile, None)
        self.kwp = np.asarray(kwp, dtype=float).copy()

    def step(self, k: int) -> None:
        """Bring the devices to the schedule's row of step ``k``."""
        target = self.schedule[k - self.start] - 1
        for j in np.nonzero(target != self.live)[0].tolist():
            old, new = int(self.live[j]), int(target[j])
            self._set_pq(3 * j + old, 0.0, 0.0)
            self._set_pq(3 * j + new, 1.0, 1.0)
            nm = self.names[j]
            if self._set_pv is not None and nm in self.pv_pos:
                self._set_pv(self._pv_slot[nm] + old, self.idle_kwp)
                self._set_pv(self._pv_slot[nm] + new, max(float(self.kwp[j]), self.idle_kwp))
            self.live[j] = new

    def outside_band(self, v: ComplexArray, steps: np.ndarray, *, every: bool = False) -> tuple[str, int, float] | None:
        """With folded PV: the first ``(customer, step, phase voltage in V)`` at which a
        customer whose PV produces (``every``: any customer that may have PV, at a step with
        sun) sits outside its band (class docstring), from node voltages ``v`` (nodes,
        len(steps)) of ``steps`` solved with the present schedule; None where folding is exact."""
        if not self.folded or not self.pv_pos:
            return None
        assert self.pv_profile is not None
        steps = np.asarray(steps, dtype=np.int64)
        has = np.array(list(self.pv_pos.values()), dtype=np.int64)
        if not every:
            has = has[self.kwp[has] > 0]
        sun = np.nonzero(self.pv_profile[steps - 1] > 0)[0]
        if not has.size or not sun.size:
            return None
        phase = self.schedule[steps[sun] - self.start][:, has] - 1  # (sun steps, customers)
        nodes = self.nodes[has]
        neutral = nodes[None, :, 3]  # -1: the customer's return is earth (0 V)
        vn = np.where(neutral >= 0, v[np.maximum(neutral, 0), sun[:, None]], 0.0)
        vp = np.abs(v[np.take_along_axis(nodes[None, :, :3], phase[:, :, None], axis=2)[:, :, 0], sun[:, None]] - vn)
        lo, hi = self.band_v[has, 0][None, :], self.band_v[has, 1][None, :]
        bad = np.argwhere((vp < lo) | (vp > hi))
        if not bad.size:
            return None
        t, j = (int(x) for x in bad[0])
        return self.names[int(has[j])], int(steps[sun[t]]), float(vp[t, j])
