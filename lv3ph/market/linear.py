"""Linearised network limits of one step: ``g0 + a . dinj <= 0`` per constraint row.

Built from a solved step and its :class:`~lv3ph.market.sensitivity.StepSensitivity`, for
the same checks :func:`lv3ph.unbalance.violations` applies (at the customer buses):

* ``voltage_high`` / ``voltage_low``: each phase-to-neutral magnitude ``m_i`` (V) against
  the band, ``m_i - v_high <= 0`` and ``v_low - m_i <= 0``;
* ``pvur``: exactly ``|m_i - mean| <= L mean`` (L = PVUR limit / 100), two rows per phase
  in volts, linear in the magnitudes;
* ``vuf``: first-order Taylor of ``|V2| / |V1|`` (%);
* ``vne``: ``|V_n| - limit`` (V);
* ``line_thermal``: ``|I| - rating x loading limit`` (A) of each rated line conductor.

``a`` is per kW *injected* by each customer (column), so curtailing ``x`` kW of a
customer's export changes ``g`` by ``-a x``. Units of ``g``: V, except ``vuf`` (%) and
``line_thermal`` (A).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from lv3ph.market.sensitivity import (
    PortNetwork,
    StepSensitivity,
    bus_phase_nodes,
    magnitude_sensitivity,
    pvur_rows,
    vuf_sensitivity,
)
from lv3ph.model import ComplexArray, FeederModel, IntArray
from lv3ph.unbalance import Limits

__all__ = ["Monitored", "Rows", "monitored", "step_rows"]


@dataclass(frozen=True)
class Monitored:
    """Where limits are checked: customer buses (phase and neutral nodes) and rated lines."""

    buses: tuple[str, ...]
    phase_nodes: IntArray  # (buses, 3)
    neutral_nodes: IntArray  # (buses,)
    line_rows: IntArray  # rows of PortNetwork.yd with a rating
    line_names: tuple[str, ...]


def monitored(model: FeederModel, pn: PortNetwork) -> Monitored:
    """The customer buses with all three phases, and every rated line conductor."""
    buses = sorted({c.bus for c in model.customers})
    ph, ne = bus_phase_nodes(model, buses)
    keep = (ph >= 0).all(axis=1)
    rows = np.flatnonzero(np.isfinite(pn.rating_a) & (pn.rating_a > 0))
    names = tuple(model.elements[int(e)].name for e in pn.line_element[rows])
    return Monitored(
        buses=tuple(str(b) for b in np.asarray(buses, dtype=object)[keep]),
        phase_nodes=ph[keep],
        neutral_nodes=ne[keep],
        line_rows=rows.astype(np.int64),
        line_names=names,
    )


@dataclass(frozen=True)
class Rows:
    """Linear constraint rows of one step: ``g0 + a @ dinj <= 0``."""

    check: NDArray[np.str_]
    item: NDArray[np.str_]
    g0: NDArray[np.float64]
    a: NDArray[np.float64]


def step_rows(
    pn: PortNetwork,
    mon: Monitored,
    sens: StepSensitivity | None,
    v: ComplexArray,
    limits: Limits,
) -> Rows:
    """Every enabled check of one step as linear rows (module docstring).

    With ``sens=None`` only ``g0`` is computed (``a`` has no columns).
    """
    checks: list[np.ndarray] = []
    items: list[np.ndarray] = []
    g0: list[np.ndarray] = []
    a: list[np.ndarray] = []
    nb = len(mon.buses)
    buses = np.array(mon.buses, dtype=object)
    vn0 = np.where(mon.neutral_nodes >= 0, v[np.maximum(mon.neutral_nodes, 0)], 0.0)
    vp0 = v[mon.phase_nodes] - vn0[:, None]  # (buses, 3)
    if sens is None:
        dvn = np.zeros((nb, 0), dtype=np.complex128)
        dvp = np.zeros((nb, 3, 0), dtype=np.complex128)
    else:
        dvn = sens.node_voltages(pn, mon.neutral_nodes)  # (buses, customers)
        dvp = sens.node_voltages(pn, mon.phase_nodes.ravel()).reshape(nb, 3, -1) - dvn[:, None, :]
    m0 = np.abs(vp0)
    dm = magnitude_sensitivity(vp0.ravel(), dvp.reshape(nb * 3, -1)).reshape(nb, 3, -1)
    bus3 = np.repeat(buses, 3)

    def add(check: str, item: np.ndarray, g: np.ndarray, rows: np.ndarray) -> None:
        checks.append(np.full(g.size, check, dtype=object))
        items.append(item)
        g0.append(g)
        a.append(rows)

    if limits.v_high_v is not None:
        add("voltage_high", bus3, m0.ravel() - limits.v_high_v, dm.reshape(nb * 3, -1))
    if limits.v_low_v is not None:
        add("voltage_low", bus3, limits.v_low_v - m0.ravel(), -dm.reshape(nb * 3, -1))
    if limits.pvur_pct is not None:
        lim = limits.pvur_pct / 100.0
        dev0, ddev = pvur_rows(m0, dm)
        mean0 = m0.mean(axis=1, keepdims=True)
        dmean = dm.mean(axis=1, keepdims=True)
        for sign in (1.0, -1.0):
            add(
                "pvur",
                bus3,
                (sign * dev0 - lim * mean0).ravel(),
                (sign * ddev - lim * dmean).reshape(nb * 3, -1),
            )
    if limits.vuf_pct is not None:
        vuf, grad = vuf_sensitivity(vp0, dvp)
        add("vuf", buses, vuf - limits.vuf_pct, grad)
    if limits.vne_v is not None:
        has = mon.neutral_nodes >= 0
        add(
            "vne",
            buses[has],
            np.abs(vn0[has]) - limits.vne_v,
            magnitude_sensitivity(vn0[has], dvn[has]),
        )
    if limits.line_loading_pct is not None and mon.line_rows.size:
        i0 = pn.vprim_line[mon.line_rows] @ v
        di = sens.line_currents(pn, mon.line_rows) if sens is not None else np.zeros((i0.size, 0), np.complex128)
        cap = pn.rating_a[mon.line_rows] * limits.line_loading_pct / 100.0
        add("line_thermal", np.array(mon.line_names, dtype=object), np.abs(i0) - cap, magnitude_sensitivity(i0, di))
    return Rows(
        check=np.concatenate(checks).astype(str),
        item=np.concatenate(items).astype(str),
        g0=np.concatenate(g0),
        a=np.concatenate(a),
    )
