"""The search along a placement's penetration: scan customer by customer, or bisect."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from lv3ph.hosting.criteria import Outcome
from lv3ph.hosting.settings import Job


def search_levels(
    job: Job,
    evaluate: Callable[[float, bool], Outcome],
    before: NDArray[np.float64],
    sizes: NDArray[np.float64],
    hi: float,
    fail: Outcome | None,
) -> tuple[float, float, Outcome | None]:
    """``(lo, hi, fail)``: ``lo`` passed, ``hi`` failed with ``fail`` (None: nothing up to
    ``hi`` failed, ``lo == hi``), ``hi - lo <= step_kw``. Level 0 (no PV) passes by definition.

    ``evaluate(level, near)``: ``near`` asks the screening for every step near a threshold.
    Only the whole-customer levels of a scan need it: they pass for good and are never
    checked on the whole window, while the result of the final bisection is.
    """
    lo = 0.0
    if job.search == "scan":
        for p in before[1:] + 0.0:
            if p >= hi:
                break
            out = evaluate(float(p), True)
            if not out.ok:
                hi, fail = float(p), out
                break
            lo = float(p)
    if fail is None:
        out = evaluate(hi, False)
        if out.ok:
            return hi, hi, None
        fail = out
    while hi - lo > job.step_kw:
        mid = 0.5 * (lo + hi)
        out = evaluate(mid, False)
        if out.ok:
            lo = mid
        else:
            hi, fail = mid, out
    return lo, hi, fail
