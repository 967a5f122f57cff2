"""A small sparse LP builder and the device model shared by the schedulers and the OPF.

Devices are modelled per scheduling *interval* (set-points held over it), drawn power in
kW (positive = consumption), energy in kWh, ``dt_h`` the interval length in hours:

* battery: charge ``ch`` and discharge ``dis`` in ``[0, kw]``, energy
  ``e_t = e_{t-1} + sqrt(eff) ch_t dt - dis_t dt / sqrt(eff)`` within
  ``[soc_min, soc_max] x kwh``, ``e_0 = soc0 x kwh`` and ``e_T >= soc0 x kwh`` (it may not
  end the run emptier than it began); drawn power ``ch - dis``;
* EV: ``p_t`` in ``[0, cap_t]`` (``cap_t`` = charger kW x parked share of the interval),
  ``sum p_t dt = need``;
* shiftable demand: ``p_t`` in ``[0, base_t + shift_kw]`` with the window's energy kept,
  ``sum_{t in w} p_t = sum_{t in w} base_t``; a tiny cost on ``|p_t - base_t|`` keeps the base
  profile where prices give no reason to move.

Solved with HiGHS (``scipy.optimize.linprog``), which is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from scipy.optimize import linprog

from lv3ph.errors import Lv3phError
from lv3ph.prosumers import Battery

__all__ = ["DeviceSet", "DeviceVars", "Lp", "add_devices", "device_power"]

#: Cost (EUR/kWh) of moving shiftable demand away from its base profile: only breaks ties.
SHIFT_TIE_EUR_KWH = 1e-5


class Lp:
    """Sparse LP ``min c x`` with equality / <= rows and variable bounds."""

    def __init__(self) -> None:
        self.lb: list[np.ndarray] = []
        self.ub: list[np.ndarray] = []
        self.c: list[np.ndarray] = []
        self.n = 0
        self._rows: dict[str, tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], list[np.ndarray], int]] = {
            "eq": ([], [], [], [], 0),
            "le": ([], [], [], [], 0),
        }

    def var(self, size: int, lb: float | np.ndarray, ub: float | np.ndarray, cost: float | np.ndarray) -> np.ndarray:
        """Add ``size`` variables; returns their column indices."""
        idx = np.arange(self.n, self.n + size)
        self.n += size
        self.lb.append(np.broadcast_to(np.asarray(lb, dtype=float), (size,)).copy())
        self.ub.append(np.broadcast_to(np.asarray(ub, dtype=float), (size,)).copy())
        self.c.append(np.broadcast_to(np.asarray(cost, dtype=float), (size,)).copy())
        return idx

    def rows(self, kind: str, row: np.ndarray, col: np.ndarray, val: np.ndarray, rhs: np.ndarray) -> np.ndarray:
        """Add ``rhs.size`` rows of ``kind`` ("eq" or "le"): entries at local ``row`` (0-based)."""
        r, cc, v, b, count = self._rows[kind]
        r.append(np.asarray(row, dtype=np.int64) + count)
        cc.append(np.asarray(col, dtype=np.int64))
        v.append(np.asarray(val, dtype=float))
        b.append(np.asarray(rhs, dtype=float))
        self._rows[kind] = (r, cc, v, b, count + int(np.asarray(rhs).size))
        return np.arange(count, count + int(np.asarray(rhs).size))

    def _matrix(self, kind: str) -> tuple[sp.csr_matrix | None, np.ndarray | None]:
        r, cc, v, b, count = self._rows[kind]
        if not count:
            return None, None
        m = sp.csr_matrix((np.concatenate(v), (np.concatenate(r), np.concatenate(cc))), shape=(count, self.n))
        return m, np.concatenate(b)

    def solve(self, what: str, method: str = "highs") -> np.ndarray:
        """Solve with HiGHS (``method``: a ``scipy.optimize.linprog`` HiGHS method); raise
        :class:`~lv3ph.errors.Lv3phError` naming ``what`` if it fails."""
        a_eq, b_eq = self._matrix("eq")
        a_ub, b_ub = self._matrix("le")
        res = linprog(
            np.concatenate(self.c),
            A_ub=a_ub,
            b_ub=b_ub,
            A_eq=a_eq,
            b_eq=b_eq,
            bounds=np.stack([np.concatenate(self.lb), np.concatenate(self.ub)], axis=1),
            method=method,
        )
        if res.status != 0:
            raise Lv3phError(f"{what}: linear program failed ({res.message})")
        return np.asarray(res.x)


@dataclass(frozen=True)
class DeviceSet:
    """One customer's flexible devices on the scheduling intervals (all optional).

    ``battery``; ``ev_cap_kw`` (intervals,) and ``ev_need_kwh``; ``shift_base_kw``
    (intervals,), ``shift_window`` (intervals,) window index, ``shift_kw``.
    """

    battery: Battery | None = None
    ev_cap_kw: NDArray[np.float64] | None = None
    ev_need_kwh: float = 0.0
    shift_base_kw: NDArray[np.float64] | None = None
    shift_window: NDArray[np.int64] | None = None
    shift_kw: float = 0.0

    @property
    def empty(self) -> bool:
        return self.battery is None and self.ev_cap_kw is None and self.shift_base_kw is None


@dataclass
class DeviceVars:
    """Column indices of a customer's device variables (each (intervals,) or empty)."""

    ch: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    dis: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    energy: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    ev: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    shift: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def drawn_terms(self) -> list[tuple[np.ndarray, float]]:
        """``(columns, sign)`` whose sum per interval is the devices' drawn power (kW)."""
        return [(c, s) for c, s in ((self.ch, 1.0), (self.dis, -1.0), (self.ev, 1.0), (self.shift, 1.0)) if c.size]


def add_devices(lp: Lp, dev: DeviceSet, n: int, dt_h: NDArray[np.float64], wear_eur_kwh: float) -> DeviceVars:
    """Add one customer's device variables and constraints over ``n`` intervals of ``dt_h`` hours."""
    out = DeviceVars()
    t = np.arange(n)
    if dev.battery is not None:
        b = dev.battery
        eta = float(np.sqrt(b.efficiency))
        out.ch = lp.var(n, 0.0, b.kw, wear_eur_kwh * dt_h / 2)
        out.dis = lp.var(n, 0.0, b.kw, wear_eur_kwh * dt_h / 2)
        out.energy = lp.var(n, b.soc_min * b.kwh, b.soc_max * b.kwh, 0.0)
        # e_t - e_{t-1} - eta ch dt + dis dt / eta = 0 (e_{-1} = soc0 kwh)
        rows = np.concatenate([t, t[1:], t, t])
        cols = np.concatenate([out.energy, out.energy[:-1], out.ch, out.dis])
        vals = np.concatenate([np.ones(n), -np.ones(n - 1), -eta * dt_h, dt_h / eta])
        rhs = np.zeros(n)
        rhs[0] = b.soc0 * b.kwh
        lp.rows("eq", rows, cols, vals, rhs)
        lp.rows("le", np.zeros(1), out.energy[-1:], -np.ones(1), np.array([-b.soc0 * b.kwh]))
    if dev.ev_cap_kw is not None:
        out.ev = lp.var(n, 0.0, dev.ev_cap_kw, 0.0)
        lp.rows("eq", np.zeros(n), out.ev, dt_h, np.array([dev.ev_need_kwh]))
    if dev.shift_base_kw is not None and dev.shift_window is not None:
        base = dev.shift_base_kw
        out.shift = lp.var(n, 0.0, base + dev.shift_kw, 0.0)
        _, win = np.unique(dev.shift_window, return_inverse=True)
        lp.rows("eq", win, out.shift, dt_h, np.bincount(win, weights=base * dt_h))
        up = lp.var(n, 0.0, np.inf, SHIFT_TIE_EUR_KWH * dt_h)
        dn = lp.var(n, 0.0, np.inf, SHIFT_TIE_EUR_KWH * dt_h)
        lp.rows(
            "eq",
            np.concatenate([t, t, t]),
            np.concatenate([out.shift, up, dn]),
            np.concatenate([np.ones(n), -np.ones(n), np.ones(n)]),
            base,
        )
    return out


def device_power(x: np.ndarray, dv: DeviceVars, n: int) -> dict[str, np.ndarray]:
    """Device powers (kW, drawn positive) per interval from an LP solution."""

    def col(c: np.ndarray) -> np.ndarray:
        return x[c] if c.size else np.zeros(n)

    return {
        "battery_kw": col(dv.ch) - col(dv.dis),
        "ev_kw": col(dv.ev),
        "shift_kw": col(dv.shift),
    }
