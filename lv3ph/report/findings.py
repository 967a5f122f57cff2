"""Findings of a study written as differences between scenarios, computed from the numbers.

A study's scenarios form a grid of factors (PV share, market, battery strategy, earthing,
phase arrangement). For each factor with more than one level, every other level is compared
with the first one (the study file's order: usually "no PV", "no market", "batteries off")
over all *pairs* of scenarios that differ in that factor only, and the sentence says by how
much each headline number moves: the median over the pairs, and the range when the pairs
disagree ("PV on 60 % of customers (against no PV) raises the highest voltage by 5.7 V
(5.2 to 6.1 V over 6 pairs)"). Numbers that do not move in any pair are listed as
unchanged: contracts alone are financial, so a market without batteries leaves the power
flow as it was.

Markets are also compared by the loss their contracts cause per kWh traded (reference
allocation method), allocation methods by what they charge the contracts against the
reference method, and the limits by how many scenarios exceed them. No judgement words:
every sentence is a number and what it was compared with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from lv3ph.report.plots import (
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
    _reference,
    _values,
)

if TYPE_CHECKING:
    from lv3ph.results import ScenarioResult, StudySpec

__all__ = [
    "FACTORS",
    "METRICS",
    "factor_findings",
    "findings",
    "level_label",
    "limit_findings",
    "market_findings",
    "method_findings",
    "scenario_finding",
]

#: Scenario grid factors (summary columns), in the order findings are written.
FACTORS: tuple[str, ...] = ("pv_share", "market", "battery", "pme_ohm", "arrangement")


@dataclass(frozen=True)
class Metric:
    """A headline number: summary column, words, unit, decimals, relative change shown."""

    column: str
    words: str
    unit: str
    dp: int
    relative: bool = False


METRICS: tuple[Metric, ...] = (
    Metric("vmax_v", "the highest voltage", "V", 1),
    Metric("vmin_v", "the lowest voltage", "V", 1),
    Metric("loss_kwh", "losses", "kWh", 2, relative=True),
    Metric("loss_neutral_kwh", "neutral losses", "kWh", 2, relative=True),
    Metric("pvur_max_pct", "the worst PVUR", "%-points", 2),
    Metric("vuf_max_pct", "the worst VUF", "%-points", 2),
    Metric("violation_minutes", "minutes with a violation", "", 0),
    Metric("self_sufficiency_pct", "self-sufficiency", "%-points", 1),
    Metric("traded_kwh", "energy traded locally", "kWh", 1),
)


def level_label(factor: str, level: object) -> str:
    """Words for one level of a factor ("PV on 30 % of customers", "no market" ...)."""
    if factor == "pv_share":
        share = float(level)  # type: ignore[arg-type]
        return "no PV" if share == 0 else f"PV on {_fmt(100 * share, 0)} % of customers"
    if factor == "market":
        m = str(level)
        if m == "none":
            return "no market"
        if m == "community-auction":
            return "the community auction"
        if m.startswith("bilateral:"):
            return f"bilateral contracts ({m.split(':', 1)[1]})"
        return f"market {m[5:] if m.startswith('file:') else m}"
    if factor == "battery":
        return {"off": "no batteries", "self-consumption": "self-consumption batteries", "p2p": "P2P batteries"}.get(
            str(level), f"battery strategy {level}"
        )
    if factor == "pme_ohm":
        r = float(level)  # type: ignore[arg-type]
        return "earthing at the transformer only" if r == 0 else f"PME electrodes of {r:g} ohm at every customer"
    return f"the {level} phase arrangement"


def _levels(summary: pd.DataFrame, factor: str) -> list[object]:
    return list(dict.fromkeys(summary[factor].tolist()))


def _pairs(summary: pd.DataFrame, factor: str, base: object, level: object) -> pd.DataFrame:
    """Rows of ``level`` joined with the row of ``base`` that agrees on every other factor."""
    others = [f for f in FACTORS if f in summary.columns and f != factor]
    a = summary[summary[factor] == base]
    b = summary[summary[factor] == level]
    if not others:
        return b.assign(_k=1).merge(a.assign(_k=1), on="_k", suffixes=("", "_base")).drop(columns="_k")
    return b.merge(a, on=others, suffixes=("", "_base"))


def _by(d: np.ndarray, dp: int, unit: str, extra: str = "") -> str:
    """``by 4.3 V (3.9 to 4.7)``: the median size of the changes (``extra`` after it) and
    their range over the pairs; ``by up to 0.8 V`` when most pairs do not change."""
    mag = np.abs(d)
    u = f" {unit}" if unit else ""
    med, lo, hi = (_fmt(float(x), dp) for x in (np.median(mag), mag.min(), mag.max()))
    if lo == hi:
        return f"by {med}{u}{extra}"
    if float(np.median(mag)) < 0.5 * 10.0 ** (-dp):
        return f"by up to {hi}{u}"
    return f"by {med}{u}{extra} ({lo} to {hi})"


def _effect(pairs: pd.DataFrame, m: Metric) -> tuple[str, str] | None:
    """("raises"/"lowers"/"changes"/"same", text) of one metric over the pairs."""
    if m.column not in pairs.columns:
        return None
    new = pd.to_numeric(pairs[m.column], errors="coerce").to_numpy(dtype=float)
    old = pd.to_numeric(pairs[f"{m.column}_base"], errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(new) & np.isfinite(old)
    if not ok.any():
        return None
    d = new[ok] - old[ok]
    if np.all(np.abs(d) < 0.5 * 10.0 ** (-m.dp)):
        return "same", m.words
    if not (np.all(d >= 0) or np.all(d <= 0)):
        lo, hi = (_fmt(float(x), m.dp) for x in (d.min(), d.max()))
        return "changes", f"{m.words} by {lo} to +{hi} {m.unit}".rstrip()
    rel = (
        f" or {_fmt(float(np.median(100.0 * np.abs(d) / old[ok])), 0)} %" if m.relative and np.all(old[ok] > 0) else ""
    )
    text = f"{m.words} {_by(d, m.dp, m.unit, rel)}"
    return ("raises" if np.all(d >= 0) else "lowers"), text


def _join(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def factor_findings(summary: pd.DataFrame) -> list[str]:
    """One sentence per (factor, non-base level): how the headline numbers move.

    "Going from no PV to PV on 60 % of customers (6 pairs) raises the highest voltage by
    5.7 V, ... ; lowers ...; leaves ... unchanged." Sizes are medians over the pairs, with
    the range in brackets when the pairs differ.
    """
    out = []
    for factor in FACTORS:
        if factor not in summary.columns or summary[factor].nunique() < 2:
            continue
        levels = _levels(summary, factor)
        base = levels[0]
        for level in levels[1:]:
            pairs = _pairs(summary, factor, base, level)
            if pairs.empty:
                continue
            effects = [e for e in (_effect(pairs, m) for m in METRICS) if e is not None]
            parts = []
            for verb in ("raises", "lowers", "changes"):
                said = [t for v, t in effects if v == verb]
                if said:
                    parts.append(f"{verb} {_join(said)}")
            same = [t for v, t in effects if v == "same"]
            if same:
                parts.append(f"leaves {_join(same)} unchanged")
            if parts:
                n = len(pairs)
                head = f"Going from {level_label(factor, base)} to {level_label(factor, level)}"
                out.append(f"{head} ({n} pair{'s' if n != 1 else ''} of scenarios) " + "; ".join(parts) + ".")
    return out


def market_findings(summary: pd.DataFrame, method: str | None) -> list[str]:
    """Contract loss per kWh traded of each market against the first market that trades."""
    col = f"contract_loss_{method}_kwh"
    if method is None or "market" not in summary.columns or col not in summary.columns:
        return []
    traded = pd.to_numeric(summary["traded_kwh"], errors="coerce")
    rate = pd.to_numeric(summary[col], errors="coerce") / traded.where(traded > 0)
    rows = summary.assign(_rate=rate)
    markets = [m for m in _levels(rows, "market") if rows.loc[rows.market == m, "_rate"].notna().any()]
    if len(markets) < 2:
        return []
    base = markets[0]
    out = []
    for level in markets[1:]:
        pairs = _pairs(rows, "market", base, level)
        ok = pairs["_rate"].notna() & pairs["_rate_base"].notna() & (pairs["_rate_base"] > 0)
        if not ok.any():
            continue
        rel = (100.0 * (pairs["_rate"] - pairs["_rate_base"]) / pairs["_rate_base"])[ok].to_numpy(dtype=float)
        word = "less" if np.median(rel) < 0 else "more"
        lo, hi = sorted(abs(float(x)) for x in (rel.min(), rel.max()))
        rng = "" if _fmt(lo, 0) == _fmt(hi, 0) else f"{_fmt(lo, 0)} to {_fmt(hi, 0)} % over "
        per_kwh = float(np.median(pairs["_rate"][ok])) * 1000.0
        out.append(
            f"With {level_label('market', level)} the contracts cause {_fmt(abs(float(np.median(rel))), 0)} % {word} "
            f"loss per kWh traded than with {level_label('market', base)} ({rng}{len(rel)} pair{'s' if len(rel) != 1 else ''}; "
            f"{_fmt(per_kwh, 1)} Wh per kWh, {method} method)."
        )
    return out


def method_findings(summary: pd.DataFrame, methods: Sequence[str]) -> list[str]:
    """What each allocation method charges the contracts against the reference method."""
    ref = _reference(list(methods))
    if ref is None or f"contract_loss_{ref}_kwh" not in summary.columns:
        return []
    base = pd.to_numeric(summary[f"contract_loss_{ref}_kwh"], errors="coerce")
    ok = base > 0
    if not ok.any():
        return []
    parts = []
    for m in methods:
        col = f"contract_loss_{m}_kwh"
        if m == ref or col not in summary.columns:
            continue
        rel = (100.0 * (pd.to_numeric(summary[col], errors="coerce") - base) / base)[ok].dropna().to_numpy(dtype=float)
        if rel.size:
            word = "less" if np.all(rel <= 0) else "more" if np.all(rel >= 0) else ""
            if np.all(np.abs(rel) < 0.5):
                parts.append(f"{m} charges the contracts the same as {ref}")
            elif word:
                lo, hi = sorted((_fmt(abs(float(rel.min())), 0), _fmt(abs(float(rel.max())), 0)), key=float)
                span = lo if lo == hi else f"{lo} to {hi}"
                parts.append(f"{m} charges the contracts {span} % {word} than {ref}")
            else:
                parts.append(
                    f"{m} charges them {_fmt(float(rel.min()), 0)} to +{_fmt(float(rel.max()), 0)} % against {ref}"
                )
    if not parts:
        return []
    n = int(ok.sum())
    return [f"Over the {n} scenario{'s' if n != 1 else ''} with contracts, " + "; ".join(parts) + "."]


def limit_findings(spec: StudySpec, summary: pd.DataFrame) -> list[str]:
    """How many scenarios exceed each limit, and by how much at worst."""
    lim = spec.limits
    n = len(summary)
    out = []
    checks = (
        ("vmax_v", lim.v_high_v, "the upper voltage limit", "V", 1, "highest voltage"),
        ("pvur_max_pct", lim.pvur_pct, "the PVUR limit", "%", 2, "worst PVUR"),
        ("vuf_max_pct", lim.vuf_pct, "the VUF limit", "%", 2, "worst VUF"),
    )
    for col, limit, words, unit, dp, what in checks:
        if limit is None or col not in summary.columns:
            continue
        v = pd.to_numeric(summary[col], errors="coerce")
        over = int((v > limit).sum())
        if over:
            scope = "Every scenario exceeds" if over == n else f"{over} of {n} scenarios exceed"
            out.append(
                f"{scope} {words} ({_fmt(limit, dp)} {unit}): "
                f"{what} {_fmt(float(v.min()), dp)} to {_fmt(float(v.max()), dp)} {unit}."
            )
    if lim.v_low_v is not None and "vmin_v" in summary.columns:
        v = pd.to_numeric(summary["vmin_v"], errors="coerce")
        under = int((v < lim.v_low_v).sum())
        if under:
            out.append(f"{under} of {n} scenarios fall below the lower voltage limit ({_fmt(lim.v_low_v, 1)} V).")
    return out


def findings(spec: StudySpec, summary: pd.DataFrame) -> list[str]:
    """Every finding of the study, each one sentence computed from ``summary``."""
    if summary is None or summary.empty:
        return []
    ref = _reference(list(spec.methods))
    out = limit_findings(spec, summary) + factor_findings(summary) + market_findings(summary, ref)
    out += method_findings(summary, spec.methods)
    return out


# ---------------------------------------------------------------------------- one scenario's numbers
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
