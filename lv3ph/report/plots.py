"""Figures of the study and hosting reports (matplotlib, drawn into memory).

:mod:`lv3ph.report.html` draws five figures from the scenario results of a study:

* ``voltage_envelope.png`` -- lowest and highest phase-to-neutral voltage of the run at
  every LV bus against its distance from the transformer, by phase, with the EN 50160
  band (``limits.v_low_v`` / ``limits.v_high_v``);
* ``unbalance.png`` -- worst PVUR and worst VUF over the feeder against time, with limits;
* ``head_neutral_current.png`` -- neutral current at the feeder head against time, and
  the phase currents of the scenario with the highest neutral current;
* ``allocation.png`` -- loss allocated to the contracts of the scenario with the most
  contracts, per method, and each method's error against the reference method;
* ``scenarios.png`` -- losses (phase/neutral/earth), traded energy, self-sufficiency,
  violation minutes and worst PVUR of every scenario.

``report.html`` embeds the figures as base64 data URIs and uses inline CSS only, so it can
be opened or mailed without network access. Its per-scenario findings are generated from

:func:`plot_hosting` draws the distribution of the hosting capacity per arrangement.

state, no global backend switch), so reports can be written from worker threads.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from lv3ph.errors import StudyError
from lv3ph.io import atomic_path

if TYPE_CHECKING:
    from lv3ph.hosting import HostingResult
    from lv3ph.results import ScenarioResult, StudySpec


DPI = 110
#: Conductor colours after IEC 60445 (L1 brown, L2 black, L3 grey, N blue).
PHASE_COLOURS: dict[str, str] = {"a": "#8c4a1c", "b": "#111111", "c": "#8a8a8a", "n": "#1f6fd1"}
PHASES = ("a", "b", "c")
LIMIT_STYLE: dict[str, Any] = {"color": "#c0392b", "linestyle": "--", "linewidth": 1.3}
PLOT_FILES = ("voltage_envelope.png", "unbalance.png", "head_neutral_current.png", "allocation.png", "scenarios.png")
#: Scenarios above which the voltage envelope shows only the three most different ones.
MAX_ENVELOPE_PANELS = 6
#: Contracts shown in the allocation figure.
TOP_CONTRACTS = 15


# ---------------------------------------------------------------------------- helpers
def _hours(ds: xr.Dataset, stepsize_s: float) -> np.ndarray:
    """Time axis in hours: ``time * stepsize / 3600`` (OpenDSS step k ends at k * stepsize)."""
    if "time" not in ds.coords and "time" not in ds.dims:
        return np.zeros(0)
    return np.asarray(ds["time"].values, dtype=float) * stepsize_s / 3600.0


def _time_axis(ax: Any, hours: np.ndarray) -> None:
    """Hour ticks every 1/2/3/6/12/24 h, depending on the span."""
    from matplotlib.ticker import MultipleLocator

    h = np.asarray(hours, dtype=float)
    h = h[np.isfinite(h)]
    span = float(h.max() - h.min()) if h.size else 0.0
    if span <= 0:
        return
    step = next((s for s in (1, 2, 3, 6, 12, 24) if span / s <= 12), 24 * math.ceil(span / 24 / 12))
    ax.xaxis.set_major_locator(MultipleLocator(step))
    ax.set_xlim(min(0.0, float(h.min())), float(h.max()) + 0.02 * span)


def _var(ds: xr.Dataset, name: str) -> xr.DataArray | None:
    """A data variable, or None when the dataset lacks it."""
    return ds[name] if name in ds.data_vars else None


def _values(ds: xr.Dataset, name: str) -> np.ndarray:
    v = _var(ds, name)
    return np.asarray(v.values, dtype=float) if v is not None else np.zeros(0)


def _finite(x: Any) -> bool:
    return math.isfinite(_num(x))


def _num(x: Any) -> float:
    """``x`` as a float; NaN when it is missing or not a number."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _nanmax(a: np.ndarray) -> float:
    a = np.asarray(a, dtype=float)
    a = a[np.isfinite(a)]
    return float(a.max()) if a.size else float("nan")


def _nanargmax(a: np.ndarray) -> int | None:
    a = np.asarray(a, dtype=float)
    if not np.isfinite(a).any():
        return None
    return int(np.nanargmax(a))


def _fmt(x: Any, dp: int = 2) -> str:
    """A number rounded to ``dp`` decimals ("n/a" for missing values, no ``-0``)."""
    if not _finite(x):
        return "n/a"
    v = round(float(x), dp) + 0.0
    return f"{v:,.{dp}f}"


def _pct_of(part: Any, whole: Any) -> float:
    if not (_finite(part) and _finite(whole)) or float(whole) == 0.0:
        return float("nan")
    return 100.0 * float(part) / float(whole)


def _clock(hours: float) -> str:
    """Hours since the start of the run as ``HH:MM`` (``day N HH:MM`` beyond a day)."""
    if not _finite(hours):
        return "n/a"
    minutes = round(float(hours) * 60.0)
    day, rest = divmod(minutes, 24 * 60)
    hhmm = f"{rest // 60:02d}:{rest % 60:02d}"
    return hhmm if day == 0 or (day == 1 and rest == 0) else f"day {day + 1} {hhmm}"


def _phase_label(i: int) -> str:
    return PHASES[i] if i < len(PHASES) else str(i + 1)


def _scenario_colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _png(fig: Figure) -> bytes:
    """Render a figure to PNG bytes (Agg)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def _message(fig: Figure, ax: Any, text: str) -> None:
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=11, wrap=True, transform=ax.transAxes)


def _methods(spec: StudySpec, allocation: pd.DataFrame) -> list[str]:
    """Allocation methods present in the table, the study's order first."""
    cols = [c for c in allocation.columns if c.endswith("_kwh") and c != "kwh_traded"]
    have = [c[: -len("_kwh")] for c in cols]
    ordered = [m for m in spec.methods if m in have]
    return ordered + [m for m in have if m not in ordered]


def _reference(methods: Sequence[str]) -> str | None:
    if "exact" in methods:
        return "exact"
    return methods[0] if methods else None


def _contracts(allocation: pd.DataFrame) -> pd.DataFrame:
    """Contract rows (grid exchanges removed)."""
    if allocation is None or len(allocation) == 0 or "contract" not in allocation.columns:
        return pd.DataFrame(columns=getattr(allocation, "columns", []))
    return allocation[~allocation["contract"].astype(str).str.startswith("grid:")]


def _lv_envelope(ds: xr.Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(distance km (bus,), vmin (bus, phase), vmax (bus, phase)) of buses with a distance.

    Buses without a finite distance (the MV side of the transformer, islands) are dropped.
    """
    vmin, vmax, dist = _var(ds, "vmin_pn_v"), _var(ds, "vmax_pn_v"), _var(ds, "bus_distance_km")
    if vmin is None or vmax is None or dist is None:
        return None
    vmin = vmin.transpose("bus", ...) if "bus" in vmin.dims else vmin
    vmax = vmax.transpose("bus", ...) if "bus" in vmax.dims else vmax
    d = np.asarray(dist.values, dtype=float)
    lo = np.asarray(vmin.values, dtype=float).reshape(d.size, -1)
    hi = np.asarray(vmax.values, dtype=float).reshape(d.size, -1)
    keep = np.isfinite(d)
    return d[keep], lo[keep], hi[keep]


# ---------------------------------------------------------------------------- figures
def _pick_distinct(results: Sequence[ScenarioResult], k: int) -> list[int]:
    """Indices of ``k`` scenarios whose voltage envelopes differ most (farthest-point).

    Starts from the first scenario (usually the base case) and adds, each time, the one
    farthest (RMS over buses and phases) from all chosen so far.
    """
    feats = []
    for r in results:
        env = _lv_envelope(r.series)
        feats.append(None if env is None else np.concatenate([env[1].ravel(), env[2].ravel()]))
    size = max((f.size for f in feats if f is not None), default=0)
    mat = np.full((len(results), size), np.nan)
    for i, f in enumerate(feats):
        if f is not None and f.size == size:
            mat[i] = f
    chosen = [0]
    while len(chosen) < min(k, len(results)):
        best, best_d = None, -1.0
        for i in range(len(results)):
            if i in chosen:
                continue
            d = min(
                float(np.sqrt(np.nanmean((mat[i] - mat[j]) ** 2))) if np.isfinite(mat[i] - mat[j]).any() else 0.0
                for j in chosen
            )
            if d > best_d:
                best, best_d = i, d
        assert best is not None
        chosen.append(best)
    return sorted(chosen)


def plot_voltage_envelope(spec: StudySpec, results: Sequence[ScenarioResult]) -> Figure:
    """Min/max phase-to-neutral voltage per bus against distance, by phase, per scenario."""
    n = len(results)
    idx = list(range(n)) if n <= MAX_ENVELOPE_PANELS else _pick_distinct(results, 3)
    ncols = min(3, max(1, len(idx)))
    nrows = max(1, math.ceil(len(idx) / ncols))
    fig = Figure(figsize=(4.6 * ncols, 3.6 * nrows + 0.9), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)).ravel()
    lo_lim, hi_lim = spec.limits.v_low_v, spec.limits.v_high_v
    vals: list[float] = [v for v in (lo_lim, hi_lim) if v is not None]
    if not idx:
        _message(fig, axes[0], "No scenarios.")
    for ax, i in zip(axes, idx, strict=False):
        r = results[i]
        ax.set_title(r.scenario.name, fontsize=9)
        env = _lv_envelope(r.series)
        if env is None or env[0].size == 0 or not (np.isfinite(env[1]).any() or np.isfinite(env[2]).any()):
            ax.text(0.5, 0.5, "no voltage data", ha="center", va="center", transform=ax.transAxes)
        else:
            d, lo, hi = env
            for p in range(lo.shape[1]):
                colour = PHASE_COLOURS.get(_phase_label(p), "C0")
                ax.scatter(d, hi[:, p], s=7, marker="^", color=colour, alpha=0.6, linewidths=0)
                ax.scatter(d, lo[:, p], s=7, marker="v", color=colour, alpha=0.6, linewidths=0)
            vals += [float(np.nanmin(lo)) if np.isfinite(lo).any() else np.nan, _nanmax(hi)]
        for lim in (lo_lim, hi_lim):
            if lim is not None:
                ax.axhline(lim, **LIMIT_STYLE)
        ax.grid(True, alpha=0.3)
    for ax in axes[len(idx) :]:
        ax.set_axis_off()
    vals = [v for v in vals if _finite(v)]
    if vals:
        span = max(vals) - min(vals)
        pad = 0.05 * span if span > 0 else 1.0
        axes[0].set_ylim(min(vals) - pad, max(vals) + pad)
    for ax in axes.reshape(nrows, ncols)[:, 0]:
        ax.set_ylabel("phase-to-neutral voltage (V)")
    for ax in axes.reshape(nrows, ncols)[-1, :]:
        ax.set_xlabel("distance from transformer (km)")
    handles = [Line2D([], [], marker="s", linestyle="", color=PHASE_COLOURS[p], label=f"phase {p}") for p in PHASES]
    handles += [
        Line2D([], [], marker="^", linestyle="", color="0.4", label="highest over the run"),
        Line2D([], [], marker="v", linestyle="", color="0.4", label="lowest over the run"),
    ]
    if lo_lim is not None or hi_lim is not None:
        handles.append(Line2D([], [], label=f"EN 50160 band ({_fmt(lo_lim, 0)}-{_fmt(hi_lim, 0)} V)", **LIMIT_STYLE))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    chosen = "" if len(idx) == n else f" ({len(idx)} most different of {n} scenarios)"
    fig.suptitle(f"Voltage envelope along the feeder{chosen}", fontsize=12)
    return fig


def plot_unbalance(spec: StudySpec, results: Sequence[ScenarioResult]) -> Figure:
    """Worst PVUR and worst VUF over the feeder against time, per scenario, with limits."""
    fig = Figure(figsize=(10, 6.4 + 0.22 * math.ceil(len(results) / 3)), layout="constrained")
    axes = fig.subplots(2, 1, sharex=True)
    colours = _scenario_colours(len(results))
    stepsize = spec.run.stepsize_s
    for ax, var, label, lim in (
        (axes[0], "pvur_max_pct", "worst PVUR (%)", spec.limits.pvur_pct),
        (axes[1], "vuf_max_pct", "worst VUF (%)", spec.limits.vuf_pct),
    ):
        for r, colour in zip(results, colours, strict=True):
            y = _values(r.series, var)
            h = _hours(r.series, stepsize)
            if y.size and y.size == h.size:
                ax.plot(
                    h,
                    y,
                    color=colour,
                    linewidth=1.1,
                    marker="o" if y.size < 30 else None,
                    markersize=3,
                    label=r.scenario.name,
                )
        if lim is not None:
            ax.axhline(lim, **LIMIT_STYLE, label=f"limit {_fmt(lim, 1)} %")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    axes[0].set_title("Phase voltage unbalance rate (PVUR), highest bus at each step", fontsize=10)
    axes[1].set_title("Voltage unbalance factor (VUF = |V2|/|V1|), highest bus at each step", fontsize=10)
    axes[1].set_xlabel("time (h)")
    _time_axis(axes[1], np.concatenate([_hours(r.series, stepsize) for r in results] or [np.zeros(0)]))
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle("Voltage unbalance over the feeder", fontsize=12)
    return fig


def plot_head_neutral_current(spec: StudySpec, results: Sequence[ScenarioResult]) -> Figure:
    """Neutral current at the feeder head per scenario; phase currents of one scenario."""
    fig = Figure(figsize=(10, 6.6 + 0.22 * math.ceil(len(results) / 3)), layout="constrained")
    axes = fig.subplots(2, 1, sharex=True)
    colours = _scenario_colours(len(results))
    stepsize = spec.run.stepsize_s
    peaks = []
    for r, colour in zip(results, colours, strict=True):
        y = _values(r.series, "head_neutral_current_a")
        h = _hours(r.series, stepsize)
        peaks.append(_nanmax(y) if y.size else float("nan"))
        if y.size and y.size == h.size:
            axes[0].plot(
                h,
                y,
                color=colour,
                linewidth=1.1,
                marker="o" if y.size < 30 else None,
                markersize=3,
                label=r.scenario.name,
            )
    axes[0].set_ylabel("neutral current (A)")
    axes[0].set_title("Neutral current at the feeder head", fontsize=10)
    axes[0].set_ylim(bottom=0)
    axes[0].grid(True, alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    pick = _nanargmax(np.asarray(peaks)) if peaks else None
    ax = axes[1]
    if pick is None:
        ax.text(0.5, 0.5, "no head current data", ha="center", va="center", transform=ax.transAxes)
    else:
        r = results[pick]
        h = _hours(r.series, stepsize)
        cur = _var(r.series, "head_current_a")
        if cur is not None and "phase" in cur.dims:
            cur = cur.transpose("time", "phase")
            for p in range(cur.sizes["phase"]):
                lab = _phase_label(p)
                ax.plot(
                    h,
                    np.asarray(cur.isel(phase=p).values, dtype=float),
                    color=PHASE_COLOURS.get(lab, "C0"),
                    linewidth=1.1,
                    label=f"phase {lab}",
                )
        ax.plot(
            h, _values(r.series, "head_neutral_current_a"), color=PHASE_COLOURS["n"], linewidth=1.4, label="neutral"
        )
        ax.set_title(f"Currents at the feeder head in {r.scenario.name} (highest neutral current)", fontsize=10)
        ax.legend(fontsize=8, loc="upper left", ncol=4)
    ax.set_ylabel("current (A)")
    ax.set_xlabel("time (h)")
    _time_axis(ax, np.concatenate([_hours(r.series, stepsize) for r in results] or [np.zeros(0)]))
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    fig.suptitle("Feeder-head currents", fontsize=12)
    return fig


def plot_allocation(spec: StudySpec, results: Sequence[ScenarioResult]) -> Figure:
    """Loss per contract by method (scenario with the most contracts) and method errors."""
    counts = [len(_contracts(r.allocation)) for r in results]
    pick = int(np.argmax(counts)) if counts and max(counts) > 0 else None
    if pick is None:
        fig = Figure(figsize=(9, 3), layout="constrained")
        _message(fig, fig.subplots(), "No scenario has P2P contracts: no loss was allocated to contracts.")
        fig.suptitle("Loss allocated to contracts", fontsize=12)
        return fig
    r = results[pick]
    contracts = _contracts(r.allocation)
    methods = _methods(spec, contracts)
    ref = _reference(methods)
    assert ref is not None
    table = contracts.copy()
    for m in methods:
        table[f"{m}_kwh"] = pd.to_numeric(table[f"{m}_kwh"], errors="coerce")
    top = table.sort_values(f"{ref}_kwh", ascending=False, na_position="last").head(TOP_CONTRACTS)
    biggest = _nanmax(top[[f"{m}_kwh" for m in methods]].to_numpy(dtype=float))
    scale, unit = (1000.0, "Wh") if _finite(biggest) and biggest < 1.0 else (1.0, "kWh")
    others = [m for m in methods if m != ref]
    fig = Figure(figsize=(max(9.0, 0.62 * len(top) + 3), 8.2), layout="constrained")
    ax0, ax1 = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    x = np.arange(len(top))
    width = 0.8 / max(1, len(methods))
    method_colours = {m: f"C{i}" for i, m in enumerate(methods)}
    for k, m in enumerate(methods):
        ax0.bar(
            x + (k - (len(methods) - 1) / 2) * width,
            top[f"{m}_kwh"].to_numpy(dtype=float) * scale,
            width,
            color=method_colours[m],
            label=m,
        )
    ax0.set_ylabel(f"loss allocated ({unit})")
    ax0.set_title(f"{r.scenario.name}: {len(top)} of {len(table)} contracts with the largest {ref} loss", fontsize=10)
    ax0.legend(fontsize=8)
    ax0.grid(True, axis="y", alpha=0.3)
    ref_total = float(np.nansum(table[f"{ref}_kwh"].to_numpy(dtype=float)))
    if not others:
        ax1.text(
            0.5,
            0.5,
            "only one allocation method: nothing to compare",
            ha="center",
            va="center",
            transform=ax1.transAxes,
        )
    elif ref_total == 0.0:
        ax1.text(
            0.5,
            0.5,
            f"the {ref} contract total is zero: errors cannot be normalised",
            ha="center",
            va="center",
            transform=ax1.transAxes,
        )
    else:
        w = 0.8 / len(others)
        for k, m in enumerate(others):
            err = (top[f"{m}_kwh"].to_numpy(dtype=float) - top[f"{ref}_kwh"].to_numpy(dtype=float)) / ref_total * 100.0
            total_err = (float(np.nansum(table[f"{m}_kwh"].to_numpy(dtype=float))) - ref_total) / ref_total * 100.0
            ax1.bar(
                x + (k - (len(others) - 1) / 2) * w,
                err,
                w,
                color=method_colours[m],
                label=f"{m} (all contracts: {total_err:+.1f} %)",
            )
        ax1.axhline(0.0, color="0.3", linewidth=0.8)
        ax1.legend(fontsize=8)
    ax1.set_ylabel(f"error vs {ref}\n(% of {ref} contract total)")
    ax1.set_title(
        f"Error per contract, in % of the {ref} total over all contracts ({_fmt(ref_total, 3)} kWh)", fontsize=10
    )
    ax1.grid(True, axis="y", alpha=0.3)
    ax1.set_xticks(x)
    ax1.set_xticklabels([str(c) for c in top["contract"]], rotation=45, ha="right", fontsize=8)
    ax1.set_xlabel("contract (seller>buyer)")
    fig.suptitle("Loss allocated to P2P contracts, by method", fontsize=12)
    return fig


def plot_scenarios(spec: StudySpec, results: Sequence[ScenarioResult], summary: pd.DataFrame) -> Figure:
    """Scenario comparison: losses by part, traded energy, self-sufficiency, violations, PVUR."""
    names = (
        [str(x) for x in summary["scenario"]] if "scenario" in summary.columns else [r.scenario.name for r in results]
    )

    def col(name: str) -> np.ndarray:
        if name not in summary.columns:
            return np.full(len(names), np.nan)
        return pd.to_numeric(summary[name], errors="coerce").to_numpy(dtype=float)

    fig = Figure(figsize=(17, 2.2 + 0.36 * max(2, len(names))), layout="constrained")
    axes = fig.subplots(1, 5, sharey=True)
    y = np.arange(len(names))
    if not names:
        _message(fig, axes[0], "No scenarios.")
        return fig
    left = np.zeros(len(names))
    parts = (("phase", "#4c72b0"), ("neutral", "#9ecae1"), ("earth", "#55a868"))
    for part, colour in parts:
        v = np.nan_to_num(col(f"loss_{part}_kwh"))
        axes[0].barh(y, v, left=left, color=colour, label=f"{part} conductors" if part == "phase" else part)
        left += v
    totals = col("loss_kwh")
    totals = np.where(np.isfinite(totals), totals, left)
    _bar_labels(axes[0], y, totals, 2)
    _xlim(axes[0], totals)
    axes[0].set_title("losses (kWh)", fontsize=10)
    axes[0].legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.06), ncol=3, frameon=False)
    panels = (
        (axes[1], "traded_kwh", "traded locally (kWh)", None, 1),
        (axes[2], "self_sufficiency_pct", "self-sufficiency (%)", None, 1),
        (axes[3], "violation_minutes", "minutes with violations", None, 0),
        (axes[4], "pvur_max_pct", "worst PVUR (%)", spec.limits.pvur_pct, 2),
    )
    for ax, name, title, lim, dp in panels:
        v = col(name)
        ax.barh(y, np.nan_to_num(v), color="#7a7a7a")
        _bar_labels(ax, y, v, dp)
        if lim is not None:
            ax.axvline(lim, **LIMIT_STYLE, label=f"limit {_fmt(lim, 1)} %")
            ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.06), frameon=False)
        _xlim(ax, v if lim is None else np.append(v, lim))
        ax.set_title(title, fontsize=10)
    for ax in axes:
        ax.grid(True, axis="x", alpha=0.3)
    axes[0].set_yticks(y)
    axes[0].set_yticklabels(names, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle("Scenario comparison", fontsize=12)
    return fig


def _xlim(ax: Any, values: np.ndarray) -> None:
    """x from 0 to 20 % beyond the largest value (room for the value labels)."""
    top = _nanmax(np.append(values, 0.0))
    ax.set_xlim(0, 1.2 * top if top > 0 else 1.0)


def _bar_labels(ax: Any, y: np.ndarray, values: np.ndarray, dp: int) -> None:
    """Value at the end of each horizontal bar ("n/a" where missing)."""
    for yi, vi in zip(y, values, strict=True):
        txt = _fmt(vi, dp) if _finite(vi) else "n/a"
        ax.text(float(vi) if _finite(vi) else 0.0, yi, f" {txt}", va="center", ha="left", fontsize=7)


def plot_hosting(results: Sequence[HostingResult] | Mapping[str, HostingResult], path: str | Path) -> Path:
    """Histogram and ECDF of the hosting capacity of one or several results, as a PNG
    written atomically (a mapping gives each result its label)."""
    items = list(results.items()) if isinstance(results, Mapping) else [(r.label, r) for r in results]
    if not items:
        raise StudyError("plot_hosting: no result to plot")
    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax_h, ax_e = fig.subplots(1, 2)
    all_hc = np.concatenate([r.placements["hosting_kw"].to_numpy(dtype=float) for _, r in items])
    top = float(all_hc.max()) if all_hc.size and all_hc.max() > 0 else 1.0
    bins = np.linspace(0.0, top * 1.02, 31)
    for label, r in items:
        hc = np.sort(r.placements["hosting_kw"].to_numpy(dtype=float))
        s = r.summary
        text = f"{label} (n={hc.size}, median {s['median_kw']:.1f} kWp)"
        ax_h.hist(hc, bins=bins, alpha=0.5, label=text)
        ax_e.step(np.r_[0.0, hc], np.arange(hc.size + 1) / max(hc.size, 1), where="post", label=text)
    ax_h.set(xlabel="hosting capacity (kWp installed)", ylabel="placements", title="distribution")
    ax_e.set(
        xlabel="hosting capacity (kWp installed)",
        ylabel="share of placements at or below",
        title="ECDF",
        ylim=(0, 1.02),
    )
    ax_e.grid(alpha=0.3)
    ax_h.legend(fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return Path(path)
