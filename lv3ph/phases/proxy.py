"""The cheap proxies of phase imbalance that the rebalancing and switching searches minimise.

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
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numba as nb
import numpy as np

from lv3ph.errors import ModelError, StudyError
from lv3ph.model import ComplexArray, FeederModel, IntArray
from lv3ph.phases.customers import Objective, Stat, _index, _profiles, as_built

#: Phase directions u_q = exp(-j 2 pi (q - 1) / 3), q = 1, 2, 3 (index q - 1).
_U: Final[ComplexArray] = np.exp(-2j * np.pi * np.arange(3) / 3.0)


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
    """3x3 phase-to-neutral loop impedance (ohm) of a line, rows/cols = traced phases a..c."""
    e = model.elements[pos]
    k = e.n_conductors
    try:
        z = np.linalg.inv(e.yprim[:k, :k])
    except np.linalg.LinAlgError:
        return np.zeros((3, 3), dtype=np.complex128)
    nodes = e.nodes[:k]
    role = np.where(nodes >= 0, model.node_role[np.maximum(nodes, 0)], -1)
    ph = {int(r): i for i, r in enumerate(role) if 1 <= r <= 3}
    nn = [i for i, r in enumerate(role) if r == 0 and nodes[i] >= 0]
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
