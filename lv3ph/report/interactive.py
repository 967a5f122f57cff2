"""Interactive pages: plotly.js embedded in the file, the numbers as JSON, a small script.

Every page is one self-contained HTML file: plotly.js (from the ``plotly`` package) is
inlined in a ``<script>``, the numbers to draw sit in a ``<script type="application/json">``
block and :file:`report.js` (beside this module) draws them. Nothing is fetched, so the page
works offline and from ``file://``. When every plot has been drawn the script sets
``data-rendered="1"`` on ``<body>`` (``data-render-error`` with the message if drawing failed).

:func:`study_payload` gathers the numbers of a study: comparison charts over all scenarios,
and per scenario the feeder map, voltage envelope, time series and allocated losses (the
page shows one scenario at a time, chosen with a picker). :func:`hosting_payload` and
:func:`fleet_payload` do the same for hosting-capacity and fleet pages.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from lv3ph.report.map import device_meta, map_data, map_payload, quantity_meta
from lv3ph.report.plots import (
    PHASE_COLOURS,
    TOP_CONTRACTS,
    _contracts,
    _hours,
    _lv_envelope,
    _methods,
    _reference,
    _var,
)

if TYPE_CHECKING:
    from lv3ph.results import ScenarioResult, StudySpec

__all__ = ["fleet_payload", "hosting_payload", "page", "plotly_js", "study_payload"]

#: Headline numbers drawn in the comparison charts: (column, label).
COMPARE: tuple[tuple[str, str], ...] = (
    ("loss_phase_kwh", "phase conductors"),
    ("loss_neutral_kwh", "neutral"),
    ("loss_earth_kwh", "earth"),
)


def plotly_js() -> str:
    """The plotly.js bundle shipped with the ``plotly`` package."""
    from plotly.offline import get_plotlyjs

    return str(get_plotlyjs())


def _script() -> str:
    return resources.files("lv3ph.report").joinpath("report.js").read_text(encoding="utf-8")


def _clean(x: Any) -> Any:
    """JSON-able copy: numpy to lists, NaN/inf to None, floats to 5 significant digits."""
    if isinstance(x, Mapping):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, bool | np.bool_):
        return bool(x)
    if isinstance(x, int | np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        v = float(x)
        return float(f"{v:.5g}") if np.isfinite(v) else None
    return x


def page(title: str, kind: str, body: str, data: Mapping[str, Any], css: str) -> str:
    """A complete HTML page: ``body`` (HTML), ``data`` for the script, drawn by ``kind``
    (``study``, ``hosting`` or ``fleet``)."""
    payload = json.dumps(_clean(data), allow_nan=False, separators=(",", ":")).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{css}</style>
<script>{plotly_js()}</script></head>
<body data-kind="{html.escape(kind)}">
{body}
<script type="application/json" id="lv3ph-data">{payload}</script>
<script>{_script()}</script>
</body></html>
"""


# ---------------------------------------------------------------------------- study
def _series_payload(spec: StudySpec, r: ScenarioResult, finding: str) -> dict[str, Any]:
    s = r.series
    out: dict[str, Any] = {
        "name": r.scenario.name,
        "finding": finding,
        "notes": [str(n) for n in r.notes or []],
        "t": _hours(s, spec.run.stepsize_s),
    }
    for v in (
        "pvur_max_pct",
        "vuf_max_pct",
        "head_neutral_current_a",
        "loss_total_kw",
        "pv_kw",
        "load_kw",
        "traded_kw",
        "battery_kw",
        "source_p_kw",
    ):
        da = _var(s, v)
        out[v] = da.values if da is not None and da.dims == ("time",) else []
    cur = _var(s, "head_current_a")
    out["head_current_a"] = cur.transpose("phase", "time").values if cur is not None and "phase" in cur.dims else []
    env = _lv_envelope(s)
    if env is not None:
        d, lo, hi = env
        order = np.argsort(d, kind="stable")
        out["envelope"] = {"d": d[order], "lo": lo[order].T, "hi": hi[order].T}
    contracts = _contracts(r.allocation)
    methods = _methods(spec, contracts) if len(contracts) else []
    ref = _reference(methods)
    if ref is not None:
        top = contracts.assign(_k=pd.to_numeric(contracts[f"{ref}_kwh"], errors="coerce")).nlargest(TOP_CONTRACTS, "_k")
        out["allocation"] = {
            "contract": [str(c) for c in top["contract"]],
            "methods": methods,
            "kwh": [pd.to_numeric(top[f"{m}_kwh"], errors="coerce").to_numpy(dtype=float) for m in methods],
            "n": len(contracts),
        }
    data = map_data(s, r.allocation, _reference(_methods(spec, r.allocation)) if r.allocation is not None else None)
    out["map"] = map_payload(data) if data is not None else None
    return out


def study_payload(
    spec: StudySpec,
    results: Sequence[ScenarioResult],
    summary: pd.DataFrame,
    finding_text: Sequence[str],
    scenario_text: Sequence[str],
) -> dict[str, Any]:
    """Everything the study page draws: ``finding_text`` (the study's findings) and
    ``scenario_text`` (one paragraph per scenario, shown for the picked one)."""
    names = [str(x) for x in summary["scenario"]] if "scenario" in summary.columns else []

    def col(c: str) -> list[Any]:
        return pd.to_numeric(summary[c], errors="coerce").tolist() if c in summary.columns else [None] * len(names)

    compare = {
        "scenarios": names,
        "losses": {label: col(c) for c, label in COMPARE},
        "vmax_v": col("vmax_v"),
        "vmin_v": col("vmin_v"),
        "pvur_max_pct": col("pvur_max_pct"),
        "vuf_max_pct": col("vuf_max_pct"),
        "violation_minutes": col("violation_minutes"),
        "traded_kwh": col("traded_kwh"),
        "self_sufficiency_pct": col("self_sufficiency_pct"),
        "contract_loss": {m: col(f"contract_loss_{m}_kwh") for m in spec.methods},
    }
    lim = spec.limits
    return {
        "compare": compare,
        "limits": {"v_low": lim.v_low_v, "v_high": lim.v_high_v, "pvur": lim.pvur_pct, "vuf": lim.vuf_pct},
        "scenarios": [_series_payload(spec, r, t) for r, t in zip(results, scenario_text, strict=True)],
        "findings": list(finding_text),
        "quantities": quantity_meta(),
        "devices": device_meta(),
        "phase_colours": PHASE_COLOURS,
    }


# ---------------------------------------------------------------------------- hosting, fleet
def hosting_payload(placements: Mapping[str, pd.DataFrame]) -> dict[str, Any]:
    """Hosting capacity (kWp) and binding limit of every placement, per arrangement."""
    out = {}
    for label, df in placements.items():
        hc = pd.to_numeric(df["hosting_kw"], errors="coerce").to_numpy(dtype=float)
        binding = df["binding_limit"].astype(str).value_counts() if "binding_limit" in df.columns else pd.Series()
        out[str(label)] = {
            "hosting_kw": np.sort(hc[np.isfinite(hc)]),
            "binding": {str(k): int(v) for k, v in binding.items()},
        }
    return {"arrangements": out}


def fleet_payload(df: pd.DataFrame, kpi: str, label: str, *, ascending: bool = False) -> dict[str, Any]:
    """A ranked KPI: labels and values, largest (or smallest) first."""
    ranked = df.assign(_v=pd.to_numeric(df[kpi], errors="coerce"))
    ranked = ranked.sort_values("_v", ascending=ascending, na_position="last")
    return {
        "kpi": kpi,
        "labels": [str(x) for x in ranked[label]],
        "values": ranked["_v"].to_numpy(dtype=float),
        "order": "smallest" if ascending else "largest",
    }
