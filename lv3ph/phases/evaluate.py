"""The physical effect of an arrangement: re-phasing edits, solved by OpenDSS, and the
headline imbalance metrics of a captured power flow."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import xarray as xr

from lv3ph.dss import Engine
from lv3ph.errors import StudyError
from lv3ph.model import FeederModel, node_spec
from lv3ph.phases.customers import _index, _movability, as_built
from lv3ph.powerflow import RunSpec, capture, head_line, solve_raw
from lv3ph.topology import Connection, phase_nodes_at
from lv3ph.unbalance import unbalance


def head_currents(model: FeederModel, pf: xr.Dataset) -> tuple[xr.DataArray, xr.DataArray | None]:
    """|current| (A) of the line leaving the transformer: per traced phase (time, phase =
    1, 2, 3; NaN for a missing phase) and in its neutral conductor (time; None when the
    line has no neutral-role conductor)."""
    head = head_line(model)
    e = model.elements[head]
    cur = np.abs(np.asarray(pf.current.isel(element=head).values)[:, : e.n_conductors])
    nodes = e.nodes[: e.n_conductors]
    phase = np.full((cur.shape[0], 3), np.nan)
    for j, x in enumerate(nodes):
        if x >= 0 and 1 <= model.node_role[x] <= 3:
            phase[:, int(model.node_role[x]) - 1] = cur[:, j]
    neutral = [j for j, x in enumerate(nodes) if model.is_neutral(int(x))]
    time = pf["time"]
    ph = xr.DataArray(phase, dims=("time", "phase"), coords={"time": time, "phase": [1, 2, 3]}, attrs={"units": "A"})
    if not neutral:
        return ph, None
    return ph, xr.DataArray(cur[:, neutral[0]], dims=("time",), coords={"time": time}, attrs={"units": "A"})


def feeder_metrics(model: FeederModel, pf: xr.Dataset, unb: xr.Dataset | None = None) -> dict[str, float]:
    """Headline imbalance numbers of a captured power flow.

    ``pvur_max_pct`` / ``vuf_max_pct``: worst over buses and steps; ``pvur_mean_pct``: the
    worst bus per step, averaged over the steps; ``head_neutral_max_a`` /
    ``head_neutral_mean_a``: neutral current of the line leaving the transformer (a
    three-wire model: the residual current); ``neutral_loss_kwh``, ``loss_kwh``;
    ``vne_max_v``: neutral-to-earth voltage; ``vmin_pn_v`` / ``vmax_pn_v``: extreme
    phase-to-neutral voltages. Voltage metrics over the low-voltage buses (voltage base
    below 1 kV) when the model has voltage bases, else over all buses.
    """
    u = unbalance(pf) if unb is None else unb
    kv = dict(zip(model.buses, model.bus_kv_base, strict=True))
    lv = [b for b in u.bus.values if 0 < kv.get(str(b), 0.0) < 1.0]
    if lv:  # low-voltage buses only (the source side would dominate the voltage extremes)
        u = u.sel(bus=lv)
    _, head_n = head_currents(model, pf)
    if head_n is not None:
        i_n = head_n.values
    else:  # three-wire: the residual current
        e = model.elements[head_line(model)]
        i_n = np.abs(np.asarray(pf.current.isel(element=head_line(model)).values)[:, : e.n_conductors].sum(axis=1))
    dt_h = float(pf.attrs.get("stepsize_s", 3600.0)) / 3600.0
    worst = u.pvur_pct.max("bus", skipna=True)
    return {
        "pvur_max_pct": float(worst.max()),
        "pvur_mean_pct": float(worst.mean()),
        "vuf_max_pct": float(u.vuf_pct.max()),
        "head_neutral_max_a": float(i_n.max()),
        "head_neutral_mean_a": float(i_n.mean()),
        "neutral_loss_kwh": float(pf.loss_neutral_kw.sum()) * dt_h,
        "loss_kwh": float(pf.loss_total_kw.sum()) * dt_h,
        "vne_max_v": float(u.vne_v.max()),
        "vmin_pn_v": float(u.vmin_pn_v.min()),
        "vmax_pn_v": float(u.vmax_pn_v.max()),
    }


def _moved(spec_nodes: tuple[int, ...], old: int, new: int) -> list[int]:
    return [new if x == old else x for x in spec_nodes]


def arrangement_commands(model: FeederModel, arrangement: Mapping[str, int]) -> tuple[list[str], list[str]]:
    """OpenDSS edits that move customers to the traced phases of ``arrangement``, and the
    edits that undo them. One system-matrix rebuild when applied.

    Where the customer has a service cable (its bus lacks three phases), the cable's
    feeder-side terminal is moved (``Line.svc7.bus1=t5.2.4`` -> ``t5.1.4``) and everything
    behind it follows; where it sits on a bus with three phases, its Load and devices are
    reconnected there (``bus1=<bus>.<node of the new phase>.<its neutral node>``).
    """
    base = as_built(model)
    where = _movability(model)
    edits, undo = [], []
    for name, ph in arrangement.items():
        i = _index(model, name, "the arrangement")
        c = model.customers[i]
        if int(ph) not in (1, 2, 3):
            raise StudyError(f"customer {c.name}: phase {ph} is not 1, 2 or 3")
        if c.name not in base:
            raise StudyError(f"customer {c.name} is not a single-phase customer")
        if int(ph) == base[c.name]:
            continue
        conn = where[c.name]
        if not isinstance(conn, Connection):
            raise StudyError(f"customer {c.name} {conn}")
        target = phase_nodes_at(model, conn.bus, int(model.node_group[conn.phase_node]))[int(ph)]
        if conn.element:
            bus = f"{conn.element}.bus{conn.terminal}"
            edits.append(f"{bus}={node_spec(model, conn.bus, _moved(conn.nodes, conn.phase_node, target))}")
            undo.append(f"{bus}={node_spec(model, conn.bus, list(conn.nodes))}")
            continue
        for dev in c.devices:
            edits.append(f"{dev}.bus1={node_spec(model, c.bus, [target, c.neutral_node])}")
            undo.append(f"{dev}.bus1={node_spec(model, c.bus, [conn.phase_node, c.neutral_node])}")
    return edits, undo


def evaluate_arrangement(
    engine: Engine,
    model: FeederModel,
    run: RunSpec,
    arrangement: Mapping[str, int] | None = None,
    *,
    progress: bool = False,
    before_step: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Run the real (OpenDSS) power flow with customers on the phases of ``arrangement``
    and return :func:`feeder_metrics` (worst PVUR, head neutral current ...).

    The customers (their Load and devices) are re-phased by text edits on ``engine``
    (one matrix rebuild), the run is solved with the engine's own load shapes and devices,
    and the edits are undone afterwards. ``arrangement=None``: as built.
    """
    edits, undo = arrangement_commands(model, arrangement or {})
    try:
        if edits:
            engine.apply(edits)
        moved = engine.model() if edits else model
        vt, measured = solve_raw(engine, moved, run, progress=progress, before_step=before_step)
        return feeder_metrics(moved, capture(moved, run, vt, measured))
    finally:
        if edits:
            engine.apply(undo)
