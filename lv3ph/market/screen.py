"""Sensitivity-screened trading (after Guerrero et al., four-wire): curtail the trades that
would break a limit.

Rule (*largest sensitivity first*), per step, on the linear rows of
:func:`lv3ph.market.linear.step_rows` around the OpenDSS solution of the unscreened
outcome: while some row is violated (``g > 0``), take the most violated one and curtail the
sellers whose injection raises it most (largest ``a_rk`` per kW first), each by at most what
it still sells in that step, until the row is met; every row is updated with ``g -= a x``
after each curtailment. A row that curtailing every remaining trade could not bring within
its limit is not the trades' doing (a PVUR at night caused by loads, an under-voltage, a
voltage rise from exports the market does not trade) and is left alone as a residual
violation. At most ``max_passes`` passes over the rows.

Curtailing ``x`` kW of a trade means the seller exports ``x`` kW less (its PV inverter is
curtailed) and the buyer buys ``x`` kW less locally (it takes it from the grid instead):
the physics changes at the seller only.

Known drawbacks: greedy, not optimal (it may curtail more than an LP would); linear around
the unscreened point, so OpenDSS may still find a (small) violation; sellers with the
largest sensitivity (the far end of the feeder, the heavily loaded phase) are curtailed
first, which is unfair to them.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from lv3ph.market.linear import Rows

__all__ = ["screen_step"]


def screen_step(
    rows: Rows, sellable_kw: NDArray[np.float64], *, max_passes: int = 20
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Curtailment (kW >= 0, per customer) of one step by the module's rule, and which rows
    the linearisation then promises to be within their limits.

    ``sellable_kw`` (customers,): how much each customer sells in the step (the most it
    can be curtailed).
    """
    g = rows.g0.copy()
    left = np.maximum(sellable_kw, 0.0).copy()
    cut = np.zeros_like(left)
    for _ in range(max_passes * max(1, g.size)):
        bad = np.flatnonzero(g > 1e-9)
        if not bad.size:
            break
        progress = False
        for r in bad[np.argsort(-g[bad], kind="stable")]:
            if g[r] <= 1e-9 or float(np.clip(rows.a[r], 0, None) @ left) < g[r]:
                continue
            order = np.argsort(-rows.a[r], kind="stable")
            for k in order:
                if rows.a[r, k] <= 1e-12 or g[r] <= 1e-9:
                    break
                if left[k] <= 0.0:
                    continue
                x = min(left[k], g[r] / rows.a[r, k])
                left[k] -= x
                cut[k] += x
                g -= rows.a[:, k] * x
                progress = True
        if not progress:
            break
    return cut, g <= 1e-6
