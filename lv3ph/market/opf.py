"""OPF-cleared local market: welfare-maximising clearing with linearised four-wire limits.

One LP over the scheduling intervals (HiGHS, ``scipy.optimize.linprog``) decides at once
every flexible device (price-responsive batteries, EVs, shiftable demand; the model of
:mod:`lv3ph.flex.lp`) and every PV curtailment ``c_k`` (kW, at most the customer's PV):

    max  welfare = - sum_t dt (import_price * G+_t - export_price * G-_t) - wear - penalty
    s.t. G+_t - G-_t = sum_k (base_kt + devices_kt + c_kt)            (community balance)
         g0_rt + a_rt . dinj_t <= s_rt,  s_rt >= 0                     (network rows)

Local trades are transfers inside the community, so its welfare is minus its grid bill;
the local market then matches the resulting surpluses and demands pro rata (community
auction). ``dinj_kt = -(devices_kt - reference_kt) - c_kt`` is the change of customer k's
injection from the reference operating point (an OpenDSS solution), and the rows are those
of :func:`lv3ph.market.linear.step_rows`: for each interval the worst minute's ``g0`` with
the sensitivities of the interval's middle step (conservative within the interval as long
as the sensitivities do not change much). Rows are soft: a slack ``s`` costs
``penalty_eur`` per unit (V, %, A) and hour, so a limit that no decision can meet (a PVUR
caused by loads alone) leaves the LP feasible and is reported as the promised residual.

Known drawbacks: the linearisation is exact only at the reference point (OpenDSS judges
the result; the report says by how much it disagrees); interval set-points cannot follow
minute-scale PV and load changes; community welfare ignores who gets it (bills follow
from the pro-rata match).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lv3ph.flex.lp import DeviceSet, Lp, add_devices, device_power
from lv3ph.market.linear import Rows

__all__ = ["OpfResult", "opf_clear"]

#: Rows within this of their limit at the worst minute of an interval start in the LP
#: (V for voltage-type and PVUR rows, % for VUF, A for thermal); the others join when a
#: solution breaks them (row generation, :func:`opf_clear`). The voltage margins are wide
#: because the OPF moves batteries and EVs by several kW at once: on the IEEE twin
#: evening battery discharge raised buses by up to 19 V, and 1-V margins took more than 6
#: rounds of row generation (each a full solve).
ROW_MARGIN = {"voltage_high": 8.0, "voltage_low": 8.0, "pvur": 2.0, "vuf": 0.5, "vne": 2.0, "line_thermal": 10.0}


@dataclass(frozen=True)
class OpfResult:
    """Interval decisions: device powers (intervals, customers) kW drawn, curtailment (kW),
    the LP's slack per check summed (units of the check), the (interval, row) pairs it
    could not keep within limits (``broken``), the number of LP rows and welfare (EUR)."""

    battery_kw: NDArray[np.float64]
    ev_kw: NDArray[np.float64]
    shift_kw: NDArray[np.float64]
    curtail_kw: NDArray[np.float64]
    slack: dict[str, float]
    broken: list[tuple[int, int]]
    welfare_eur: float
    rows: int


def opf_clear(
    devices: dict[int, DeviceSet],
    base_kw: NDArray[np.float64],
    reference_kw: NDArray[np.float64],
    pv_kw: NDArray[np.float64],
    rows: list[Rows],
    *,
    dt_h: NDArray[np.float64],
    import_eur_kwh: float,
    export_eur_kwh: float,
    wear_eur_kwh: float,
    penalty_eur: float = 10.0,
    max_rounds: int = 6,
) -> OpfResult:
    """Solve the OPF (module docstring) on ``n`` intervals.

    Network rows are generated lazily: the LP starts with the rows within
    :data:`ROW_MARGIN` of their limit at the reference, and after each solve, in every
    interval where the solution breaks (linearly) a row not in the LP, every row within the
    margin of its limit *at that solution* is added, until no row is broken or
    ``max_rounds`` solves (the rows are dense in the customers, so the full set would make
    a very large LP; 96 quarter-hours of the IEEE twin: 4390 rows each, ~17 000 kept).
    Rows the last solution still breaks are reported in ``broken`` like rows with slack.
    The LP goes to HiGHS' interior-point solver (with crossover), about 2x faster than
    simplex on these dense rows.

    Args:
        devices: flexible customers' device sets (interval level).
        base_kw: (n, customers) inflexible net power, kW drawn.
        reference_kw: (n, customers) the device power of the reference point, kW drawn.
        pv_kw: (n, customers) PV output (most curtailment), kW.
        rows: one :class:`Rows` per interval (worst-minute ``g0``, middle-step ``a``).
        dt_h: (n,) interval lengths, h.
    """
    n, nc = base_kw.shape
    margins = [np.array([ROW_MARGIN[ch] for ch in rw.check]) for rw in rows]
    active = [np.flatnonzero(rw.g0 > -m) for rw, m in zip(rows, margins, strict=True)]
    for round_ in range(max_rounds):
        x, lp_cols, slack_cols = _solve(
            devices,
            base_kw,
            reference_kw,
            pv_kw,
            rows,
            active,
            dt_h,
            import_eur_kwh,
            export_eur_kwh,
            wear_eur_kwh,
            penalty_eur,
        )
        out, cut = _decisions(x, lp_cols, n, nc)
        dinj = -(out["battery_kw"] + out["ev_kw"] + out["shift_kw"] - reference_kw) - cut
        beyond = _beyond(rows, active, margins, dinj)
        if not beyond or round_ == max_rounds - 1:
            break
        for i, near in beyond.items():
            active[i] = np.union1d(active[i], near)
    missed = _beyond(rows, active, [np.full(m.size, -1e-6) for m in margins], dinj)  # broken, not in the LP
    slack: dict[str, float] = {}
    broken: list[tuple[int, int]] = []
    for col, row, i in slack_cols:
        if x[col] > 1e-6:
            check = str(rows[i].check[row])
            slack[check] = slack.get(check, 0.0) + float(x[col])
            broken.append((i, row))
    broken += [(i, int(r)) for i, rr in missed.items() for r in rr]
    g_in, g_out = lp_cols["grid"]
    welfare = -float((x[g_in] * dt_h).sum() * import_eur_kwh - (x[g_out] * dt_h).sum() * export_eur_kwh)
    total = int(sum(a.size for a in active))
    return OpfResult(curtail_kw=cut, slack=slack, broken=broken, welfare_eur=welfare, rows=total, **out)


def _beyond(
    rows: list[Rows], active: list[NDArray[np.int64]], margins: list[NDArray[np.float64]], dinj: NDArray[np.float64]
) -> dict[int, NDArray[np.int64]]:
    """Per interval where the linear prediction at ``dinj`` breaks a row not in ``active``:
    the rows not in ``active`` within ``margins`` of their limit there."""
    out = {}
    for i, rw in enumerate(rows):
        g = rw.g0 + rw.a @ dinj[i]
        if np.setdiff1d(np.flatnonzero(g > 1e-6), active[i]).size:
            out[i] = np.setdiff1d(np.flatnonzero(g > -margins[i]), active[i])
    return out


def _decisions(
    x: NDArray[np.float64], cols: dict[str, Any], n: int, nc: int
) -> tuple[dict[str, NDArray[np.float64]], NDArray[np.float64]]:
    out = {"battery_kw": np.zeros((n, nc)), "ev_kw": np.zeros((n, nc)), "shift_kw": np.zeros((n, nc))}
    for k, dv in cols["devices"].items():
        for name, p in device_power(x, dv, n).items():
            out[name][:, k] = p
    cut = np.zeros((n, nc))
    for k, c in cols["curtail"].items():
        cut[:, k] = x[c]
    return out, cut


def _solve(
    devices: dict[int, DeviceSet],
    base_kw: NDArray[np.float64],
    reference_kw: NDArray[np.float64],
    pv_kw: NDArray[np.float64],
    rows: list[Rows],
    active: list[NDArray[np.int64]],
    dt_h: NDArray[np.float64],
    import_eur_kwh: float,
    export_eur_kwh: float,
    wear_eur_kwh: float,
    penalty_eur: float,
) -> tuple[NDArray[np.float64], dict[str, Any], list[tuple[int, int, int]]]:
    """Build and solve the LP with the ``active`` rows of each interval."""
    n = base_kw.shape[0]
    lp = Lp()
    g_in = lp.var(n, 0.0, np.inf, import_eur_kwh * dt_h)
    g_out = lp.var(n, 0.0, np.inf, -export_eur_kwh * dt_h)
    has_pv = np.flatnonzero(pv_kw.max(axis=0) > 0)
    curt = {int(k): lp.var(n, 0.0, pv_kw[:, k], 1e-6 * dt_h) for k in has_pv}
    dvars = {k: add_devices(lp, d, n, dt_h, wear_eur_kwh) for k, d in devices.items()}
    t = np.arange(n)
    r, c, v = [t, t], [g_in, g_out], [np.ones(n), -np.ones(n)]
    for dv in dvars.values():
        for cols, s in dv.drawn_terms():
            r.append(t)
            c.append(cols)
            v.append(np.full(n, -s))
    for cols in curt.values():  # curtailed PV is drawn from the grid instead
        r.append(t)
        c.append(cols)
        v.append(-np.ones(n))
    lp.rows("eq", np.concatenate(r), np.concatenate(c), np.concatenate(v), base_kw.sum(axis=1))
    # dinj_kt = ref_kt - devices_kt - c_kt (kW injected beyond the reference), one column per
    # (interval, customer with a device or PV): the network rows are dense only in these
    who = sorted(set(dvars) | set(curt))
    dinj = {k: lp.var(n, -np.inf, np.inf, 0.0) for k in who}
    r, c, v = [], [], []
    for pos, k in enumerate(who):
        rk = pos * n + t
        r.append(rk)
        c.append(dinj[k])
        v.append(np.ones(n))
        for cols, s in dvars[k].drawn_terms() if k in dvars else []:
            r.append(rk)
            c.append(cols)
            v.append(np.full(n, s))
        if k in curt:
            r.append(rk)
            c.append(curt[k])
            v.append(np.ones(n))
    lp.rows("eq", np.concatenate(r), np.concatenate(c), np.concatenate(v), reference_kw[:, who].T.ravel())
    wcols = np.array([dinj[k] for k in who])  # (who, n)
    slack_cols: list[tuple[int, int, int]] = []
    for i, rw in enumerate(rows):
        keep = active[i]
        if not keep.size:
            continue
        # g0 + a . dinj <= s  ->  a dinj - s <= -g0
        a_k = rw.a[np.ix_(keep, np.asarray(who, dtype=np.int64))]
        s_cols = lp.var(keep.size, 0.0, np.inf, penalty_eur * float(dt_h[i]))
        j = np.arange(keep.size)
        rr = np.concatenate([j, np.repeat(j, len(who))])
        cc = np.concatenate([s_cols, np.tile(wcols[:, i], keep.size)])
        vv = np.concatenate([-np.ones(keep.size), a_k.ravel()])
        lp.rows("le", rr, cc, vv, -rw.g0[keep])
        slack_cols += [(int(col), int(row), i) for col, row in zip(s_cols, keep, strict=True)]
    x = lp.solve("opf-cleared market", method="highs-ipm")
    return x, {"grid": (g_in, g_out), "curtail": curt, "devices": dvars}, slack_cols
