"""Phase rebalancing and dynamic phase switching of single-phase customers.

Two ways to fight phase imbalance on a four-wire LV feeder:

* **Static rebalancing** (:func:`rebalance`, :func:`rebalance_plan`): one re-phasing of
  single-phase customers for the whole study period (a field crew moves service
  connections once). The search runs on a cheap *proxy* of the imbalance computed from
  the customers' net powers (:func:`proxy_objective`), never on the power flow; the
  physical effect of an arrangement is then checked with the real OpenDSS power flow
  (:func:`evaluate_arrangement`).
* **Dynamic switching** (Horta et al. 2018, single-phase prosumers fitted with phase
  selector switches): at every interval (e.g. 15 min) the switch-equipped customers are
  greedily moved to the phase that most reduces the interval's proxy imbalance, with a
  cap on switching operations per customer per day (:func:`switching_schedule`). The
  decisions use the known profiles of the interval, i.e. a **perfect forecast** of the
  customers' net positions (the market outcome is taken as known at decision time).
  :func:`run_switching` solves the schedule in OpenDSS.

Proxy objectives (``objective=``)
---------------------------------
With balanced nominal phase voltages ``V u_q`` (``u_q = exp(-j 2 pi (q-1) / 3)``), a
customer drawing ``S = P + jQ`` on phase ``q`` draws the current ``I = conj(S) u_q / V``.

* ``"neutral"``: the feeder-head neutral current, ``|sum_q u_q sum_{c on q} conj(S_c)| / V``
  in A (the current the phases do not cancel; exact for balanced voltages and a neutral
  that carries all the return current).
* ``"pvur"``: a linearised PVUR (%) at every customer bus. Along each line the
  phase-to-neutral voltage drop of phase ``p`` is ``sum_q Zloop_pq I_q`` with the loop
  impedance ``Zloop_pq = Z_pq - Z_pn - Z_nq + Z_nn`` of the line's phase and neutral
  conductors (``Z`` of a Kron-reduced three-wire line as is). Projected on the phase
  direction and summed along the path from the transformer, the drop at bus ``b`` is
  linear in the customers' powers; its deviation from the mean of the three phases,
  divided by ``V``, is the PVUR proxy. Lines only: the transformer impedance is ignored
  (on the IEEE EU LV feeder it is ~9 mohm, against 0.03-0.21 ohm, median 0.12 ohm, of
  phase-neutral loop impedance from the transformer to a customer).

Both are evaluated per time step and aggregated over the steps by ``stat``: ``"max"``
(the worst step) or ``"rms"`` (root mean square over the steps). Searches compare
``(stat, other stat)`` lexicographically: the other statistic only breaks ties. Static
rebalancing defaults to ``"rms"``: on the IEEE EU LV twin, minimising the worst minute
leaves the typical minutes (and the losses) worse than minimising the rms, and the rms
arrangement has the lower physical peak too; the MILP minimises ``"max"``.

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

Reference: Horta et al. (2018), dynamic phase switching of single-phase prosumers with
phase selector switches (reassignment at fixed intervals from the prosumers' net
positions, cap on the number of switching operations).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import numba as nb
import numpy as np
import scipy.sparse as sp
import xarray as xr
from scipy.optimize import Bounds, LinearConstraint, milp

from lv3ph.dss import Engine
from lv3ph.errors import ModelError, ProfileError, StudyError, UnknownItemError
from lv3ph.model import ComplexArray, Customer, FeederModel, IntArray
from lv3ph.powerflow import RunSpec, capture, solve_raw
from lv3ph.unbalance import unbalance

__all__ = [
    "RebalancePlan",
    "as_built",
    "as_built_schedule",
    "choose_switches",
    "customer_profiles",
    "evaluate_arrangement",
    "feeder_metrics",
    "make_switchable",
    "movable_customers",
    "proxy_objective",
    "rebalance",
    "rebalance_plan",
    "run_switching",
    "switchable_commands",
    "switchable_customers",
    "switching_operations",
    "switching_schedule",
]

Objective = Literal["pvur", "neutral"]
Stat = Literal["max", "rms"]

#: Phase directions u_q = exp(-j 2 pi (q - 1) / 3), q = 1, 2, 3 (index q - 1).
_U: Final[ComplexArray] = np.exp(-2j * np.pi * np.arange(3) / 3.0)
#: Sides of the polygon that replaces |.| of the neutral proxy in the MILP (error <= 1 - cos(pi/K)).
MILP_POLYGON_SIDES: Final[int] = 36
_SUFFIX: Final[tuple[str, str, str]] = ("_p1", "_p2", "_p3")


# ============================================================================ customers


def _index(model: FeederModel, name: str, what: str) -> int:
    idx = model.customer_index()
    key = str(name).lower()
    if key not in idx:
        raise UnknownItemError(f"unknown customer {name!r} in {what}")
    return idx[key]


def _bus_phase_nodes(model: FeederModel, bus: str) -> dict[int, int]:
    """Phase terminal (1..3) -> node index at ``bus``."""
    where = np.nonzero(model.node_bus == bus)[0]
    return {int(model.node_terminal[n]): int(n) for n in where if 1 <= model.node_terminal[n] <= 3}


def _why_not_movable(model: FeederModel, c: Customer) -> str | None:
    if len(c.phases) != 1:
        return f"is connected to {len(c.phases)} phases (only single-phase customers can change phase)"
    if c.phases[0] not in (1, 2, 3):
        return f"is on terminal {c.phases[0]}, not a phase 1..3"
    if len(_bus_phase_nodes(model, c.bus)) != 3:
        return f"sits on bus {c.bus}, which does not have all three phases"
    return None


def movable_customers(model: FeederModel) -> list[str]:
    """Single-phase customers whose bus has all three phases (the ones that can be re-phased)."""
    return [c.name for c in model.customers if _why_not_movable(model, c) is None]


def as_built(model: FeederModel) -> dict[str, int]:
    """Phase (1..3) of every single-phase customer as the model is built."""
    return {c.name: int(c.phases[0]) for c in model.customers if len(c.phases) == 1 and c.phases[0] in (1, 2, 3)}


def _check_movable(model: FeederModel, names: Sequence[str] | None, what: str) -> list[int]:
    """Positions of ``names`` (default: all movable customers), validated."""
    if names is None:
        return [i for i, c in enumerate(model.customers) if _why_not_movable(model, c) is None]
    if isinstance(names, str):
        raise StudyError(f"{what} must be a list of customer names, got the string {names!r}")
    out: list[int] = []
    for n in names:
        i = _index(model, n, what)
        why = _why_not_movable(model, model.customers[i])
        if why is not None:
            raise StudyError(f"customer {model.customers[i].name} in {what} {why}")
        if i not in out:
            out.append(i)
    return out


def choose_switches(
    model: FeederModel,
    *,
    share: float | None = None,
    customers: Sequence[str] | None = None,
    seed: int = 0,
) -> list[str]:
    """The customers fitted with a phase selector switch.

    Either an explicit list ``customers`` (validated: known, single-phase, three phases on
    the bus) or a reproducible random ``share`` (0..1) of the movable customers, drawn with
    ``seed`` (``round(share x n)`` customers, in model order).
    """
    if (share is None) == (customers is None):
        raise StudyError("choose_switches: give exactly one of share= or customers=")
    if customers is not None:
        return [model.customers[i].name for i in _check_movable(model, customers, "the switch list")]
    s = float(share)  # type: ignore[arg-type]
    if not (0.0 <= s <= 1.0):
        raise StudyError(f"switch share must be between 0 and 1, got {share}")
    pool = movable_customers(model)
    k = round(s * len(pool))
    pick = np.random.default_rng(seed).choice(len(pool), size=k, replace=False) if k else np.zeros(0, int)
    return [pool[i] for i in sorted(int(x) for x in pick)]


def customer_profiles(engine: Engine, model: FeederModel, run: RunSpec) -> tuple[np.ndarray, np.ndarray]:
    """Load set-points ``(kW, kvar)``, each (steps, customers) in ``model.customers`` order.

    From the loads' shapes (:meth:`lv3ph.dss.Engine.load_setpoints`). A switchable
    customer (:func:`make_switchable`) gets the sum of its three phase Loads, which keep
    its shape: outside :func:`run_switching` the as-built phase Load holds the customer's
    kW and the other two 0, so this is the customer's original profile.
    """
    names, kw, kvar = engine.load_setpoints(run.mode, run.stepsize_s, run.start, run.steps)
    pos = {n: i for i, n in enumerate(names)}
    out_kw = np.zeros((run.steps, len(model.customers)))
    out_kvar = np.zeros_like(out_kw)
    for i, c in enumerate(model.customers):
        parts = [d.split(".", 1)[1] for d in c.devices if d.startswith("load.")]
        missing = [p_ for p_ in parts if p_ not in pos]
        if missing or not parts:
            raise UnknownItemError(f"no Load {(missing or [c.name])[0]!r} for customer {c.name} in the engine")
        cols = [pos[p_] for p_ in parts]
        out_kw[:, i] = kw[:, cols].sum(axis=1)
        out_kvar[:, i] = kvar[:, cols].sum(axis=1)
    return out_kw, out_kvar


def _profiles(
    model: FeederModel, load_kw: Any, pv_kw: Any, load_kvar: Any, steps: int | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Net drawn (P, Q) per (step, customer), validated."""
    n = len(model.customers)

    def arr(x: Any, what: str) -> np.ndarray:
        a = np.asarray(x, dtype=float)
        if a.ndim != 2 or a.shape[1] != n or (steps is not None and a.shape[0] != steps):
            want = f"({steps if steps is not None else 'steps'}, {n})"
            raise ProfileError(f"{what} must have shape {want} (steps, customers in model order), got {a.shape}")
        bad = np.argwhere(~np.isfinite(a))
        if bad.size:
            t, c = bad[0]
            raise ProfileError(f"{what} is not finite at step {t} for customer {model.customers[c].name}")
        return a

    p = arr(load_kw, "load_kw")
    if pv_kw is not None:
        pv = arr(pv_kw, "pv_kw")
        if pv.shape != p.shape:
            raise ProfileError(f"pv_kw has shape {pv.shape}, load_kw {p.shape}")
        p = p - pv
    q = None
    if load_kvar is not None:
        q = arr(load_kvar, "load_kvar")
        if q.shape != p.shape:
            raise ProfileError(f"load_kvar has shape {q.shape}, load_kw {p.shape}")
    if p.shape[0] == 0:
        raise ProfileError("load_kw has no steps")
    return p, q


# ============================================================================ proxy


def _feeder_tree(model: FeederModel) -> tuple[str, dict[str, tuple[str, int]]]:
    """Root bus (transformer LV bus, else the source bus) and bus -> (parent bus, line position)."""
    tx = [e for e in model.elements if e.kind == "transformer"]
    if tx:
        root = tx[0].buses[-1]
    elif model.sources:
        root = str(model.node_bus[model.sources[0].nodes[model.sources[0].nodes >= 0][0]])
    else:
        raise ModelError(f"{model.path}: no transformer or source to start the feeder tree from")
    adj: dict[str, list[tuple[str, int]]] = {}
    for i, e in enumerate(model.elements):
        if e.kind == "line" and e.n_terminals == 2 and len(e.buses) == 2 and e.buses[0] != e.buses[1]:
            a, b = e.buses
            adj.setdefault(a, []).append((b, i))
            adj.setdefault(b, []).append((a, i))
    parent: dict[str, tuple[str, int]] = {}
    seen = {root}
    queue = deque([root])
    while queue:
        a = queue.popleft()
        for b, i in adj.get(a, []):
            if b not in seen:  # a meshed feeder keeps its BFS spanning tree (proxy only)
                seen.add(b)
                parent[b] = (a, i)
                queue.append(b)
    return root, parent


def _loop_matrix(model: FeederModel, pos: int) -> ComplexArray:
    """3x3 phase-to-neutral loop impedance (ohm) of a line, rows/cols = phases 1..3."""
    e = model.elements[pos]
    k = e.n_conductors
    try:
        z = np.linalg.inv(e.yprim[:k, :k])
    except np.linalg.LinAlgError:
        return np.zeros((3, 3), dtype=np.complex128)
    nodes = e.nodes[:k]
    term = np.where(nodes >= 0, model.node_terminal[np.maximum(nodes, 0)], 0)
    ph = {int(t): i for i, t in enumerate(term) if 1 <= t <= 3}
    nn = [i for i, t in enumerate(term) if t >= 4]
    out = np.zeros((3, 3), dtype=np.complex128)
    for p, ip in ph.items():
        for q, iq in ph.items():
            v = z[ip, iq]
            if nn:
                n = nn[0]
                v += z[n, n] - z[ip, n] - z[n, iq]
            out[p - 1, q - 1] = v
    return out


def _v_base(model: FeederModel, root: str) -> float:
    """Phase-to-neutral nominal voltage (V) of the LV feeder."""
    kv = dict(zip(model.buses, model.bus_kv_base, strict=True)).get(root, 0.0)
    if kv > 0:
        return float(kv) * 1000.0
    kvs = [c.kv for c in model.customers if len(c.phases) == 1 and c.kv > 0]
    if not kvs:
        raise ModelError(f"{model.path}: no voltage base at bus {root} and no single-phase customer rating")
    return float(np.median(kvs)) * 1000.0


def _pvur_coefficients(model: FeederModel) -> tuple[list[str], ComplexArray]:
    """Monitored buses (customer buses) and W[b, c, p, q] (complex, % per kVA).

    ``Re(W[b, c, p, q] conj(S_c))`` is customer ``c``'s contribution (on phase ``q``) to the
    deviation of phase ``p``'s voltage drop at bus ``b`` from the three-phase mean, in % of V.
    """
    root, parent = _feeder_tree(model)
    v = _v_base(model, root)
    w_line = {}
    cum: dict[str, ComplexArray] = {root: np.zeros((3, 3), dtype=np.complex128)}
    path: dict[str, list[str]] = {root: [root]}

    def walk(bus: str) -> None:
        chain = []
        b = bus
        while b not in cum:
            if b not in parent:
                raise ModelError(f"bus {bus} is not connected to {root} through lines")
            chain.append(b)
            b = parent[b][0]
        for b in reversed(chain):
            up, line = parent[b]
            if line not in w_line:
                w_line[line] = np.conj(_U)[:, None] * _loop_matrix(model, line) * _U[None, :]
            cum[b] = cum[up] + w_line[line]
            path[b] = [*path[up], b]

    buses = list(dict.fromkeys(c.bus for c in model.customers))
    for b in buses:
        walk(b)
    n = len(buses)
    pos = {b: i for i, b in enumerate(buses)}
    a = np.zeros((n, n, 3, 3), dtype=np.complex128)
    for i, bi in enumerate(buses):
        pi = path[bi]
        for j in range(i, n):
            pj = path[buses[j]]
            k = 0
            for x, y in zip(pi, pj, strict=False):
                if x != y:
                    break
                k += 1
            a[i, j] = a[j, i] = cum[pi[k - 1]]
    a = a - a.mean(axis=2, keepdims=True)  # deviation of phase p from the mean of the three
    cust_bus = np.array([pos[c.bus] for c in model.customers])
    return buses, a[:, cust_bus] * (1e5 / v**2)


@dataclass(frozen=True)
class _Proxy:
    """The proxy as linear rows: state X (steps, rows) = x0 + sum over movable customers of
    P[:, m] * cp[m, phase] + Q[:, m] * cq[m, phase]."""

    kind: str
    movable: IntArray  # customer positions
    p: np.ndarray  # (T, M)
    q: np.ndarray | None  # (T, M)
    cp: np.ndarray  # (M, 3, R)
    cq: np.ndarray  # (M, 3, R)
    x0: np.ndarray  # (T, R), fixed customers
    home: IntArray  # (M,) as-built phase index 0..2

    def per_step(self, x: np.ndarray) -> np.ndarray:
        """Proxy value per step from states ``x`` (..., T, R)."""
        if self.kind == "neutral":
            return np.hypot(x[..., 0], x[..., 1])
        return np.abs(x).max(axis=-1)

    def state(self, assign: IntArray, rows: slice | np.ndarray = slice(None)) -> np.ndarray:
        m = np.arange(self.movable.size)
        x = self.x0[rows] + self.p[rows] @ self.cp[m, assign]
        if self.q is not None:
            x = x + self.q[rows] @ self.cq[m, assign]
        return x

    def delta(
        self, m: np.ndarray, frm: np.ndarray, to: np.ndarray, rows: slice | np.ndarray = slice(None)
    ) -> np.ndarray:
        """State change (K, T, R) of moving movable customers ``m`` from ``frm`` to ``to``."""
        d = self.p[rows][:, m].T[:, :, None] * (self.cp[m, to] - self.cp[m, frm])[:, None, :]
        if self.q is not None:
            d += self.q[rows][:, m].T[:, :, None] * (self.cq[m, to] - self.cq[m, frm])[:, None, :]
        return d


def _build_proxy(
    model: FeederModel,
    p: np.ndarray,
    q: np.ndarray | None,
    objective: str,
    movable: list[int],
) -> _Proxy:
    if objective not in ("neutral", "pvur"):
        raise StudyError(f"unknown objective {objective!r}: use 'neutral' or 'pvur'")
    n = len(model.customers)
    if objective == "neutral":
        root, _ = _feeder_tree(model)
        g = np.broadcast_to(_U * (1000.0 / _v_base(model, root)), (n, 3))
        # conj(S) g = (P - jQ) g: real part and imaginary part as two rows
        cp_all = np.stack([g.real, g.imag], axis=-1)  # (n, 3, 2)
        cq_all = np.stack([g.imag, -g.real], axis=-1)
    else:
        _, w = _pvur_coefficients(model)  # (B, n, 3, 3)
        wt = np.moveaxis(w, (1, 3), (0, 1))  # (n, q, B, p)
        cp_all = wt.real.reshape(n, 3, -1)
        cq_all = wt.imag.reshape(n, 3, -1)
    mov = np.array(movable, dtype=np.int64)
    fixed = np.setdiff1d(np.arange(n), mov)
    rows = cp_all.shape[-1]
    x0 = np.zeros((p.shape[0], rows))
    for c in fixed:
        ph = [t - 1 for t in model.customers[c].phases if 1 <= t <= 3]
        if not ph:
            continue
        x0 += np.outer(p[:, c], cp_all[c, ph].mean(axis=0))
        if q is not None:
            x0 += np.outer(q[:, c], cq_all[c, ph].mean(axis=0))
    home = np.array([model.customers[c].phases[0] - 1 for c in mov], dtype=np.int64)
    return _Proxy(
        kind=objective,
        movable=mov,
        p=np.ascontiguousarray(p[:, mov]),
        q=None if q is None else np.ascontiguousarray(q[:, mov]),
        cp=np.ascontiguousarray(cp_all[mov]),
        cq=np.ascontiguousarray(cq_all[mov]),
        x0=x0,
        home=home,
    )


def _stats(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(max, rms) over the last-but-nothing axis: ``v`` is (..., T)."""
    return v.max(axis=-1), np.sqrt(np.mean(v * v, axis=-1))


def _keys(v: np.ndarray, stat: str) -> tuple[np.ndarray, np.ndarray]:
    mx, rms = _stats(v)
    return (mx, rms) if stat == "max" else (rms, mx)


def _check_stat(stat: str) -> None:
    if stat not in ("max", "rms"):
        raise StudyError(f"unknown stat {stat!r}: use 'max' or 'rms'")


def _arrangement_array(model: FeederModel, proxy: _Proxy, arrangement: Mapping[str, int] | None) -> IntArray:
    assign = proxy.home.copy()
    if arrangement is None:
        return assign
    where = {int(c): m for m, c in enumerate(proxy.movable)}
    for name, ph in arrangement.items():
        i = _index(model, name, "the arrangement")
        ph_i = int(ph)
        if ph_i not in (1, 2, 3):
            raise StudyError(f"customer {model.customers[i].name}: phase {ph} is not 1, 2 or 3")
        if i in where:
            assign[where[i]] = ph_i - 1
        elif ph_i != as_built(model).get(model.customers[i].name):
            raise StudyError(
                f"customer {model.customers[i].name} is not movable but the arrangement moves it to phase {ph_i}"
            )
    return assign


def proxy_objective(
    model: FeederModel,
    load_kw: np.ndarray,
    pv_kw: np.ndarray | None = None,
    arrangement: Mapping[str, int] | None = None,
    *,
    objective: Objective = "neutral",
    stat: Stat = "max",
    load_kvar: np.ndarray | None = None,
) -> float:
    """The proxy objective of an arrangement (default: as built), aggregated over the steps.

    ``"neutral"``: head neutral current proxy, A. ``"pvur"``: worst linearised PVUR over
    the customer buses, %. ``stat``: ``"max"`` over the steps or ``"rms"``. Customers not
    in ``arrangement`` stay on their as-built phase. ``load_kvar`` (default: ignored,
    i.e. unity power factor) adds the reactive power.
    """
    _check_stat(stat)
    p, q = _profiles(model, load_kw, pv_kw, load_kvar)
    movable = [i for i, c in enumerate(model.customers) if len(c.phases) == 1 and c.phases[0] in (1, 2, 3)]
    proxy = _build_proxy(model, p, q, objective, movable)
    assign = _arrangement_array(model, proxy, arrangement)
    mx, rms = _stats(proxy.per_step(proxy.state(assign)))
    return float(mx if stat == "max" else rms)


# ============================================================================ search


@nb.njit(cache=True)
def _eval_moves(
    x: np.ndarray,
    p: np.ndarray,
    q: np.ndarray,
    has_q: bool,
    m1: np.ndarray,
    d1p: np.ndarray,
    d1q: np.ndarray,
    m2: np.ndarray,
    d2p: np.ndarray,
    d2q: np.ndarray,
    order: np.ndarray,
    neutral: bool,
    primary_max: bool,
    bound: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(primary, secondary) proxy keys after each candidate (one move, or two for a swap).

    Candidate ``k`` adds ``p[:, m1[k]] d1p[k] + q[:, m1[k]] d1q[k]`` (and the same with
    ``m2[k] >= 0``) to the state ``x`` (T, R). Steps are visited in ``order`` (worst first)
    and a candidate is abandoned (``inf``) as soon as its primary key must exceed the best
    seen so far (starting at ``bound``): it cannot be the best improvement.
    """
    n_k = m1.size
    n_t, n_r = x.shape
    out1 = np.full(n_k, np.inf)
    out2 = np.full(n_k, np.inf)
    best = bound
    for k in range(n_k):
        a = m1[k]
        b = m2[k]
        mx = 0.0
        ss = 0.0
        pruned = False
        for ii in range(n_t):
            t = order[ii]
            pa = p[t, a]
            qa = q[t, a] if has_q else 0.0
            pb = p[t, b] if b >= 0 else 0.0
            qb = q[t, b] if (has_q and b >= 0) else 0.0
            if neutral:
                re = x[t, 0] + pa * d1p[k, 0] + qa * d1q[k, 0] + pb * d2p[k, 0] + qb * d2q[k, 0]
                im = x[t, 1] + pa * d1p[k, 1] + qa * d1q[k, 1] + pb * d2p[k, 1] + qb * d2q[k, 1]
                v = math.sqrt(re * re + im * im)
            else:
                v = 0.0
                for r in range(n_r):
                    y = abs(x[t, r] + pa * d1p[k, r] + qa * d1q[k, r] + pb * d2p[k, r] + qb * d2q[k, r])
                    if y > v:
                        v = y
            if v > mx:
                mx = v
            ss += v * v
            if primary_max:
                if mx > best * (1.0 + 1e-12):
                    pruned = True
                    break
            elif ss > best * best * n_t * (1.0 + 1e-12):
                pruned = True
                break
        if not pruned:
            rms = math.sqrt(ss / n_t)
            if primary_max:
                out1[k], out2[k] = mx, rms
            else:
                out1[k], out2[k] = rms, mx
            if out1[k] < best:
                best = out1[k]
    return out1, out2


def _evaluate(
    proxy: _Proxy,
    x: np.ndarray,
    moves: tuple[np.ndarray, np.ndarray, np.ndarray],
    stat: str,
    bound: float,
    *,
    second: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    rows: slice = slice(None),
) -> tuple[np.ndarray, np.ndarray]:
    """Keys after each candidate: ``moves = (m, frm, to)``, plus ``second`` for swaps.

    Candidates that cannot beat ``bound`` (or a better candidate) come back as ``inf``.
    """
    m, frm, to = moves
    p = np.ascontiguousarray(proxy.p[rows])
    q = np.ascontiguousarray(proxy.q[rows]) if proxy.q is not None else np.zeros((1, 1))
    d1p = proxy.cp[m, to] - proxy.cp[m, frm]
    d1q = proxy.cq[m, to] - proxy.cq[m, frm]
    if second is None:
        m2 = np.full(m.size, -1, dtype=np.int64)
        d2p = np.zeros_like(d1p)
        d2q = np.zeros_like(d1q)
    else:
        m2, frm2, to2 = second
        d2p = proxy.cp[m2, to2] - proxy.cp[m2, frm2]
        d2q = proxy.cq[m2, to2] - proxy.cq[m2, frm2]
    order = np.argsort(-proxy.per_step(x), kind="stable")
    return _eval_moves(
        np.ascontiguousarray(x),
        p,
        q,
        proxy.q is not None,
        m.astype(np.int64),
        d1p,
        d1q,
        m2.astype(np.int64),
        d2p,
        d2q,
        order,
        proxy.kind == "neutral",
        stat == "max",
        float(bound),
    )


def _better(k1: tuple[float, float], k0: tuple[float, float], rel: float = 1e-12) -> bool:
    """Lexicographic improvement with a relative tolerance against round-off churn."""
    tol1 = rel * max(abs(k0[0]), 1e-300)
    if k1[0] < k0[0] - tol1:
        return True
    return abs(k1[0] - k0[0]) <= tol1 and k1[1] < k0[1] - rel * max(abs(k0[1]), 1e-300)


def _local_search(
    proxy: _Proxy, assign: IntArray, stat: str, *, max_moves: int | None, deadline: float, swaps: bool = True
) -> IntArray:
    """Best-improvement moves, then swaps, until neither improves (or the deadline)."""
    assign = assign.copy()
    n = assign.size
    if n == 0:
        return assign
    x = proxy.state(assign)
    k0 = _keys(proxy.per_step(x), stat)
    key = (float(k0[0]), float(k0[1]))
    m_all = np.repeat(np.arange(n), 2)
    while time.monotonic() < deadline:
        moved = assign != proxy.home
        # ---- single moves
        frm = assign[m_all]
        to = (frm + np.tile([1, 2], n)) % 3
        ok = np.ones(m_all.size, dtype=bool)
        if max_moves is not None:
            after = moved.sum() - moved[m_all] + (to != proxy.home[m_all])
            ok = after <= max_moves
        best = None
        if ok.any():
            k1, k2 = _evaluate(proxy, x, (m_all[ok], frm[ok], to[ok]), stat, key[0])
            j = int(np.lexsort((k2, k1))[0])
            if _better((float(k1[j]), float(k2[j])), key):
                best = ("move", int(m_all[ok][j]), int(to[ok][j]), (float(k1[j]), float(k2[j])))
        if best is None and swaps and n > 1:
            a, b = np.triu_indices(n, 1)
            keep = assign[a] != assign[b]
            if max_moves is not None:
                after = moved.sum() - moved[a] - moved[b] + (assign[b] != proxy.home[a]) + (assign[a] != proxy.home[b])
                keep &= after <= max_moves
            a, b = a[keep], b[keep]
            if a.size:
                k1, k2 = _evaluate(proxy, x, (a, assign[a], assign[b]), stat, key[0], second=(b, assign[b], assign[a]))
                j = int(np.lexsort((k2, k1))[0])
                if _better((float(k1[j]), float(k2[j])), key):
                    best = ("swap", int(a[j]), int(b[j]), (float(k1[j]), float(k2[j])))
        if best is None:
            break
        kind, i, j2, key = best
        if kind == "move":
            x = x + proxy.delta(np.array([i]), assign[[i]], np.array([j2]))[0]
            assign[i] = j2
        else:
            ai, bi = assign[i], assign[j2]
            x = x + proxy.delta(np.array([i, j2]), np.array([ai, bi]), np.array([bi, ai])).sum(axis=0)
            assign[i], assign[j2] = bi, ai
    return assign


def _greedy(proxy: _Proxy, order: np.ndarray, stat: str) -> IntArray:
    """Place movable customers one by one (``order``) on the phase that minimises the objective
    of those placed so far (plus the fixed customers)."""
    assign = proxy.home.copy()
    x = proxy.x0.copy()
    for m in order:
        best = None
        for ph in range(3):
            xp = x + proxy.p[:, [m]] * proxy.cp[m, ph]
            if proxy.q is not None:
                xp = xp + proxy.q[:, [m]] * proxy.cq[m, ph]
            k = tuple(float(v) for v in _keys(proxy.per_step(xp), stat))
            if best is None or k < best[0]:
                best = (k, ph, xp)
        assert best is not None
        assign[m], x = best[1], best[2]
    return assign


def _milp(
    proxy: _Proxy,
    starts: list[IntArray],
    *,
    max_moves: int | None,
    deadline: float,
    sides: int = MILP_POLYGON_SIDES,
) -> tuple[IntArray | None, str]:
    """Minimise the worst step of the proxy exactly (``pvur``) or up to a ``sides``-gon
    approximation of |.| (``neutral``), by MILP with constraint generation over the steps.

    Rows (step, item): ``pvur`` items are (bus, phase) deviations, bounded on both sides by
    z; ``neutral`` items are the polygon directions of the complex neutral current.
    """
    n_m = proxy.movable.size
    if n_m == 0:
        return None, "nothing to move"
    if proxy.kind == "neutral":
        ang = 2 * np.pi * np.arange(sides) / sides
        proj = np.stack([np.cos(ang), np.sin(ang)], axis=0)  # (2, K): rows of X -> K items
    else:
        r = proxy.cp.shape[-1]
        proj = np.concatenate([np.eye(r), -np.eye(r)], axis=1)  # (R, 2R)

    def items(x: np.ndarray) -> np.ndarray:
        return x @ proj  # (T, K)

    n_var = 3 * n_m + 1
    # coefficient of x[m, ph] on state rows at step t: p[t, m] cp[m, ph] + q[t, m] cq[m, ph]
    cpp = np.einsum("mqr,rk->mqk", proxy.cp, proj)
    cqq = np.einsum("mqr,rk->mqk", proxy.cq, proj) if proxy.q is not None else None
    x0i = items(proxy.x0)

    selected: set[tuple[int, int]] = set()

    def add_worst(values: np.ndarray, above: float, count: int) -> int:
        flat = np.argsort(values, axis=None)[::-1]
        added = 0
        for f in flat:
            t, k = divmod(int(f), values.shape[1])
            if values[t, k] <= above:
                break
            if (t, k) not in selected:
                selected.add((t, k))
                added += 1
                if added >= count:
                    break
        return added

    for s in starts:
        add_worst(items(proxy.state(s)), -np.inf, 12)
    eq = sp.kron(sp.eye(n_m), np.ones((1, 3)))
    eq = sp.hstack([eq, sp.csr_matrix((n_m, 1))]).tocsr()
    cons_fixed = [LinearConstraint(eq, 1.0, 1.0)]
    if max_moves is not None:
        home = np.zeros(n_var)
        home[3 * np.arange(n_m) + proxy.home] = 1.0
        cons_fixed.append(LinearConstraint(home[None, :], n_m - max_moves, np.inf))
    c = np.zeros(n_var)
    c[-1] = 1.0
    integrality = np.ones(n_var)
    integrality[-1] = 0
    bounds = Bounds(np.zeros(n_var), np.concatenate([np.ones(3 * n_m), [np.inf]]))
    best: IntArray | None = None
    status = "not solved"
    for _round in range(200):
        left = deadline - time.monotonic()
        if left <= 0:
            status = "time limit"
            break
        sel = np.array(sorted(selected), dtype=np.int64)
        ts, ks = sel[:, 0], sel[:, 1]
        coef = proxy.p[ts][:, :, None] * np.moveaxis(cpp[:, :, ks], 2, 0)  # (S, M, 3)
        if cqq is not None and proxy.q is not None:
            coef = coef + proxy.q[ts][:, :, None] * np.moveaxis(cqq[:, :, ks], 2, 0)
        a_ub = np.concatenate([coef.reshape(sel.shape[0], 3 * n_m), -np.ones((sel.shape[0], 1))], axis=1)
        ub = -x0i[ts, ks]
        res = milp(
            c,
            integrality=integrality,
            bounds=bounds,
            constraints=[*cons_fixed, LinearConstraint(sp.csr_matrix(a_ub), -np.inf, ub)],
            options={"time_limit": max(left, 0.1), "disp": False, "mip_rel_gap": 1e-7},
        )
        if res.x is None:
            status = f"no solution ({res.message})"
            break
        assign = np.argmax(res.x[:-1].reshape(n_m, 3), axis=1).astype(np.int64)
        z = float(res.x[-1])
        best = assign
        values = items(proxy.state(assign))
        tol = 1e-9 * max(1.0, abs(z)) + 1e-9
        if res.status != 0:
            status = "time limit" if res.status == 1 else str(res.message)
            break
        if values.max() <= z + tol or add_worst(values, z + tol, 24) == 0:
            status = "optimal"
            break
    else:
        status = "round limit"
    return best, status


@dataclass(frozen=True)
class RebalancePlan:
    """Result of :func:`rebalance_plan`.

    Attributes:
        arrangement: phase (1..3) of every movable customer (as built for those not moved).
        moved: the customers whose phase changes, ``{name: (old, new)}``.
        objective, stat: what was minimised (see :func:`proxy_objective`).
        before, after: the objective as built and for ``arrangement`` (A or %).
        method: ``greedy`` or ``milp``.
        milp_status: ``optimal``, ``time limit`` ... (``""`` for greedy).
    """

    arrangement: dict[str, int]
    moved: dict[str, tuple[int, int]]
    objective: str
    stat: str
    before: float
    after: float
    method: str
    milp_status: str = ""


def rebalance_plan(
    model: FeederModel,
    load_kw: np.ndarray,
    pv_kw: np.ndarray | None = None,
    *,
    objective: Objective = "neutral",
    movable: Sequence[str] | None = None,
    method: Literal["greedy", "milp"] = "greedy",
    seed: int = 0,
    stat: Stat | None = None,
    load_kvar: np.ndarray | None = None,
    max_moves: int | None = None,
    restarts: int = 2,
    time_limit_s: float = 60.0,
) -> RebalancePlan:
    """One static re-phasing of single-phase customers for the whole period.

    Args:
        model: the as-built feeder.
        load_kw, pv_kw: (steps, customers) in ``model.customers`` order; the search uses the
            net power ``load_kw - pv_kw`` (PV None = no PV).
        objective: ``"neutral"`` (head neutral current proxy, A) or ``"pvur"`` (linearised
            PVUR at the customer buses, %); see the module docstring.
        movable: customers allowed to move (default: every single-phase customer whose bus
            has three phases); the others stay where they are.
        method: ``"greedy"``: greedy placement (largest energy first, plus ``restarts``
            randomised orders drawn with ``seed``) and from the as-built arrangement, each
            followed by local search (best single moves, then pairwise swaps, until no
            improvement). ``"milp"``: exact minimisation of the worst step with
            :func:`scipy.optimize.milp` (constraint generation over the steps; ``neutral``
            replaces |.| by a 36-gon, within 0.4 %), then local search; for small feeders,
            stops at ``time_limit_s`` with the best solution found. ``stat="max"`` only.
        stat: ``"max"`` (worst step) or ``"rms"`` over the steps; default ``"rms"`` for
            greedy, ``"max"`` for milp.
        load_kvar: reactive power (default ignored).
        max_moves: at most this many customers change phase (site visits); the greedy
            method then only searches from the as-built arrangement, the MILP exactly.
        restarts: randomised greedy orders besides the energy order (greedy).
        time_limit_s: wall-clock budget of the whole search.

    The result never has a worse objective than the as-built arrangement: if the search
    finds no lexicographic improvement of ``(stat, other stat)``, the plan is as built.
    """
    if stat is None:
        stat = "max" if method == "milp" else "rms"
    _check_stat(stat)
    if method not in ("greedy", "milp"):
        raise StudyError(f"unknown method {method!r}: use 'greedy' or 'milp'")
    if method == "milp" and stat != "max":
        raise StudyError("method='milp' minimises the worst step: use stat='max'")
    if max_moves is not None and max_moves < 0:
        raise StudyError(f"max_moves must be >= 0, got {max_moves}")
    p, q = _profiles(model, load_kw, pv_kw, load_kvar)
    mov = _check_movable(model, movable, "movable")
    proxy = _build_proxy(model, p, q, objective, mov)
    deadline = time.monotonic() + time_limit_s
    home = proxy.home
    candidates = [_local_search(proxy, home, stat, max_moves=max_moves, deadline=deadline)]
    if max_moves is None and proxy.movable.size:
        energy = np.abs(proxy.p).sum(axis=0)
        rng = np.random.default_rng(seed)
        for r in range(restarts + 1):
            weights = energy * (np.exp(0.5 * rng.standard_normal(energy.size)) if r else 1.0)
            start = _greedy(proxy, np.argsort(-weights, kind="stable"), stat)
            candidates.append(_local_search(proxy, start, stat, max_moves=None, deadline=deadline))
    milp_status = ""
    if method == "milp":
        sol, milp_status = _milp(proxy, [home, *candidates], max_moves=max_moves, deadline=deadline)
        if sol is not None:
            candidates.append(_local_search(proxy, sol, stat, max_moves=max_moves, deadline=deadline + 5.0))

    def key(a: IntArray) -> tuple[float, float]:
        k1, k2 = _keys(proxy.per_step(proxy.state(a)), stat)
        return float(k1), float(k2)

    k_home = key(home)
    best, k_best = home, k_home
    for a in candidates:
        k = key(a)
        if k < k_best:  # exact comparison on values recomputed from scratch
            best, k_best = a, k
    names = [model.customers[c].name for c in proxy.movable]
    arrangement = {n: int(ph) + 1 for n, ph in zip(names, best, strict=True)}
    base = as_built(model)
    arrangement = {**{n: base[n] for n in base}, **arrangement}
    moved = {n: (base[n], ph) for n, ph in arrangement.items() if ph != base[n]}
    return RebalancePlan(
        arrangement=arrangement,
        moved=moved,
        objective=objective,
        stat=stat,
        before=k_home[0],
        after=k_best[0],
        method=method,
        milp_status=milp_status,
    )


def rebalance(
    model: FeederModel,
    load_kw: np.ndarray,
    pv_kw: np.ndarray | None = None,
    *,
    objective: Objective = "neutral",
    movable: Sequence[str] | None = None,
    method: Literal["greedy", "milp"] = "greedy",
    seed: int = 0,
    **options: Any,
) -> dict[str, int]:
    """Static rebalancing: customer -> phase (1..3) for every single-phase customer.

    See :func:`rebalance_plan` (which also returns the objective before and after);
    ``options`` are passed on (``stat``, ``load_kvar``, ``max_moves``, ``restarts``,
    ``time_limit_s``).
    """
    return rebalance_plan(
        model, load_kw, pv_kw, objective=objective, movable=movable, method=method, seed=seed, **options
    ).arrangement


# ============================================================================ dynamic schedule


def _steps_per_interval(interval_s: float, stepsize_s: float) -> int:
    if not (interval_s > 0 and math.isfinite(interval_s)):
        raise StudyError(f"switching interval must be a positive number of seconds, got {interval_s}")
    ratio = interval_s / stepsize_s
    n = round(ratio)
    if n < 1 or abs(ratio - n) > 1e-9 * max(1.0, ratio):
        raise StudyError(f"switching interval {interval_s:g} s is not a multiple of the step ({stepsize_s:g} s)")
    return int(n)


def as_built_schedule(model: FeederModel, steps: int) -> np.ndarray:
    """(steps, customers) int8: each single-phase customer's phase, 0 for the others.

    For a switchable model (:func:`make_switchable`) give the as-built model: a switchable
    customer's as-built phase is not part of the switchable model.
    """
    row = np.array(
        [c.phases[0] if len(c.phases) == 1 and c.phases[0] in (1, 2, 3) else 0 for c in model.customers], dtype=np.int8
    )
    return np.repeat(row[None, :], steps, axis=0)


def switching_schedule(
    model: FeederModel,
    load_kw: np.ndarray,
    pv_kw: np.ndarray | None,
    switches: Sequence[str],
    *,
    stepsize_s: float,
    interval_s: float = 900.0,
    start: int = 1,
    max_ops_per_day: int = 4,
    objective: Objective = "neutral",
    stat: Stat = "max",
    min_gain: float = 0.02,
    load_kvar: np.ndarray | None = None,
) -> np.ndarray:
    """Phase of every customer at every step under dynamic phase switching (Horta et al. 2018).

    At the start of every switching interval (clock-aligned: step ``k`` starts one when
    ``(k - 1) x stepsize`` is a multiple of ``interval_s``, and at the first step) the
    switch-equipped customers are moved greedily: among those with operations left today,
    the single move (customer, phase) that most reduces the interval's proxy objective
    (``objective``, ``stat`` over the interval's steps, computed from the known net
    powers: a perfect forecast of the interval) is made if it gains at least ``min_gain``
    (fraction) of the current value; each customer moves at most once per interval; repeat
    until no move qualifies. Each phase change is one switching operation; at most
    ``max_ops_per_day`` per customer per calendar day (day of step ``k`` =
    ``floor((k - 1) x stepsize / 86400)``). Switches start the run on the as-built phase.

    Args:
        model: the as-built feeder (not the switchable one).
        load_kw, pv_kw: (steps, customers) in model order, for the steps ``start ...``.
        switches: the switch-equipped customers (see :func:`choose_switches`).

    Returns:
        (steps, customers) int8, as :func:`as_built_schedule` for customers without a switch.
    """
    _check_stat(stat)
    if isinstance(max_ops_per_day, bool) or int(max_ops_per_day) != max_ops_per_day or max_ops_per_day < 0:
        raise StudyError(f"max_ops_per_day must be an integer >= 0, got {max_ops_per_day}")
    if not (0.0 <= min_gain < 1.0):
        raise StudyError(f"min_gain must be in [0, 1), got {min_gain}")
    if start < 1:
        raise StudyError(f"start must be >= 1, got {start}")
    per = _steps_per_interval(float(interval_s), float(stepsize_s))
    p, q = _profiles(model, load_kw, pv_kw, load_kvar)
    mov = _check_movable(model, list(switches), "the switch list")
    steps = p.shape[0]
    schedule = as_built_schedule(model, steps)
    if not mov or max_ops_per_day == 0:
        return schedule
    proxy = _build_proxy(model, p, q, objective, mov)
    n = proxy.movable.size
    assign = proxy.home.copy()
    k_abs = np.arange(start, start + steps)
    t0 = (k_abs - 1) * float(stepsize_s)
    new_interval = np.isclose(np.mod(t0, per * float(stepsize_s)), 0.0) | (k_abs == start)
    day = np.floor(t0 / 86400.0 + 1e-12).astype(np.int64)
    bounds = [*np.nonzero(new_interval)[0].tolist(), steps]
    ops = np.zeros(n, dtype=np.int64)
    current_day = None
    for b0, b1 in itertools.pairwise(bounds):
        if day[b0] != current_day:
            current_day, ops = day[b0], np.zeros(n, dtype=np.int64)
        rows = slice(b0, b1)
        x = proxy.state(assign, rows)
        key = _keys(proxy.per_step(x), stat)
        cur = (float(key[0]), float(key[1]))
        free = ops < max_ops_per_day
        while free.any() and cur[0] > 0:
            m = np.repeat(np.nonzero(free)[0], 2)
            frm = assign[m]
            to = (frm + np.tile([1, 2], m.size // 2)) % 3
            k1, k2 = _evaluate(proxy, x, (m, frm, to), stat, cur[0], rows=rows)
            j = int(np.lexsort((k2, k1))[0])
            if not k1[j] < cur[0] * (1.0 - min_gain) - 1e-12 * cur[0]:
                break
            mm = int(m[j])
            x = x + proxy.delta(m[j : j + 1], frm[j : j + 1], to[j : j + 1], rows)[0]
            assign[mm] = to[j]
            ops[mm] += 1
            free[mm] = False
            cur = (float(k1[j]), float(k2[j]))
        schedule[b0:b1, proxy.movable] = (assign + 1).astype(np.int8)[None, :]
    return schedule


def switching_operations(
    schedule: np.ndarray, *, stepsize_s: float, start: int = 1, initial: np.ndarray | None = None
) -> np.ndarray:
    """Switching operations per (day, customer): phase changes between consecutive steps,
    counted on the day of the step that starts on the new phase (plus a change at the first
    step from ``initial``, the phases before the run, if given)."""
    s = np.asarray(schedule)
    prev = np.concatenate([s[:1] if initial is None else np.asarray(initial).reshape(1, -1), s[:-1]], axis=0)
    changed = (s != prev).astype(np.int64)
    day = np.floor((np.arange(start, start + s.shape[0]) - 1) * float(stepsize_s) / 86400.0 + 1e-12).astype(np.int64)
    days = day - day[0]
    out = np.zeros((int(days[-1]) + 1 if s.shape[0] else 0, s.shape[1]), dtype=np.int64)
    np.add.at(out, days, changed)
    return out


# ============================================================================ switchable model


def switchable_commands(model: FeederModel, customers: Sequence[str]) -> list[str]:
    """OpenDSS commands that make ``customers`` switchable (see the module docstring).

    Per customer ``x`` on phase ``k`` of bus ``b``: ``New Load.x_p{1,2,3} like=x
    bus1=b.{1,2,3}.<neutral> status=fixed`` (the phase-``k`` copy keeps ``x``'s kW, the
    other two get 0 kW), then ``x`` and the customer's PV/storage/generator elements are
    disabled (the customer's whole net power moves with it, set per step by
    :func:`run_switching`).
    """
    chosen = _check_movable(model, list(customers), "the switch list")
    existing = set(model.customer_index())
    out: list[str] = []
    for i in chosen:
        c = model.customers[i]
        for sfx in _SUFFIX:
            if c.name + sfx in existing:
                raise ModelError(f"customer {c.name}: a Load {c.name + sfx} already exists (already switchable?)")
        neutral = f".{int(model.node_terminal[c.neutral_node])}" if c.neutral_node >= 0 else ""
        for ph, sfx in zip((1, 2, 3), _SUFFIX, strict=True):
            zero = "" if ph == c.phases[0] else " kW=0 kvar=0"
            out.append(f"New Load.{c.name}{sfx} like={c.name} bus1={c.bus}.{ph}{neutral} status=fixed{zero}")
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
    chosen = _check_movable(model, list(customers), "the switch list")
    for i in chosen:
        c = model.customers[i]
        nodes = set(_bus_phase_nodes(model, c.bus).values())
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
    base = [engine.load_connection(nm) for nm in names]
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


# ============================================================================ physics


def _head_line(model: FeederModel) -> int:
    """Position of the line that leaves the transformer's LV bus (or the first line)."""
    tx = [e for e in model.elements if e.kind == "transformer"]
    lines = [i for i, e in enumerate(model.elements) if e.kind == "line"]
    if not lines:
        raise ModelError(f"{model.path} has no lines")
    if tx:
        lv = tx[0].buses[-1]
        for i in lines:
            if model.elements[i].buses[0] == lv:
                return i
    return lines[0]


def feeder_metrics(model: FeederModel, pf: xr.Dataset, unb: xr.Dataset | None = None) -> dict[str, float]:
    """Headline imbalance numbers of a captured power flow.

    ``pvur_max_pct`` / ``vuf_max_pct``: worst over buses and steps; ``pvur_mean_pct``: the
    worst bus per step, averaged over the steps; ``head_neutral_max_a`` /
    ``head_neutral_mean_a``: neutral current of the line leaving the transformer (a
    three-wire model: the residual current); ``neutral_loss_kwh``, ``loss_kwh``;
    ``vne_max_v``: neutral-to-earth voltage; ``vmin_pn_v`` / ``vmax_pn_v``: extreme
    phase-to-neutral voltages. Voltage metrics over the low-voltage buses (voltage base
    below 1 kV) when the model has voltage bases, else over all buses.
    """
    u = unbalance(pf) if unb is None else unb
    kv = dict(zip(model.buses, model.bus_kv_base, strict=True))
    lv = [b for b in u.bus.values if 0 < kv.get(str(b), 0.0) < 1.0]
    if lv:  # low-voltage buses only (the source side would dominate the voltage extremes)
        u = u.sel(bus=lv)
    head = _head_line(model)
    e = model.elements[head]
    cur = np.asarray(pf.current.isel(element=head).values)[:, : e.n_conductors]
    nodes = e.nodes[: e.n_conductors]
    neutral = [i for i, x in enumerate(nodes) if x >= 0 and model.node_terminal[x] >= 4]
    i_n = np.abs(cur[:, neutral[0]]) if neutral else np.abs(cur.sum(axis=1))
    dt_h = float(pf.attrs.get("stepsize_s", 3600.0)) / 3600.0
    worst = u.pvur_pct.max("bus", skipna=True)
    return {
        "pvur_max_pct": float(worst.max()),
        "pvur_mean_pct": float(worst.mean()),
        "vuf_max_pct": float(u.vuf_pct.max()),
        "head_neutral_max_a": float(i_n.max()),
        "head_neutral_mean_a": float(i_n.mean()),
        "neutral_loss_kwh": float(pf.loss_neutral_kw.sum()) * dt_h,
        "loss_kwh": float(pf.loss_total_kw.sum()) * dt_h,
        "vne_max_v": float(u.vne_v.max()),
        "vmin_pn_v": float(u.vmin_pn_v.min()),
        "vmax_pn_v": float(u.vmax_pn_v.max()),
    }


def _bus1(model: FeederModel, c: Customer, phase: int) -> str:
    neutral = f".{int(model.node_terminal[c.neutral_node])}" if c.neutral_node >= 0 else ""
    return f"{c.bus}.{phase}{neutral}"


def arrangement_commands(model: FeederModel, arrangement: Mapping[str, int]) -> tuple[list[str], list[str]]:
    """OpenDSS edits that move customers (their Load and devices) to the phases of
    ``arrangement``, and the edits that undo them. One system-matrix rebuild when applied."""
    base = as_built(model)
    edits, undo = [], []
    for name, ph in arrangement.items():
        i = _index(model, name, "the arrangement")
        c = model.customers[i]
        if int(ph) not in (1, 2, 3):
            raise StudyError(f"customer {c.name}: phase {ph} is not 1, 2 or 3")
        if c.name not in base:
            raise StudyError(f"customer {c.name} is not a single-phase customer")
        if int(ph) == base[c.name]:
            continue
        why = _why_not_movable(model, c)
        if why is not None:
            raise StudyError(f"customer {c.name} {why}")
        for dev in c.devices:
            edits.append(f"{dev}.bus1={_bus1(model, c, int(ph))}")
            undo.append(f"{dev}.bus1={_bus1(model, c, base[c.name])}")
    return edits, undo


def evaluate_arrangement(
    engine: Engine,
    model: FeederModel,
    run: RunSpec,
    arrangement: Mapping[str, int] | None = None,
    *,
    progress: bool = False,
    before_step: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Run the real (OpenDSS) power flow with customers on the phases of ``arrangement``
    and return :func:`feeder_metrics` (worst PVUR, head neutral current ...).

    The customers (their Load and devices) are re-phased by text edits on ``engine``
    (one matrix rebuild), the run is solved with the engine's own load shapes and devices,
    and the edits are undone afterwards. ``arrangement=None``: as built.
    """
    edits, undo = arrangement_commands(model, arrangement or {})
    try:
        if edits:
            engine.apply(edits)
        moved = engine.model() if edits else model
        vt, measured = solve_raw(engine, moved, run, progress=progress, before_step=before_step)
        return feeder_metrics(moved, capture(moved, run, vt, measured))
    finally:
        if edits:
            engine.apply(undo)
