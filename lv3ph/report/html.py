"""The study and hosting reports: findings and a self-contained ``report.html``.


Everything is drawn into memory first; files are written only when every figure and the
page have been produced, each to a temporary file that is then renamed
(:func:`lv3ph.io.write_atomic`). A failure therefore leaves no ``report.html`` (and no
temporary files) behind.

Figures use :class:`matplotlib.figure.Figure` with the Agg canvas directly (no pyplot
"""

from __future__ import annotations

import base64
import functools
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from lv3ph.io import write_atomic
from lv3ph.report.plots import (
    PLOT_FILES,
    _clock,
    _contracts,
    _finite,
    _fmt,
    _lv_envelope,
    _methods,
    _nanargmax,
    _nanmax,
    _num,
    _pct_of,
    _png,
    _reference,
    _values,
    plot_allocation,
    plot_head_neutral_current,
    plot_hosting,
    plot_scenarios,
    plot_unbalance,
    plot_voltage_envelope,
)

if TYPE_CHECKING:
    from lv3ph.results import ScenarioResult, StudySpec


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
