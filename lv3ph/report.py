"""Study report: PNG plots and a static, self-contained ``report.html``.

:func:`write_report` draws five figures from the scenario results of a study:

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
the numbers only.

Everything is drawn into memory first; files are written only when every figure and the
page have been produced, each to a temporary file that is then renamed
(:func:`lv3ph.io.write_atomic`). A failure therefore leaves no ``report.html`` (and no
temporary files) behind.

Figures use :class:`matplotlib.figure.Figure` with the Agg canvas directly (no pyplot
state, no global backend switch), so reports can be written from worker threads.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from lv3ph.io import write_atomic

if TYPE_CHECKING:  # lv3ph.study imports this module lazily; avoid a runtime cycle
    from lv3ph.study import ScenarioResult, StudySpec

__all__ = [
    "PHASE_COLOURS",
    "PLOT_FILES",
    "plot_allocation",
    "plot_head_neutral_current",
    "plot_scenarios",
    "plot_unbalance",
    "plot_voltage_envelope",
    "render_html",
    "scenario_finding",
    "write_report",
]

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


# ---------------------------------------------------------------------------- findings
def _describe(sc: Any) -> str:
    share = float(sc.pv_share)
    pv = "no PV" if share == 0 else f"{_fmt(100 * share, 0)} % of customers on PV"
    market = str(sc.market)
    if market == "none":
        mk = "no local market"
    elif market == "community-auction":
        mk = "a community auction"
    elif market.startswith("bilateral:"):
        mk = f"bilateral contracts ({market.split(':', 1)[1]} partner choice)"
    elif market.startswith("file:"):
        mk = f"contracts from {Path(market[5:]).name}"
    else:
        mk = f"market {market}"
    bat = {
        "off": "no batteries",
        "self-consumption": "batteries for self-consumption",
        "p2p": "batteries dispatched for P2P trading",
    }.get(str(sc.battery), f"battery strategy {sc.battery}")
    return f"With {pv}, {mk} and {bat}"


@dataclass(frozen=True)
class _Worst:
    value: float
    item: str | None
    time: float | None


def _worst_violation(r: ScenarioResult, check: str) -> tuple[int, _Worst | None]:
    """Number of items violating ``check`` and the worst of them (from the violation summary)."""
    v = r.violations
    if v is None or len(v) == 0 or "check" not in v.columns:
        return 0, None
    rows = v[v["check"] == check]
    if rows.empty or "worst_value" not in rows.columns:
        return len(rows), None
    vals = pd.to_numeric(rows["worst_value"], errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(vals).any():
        return len(rows), None
    i = int(np.nanargmin(vals) if check == "voltage_low" else np.nanargmax(vals))
    row = rows.iloc[i]
    t = row.get("worst_time")
    return len(rows), _Worst(float(vals[i]), str(row.get("item")), _num(t) if _finite(t) else None)


def scenario_finding(spec: StudySpec, r: ScenarioResult) -> str:
    """One paragraph of plain text stating a scenario's numbers (no judgement words)."""
    s = r.summary
    lim = spec.limits
    step_h = spec.run.stepsize_s / 3600.0
    parts = [f"{_describe(r.scenario)}"]
    pv = s.get("pv_kwh")
    pv_txt = f" (PV produced {_fmt(pv, 1)} kWh)" if _finite(pv) and _num(pv) > 0 else ""
    traded = s.get("traded_kwh")
    parts[0] += (
        f"{pv_txt}, {_fmt(traded, 1)} kWh were traded locally and self-sufficiency was {_fmt(s.get('self_sufficiency_pct'), 1)} %."
    )
    loss = s.get("loss_kwh")
    parts.append(
        f"Losses were {_fmt(loss, 2)} kWh ({_fmt(_pct_of(s.get('loss_neutral_kwh'), loss), 1)} % in the neutral, "
        f"{_fmt(_pct_of(s.get('loss_earth_kwh'), loss), 1)} % in earth)."
    )
    # unbalance: worst over the whole feeder (series), and at the checked buses (violations)
    pvur = _values(r.series, "pvur_max_pct")
    k = _nanargmax(pvur)
    when = f" at {_clock(float(r.series['time'].values[k]) * step_h)}" if k is not None else ""
    lim_txt = f"limit {_fmt(lim.pvur_pct, 1)} %" if lim.pvur_pct is not None else "no limit set"
    parts.append(
        f"The worst PVUR over the feeder was {_fmt(s.get('pvur_max_pct', _nanmax(pvur)), 2)} %{when} ({lim_txt})"
    )
    n_pvur, worst = _worst_violation(r, "pvur")
    if n_pvur and worst is not None:
        at = f" at {_clock(worst.time * step_h)}" if worst.time is not None else ""
        parts[-1] += (
            f"; {n_pvur} checked bus{'es' if n_pvur != 1 else ''} exceeded the limit, the worst being bus {worst.item} with {_fmt(worst.value, 2)} %{at}"
        )
    vuf_lim = f"limit {_fmt(lim.vuf_pct, 1)} %" if lim.vuf_pct is not None else "no limit set"
    parts[-1] += f"; the worst VUF was {_fmt(s.get('vuf_max_pct'), 2)} % ({vuf_lim})."
    env = _lv_envelope(r.series)
    if env is not None and env[0].size and np.isfinite(env[1]).any():
        band = f"band {_fmt(lim.v_low_v, 0)}-{_fmt(lim.v_high_v, 0)} V" if lim.v_low_v is not None else "no band set"
        parts.append(
            f"Phase-to-neutral voltages at LV buses ranged from {_fmt(np.nanmin(env[1]), 1)} V to {_fmt(_nanmax(env[2]), 1)} V ({band})."
        )
    minutes = s.get("violation_minutes")
    if _finite(minutes) and _num(minutes) > 0:
        raw = [
            (c, s.get(f"violations_{c}"))
            for c in ("voltage_high", "voltage_low", "vuf", "pvur", "vne", "line_thermal", "transformer_thermal")
        ]
        counts = [(c, int(_num(n))) for c, n in raw if _finite(n) and _num(n) > 0]
        listed = ", ".join(f"{c.replace('_', ' ')}: {n}" for c, n in counts)
        detail = f" ({listed} item-steps)" if counts else ""
        parts.append(f"{_fmt(minutes, 0)} minutes had at least one violation{detail}.")
    elif _finite(minutes):
        parts.append("No limit was violated.")
    ineu = _values(r.series, "head_neutral_current_a")
    k = _nanargmax(ineu)
    if k is not None:
        parts.append(
            f"The neutral current at the feeder head peaked at {_fmt(ineu[k], 1)} A at {_clock(float(r.series['time'].values[k]) * step_h)}."
        )
    sav = s.get("bill_savings_eur")
    if _finite(sav) and str(r.scenario.market) != "none":
        verb = "saved customers" if _num(sav) >= 0 else "cost customers"
        parts.append(f"Against trading only with the grid, the market {verb} EUR {_fmt(abs(_num(sav)), 2)} in total.")
    contracts = _contracts(r.allocation)
    methods = _methods(spec, contracts) if len(contracts) else []
    ref = _reference(methods)
    if ref is None or len(contracts) == 0:
        parts.append("No P2P contracts were formed, so no loss was allocated to contracts.")
    else:
        ref_total = float(np.nansum(pd.to_numeric(contracts[f"{ref}_kwh"], errors="coerce")))
        txt = f"Over {len(contracts)} contracts, the {ref} method charges {_fmt(ref_total, 3)} kWh of loss"
        comp = []
        for m in methods:
            if m == ref:
                continue
            tot = float(np.nansum(pd.to_numeric(contracts[f"{m}_kwh"], errors="coerce")))
            d = _pct_of(tot - ref_total, ref_total)
            if _finite(d):
                word = "over-charges" if d > 0 else "under-charges" if d < 0 else "matches"
                comp.append(
                    f"{m} {word} them by {_fmt(abs(d), 1)} % ({_fmt(tot, 3)} kWh)"
                    if word != "matches"
                    else f"{m} charges the same"
                )
            else:
                comp.append(f"{m} charges {_fmt(tot, 3)} kWh")
        parts.append(txt + ("; " + ", ".join(comp) if comp else "") + ".")
    alloc = r.allocation
    grid = (
        alloc[alloc["contract"].astype(str).str.startswith("grid:")]
        if alloc is not None and "contract" in alloc.columns
        else None
    )
    grid_ref = _reference(_methods(spec, grid)) if grid is not None and len(grid) else None
    if grid is not None and grid_ref is not None:
        g = float(np.nansum(pd.to_numeric(grid[f"{grid_ref}_kwh"], errors="coerce")))
        parts.append(
            f"Exchanges with the grid ({len(grid)} rows) are charged {_fmt(g, 3)} kWh by the {grid_ref} method."
        )
    return " ".join(parts)


# ---------------------------------------------------------------------------- HTML
#: Headline columns: (summary column, header, decimals; -1 text, -2 fraction shown in %);
#: a column missing from the summary is skipped.
HEADLINE: tuple[tuple[str, str, int], ...] = (
    ("scenario", "scenario", -1),
    ("pv_share", "PV share (%)", -2),
    ("pv_kwh", "PV (kWh)", 1),
    ("traded_kwh", "traded (kWh)", 1),
    ("self_sufficiency_pct", "self-sufficiency (%)", 1),
    ("loss_kwh", "losses (kWh)", 2),
    ("loss_neutral_kwh", "neutral loss (kWh)", 2),
    ("loss_earth_kwh", "earth loss (kWh)", 3),
    ("pvur_max_pct", "worst PVUR (%)", 2),
    ("vuf_max_pct", "worst VUF (%)", 2),
    ("vne_max_v", "worst Vne (V)", 1),
    ("violation_minutes", "violation minutes", 0),
    ("bill_savings_eur", "bill savings (EUR)", 2),
)

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,Arial,sans-serif;margin:0 auto;max-width:1200px;padding:1.2em 2em;color:#1d1d1d;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.1em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.meta{color:#555;font-size:.9em}
table{border-collapse:collapse;font-size:.82em;margin:.6em 0}
th,td{border:1px solid #d0d0d0;padding:.25em .5em}th{background:#f1f3f5;text-align:left;vertical-align:bottom}
td.num{text-align:right;font-variant-numeric:tabular-nums}tr:nth-child(even) td{background:#fafafa}
.scroll{overflow-x:auto}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}figcaption{color:#444;font-size:.9em}
.finding h3{font-size:1em;margin-bottom:.2em;font-family:ui-monospace,Menlo,Consolas,monospace}
.finding p{margin-top:.2em}.notes{color:#7a4b00;font-size:.9em}
"""


def _decimals(col: str) -> int:
    """Decimals for a summary column, from its unit suffix."""
    if col.endswith(("_kwh", "_eur", "_pct")):
        return 2
    if col.endswith(("_v", "_kw")):
        return 1
    if col.endswith(("_minutes", "_steps")) or col.startswith("violations_"):
        return 0
    return 3


def _cell(value: Any, dp: int) -> str:
    if dp < 0 or isinstance(value, str) or not isinstance(value, int | float | np.integer | np.floating):
        return f"<td>{html.escape(str(value))}</td>"
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return f'<td class="num">{int(value):,}</td>'
    return f'<td class="num">{_fmt(value, dp)}</td>'


def _table(summary: pd.DataFrame, columns: Sequence[tuple[str, str, int]]) -> str:
    cols = [(c, h, d) for c, h, d in columns if c in summary.columns]
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h, _ in cols)
    rows = []
    for _, row in summary.iterrows():
        cells = []
        for c, _, d in cols:
            v = row[c]
            if d == -2:
                v, d = (100.0 * float(v) if _finite(v) else v), 0
            cells.append(_cell(v, d))
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


CAPTIONS = {
    "voltage_envelope.png": "Lowest (down triangles) and highest (up triangles) phase-to-neutral voltage of the run at every LV bus, against its distance from the transformer, by phase. Dashed lines: the EN 50160 band.",
    "unbalance.png": "Worst PVUR and worst VUF over all buses at each time step, per scenario. Dashed lines: limits.",
    "head_neutral_current.png": "Neutral current leaving the transformer into the feeder, per scenario; below, phase and neutral currents of the scenario with the highest neutral current.",
    "allocation.png": "Loss allocated to the contracts of the scenario with the most contracts, per method (top: largest contracts by the reference method), and each method's difference from the reference, in % of the reference total over all contracts.",
    "scenarios.png": "Per scenario: losses by part (stacked), energy traded locally, self-sufficiency, minutes with at least one limit violation, and worst PVUR.",
}


def render_html(
    spec: StudySpec, results: Sequence[ScenarioResult], summary: pd.DataFrame, images: dict[str, bytes]
) -> str:
    """The report page (self-contained: images as data URIs, inline CSS)."""
    e = html.escape
    lim = spec.limits
    run = spec.run
    methods = ", ".join(spec.methods)
    ref = _reference(list(spec.methods)) or "exact"
    band = f"{_fmt(lim.v_low_v, 0)}-{_fmt(lim.v_high_v, 0)} V" if lim.v_low_v is not None else "not checked"
    pvur = f"{_fmt(lim.pvur_pct, 1)} %" if lim.pvur_pct is not None else "not checked"
    vuf = f"{_fmt(lim.vuf_pct, 1)} %" if lim.vuf_pct is not None else "not checked"
    how = (
        f"Each scenario combines a share of customers with PV, a local market and a battery strategy, and was solved "
        f"as an unbalanced four-wire power flow over {run.steps} steps of {_fmt(run.stepsize_s / 60.0, 0)} min ({e(run.mode)} mode). "
        f"Losses are split into phase conductors, the neutral and earth paths. PVUR is the largest deviation of a phase "
        f"voltage from the mean of the three, in % of the mean; VUF is the negative- over positive-sequence voltage. "
        f"Limits: voltage band {band}, PVUR {pvur}, VUF {vuf}; a violation minute is a minute in which at least one "
        f"checked item (bus, line or transformer) exceeds a limit, and the counts per check are (item, step) pairs. Bill savings compare each scenario's bills with the same customers buying and "
        f"selling only at the grid tariffs (import EUR {_fmt(spec.tariffs.grid_import_eur_kwh, 2)}/kWh, export EUR "
        f"{_fmt(spec.tariffs.grid_export_eur_kwh, 2)}/kWh). Loss allocation charges the network loss to P2P contracts with "
        f"the methods {e(methods)}; {e(ref)} is the reference the others are compared with. Time is in hours from the "
        f"start of the run."
    )
    fig_html = []
    for name in PLOT_FILES:
        if name in images:
            data = base64.b64encode(images[name]).decode("ascii")
            fig_html.append(
                f'<figure id="{e(name[:-4])}"><img src="data:image/png;base64,{data}" alt="{e(name)}">'
                f"<figcaption>{e(CAPTIONS.get(name, name))} (<code>{e(name)}</code>)</figcaption></figure>"
            )
    findings = []
    for r in results:
        notes = "".join(f"<li>{e(str(n))}</li>" for n in (r.notes or []))
        notes_html = f'<ul class="notes">{notes}</ul>' if notes else ""
        findings.append(
            f'<div class="finding"><h3>{e(r.scenario.name)}</h3><p>{e(scenario_finding(spec, r))}</p>{notes_html}</div>'
        )
    all_cols = [(c, c, -1 if c in ("scenario", "market", "battery") else _decimals(c)) for c in summary.columns]
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(spec.name)}: lv3ph study report</title><style>{CSS}</style></head>
<body>
<h1>{e(spec.name)}</h1>
<p class="meta">Model <code>{e(spec.model.name)}</code> (<code>{e(str(spec.model))}</code>) &middot; {len(results)} scenario{"s" if len(results) != 1 else ""} &middot; {run.steps} steps of {_fmt(run.stepsize_s, 0)} s from step {run.start} &middot; written {e(stamp)}</p>
<h2>How to read this report</h2>
<p>{how}</p>
<h2>Headline numbers</h2>
{_table(summary, HEADLINE)}
<details><summary>All summary columns</summary>{_table(summary, all_cols)}</details>
<h2>Findings per scenario</h2>
{"".join(findings)}
<h2>Plots</h2>
{"".join(fig_html)}
</body></html>
"""


# ---------------------------------------------------------------------------- entry point
def write_report(spec: StudySpec, results: list[ScenarioResult], summary: pd.DataFrame, out: Path) -> Path:
    """Write the plots and ``report.html`` into ``out``; return the path of ``report.html``.

    All figures and the page are produced in memory first; then each file is written to a
    temporary name and renamed, ``report.html`` last. If anything fails no file of the
    report is created or replaced (beyond the figures already renamed when a write fails).
    """
    out = Path(out)
    results = list(results)
    images: dict[str, bytes] = {}
    drawers = (
        ("voltage_envelope.png", lambda: plot_voltage_envelope(spec, results)),
        ("unbalance.png", lambda: plot_unbalance(spec, results)),
        ("head_neutral_current.png", lambda: plot_head_neutral_current(spec, results)),
        ("allocation.png", lambda: plot_allocation(spec, results)),
        ("scenarios.png", lambda: plot_scenarios(spec, results, summary)),
    )
    for name, draw in drawers:
        images[name] = _png(draw())
    page = render_html(spec, results, summary, images).encode("utf-8")
    for name, data in images.items():
        write_atomic(out / name, functools.partial(_write_bytes, data=data))
    return write_atomic(out / "report.html", lambda tmp: _write_bytes(tmp, page))


def _write_bytes(tmp: Path, data: bytes) -> None:
    tmp.write_bytes(data)


def write_hosting_report(spec: StudySpec, results: Mapping[str, Any], summary: pd.DataFrame, out: Path) -> Path:
    """``hosting.png`` (distribution per arrangement) and a short ``report.html``."""
    from lv3ph.hosting import plot_hosting

    plot = plot_hosting(results, out / "hosting.png")
    data = base64.b64encode(plot.read_bytes()).decode("ascii")
    h = spec.hosting
    e = html.escape
    checks = "voltage band, line and transformer thermal, VUF, neutral-to-earth voltage" + (
        ", PVUR" if h and h.pvur else ""
    )
    cols = [(c, c, -1 if c in ("arrangement", "binding") else 1) for c in summary.columns]
    low, high = h.kwp if h else (0.0, 0.0)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(spec.name)}: hosting capacity</title><style>{CSS}</style></head>
<body><h1>{e(spec.name)}: PV hosting capacity</h1>
<p class="meta">Model <code>{e(str(spec.model))}</code> &middot; {h.placements if h else 0} random placements per arrangement
&middot; {spec.run.steps} steps of {_fmt(spec.run.stepsize_s, 0)} s</p>
<p>For each placement customers get PV one by one in a random order and size ({_fmt(low, 1)}-{_fmt(high, 1)} kWp),
until the first violation of: {e(checks)}. The hosting capacity is the installed kWp just below it.</p>
{_table(summary, cols)}
<figure><img src="data:image/png;base64,{data}" alt="hosting.png"><figcaption>Distribution of the hosting capacity per arrangement.</figcaption></figure>
</body></html>
"""
    return write_atomic(out / "report.html", functools.partial(_write_bytes, data=page.encode("utf-8")))
