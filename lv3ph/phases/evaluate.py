"""The physical effect of an arrangement: re-phasing edits, solved by OpenDSS, and the
headline imbalance metrics of a captured power flow."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import xarray as xr

from lv3ph.dss import Engine
from lv3ph.errors import ModelError, StudyError
from lv3ph.model import Customer, FeederModel
from lv3ph.phases.customers import _index, _why_not_movable, as_built
from lv3ph.powerflow import RunSpec, capture, solve_raw
from lv3ph.unbalance import unbalance


def _head_line(model: FeederModel) -> int:
    """Position of the line that leaves the transformer's LV bus (or the first line)."""
    tx = [e for e in model.elements if e.kind == "transformer"]
    lines = [i for i, e in enumerate(model.elements) if e.kind == "line"]
    if not lines:
        raise ModelError(f"{model.path} has no lines")
    if tx:
        lv = tx[0].buses[-1]
        for i in lines:
            if model.elements[i].buses[0] == lv:
                return i
    return lines[0]


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
    head = _head_line(model)
    e = model.elements[head]
    cur = np.asarray(pf.current.isel(element=head).values)[:, : e.n_conductors]
    nodes = e.nodes[: e.n_conductors]
    neutral = [i for i, x in enumerate(nodes) if x >= 0 and model.node_terminal[x] >= 4]
    i_n = np.abs(cur[:, neutral[0]]) if neutral else np.abs(cur.sum(axis=1))
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


def _bus1(model: FeederModel, c: Customer, phase: int) -> str:
    neutral = f".{int(model.node_terminal[c.neutral_node])}" if c.neutral_node >= 0 else ""
    return f"{c.bus}.{phase}{neutral}"


def arrangement_commands(model: FeederModel, arrangement: Mapping[str, int]) -> tuple[list[str], list[str]]:
    """OpenDSS edits that move customers (their Load and devices) to the phases of
    ``arrangement``, and the edits that undo them. One system-matrix rebuild when applied."""
    base = as_built(model)
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
        why = _why_not_movable(model, c)
        if why is not None:
            raise StudyError(f"customer {c.name} {why}")
        for dev in c.devices:
            edits.append(f"{dev}.bus1={_bus1(model, c, int(ph))}")
            undo.append(f"{dev}.bus1={_bus1(model, c, base[c.name])}")
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
