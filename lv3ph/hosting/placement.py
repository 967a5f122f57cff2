"""One placement: the random customer order and sizes, the search with whole-window confirmation."""

from __future__ import annotations

import math
import time
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from lv3ph.errors import Lv3phError
from lv3ph.hosting.criteria import Outcome
from lv3ph.hosting.engine import Context, context
from lv3ph.hosting.search import search_levels
from lv3ph.hosting.settings import Job
from lv3ph.parallel import single_threaded

MAX_ROUNDS: Final[int] = 25


def draw(job: Job, n: int, placement: int) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """The placement's customer order (candidate positions) and sizes in that order (kWp)."""
    rng = np.random.default_rng([job.seed, placement])
    order = rng.permutation(n)
    sizes = rng.uniform(job.kwp_range[0], job.kwp_range[1], size=n)
    return order, sizes


def run_placement(ctx: Context, placement: int) -> dict[str, Any]:
    """Hosting capacity of one placement (one row), its kept steps and its order.

    BLAS on one thread (placements are the unit of parallelism): in this process a
    multi-threaded BLAS spent more CPU than the screening's small products it ran
    (``serial=True``: 7 % of a dynamic placement); Dask workers start single-threaded anyway.
    """
    with single_threaded():
        return _run_placement(ctx, placement)


def _run_placement(ctx: Context, placement: int) -> dict[str, Any]:
    job = ctx.job
    t_start, c_start = time.perf_counter(), time.process_time()
    order, sizes = draw(job, len(ctx.names), placement)
    before = np.concatenate([[0.0], np.cumsum(sizes)[:-1]])
    total = float(sizes.sum())

    def at(p: float) -> NDArray[np.float64]:
        s = np.zeros(len(ctx.names))
        s[order] = np.clip(p - before, 0.0, sizes)
        return s

    ctx.screener.reset_prediction()
    kept: dict[int, set[str]] = {}
    missed: set[int] = set()
    counts = {"evaluations": 0, "full_checks": 0}

    def screened(p: float, near: bool) -> Outcome:
        counts["evaluations"] += 1
        s = at(p)
        if not job.screening:
            return ctx.evaluate(s, None)
        chosen = ctx.screener.screen(s, job.screen_steps, near)
        for k in missed:
            chosen.setdefault(k, set()).add("missed")
        for k, why in chosen.items():
            kept.setdefault(k, set()).update(why)
        return ctx.evaluate(s, np.array(sorted(chosen), dtype=np.int64))

    lo, hi, fail = 0.0, total, None
    for _ in range(MAX_ROUNDS):
        lo, hi, fail = search_levels(job, screened, before, sizes, hi, fail)
        if lo <= 0.0 or not job.screening:
            break
        counts["full_checks"] += 1
        full = ctx.evaluate(at(lo), None)
        if full.ok:
            break
        missed.update(full.worst_steps)
        for k in full.worst_steps:
            kept.setdefault(k, set()).add("missed")
        lo, hi, fail = 0.0, lo, full
    else:
        raise Lv3phError(f"placement {placement}: no confirmed hosting capacity after {MAX_ROUNDS} full-window checks")
    censored = fail is None
    worst = fail or Outcome(ok=True)
    s_lo = at(lo)
    curtailment = []
    avail = curtailed = 0.0
    if job.controls is not None and lo > 0:
        if ctx.last_full_sizes is None or not np.array_equal(ctx.last_full_sizes, s_lo):
            ctx.evaluate(s_lo, None)
        a, c = ctx.curtailed_kwh(s_lo)
        avail, curtailed = float(a.sum()), float(c.sum())
        curtailment = [
            (placement, ctx.names[j], float(s_lo[j]), float(a[j]), float(c[j])) for j in np.nonzero(s_lo > 0)[0]
        ]
    n_customers = int(np.count_nonzero(s_lo > 0))
    row = {
        "placement": placement,
        "hosting_kw": lo,
        "n_customers": n_customers,
        "binding_limit": worst.check,
        "item": worst.item,
        "step": worst.step,
        "value": worst.value,
        "limit": worst.limit,
        "censored": censored,
        "total_kw": total,
        "fail_kw": math.nan if censored else hi,
        "evaluations": counts["evaluations"],
        "full_checks": counts["full_checks"],
        "n_kept_steps": len(kept),
        "pv_kwh": avail,
        "curtailed_kwh": curtailed,
        "seconds": time.perf_counter() - t_start,
        "cpu_seconds": time.process_time() - c_start,
    }
    steps = [(placement, k, "+".join(sorted(kept[k]))) for k in sorted(kept)]
    orders = [(placement, r + 1, ctx.names[j], "abc"[ctx.phase[j] - 1], float(sizes[r])) for r, j in enumerate(order)]
    return {"row": row, "steps": steps, "order": orders, "curtailment": curtailment}


def placement_task(job: Job, placement: int) -> dict[str, Any]:
    """Dask task: one placement on this worker's engine."""
    return run_placement(context(job), placement)
