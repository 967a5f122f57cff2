"""Price-responsive scheduling of each prosumer's flexible devices.

Each customer with flexible devices solves, on the scheduling intervals, the LP

    min  sum_t dt (buy_t imp_t - sell_t exp_t) + wear x battery throughput
    s.t. imp_t - exp_t = base_t + devices_t,  imp, exp >= 0,  device constraints

(:mod:`lv3ph.flex.lp`), where ``base_t`` is its inflexible net power (kW drawn, load minus
PV, shiftable part removed) and ``buy_t >= sell_t`` the marginal prices (EUR/kWh) its
market gives for drawing and for exporting one more kWh -- local price, network charge,
loss charge included (:func:`lv3ph.market.designs.marginal_prices`). With ``buy = grid
import`` and ``sell = grid export`` (no market) the battery does self-consumption; a local
price between the tariffs makes it absorb the community's surplus and serve its deficit.
Customers are price takers (their own response does not move the price). The result is
deterministic (HiGHS) and depends on the seed only through the EV fleet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from lv3ph.errors import StudyError
from lv3ph.flex.devices import EvFleet, FlexSpec, dumb_ev_charging, shift_windows
from lv3ph.flex.lp import DeviceSet, Lp, add_devices, device_power
from lv3ph.prosumers import Battery

__all__ = [
    "Fleet",
    "FlexResult",
    "device_sets",
    "expand",
    "interval_hours",
    "interval_index",
    "schedule",
    "uncontrolled",
]


@dataclass(frozen=True)
class Fleet:
    """Who has which flexible device (customer positions) and the step-level inputs.

    ``batteries``: position -> Battery (price-responsive batteries only); ``ev``: the EV
    fleet (None = no EVs); ``smart_ev``: EVs are scheduled (else uncontrolled charging);
    ``shift``: shiftable demand is scheduled; ``load_kw`` (steps, customers) household demand.
    """

    spec: FlexSpec
    batteries: dict[int, Battery]
    ev: EvFleet | None
    smart_ev: bool
    shift: bool
    load_kw: NDArray[np.float64]
    stepsize_s: float
    start: int

    @property
    def steps(self) -> int:
        return int(self.load_kw.shape[0])

    def shift_base_kw(self) -> NDArray[np.float64]:
        """(steps, customers) shiftable part of the demand (0 when shifting is off)."""
        return self.load_kw * (self.spec.shift_share if self.shift else 0.0)

    def ev_kw_uncontrolled(self) -> NDArray[np.float64]:
        """(steps, customers) uncontrolled EV charging (0 where no EV, or EVs are smart)."""
        out = np.zeros_like(self.load_kw)
        if self.ev is not None and not self.smart_ev:
            out[:, self.ev.owners] = dumb_ev_charging(self.ev, self.stepsize_s, self.start, self.steps)
        return out

    def flexible(self) -> list[int]:
        """Customers with at least one scheduled device, in order."""
        who = set(self.batteries)
        if self.ev is not None and self.smart_ev:
            who |= {int(o) for o in self.ev.owners}
        if self.shift and self.spec.shift_share > 0:
            who |= set(range(self.load_kw.shape[1]))
        return sorted(who)


@dataclass(frozen=True)
class FlexResult:
    """Scheduled device power per step and customer, kW drawn (positive = consumption)."""

    battery_kw: NDArray[np.float64]
    ev_kw: NDArray[np.float64]
    shift_kw: NDArray[np.float64]

    @property
    def total_kw(self) -> NDArray[np.float64]:
        return self.battery_kw + self.ev_kw + self.shift_kw


def interval_index(steps: int, stepsize_s: float, interval_s: float, start: int = 1) -> NDArray[np.int64]:
    """Scheduling interval (0, 1, ...) of each step of a run starting at step ``start``:
    intervals of ``round(interval / stepsize)`` steps aligned to midnight (the first and
    last may be partial)."""
    per = max(1, round(interval_s / stepsize_s))
    k = np.arange(start - 1, start - 1 + steps) // per
    return (k - k[0]).astype(np.int64)


def interval_hours(idx: NDArray[np.int64], stepsize_s: float) -> NDArray[np.float64]:
    """Length of each interval of ``idx`` in hours."""
    return np.asarray(np.bincount(idx) * stepsize_s / 3600.0, dtype=np.float64)


def _mean(x: NDArray[np.float64], idx: NDArray[np.int64]) -> NDArray[np.float64]:
    return np.bincount(idx, weights=x) / np.bincount(idx)


def device_sets(fleet: Fleet, idx: NDArray[np.int64]) -> dict[int, DeviceSet]:
    """Each flexible customer's :class:`DeviceSet` on the intervals ``idx`` (per step)."""
    shift_base = fleet.shift_base_kw()
    parked = fleet.ev.parked(fleet.stepsize_s, fleet.start, fleet.steps) if fleet.ev is not None else None
    need = fleet.ev.need_in_run(fleet.stepsize_s, fleet.start, fleet.steps) if fleet.ev is not None else None
    win = shift_windows(fleet.stepsize_s, fleet.start, fleet.steps, fleet.spec.shift_window_h)
    win_i = np.maximum.reduceat(win, np.flatnonzero(np.diff(idx, prepend=-1)))
    aligned = np.array_equal(np.minimum.reduceat(win, np.flatnonzero(np.diff(idx, prepend=-1))), win_i)
    if fleet.shift and fleet.spec.shift_share > 0 and not aligned:
        raise StudyError("[flex].shift_window_h must be a whole number of scheduling intervals")
    out = {}
    for k in fleet.flexible():
        ev_cap, ev_need = None, 0.0
        if fleet.ev is not None and fleet.smart_ev and k in set(fleet.ev.owners.tolist()):
            assert parked is not None and need is not None
            e = int(np.flatnonzero(fleet.ev.owners == k)[0])
            ev_cap = fleet.ev.kw * _mean(parked[:, e].astype(float), idx)
            ev_need = float(need[e])
        shifting = fleet.shift and fleet.spec.shift_share > 0
        out[k] = DeviceSet(
            battery=fleet.batteries.get(k),
            ev_cap_kw=ev_cap,
            ev_need_kwh=ev_need,
            shift_base_kw=_mean(shift_base[:, k], idx) if shifting else None,
            shift_window=win_i if shifting else None,
            shift_kw=fleet.spec.shift_kw,
        )
    return out


def expand(
    power: dict[str, NDArray[np.float64]], idx: NDArray[np.int64], parked: NDArray[np.bool_] | None
) -> dict[str, NDArray[np.float64]]:
    """Interval set-points to steps; EV power only on parked steps (same energy)."""
    out = {k: v[idx] for k, v in power.items()}
    if parked is not None:
        frac = _mean(parked.astype(float), idx)[idx]
        with np.errstate(divide="ignore", invalid="ignore"):
            out["ev_kw"] = np.where(parked, out["ev_kw"] / np.where(frac > 0, frac, 1.0), 0.0)
    return out


def uncontrolled(fleet: Fleet) -> FlexResult:
    """No scheduling: uncontrolled EV charging, base shiftable profile, no batteries."""
    z = np.zeros_like(fleet.load_kw)
    return FlexResult(battery_kw=z, ev_kw=fleet.ev_kw_uncontrolled(), shift_kw=fleet.shift_base_kw())


def schedule(
    fleet: Fleet,
    base_kw: NDArray[np.float64],
    buy_eur_kwh: NDArray[np.float64],
    sell_eur_kwh: NDArray[np.float64],
) -> FlexResult:
    """Schedule every flexible customer against its marginal prices (module docstring).

    ``base_kw`` (steps, customers): inflexible net power without the scheduled devices, kW
    drawn; ``buy_eur_kwh``/``sell_eur_kwh`` (steps, customers) marginal prices, buy >= sell.
    Customers without scheduled devices get zeros (uncontrolled EVs and the unshifted
    shiftable demand are added as in :func:`uncontrolled`).
    """
    steps, n = base_kw.shape
    if (buy_eur_kwh < sell_eur_kwh - 1e-12).any():
        raise StudyError("flex schedule: buy price below sell price (the LP would be unbounded)")
    idx = interval_index(steps, fleet.stepsize_s, fleet.spec.interval_s, fleet.start)
    ni = int(idx.max()) + 1
    dt_h = interval_hours(idx, fleet.stepsize_s)
    base = uncontrolled(fleet)
    out = {
        "battery_kw": np.zeros((steps, n)),
        "ev_kw": base.ev_kw.copy(),
        "shift_kw": base.shift_kw.copy(),
    }
    parked_all = fleet.ev.parked(fleet.stepsize_s, fleet.start, steps) if fleet.ev is not None else None
    for k, dev in device_sets(fleet, idx).items():
        lp = Lp()
        buy, sell = _mean(buy_eur_kwh[:, k], idx), _mean(sell_eur_kwh[:, k], idx)
        imp = lp.var(ni, 0.0, np.inf, buy * dt_h)
        exp = lp.var(ni, 0.0, np.inf, -sell * dt_h)
        dv = add_devices(lp, dev, ni, dt_h, fleet.spec.battery_wear_eur_kwh)
        t = np.arange(ni)
        rows, cols, vals = [t, t], [imp, exp], [np.ones(ni), -np.ones(ni)]
        for c, s in dv.drawn_terms():
            rows.append(t)
            cols.append(c)
            vals.append(np.full(ni, -s))
        lp.rows("eq", np.concatenate(rows), np.concatenate(cols), np.concatenate(vals), _mean(base_kw[:, k], idx))
        x = lp.solve(f"flex schedule of customer {k}")
        write_steps(out, fleet, k, dev, device_power(x, dv, ni), idx, parked_all)
    return FlexResult(**out)


def write_steps(
    out: dict[str, NDArray[np.float64]],
    fleet: Fleet,
    k: int,
    dev: DeviceSet,
    power: dict[str, NDArray[np.float64]],
    idx: NDArray[np.int64],
    parked_all: NDArray[np.bool_] | None,
) -> None:
    """Write customer ``k``'s interval device powers into the step arrays ``out`` (kW,
    (steps, customers)), only for the devices it has."""
    parked = None
    if dev.ev_cap_kw is not None and fleet.ev is not None and parked_all is not None:
        parked = parked_all[:, int(np.flatnonzero(fleet.ev.owners == k)[0])]
    steps_p = expand(power, idx, parked)
    for name, present in (
        ("battery_kw", dev.battery is not None),
        ("ev_kw", dev.ev_cap_kw is not None),
        ("shift_kw", dev.shift_base_kw is not None),
    ):
        if present:
            out[name][:, k] = steps_p[name]
