"""Static rebalancing: one re-phasing of single-phase customers for the whole period
(greedy placement and local search, or an exact MILP), searched on the proxy
(:mod:`lv3ph.phases.proxy`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, milp

from lv3ph.errors import StudyError
from lv3ph.model import FeederModel, IntArray
from lv3ph.phases.customers import Objective, Stat, _check_movable, _profiles, as_built
from lv3ph.phases.proxy import _build_proxy, _check_stat, _evaluate, _keys, _Proxy

#: Sides of the polygon that replaces |.| of the neutral proxy in the MILP (error <= 1 - cos(pi/K)).
MILP_POLYGON_SIDES: Final[int] = 36


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
            PVUR at the customer buses, %); see :mod:`lv3ph.phases.proxy`.
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
