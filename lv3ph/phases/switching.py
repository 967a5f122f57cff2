"""Dynamic phase switching schedules (Horta et al. 2018): which phase every switch-equipped
customer is on at every step, decided greedily per interval on the proxy."""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence

import numpy as np

from lv3ph.errors import StudyError
from lv3ph.model import FeederModel
from lv3ph.phases.customers import Objective, Stat, _check_movable, _profiles
from lv3ph.phases.proxy import _build_proxy, _check_stat, _evaluate, _keys


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
    p, q = _profiles(model, load_kw, pv_kw, load_kvar)
    mov = _check_movable(model, list(switches), "the switch list", at_bus=True)
    steps = p.shape[0]
    bounds = _interval_bounds(steps, stepsize_s, interval_s, start)
    schedule = as_built_schedule(model, steps)
    if not mov or max_ops_per_day == 0:
        return schedule
    proxy = _build_proxy(model, p, q, objective, mov)
    n = proxy.movable.size
    assign = proxy.home.copy()
    t0 = (np.arange(start, start + steps) - 1) * float(stepsize_s)
    day = np.floor(t0 / 86400.0 + 1e-12).astype(np.int64)
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


def _interval_bounds(steps: int, stepsize_s: float, interval_s: float, start: int) -> list[int]:
    """First row of every switching interval (clock-aligned, as :func:`switching_schedule`), then ``steps``."""
    per = _steps_per_interval(float(interval_s), float(stepsize_s))
    k_abs = np.arange(start, start + steps)
    t0 = (k_abs - 1) * float(stepsize_s)
    new_interval = np.isclose(np.mod(t0, per * float(stepsize_s)), 0.0) | (k_abs == start)
    return [*np.nonzero(new_interval)[0].tolist(), steps]


def schedule_objective(
    model: FeederModel,
    load_kw: np.ndarray,
    pv_kw: np.ndarray | None,
    schedule: np.ndarray,
    *,
    stepsize_s: float,
    interval_s: float = 900.0,
    start: int = 1,
    objective: Objective = "neutral",
    stat: Stat = "max",
    load_kvar: np.ndarray | None = None,
) -> float:
    """What :func:`switching_schedule` minimises, for any ``schedule`` on the net demand
    ``load_kw - pv_kw``: the mean over the switching intervals of the interval's proxy
    ``stat`` (``"neutral"``: head neutral current proxy, A; ``"pvur"``: worst linearised
    PVUR, %). ``schedule``: (steps, customers), as :func:`switching_schedule` returns."""
    _check_stat(stat)
    p, q = _profiles(model, load_kw, pv_kw, load_kvar)
    sched = np.asarray(schedule)
    if sched.shape != p.shape:
        raise StudyError(f"schedule must have shape {p.shape} (steps, customers), got {sched.shape}")
    movable = [i for i, c in enumerate(model.customers) if len(c.phases) == 1 and c.phases[0] in (1, 2, 3)]
    proxy = _build_proxy(model, p, q, objective, movable)
    values = []
    for b0, b1 in itertools.pairwise(_interval_bounds(p.shape[0], stepsize_s, interval_s, start)):
        assign = (sched[b0, proxy.movable].astype(np.int64) - 1).clip(0, 2)
        values.append(float(_keys(proxy.per_step(proxy.state(assign, slice(b0, b1))), stat)[0]))
    return float(np.mean(values)) if values else 0.0


def pv_aware_schedule(
    model: FeederModel,
    load_kw: np.ndarray,
    pv_kw: np.ndarray,
    switches: Sequence[str],
    *,
    stepsize_s: float,
    interval_s: float = 900.0,
    start: int = 1,
    max_ops_per_day: int = 4,
    objective: Objective = "neutral",
    stat: Stat = "max",
    load_kvar: np.ndarray | None = None,
    blind: np.ndarray | None = None,
) -> tuple[np.ndarray, bool]:
    """Switching planned from the net demand ``load_kw - pv_kw`` (the PV forecast, or the
    net positions a market settled on), with the same cap on operations per day.

    Returns ``(schedule, planned)``. The greedy plan of :func:`switching_schedule` on the net
    demand is compared with the PV-blind plan (``blind``, default: planned from ``load_kw``
    alone) on the net-demand objective (:func:`schedule_objective`); the PV-blind plan is
    returned (``planned=False``) when it scores better, so a PV-aware plan is never worse
    than the PV-blind one on its own objective. Both obey ``max_ops_per_day``.
    """
    plan = functools.partial(
        switching_schedule,
        model,
        load_kw,
        switches=switches,
        stepsize_s=stepsize_s,
        interval_s=interval_s,
        start=start,
        max_ops_per_day=max_ops_per_day,
        objective=objective,
        stat=stat,
        load_kvar=load_kvar,
    )
    score = functools.partial(
        schedule_objective,
        model,
        load_kw,
        pv_kw,
        stepsize_s=stepsize_s,
        interval_s=interval_s,
        start=start,
        objective=objective,
        stat=stat,
        load_kvar=load_kvar,
    )
    aware = plan(pv_kw=pv_kw)
    if blind is None:
        blind = plan(pv_kw=None)
    score_aware, score_blind = score(aware), score(blind)
    if score_blind < score_aware:
        return np.asarray(blind), False
    return aware, True
