"""Feeder map: the lines of a feeder coloured by a chosen quantity, its customers by phase.

Input is a scenario's ``series`` Dataset (see :func:`lv3ph.study.feeder_variables`): bus
coordinates, the lines' end buses and per bus / per line worst values over the run, the
customers (bus, phases, devices) and the earth electrodes. :func:`map_data` turns it into
drawable geometry; :func:`plot_feeder_map` draws a static matplotlib figure and
:func:`map_payload` the numbers the interactive map of :mod:`lv3ph.report.html` draws.

Where the lines are: at the OpenDSS ``BusCoords`` of their end buses. A bus without
coordinates takes the mean position of its neighbours that have them (repeated outwards, so
a service cable added to a feeder with coordinates sits on its feeder bus). When no bus has
coordinates, a networkx layout (Kamada-Kawai, line lengths as distances; spring layout above
:data:`MAX_KAMADA_KAWAI` buses) of the line topology is drawn instead.

What a line's colour means (:data:`QUANTITIES`): per-line quantities (neutral current,
loading, loss) are the line's own value; per-bus quantities (voltages, PVUR, VUF) are the
worse of its two end buses (highest, or lowest for the lowest voltage). Values map linearly
from the smallest to the largest finite value onto the colour map; lines without a value
are light grey.

Customers sit at their bus, coloured by phase (IEC 60445: a brown, b black, c grey; several
phases purple). PV, batteries and EVs show as small symbols beside the customer; earth
electrodes (elements of kind ``earthing``) as green down-triangles and transformers as
squares at their LV bus.
Device symbols and electrodes are drawn a few points beside their customer's bus
(:data:`DEVICE_STYLE`, :data:`ELECTRODE_OFFSET`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib import colormaps
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize, to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.transforms import ScaledTranslation

from lv3ph.report.plots import PHASE_COLOURS, _contracts

__all__ = ["DEVICE_STYLE", "QUANTITIES", "MapData", "Quantity", "map_data", "map_payload", "plot_feeder_map"]

MAX_KAMADA_KAWAI = 400
#: Colour of customers on more than one phase.
MULTI_PHASE_COLOUR = "#7b3fa0"
#: Device symbols: (matplotlib marker, colour, offset right/up in points, label).
DEVICE_STYLE: dict[str, tuple[str, str, tuple[float, float], str]] = {
    "pv": ("*", "#f2b705", (6.0, 5.0), "PV"),
    "battery": ("s", "#2a9d3f", (6.0, -5.0), "battery"),
    "ev": ("P", "#1f6fd1", (-6.0, 5.0), "EV"),
}
ELECTRODE_STYLE: dict[str, Any] = {"marker": "v", "color": "#1b7f3b", "s": 26, "zorder": 4}
#: Electrodes are drawn this far (points, right/up) from their bus, beside the customer there.
ELECTRODE_OFFSET = (-6.0, -5.0)
TRANSFORMER_STYLE: dict[str, Any] = {"marker": "s", "color": "#c0392b", "s": 110, "zorder": 6}
N_COLOUR_BINS = 12


@dataclass(frozen=True)
class Quantity:
    """A map colouring: label, unit, where it lives (``bus`` or ``line``), the series
    variable, how two end buses combine (``max``/``min``) and the colour map."""

    label: str
    unit: str
    on: str
    variable: str
    worst: str
    cmap: str


QUANTITIES: dict[str, Quantity] = {
    "vmax_v": Quantity("highest phase-to-neutral voltage", "V", "bus", "vmax_pn_v", "max", "plasma"),
    "vmin_v": Quantity("lowest phase-to-neutral voltage", "V", "bus", "vmin_pn_v", "min", "plasma_r"),
    "pvur_pct": Quantity("worst PVUR", "%", "bus", "pvur_bus_max_pct", "max", "magma_r"),
    "vuf_pct": Quantity("worst VUF", "%", "bus", "vuf_bus_max_pct", "max", "magma_r"),
    "neutral_a": Quantity("peak neutral current", "A", "line", "line_neutral_current_max_a", "max", "viridis"),
    "loading_pct": Quantity("peak loading", "%", "line", "line_loading_max_pct", "max", "viridis"),
    "loss_kwh": Quantity("loss in the line over the run", "kWh", "line", "line_loss_kwh", "max", "cividis"),
}


@dataclass(frozen=True)
class MapData:
    """Drawable feeder: line segments ``(n, 2, 2)`` (x, y of both ends) with a value per
    quantity, customers (position, phase label, devices, allocated loss kWh), electrodes
    and transformers ``(k, 2)``; ``source`` says where positions came from."""

    lines: tuple[str, ...]
    segments: np.ndarray
    values: dict[str, np.ndarray]
    customers: tuple[str, ...]
    customer_xy: np.ndarray
    customer_phase: tuple[str, ...]
    customer_devices: tuple[tuple[str, ...], ...]
    customer_loss_kwh: np.ndarray
    electrodes: np.ndarray
    transformers: np.ndarray
    source: str


# ---------------------------------------------------------------------------- geometry
def bus_positions(
    buses: Sequence[str], x: np.ndarray, y: np.ndarray, edges: Sequence[tuple[str, str, float]]
) -> tuple[dict[str, tuple[float, float]], str]:
    """Position of every bus: its coordinates, filled from neighbours, or a graph layout.

    ``edges`` are (bus1, bus2, length) of the lines (and other branches that join buses).
    Returns the positions and ``"buscoords"`` or ``"layout"``.
    """
    pos = {b: (float(px), float(py)) for b, px, py in zip(buses, x, y, strict=True) if np.isfinite(px + py)}
    neighbours: dict[str, set[str]] = {}
    for a, b, _ in edges:
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    if pos:
        missing = [b for b in neighbours if b not in pos]
        while missing:
            placed = {}
            for b in missing:
                near = [pos[n] for n in neighbours[b] if n in pos]
                if near:
                    placed[b] = (float(np.mean([p[0] for p in near])), float(np.mean([p[1] for p in near])))
            if not placed:
                break
            pos.update(placed)
            missing = [b for b in missing if b not in placed]
        return pos, "buscoords"
    import networkx as nx

    graph = nx.Graph()
    graph.add_nodes_from(neighbours)
    for a, b, length in edges:
        graph.add_edge(a, b, length=max(float(length), 1e-6) if np.isfinite(length) else 1.0)
    if graph.number_of_nodes() == 0:
        return {}, "layout"
    if graph.number_of_nodes() <= MAX_KAMADA_KAWAI:
        layout = nx.kamada_kawai_layout(graph, weight="length")
    else:
        layout = nx.spring_layout(graph, seed=0)
    return {str(b): (float(p[0]), float(p[1])) for b, p in layout.items()}, "layout"


def _phase_label(phases: str) -> str:
    """``"1"``/``"a"`` -> ``"a"``; several phases -> their letters (``"abc"``)."""
    letters = "".join(sorted({"1": "a", "2": "b", "3": "c"}.get(p, p) for p in str(phases).lower() if p in "123abc"))
    return letters or "?"


def phase_colour(label: str) -> str:
    """Marker colour of a customer on ``label`` (one phase: IEC colour; several: purple)."""
    return PHASE_COLOURS.get(label, MULTI_PHASE_COLOUR if len(label) > 1 else "#999999")


def customer_losses_kwh(allocation: pd.DataFrame | None, method: str | None, customers: Sequence[str]) -> np.ndarray:
    """Loss allocated to each customer by ``method``, kWh: its grid exchange (``grid:<name>``
    row) plus half of each contract it sells or buys in."""
    out = pd.Series(0.0, index=list(customers))
    col = f"{method}_kwh"
    if allocation is None or method is None or col not in allocation.columns or not len(allocation):
        return np.full(len(customers), np.nan)
    kwh = pd.to_numeric(allocation[col], errors="coerce").fillna(0.0)
    grid = allocation["contract"].astype(str).str.startswith("grid:")
    own = kwh[grid].groupby(allocation["contract"][grid].astype(str).str[5:]).sum()
    out = out.add(own.reindex(out.index, fill_value=0.0), fill_value=0.0)
    pairs = _contracts(allocation)
    if len(pairs):
        half = kwh.loc[pairs.index] / 2.0
        for side in ("seller", "buyer"):
            out = out.add(half.groupby(pairs[side].astype(str)).sum().reindex(out.index, fill_value=0.0))
    return out.to_numpy(dtype=float)


def map_data(series: xr.Dataset, allocation: pd.DataFrame | None = None, method: str | None = None) -> MapData | None:
    """Geometry and values of the feeder map of one scenario (None without line data)."""
    need = ("line_bus1", "line_bus2", "bus_x", "bus_y", "customer_bus")
    if any(v not in series.data_vars for v in need) or series.sizes.get("line", 0) == 0:
        return None
    buses = [str(b) for b in series.bus.values]
    b1 = [str(b) for b in series.line_bus1.values]
    b2 = [str(b) for b in series.line_bus2.values]
    length = series["bus_distance_km"].values if "bus_distance_km" in series else None
    dist = dict(zip(buses, length, strict=True)) if length is not None else {}
    edges = [(a, b, abs(float(dist.get(a, np.nan)) - float(dist.get(b, np.nan)))) for a, b in zip(b1, b2, strict=True)]
    pos, source = bus_positions(buses, series.bus_x.values, series.bus_y.values, edges)
    nan2 = (np.nan, np.nan)
    segments = np.array([[pos.get(a, nan2), pos.get(b, nan2)] for a, b in zip(b1, b2, strict=True)], dtype=float)
    values: dict[str, np.ndarray] = {}
    for key, q in QUANTITIES.items():
        if q.variable not in series.data_vars:
            continue
        da = series[q.variable]
        if q.on == "line":
            values[key] = np.asarray(da.values, dtype=float)
            continue
        if "phase" in da.dims:
            da = da.max("phase") if q.worst == "max" else da.min("phase")
        at = dict(zip(buses, np.asarray(da.values, dtype=float), strict=True))
        ends = np.array([[at.get(a, np.nan), at.get(b, np.nan)] for a, b in zip(b1, b2, strict=True)], dtype=float)
        with np.errstate(all="ignore"):
            all_nan = np.isnan(ends).all(axis=1)
            worst = (
                np.nanmax(ends, axis=1, initial=-np.inf)
                if q.worst == "max"
                else np.nanmin(ends, axis=1, initial=np.inf)
            )
        values[key] = np.where(all_nan, np.nan, worst)
    names = [str(c) for c in series.customer.values]
    cbus = [str(b) for b in series.customer_bus.values]
    phases = series["customer_phases"].values if "customer_phases" in series else [""] * len(names)
    devices = series["customer_devices"].values if "customer_devices" in series else [""] * len(names)

    def xy(bs: Sequence[str]) -> np.ndarray:
        return np.array([pos.get(b, nan2) for b in bs], dtype=float).reshape(-1, 2)

    return MapData(
        lines=tuple(str(n) for n in series.line.values),
        segments=segments,
        values=values,
        customers=tuple(names),
        customer_xy=xy(cbus),
        customer_phase=tuple(_phase_label(str(p)) for p in phases),
        customer_devices=tuple(tuple(d for d in str(s).split("+") if d) for s in devices),
        customer_loss_kwh=customer_losses_kwh(allocation, method, names),
        electrodes=xy([str(b) for b in series["electrode_bus"].values] if "electrode_bus" in series else []),
        transformers=xy([str(b) for b in series["transformer_bus"].values] if "transformer_bus" in series else []),
        source=source,
    )


def colour_norm(values: np.ndarray) -> Normalize:
    """Linear map from the smallest to the largest finite value (a flat range is widened)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return Normalize(vmin=lo, vmax=hi)


# ---------------------------------------------------------------------------- static
def plot_feeder_map(data: MapData, quantity: str = "vmax_v", *, title: str = "", limit: float | None = None) -> Figure:
    """The feeder map as a matplotlib Figure (lines coloured by ``quantity``).

    ``limit`` (in the quantity's unit) is marked on the colour bar when given.
    """
    q = QUANTITIES[quantity]
    values = data.values.get(quantity, np.full(len(data.lines), np.nan))
    fig = Figure(figsize=(9.5, 8.0), layout="constrained")
    ax = fig.subplots()
    cmap = colormaps[q.cmap].with_extremes(bad="#d0d0d0")
    norm = colour_norm(values)
    keep = np.isfinite(data.segments).all(axis=(1, 2))
    lc = LineCollection(list(data.segments[keep]), cmap=cmap, norm=norm, linewidths=2.2, zorder=2)
    lc.set_array(np.ma.masked_invalid(values[keep]))
    lc.set_gid("lines")
    ax.add_collection(lc)
    bar = fig.colorbar(lc, ax=ax, shrink=0.75, pad=0.01)
    bar.set_label(f"{q.label} ({q.unit})")
    if limit is not None and float(norm.vmin or 0.0) <= limit <= float(norm.vmax or 0.0):
        bar.ax.axhline(limit, color="#c0392b", linewidth=2)
    handles: list[Any] = []
    on = np.isfinite(data.customer_xy).all(axis=1)
    if on.any():
        colours = [phase_colour(p) for p in data.customer_phase]
        sc = ax.scatter(
            data.customer_xy[on, 0],
            data.customer_xy[on, 1],
            c=[colours[i] for i in np.flatnonzero(on)],
            s=30,
            edgecolors="white",
            linewidths=0.6,
            zorder=5,
        )
        sc.set_gid("customers")
        present = sorted({data.customer_phase[i] for i in np.flatnonzero(on)})
        handles += [
            Line2D([], [], marker="o", linestyle="", color=phase_colour(p), label=f"customer, phase {p}")
            for p in present
        ]
    for device, (marker, colour, (dx, dy), label) in DEVICE_STYLE.items():
        has = np.array([device in d for d in data.customer_devices], dtype=bool) & on
        if has.any():
            shift = ax.transData + ScaledTranslation(dx / 72.0, dy / 72.0, fig.dpi_scale_trans)
            art = ax.scatter(
                data.customer_xy[has, 0],
                data.customer_xy[has, 1],
                marker=marker,
                color=colour,
                s=28,
                edgecolors="0.2",
                linewidths=0.3,
                transform=shift,
                zorder=6,
            )
            art.set_gid(f"device-{device}")
            handles.append(Line2D([], [], marker=marker, linestyle="", color=colour, label=label))
    for xy, style, label, gid in (
        (data.electrodes, ELECTRODE_STYLE, "earth electrode", "electrodes"),
        (data.transformers, TRANSFORMER_STYLE, "transformer", "transformers"),
    ):
        xy = xy[np.isfinite(xy).all(axis=1)] if len(xy) else xy
        if len(xy):
            dx, dy = ELECTRODE_OFFSET if gid == "electrodes" else (0.0, 0.0)
            shift = ax.transData + ScaledTranslation(dx / 72.0, dy / 72.0, fig.dpi_scale_trans)
            art = ax.scatter(xy[:, 0], xy[:, 1], transform=shift, **style)
            art.set_gid(gid)
            handles.append(Line2D([], [], marker=style["marker"], linestyle="", color=style["color"], label=label))
    pts = np.concatenate([data.segments[keep].reshape(-1, 2), data.customer_xy[on]])
    if len(pts):
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        pad = 0.04 * max(float((hi - lo).max()), 1e-9)
        ax.set_xlim(lo[0] - pad, hi[0] + pad)
        ax.set_ylim(lo[1] - pad, hi[1] + pad)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xticks([])
    ax.set_yticks([])
    where = "bus coordinates" if data.source == "buscoords" else "graph layout (the model has no bus coordinates)"
    ax.set_title(f"{title}{': ' if title else ''}{q.label} ({where})", fontsize=11)
    if handles:
        ax.legend(handles=handles, fontsize=8, loc="best", framealpha=0.85)
    return fig


# ---------------------------------------------------------------------------- interactive
def _round(a: np.ndarray, digits: int = 5) -> list[float | None]:
    """Values for JSON: significant-digit rounding, NaN/inf -> None."""
    out: list[float | None] = []
    for v in np.asarray(a, dtype=float).ravel():
        out.append(float(f"{v:.{digits}g}") if np.isfinite(v) else None)
    return out


def colour_scale(name: str, n: int = N_COLOUR_BINS) -> list[str]:
    """``n`` hex colours sampled evenly from the matplotlib colour map ``name``."""
    cmap = colormaps[name]
    return [to_hex(cmap(i / (n - 1))) for i in range(n)]


def quantity_meta() -> dict[str, dict[str, Any]]:
    """Label, unit and colour bins of each quantity, for the page's script."""
    return {k: {"label": q.label, "unit": q.unit, "colours": colour_scale(q.cmap)} for k, q in QUANTITIES.items()}


def map_payload(data: MapData) -> dict[str, Any]:
    """The map of one scenario as plain JSON-able numbers for the page's script.

    Positions are relative to the lower left corner of the lines (``x0``, ``y0``), so
    that 5 significant digits keep them to a centimetre on a feeder of a few hundred metres.
    """
    seg = data.segments
    finite = seg[np.isfinite(seg).all(axis=(1, 2))].reshape(-1, 2)
    x0, y0 = (finite.min(axis=0) if len(finite) else np.zeros(2)).tolist()

    def rel(xy: np.ndarray, k: int) -> list[float | None]:
        return _round(xy[..., k] - (x0, y0)[k]) if len(xy) else []

    return {
        "x0": x0,
        "y0": y0,
        "lines": list(data.lines),
        "x1": rel(seg[:, 0], 0),
        "y1": rel(seg[:, 0], 1),
        "x2": rel(seg[:, 1], 0),
        "y2": rel(seg[:, 1], 1),
        "values": {k: _round(v) for k, v in data.values.items()},
        "customers": list(data.customers),
        "cx": rel(data.customer_xy, 0),
        "cy": rel(data.customer_xy, 1),
        "phase": list(data.customer_phase),
        "phase_colour": [phase_colour(p) for p in data.customer_phase],
        "devices": ["+".join(d) for d in data.customer_devices],
        "loss_kwh": _round(data.customer_loss_kwh),
        "ex": rel(data.electrodes, 0),
        "ey": rel(data.electrodes, 1),
        "tx": rel(data.transformers, 0),
        "ty": rel(data.transformers, 1),
        "source": data.source,
    }


def device_meta() -> Mapping[str, Any]:
    """Device symbols for the page's script (plotly symbol names)."""
    symbols = {"pv": "star", "battery": "square", "ev": "cross"}
    return {k: {"symbol": symbols[k], "colour": v[1], "label": v[3]} for k, v in DEVICE_STYLE.items()}
