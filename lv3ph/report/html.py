"""The study, hosting and fleet pages: one self-contained, interactive ``report.html``.

:func:`write_report` writes the study report: the findings (differences between scenarios,
:mod:`lv3ph.report.findings`), comparison charts over all scenarios, one scenario at a time
(picked in the page) with its feeder map, voltage envelope, time series and allocated
losses, and the headline table. The plots are plotly, drawn in the browser from the numbers
embedded in the page (:mod:`lv3ph.report.interactive`): the file works offline and from
``file://``. The static PNG figures of :mod:`lv3ph.report.plots` and the feeder map
(``feeder_map.png``) are written beside it.

Everything is drawn into memory first; files are written only when every figure and the
page have been produced, each to a temporary file that is then renamed
(:func:`lv3ph.io.write_atomic`), ``report.html`` last. A failure therefore leaves no
``report.html`` (and no temporary files) behind.

:func:`write_hosting_report` and :func:`fleet_report` write the same kind of page for a
hosting-capacity study and for a ranked table of feeders.
"""

from __future__ import annotations

import functools
import html
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from lv3ph.io import write_atomic
from lv3ph.report.findings import findings, scenario_finding
from lv3ph.report.interactive import fleet_payload, hosting_payload, page, study_payload
from lv3ph.report.map import QUANTITIES, map_data, plot_feeder_map
from lv3ph.report.plots import (
    PLOT_FILES,
    _finite,
    _fmt,
    _methods,
    _png,
    _reference,
    plot_allocation,
    plot_head_neutral_current,
    plot_hosting,
    plot_scenarios,
    plot_unbalance,
    plot_voltage_envelope,
)

if TYPE_CHECKING:
    from lv3ph.results import ScenarioResult, StudySpec

MAP_FILE = "feeder_map.png"


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
.notes{color:#7a4b00;font-size:.9em}.findings li{margin:.3em 0}
.plot{min-height:200px;margin:.6em 0;border:1px solid #eee}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:.6em}
.picker{background:#f1f3f5;padding:.6em .8em;border-radius:4px;position:sticky;top:0;z-index:10}
.picker select{font-size:1em;margin:0 1.2em 0 .3em;max-width:32em}
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


def _how(spec: StudySpec) -> str:
    e = html.escape
    lim = spec.limits
    run = spec.run
    methods = ", ".join(spec.methods)
    ref = _reference(list(spec.methods)) or "exact"
    band = f"{_fmt(lim.v_low_v, 0)}-{_fmt(lim.v_high_v, 0)} V" if lim.v_low_v is not None else "not checked"
    pvur = f"{_fmt(lim.pvur_pct, 1)} %" if lim.pvur_pct is not None else "not checked"
    vuf = f"{_fmt(lim.vuf_pct, 1)} %" if lim.vuf_pct is not None else "not checked"
    return (
        f"Each scenario combines a share of customers with PV, a local market and a battery strategy, and was solved "
        f"as an unbalanced four-wire power flow over {run.steps} steps of {_fmt(run.stepsize_s / 60.0, 0)} min ({e(run.mode)} mode). "
        f"Losses are split into phase conductors, the neutral and earth paths. PVUR is the largest deviation of a phase "
        f"voltage from the mean of the three, in % of the mean; VUF is the negative- over positive-sequence voltage. "
        f"Limits: voltage band {band}, PVUR {pvur}, VUF {vuf}; a violation minute is a minute in which at least one "
        f"checked item (bus, line or transformer) exceeds a limit, and the counts per check are (item, step) pairs. Bill savings compare each scenario's bills with the same customers buying and "
        f"selling only at the grid tariffs (import EUR {_fmt(spec.tariffs.grid_import_eur_kwh, 2)}/kWh, export EUR "
        f"{_fmt(spec.tariffs.grid_export_eur_kwh, 2)}/kWh). Loss allocation charges the network loss to P2P contracts with "
        f"the methods {e(methods)}; {e(ref)} is the reference the others are compared with. On the map a customer's "
        f"allocated loss is its grid exchange's share plus half of each contract it is in. Time is in hours from the "
        f"start of the run."
    )


def _plots(ids: Sequence[str]) -> str:
    return "".join(f'<div class="plot" id="{i}"></div>' for i in ids)


COMPARISON_PLOTS = ("cmp-losses", "cmp-voltage", "cmp-unbalance", "cmp-market", "cmp-violations")
SCENARIO_PLOTS = ("sc-map", "sc-envelope", "sc-unbalance", "sc-currents", "sc-power", "sc-allocation")


def render_html(spec: StudySpec, results: Sequence[ScenarioResult], summary: pd.DataFrame) -> str:
    """The study page (self-contained: plotly.js, numbers and CSS inline)."""
    e = html.escape
    run = spec.run
    found = findings(spec, summary)
    text = [scenario_finding(spec, r) for r in results]
    options = "".join(f'<option value="{i}">{e(r.scenario.name)}</option>' for i, r in enumerate(results))
    quantities = "".join(f'<option value="{k}">{e(q.label)} ({e(q.unit)})</option>' for k, q in QUANTITIES.items())
    items = "".join(f"<li>{e(f)}</li>" for f in found) or "<li>Only one scenario: nothing to compare.</li>"
    all_cols = [
        (c, c, -1 if c in ("scenario", "market", "battery", "arrangement") else _decimals(c)) for c in summary.columns
    ]
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    files = ", ".join(f"<code>{e(n)}</code>" for n in (*PLOT_FILES, MAP_FILE, "summary.csv"))
    body = f"""<h1>{e(spec.name)}</h1>
<p class="meta">Model <code>{e(spec.model.name)}</code> (<code>{e(str(spec.model))}</code>) &middot; {len(results)} scenario{"s" if len(results) != 1 else ""} &middot; {run.steps} steps of {_fmt(run.stepsize_s, 0)} s from step {run.start} &middot; written {e(stamp)}</p>
<h2>Findings</h2>
<ul class="findings" id="findings">{items}</ul>
<h2>Scenario comparison</h2>
<div class="grid">{_plots(COMPARISON_PLOTS)}</div>
<h2>One scenario</h2>
<div class="picker"><label>Scenario <select id="scenario-picker">{options}</select></label>
<label>Colour the map by <select id="map-quantity">{quantities}</select></label></div>
<p id="sc-finding"></p><ul class="notes" id="sc-notes"></ul>
{_plots(SCENARIO_PLOTS[:1])}
<div class="grid">{_plots(SCENARIO_PLOTS[1:])}</div>
<h2>Headline numbers</h2>
{_table(summary, HEADLINE)}
<details><summary>All summary columns</summary>{_table(summary, all_cols)}</details>
<h2>How to read this report</h2>
<p>{_how(spec)}</p>
<p class="meta">Static figures beside this file: {files}; per scenario a folder with <code>series.nc</code> and CSV tables.
<code>lv3ph report {e(str(spec.out))}</code> draws this page again from them.</p>
"""
    data = study_payload(spec, results, summary, found, text)
    return page(f"{spec.name}: lv3ph study report", "study", body, data, CSS)


def map_figure(spec: StudySpec, results: Sequence[ScenarioResult]) -> Any:
    """Static feeder map of the scenario with the highest voltage, coloured by it (None
    when the results carry no feeder geometry)."""
    if not results:
        return None
    vmax = [float(r.summary.get("vmax_v", np.nan)) if _finite(r.summary.get("vmax_v")) else -np.inf for r in results]
    r = results[int(np.argmax(vmax))]
    data = map_data(
        r.series, r.allocation, _reference(_methods(spec, r.allocation)) if r.allocation is not None else None
    )
    if data is None:
        return None
    return plot_feeder_map(data, "vmax_v", title=r.scenario.name, limit=spec.limits.v_high_v)


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
        (MAP_FILE, lambda: map_figure(spec, results)),
    )
    for name, draw in drawers:
        fig = draw()
        if fig is not None:
            images[name] = _png(fig)
    page_bytes = render_html(spec, results, summary).encode("utf-8")
    for name, data in images.items():
        write_atomic(out / name, functools.partial(_write_bytes, data=data))
    return write_atomic(out / "report.html", functools.partial(_write_bytes, data=page_bytes))


def _write_bytes(tmp: Path, data: bytes) -> None:
    tmp.write_bytes(data)


def write_hosting_report(spec: StudySpec, results: Mapping[str, Any], summary: pd.DataFrame, out: Path) -> Path:
    """``hosting.png`` (distribution per arrangement) and an interactive ``report.html``.

    ``results`` maps each arrangement to its :class:`lv3ph.hosting.HostingResult` (only
    ``placements`` and ``summary`` are used)."""
    h = spec.hosting
    e = html.escape
    checks = "voltage band, line and transformer thermal, VUF, neutral-to-earth voltage" + (
        ", PVUR" if h and h.pvur else ""
    )
    cols = [(c, c, -1 if c in ("arrangement", "binding") else 1) for c in summary.columns]
    low, high = h.kwp if h else (0.0, 0.0)
    body = f"""<h1>{e(spec.name)}: PV hosting capacity</h1>
<p class="meta">Model <code>{e(str(spec.model))}</code> &middot; {h.placements if h else 0} random placements per arrangement
&middot; {spec.run.steps} steps of {_fmt(spec.run.stepsize_s, 0)} s</p>
<p>For each placement customers get PV one by one in a random order and size ({_fmt(low, 1)}-{_fmt(high, 1)} kWp),
until the first violation of: {e(checks)}. The hosting capacity is the installed kWp just below it.</p>
{_table(summary, cols)}
<div class="grid">{_plots(("hc-hist", "hc-ecdf"))}</div>
{_plots(("hc-binding",))}
<p class="meta">Static figure beside this file: <code>hosting.png</code>.</p>
"""
    data = hosting_payload({k: r.placements for k, r in results.items()})
    text = page(f"{spec.name}: hosting capacity", "hosting", body, data, CSS).encode("utf-8")
    plot_hosting(results, out / "hosting.png")
    return write_atomic(out / "report.html", functools.partial(_write_bytes, data=text))


def fleet_page(
    df: pd.DataFrame,
    kpi: str,
    *,
    label: str | None = None,
    title: str = "Fleet",
    ascending: bool = False,
    top: int | None = None,
    columns: Sequence[str] | None = None,
    notes: Sequence[str] = (),
) -> str:
    """A ranked table and bar chart of ``kpi`` over the rows of ``df``, as a self-contained
    interactive HTML page (largest first; ``ascending`` for smallest first).

    ``label`` names each row (default: the first column); ``columns`` are the table's
    columns after rank, label and KPI (default: all); ``top`` keeps the first rows only;
    ``notes`` are listed under the table (e.g. feeders that could not run).
    """
    from lv3ph.errors import Lv3phError

    label = label or str(df.columns[0])
    for c in (kpi, label, *(columns or ())):
        if c not in df.columns:
            raise Lv3phError(f"fleet report: no column {c!r} (columns: {', '.join(map(str, df.columns))})")
    ranked = df.assign(_v=pd.to_numeric(df[kpi], errors="coerce"))
    ranked = ranked.sort_values("_v", ascending=ascending, na_position="last").drop(columns="_v")
    ranked = ranked.head(top) if top is not None else ranked
    ranked.insert(0, "rank", np.arange(1, len(ranked) + 1))
    rest = [c for c in (columns if columns is not None else ranked.columns) if c not in ("rank", label, kpi)]
    order = ["rank", label, kpi, *rest]
    cols = [(c, c, -1 if not pd.api.types.is_numeric_dtype(ranked[c]) else _decimals(str(c))) for c in order]
    items = "".join(f"<li>{html.escape(str(n))}</li>" for n in notes)
    shown = f"the first {len(ranked)} of {len(df)}" if len(ranked) < len(df) else f"{len(df)}"
    body = f"""<h1>{html.escape(title)}</h1>
<p class="meta">{shown} rows ranked by <code>{html.escape(kpi)}</code>, {"smallest" if ascending else "largest"} first.</p>
{_plots(("fleet-bar",))}
{_table(ranked[order], cols)}
{f'<ul class="notes">{items}</ul>' if items else ""}
"""
    return page(f"{title}: {kpi}", "fleet", body, fleet_payload(ranked, kpi, label, ascending=ascending), CSS)


def fleet_report(df: pd.DataFrame, kpi: str, path: str | Path, **options: Any) -> Path:
    """:func:`fleet_page` written atomically to ``path`` (options as for it)."""
    text = fleet_page(df, kpi, **options).encode("utf-8")
    return write_atomic(path, functools.partial(_write_bytes, data=text))
