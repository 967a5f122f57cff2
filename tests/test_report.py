"""Report writer: plots and report.html from small hand-built scenario results."""

from __future__ import annotations

import importlib
import json
import types
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from lv3ph import report
from lv3ph.market import Tariffs
from lv3ph.powerflow import RunSpec
from lv3ph.prosumers import Battery
from lv3ph.report import html as report_html
from lv3ph.report import plots as report_plots
from lv3ph.unbalance import Limits

MODEL = Path(__file__).resolve().parents[1] / "dss_models" / "ieee_eu_lv_4wire" / "Master.dss"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STEPSIZE_S = 600.0
N_T = 12


@pytest.fixture(scope="module")
def study() -> types.ModuleType:
    """The result types (``lv3ph.results``)."""
    return importlib.import_module("lv3ph.results")


@pytest.fixture(autouse=True)
def _low_dpi(monkeypatch: pytest.MonkeyPatch) -> None:
    """Smaller PNGs keep the tests fast; the drawing code is the same."""
    monkeypatch.setattr(report_plots, "DPI", 50)


@pytest.fixture
def spec(study: types.ModuleType, tmp_path: Path) -> Any:
    return study.StudySpec(
        name="tiny_study",
        path=tmp_path / "tiny.toml",
        model=MODEL,
        out=tmp_path / "out",
        run=RunSpec(mode="yearly", stepsize_s=STEPSIZE_S, start=1, steps=N_T),
        limits=Limits(),
        pv=study.PvSpec(),
        battery=Battery(kwh=5.0, kw=2.5),
        tariffs=Tariffs(),
        methods=("exact", "phase-only", "pro-rata"),
        pv_share=(0.0, 0.3),
        market=("none", "community-auction"),
        battery_strategy=("off",),
    )


def make_series(seed: int, *, nan: bool = False, n_bus: int = 6) -> xr.Dataset:
    """The variables and dims of ``lv3ph.study._series``, small and random."""
    rng = np.random.default_rng(seed)
    t = np.arange(1, N_T + 1)
    buses = ["sourcebus", *[f"b{i}" for i in range(1, n_bus)]]

    def ts(scale: float) -> tuple[str, np.ndarray]:
        return ("time", scale * rng.random(N_T))

    vmin = 235.0 - 10 * rng.random((n_bus, 3))
    vmax = vmin + 15 * rng.random((n_bus, 3))
    vmin[0] = vmax[0] = 6350.0  # MV side: no distance, must not show
    ds = xr.Dataset(
        {
            "loss_phase_kw": ts(0.5),
            "loss_neutral_kw": ts(0.1),
            "loss_earth_kw": ts(0.01),
            "loss_transformer_kw": ts(0.05),
            "loss_total_kw": ts(0.6),
            "pvur_max_pct": ts(3.0),
            "vuf_max_pct": ts(1.5),
            "vne_max_v": ts(5.0),
            "head_current_a": (("time", "phase"), 100 * rng.random((N_T, 3))),
            "head_neutral_current_a": ts(40.0),
            "source_p_kw": ts(50.0),
            "pv_kw": ts(10.0),
            "load_kw": ts(40.0),
            "battery_kw": ts(0.0),
            "traded_kw": ts(5.0),
            "price_eur_kwh": ("time", np.full(N_T, 0.175)),
            "vmin_pn_v": (("bus", "phase"), vmin),
            "vmax_pn_v": (("bus", "phase"), vmax),
            "bus_distance_km": ("bus", np.r_[np.nan, np.linspace(0.0, 0.3, n_bus - 1)]),
        },
        coords={"time": t, "phase": [1, 2, 3], "bus": buses},
    )
    if nan:
        ds = ds.map(lambda v: xr.full_like(v, np.nan) if v.name != "bus_distance_km" else v)
    return ds


GRID_ROWS = pd.DataFrame(
    {
        "contract": ["grid:import", "grid:export"],
        "seller": ["grid", "load1"],
        "buyer": ["load2", "grid"],
        "kwh_traded": [20.0, 3.0],
        "exact_kwh": [0.9, 0.1],
        "phase-only_kwh": [0.8, 0.1],
        "pro-rata_kwh": [1.0, 0.05],
    }
)


def allocation_with_contracts() -> pd.DataFrame:
    contracts = pd.DataFrame(
        {
            "contract": ["load1>load2", "load1>load3", "load4>load2"],
            "seller": ["load1", "load1", "load4"],
            "buyer": ["load2", "load3", "load2"],
            "kwh_traded": [20.0, 15.0, 7.123],
            "exact_kwh": [0.5, 0.3, 0.2],  # total 1.0
            "phase-only_kwh": [0.4, 0.25, 0.15],  # total 0.8: -20 %
            "pro-rata_kwh": [0.55, 0.3, 0.25],  # total 1.1: +10 %
        }
    )
    return pd.concat([contracts, GRID_ROWS], ignore_index=True)


def violations(rows: list[tuple[str, str, float, int]]) -> pd.DataFrame:
    cols = ["check", "item", "n_steps", "first_time", "last_time", "worst_value", "worst_time", "limit", "unit"]
    return pd.DataFrame([(c, i, 1, t, t, v, t, 2.0, "%") for c, i, v, t in rows], columns=cols)


def summary_of(name: str, pv_share: float, market: str, **numbers: float) -> dict[str, Any]:
    base: dict[str, Any] = {
        "scenario": name,
        "pv_share": pv_share,
        "market": market,
        "battery": "off",
        "pv_kwh": 0.0,
        "traded_kwh": 0.0,
        "self_sufficiency_pct": 0.0,
        "peak_import_kw": 40.0,
        "peak_export_kw": 0.0,
        "loss_kwh": 2.0,
        "loss_phase_kwh": 1.6,
        "loss_neutral_kwh": 0.36,
        "loss_earth_kwh": 0.04,
        "pvur_max_pct": 2.5,
        "pvur_p95_pct": 1.5,
        "vuf_max_pct": 1.2,
        "vuf_p95_pct": 0.8,
        "vne_max_v": 4.0,
        "vmin_v": 225.0,
        "vmax_v": 250.0,
        "violation_steps": 0,
        "violation_minutes": 0.0,
        "bill_savings_eur": 0.0,
    }
    for check in ("voltage_high", "voltage_low", "vuf", "pvur", "vne", "line_thermal", "transformer_thermal"):
        base[f"violations_{check}"] = 0
    for m in ("exact", "phase-only", "pro-rata"):
        base[f"contract_loss_{m}_kwh"] = 0.0
    base.update(numbers)
    return base


def make_results(study: types.ModuleType) -> list[Any]:
    Scenario, Result = study.Scenario, study.ScenarioResult
    empty_bills = pd.DataFrame({"savings_eur": [0.0]}, index=pd.Index(["load1"], name="customer"))
    a = Result(
        scenario=Scenario("pv30_community-auction_bat-off", 0.3, "community-auction", "off", 1),
        summary=summary_of(
            "pv30_community-auction_bat-off",
            0.3,
            "community-auction",
            pv_kwh=120.0,
            traded_kwh=42.123,
            self_sufficiency_pct=27.5,
            loss_kwh=3.14159,
            loss_phase_kwh=2.5,
            loss_neutral_kwh=0.56,
            loss_earth_kwh=0.08159,
            pvur_max_pct=4.2,
            violation_steps=12,
            violation_minutes=120.0,
            violations_pvur=14,
            bill_savings_eur=12.34,
            contract_loss_exact_kwh=1.0,
        ),
        series=make_series(1),
        allocation=allocation_with_contracts(),
        bills=empty_bills,
        violations=violations([("pvur", "b4", 4.2, 7), ("pvur", "b5", 3.1, 8)]),
        notes=["3 contract rows scaled down to the measured export/import", "rows with kW < 0 dropped & logged"],
    )
    b = Result(
        scenario=Scenario("pv00_none_bat-off", 0.0, "none", "off", 1),
        summary=summary_of("pv00_none_bat-off", 0.0, "none", loss_kwh=1.777),
        series=make_series(2),
        allocation=GRID_ROWS.copy(),
        bills=empty_bills,
        violations=violations([]),
    )
    c = Result(
        scenario=Scenario("pv60_bilateral-random_bat-off", 0.6, "bilateral:random", "off", 1),
        summary=summary_of("pv60_bilateral-random_bat-off", 0.6, "bilateral:random", pvur_max_pct=float("nan")),
        series=make_series(3, nan=True),
        allocation=GRID_ROWS.iloc[:0].copy(),
        bills=empty_bills,
        violations=violations([]),
    )
    return [a, b, c]


def summary_table(results: list[Any]) -> pd.DataFrame:
    return pd.DataFrame([r.summary for r in results])


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]


def test_write_report(study: types.ModuleType, spec: Any, tmp_path: Path) -> None:
    results = make_results(study)
    out = tmp_path / "report"
    path = report.write_report(spec, results, summary_table(results), out)
    assert path == out / "report.html"
    for name in report.PLOT_FILES:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000, name
    # these hand-made results carry no feeder geometry: no feeder_map.png
    assert sorted(p.name for p in out.iterdir()) == sorted([*report.PLOT_FILES, "report.html"])
    assert leftovers(out) == []
    page = path.read_text(encoding="utf-8")
    # self-contained: plotly.js inline, nothing to fetch
    assert "<link" not in page and "<script src" not in page and "<img" not in page
    assert page.count('<div class="plot"') == len(report_html.COMPARISON_PLOTS) + len(report_html.SCENARIO_PLOTS)
    assert "tiny_study" in page and "Master.dss" in page
    for r in results:
        assert f">{r.scenario.name}</option>" in page  # the scenario picker
    # headline numbers, rounded
    assert ">42.1<" in page  # traded kWh
    assert ">3.14<" in page  # losses kWh
    assert ">4.20<" in page  # worst PVUR %
    assert ">120<" in page  # violation minutes
    assert ">12.34<" in page  # bill savings EUR
    assert ">30<" in page  # PV share %
    data = json.loads(page.split('<script type="application/json" id="lv3ph-data">')[1].split("</script>")[0])
    texts = [sc["finding"] for sc in data["scenarios"]]
    assert "42.1 kWh were traded locally" in texts[0]
    assert "phase-only under-charges them by 20.0 %" in texts[0]
    assert "pro-rata over-charges them by 10.0 %" in texts[0]
    assert "No P2P contracts were formed" in texts[1]
    assert data["scenarios"][0]["notes"] == [
        "3 contract rows scaled down to the measured export/import",
        "rows with kW < 0 dropped & logged",
    ]
    # findings: differences between scenarios, in the page as escaped text
    assert "Going from no PV to PV on 30 % of customers (1 pair of scenarios)" not in page  # markets differ too
    assert "<li>Every scenario exceeds" not in page
    assert "kW &lt; 0" not in page  # notes are data, drawn as text by the script


def test_finding_numbers(study: types.ModuleType, spec: Any) -> None:
    a = make_results(study)[0]
    text = report.scenario_finding(spec, a)
    assert text.startswith("With 30 % of customers on PV, a community auction and no batteries")
    assert "Losses were 3.14 kWh (17.8 % in the neutral, 2.6 % in earth)" in text
    assert "worst PVUR over the feeder was 4.20 %" in text and "(limit 2.0 %)" in text
    assert "2 checked buses exceeded the limit, the worst being bus b4 with 4.20 %" in text
    assert "120 minutes had at least one violation (pvur: 14 item-steps)" in text
    assert "saved customers EUR 12.34 in total" in text
    assert "the exact method charges 1.000 kWh" in text
    assert "Exchanges with the grid (2 rows) are charged 1.000 kWh" in text


def test_single_scenario_nan_series_no_contracts(study: types.ModuleType, spec: Any, tmp_path: Path) -> None:
    results = make_results(study)[2:]
    path = report.write_report(spec, results, summary_table(results), tmp_path)
    for name in report.PLOT_FILES:
        assert (tmp_path / name).read_bytes().startswith(PNG_MAGIC)
    page = path.read_text(encoding="utf-8")
    assert "pv60_bilateral-random_bat-off" in page and "n/a" in page
    assert leftovers(tmp_path) == []


def test_many_scenarios_envelope_picks_three(study: types.ModuleType, spec: Any) -> None:
    base = make_results(study)[1]
    results = []
    for k in range(8):
        series = base.series.copy()
        series["vmax_pn_v"] = series.vmax_pn_v + (30.0 if k == 5 else 0.1 * k)
        results.append(
            study.ScenarioResult(
                scenario=base.scenario,
                summary=base.summary,
                series=series,
                allocation=base.allocation,
                bills=base.bills,
                violations=base.violations,
            )
        )
    chosen = report_plots._pick_distinct(results, 3)
    assert len(chosen) == 3 and 0 in chosen and 5 in chosen
    fig = report.plot_voltage_envelope(spec, results)
    assert "3 most different of 8" in fig.get_suptitle()


def test_plot_failure_leaves_nothing(
    study: types.ModuleType, spec: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("plot failed")

    monkeypatch.setattr(report_html, "plot_allocation", boom)
    results = make_results(study)
    with pytest.raises(RuntimeError, match="plot failed"):
        report.write_report(spec, results, summary_table(results), tmp_path / "out")
    out = tmp_path / "out"
    assert not (out / "report.html").exists()
    assert not out.exists() or (list(out.iterdir()) == [])


def test_write_failure_leaves_no_report(
    study: types.ModuleType, spec: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = report_html.write_atomic

    def failing(path: Path, writer: Any) -> Path:
        if Path(path).name != "report.html":
            return real(path, writer)

        def half(tmp: Path) -> None:
            tmp.write_text("<html>partial")
            raise OSError("disk full")

        return real(path, half)

    monkeypatch.setattr(report_html, "write_atomic", failing)
    results = make_results(study)
    with pytest.raises(OSError, match="disk full"):
        report.write_report(spec, results, summary_table(results), tmp_path)
    assert not (tmp_path / "report.html").exists()
    assert leftovers(tmp_path) == []


def test_findings_are_differences_between_scenarios(spec: Any) -> None:
    """A 2 x 3 grid with hand-set numbers: each sentence states the difference it should."""
    rows = []
    for pv in (0.0, 0.6):
        for market, loss_exact, loss_phase in (
            ("none", 0.0, 0.0),
            ("community-auction", 0.4, 0.3),
            ("bilateral:same-phase-first", 0.2, 0.15),
        ):
            traded = 40.0 if pv and market != "none" else 0.0
            rows.append(
                summary_of(
                    f"pv{pv}_{market}",
                    pv,
                    market,
                    vmax_v=257.0 if pv else 250.0,
                    loss_kwh=3.0 if pv else 2.0,
                    traded_kwh=traded,
                    contract_loss_exact_kwh=loss_exact if traded else 0.0,
                    **{
                        "contract_loss_phase-only_kwh": loss_phase if traded else 0.0,
                        "contract_loss_pro-rata_kwh": loss_exact if traded else 0.0,
                    },
                )
            )
    found = report.findings(spec, pd.DataFrame(rows))
    assert found[0] == "3 of 6 scenarios exceed the upper voltage limit (253.0 V): highest voltage 250.0 to 257.0 V."
    pv = next(f for f in found if f.startswith("Going from no PV to PV on 60 % of customers (3 pairs of scenarios)"))
    assert "raises the highest voltage by 7.0 V, losses by 1.00 kWh or 50 %" in pv
    assert "energy traded locally by 40.0 kWh (0.0 to 40.0)" in pv
    assert "leaves the lowest voltage" in pv and "unchanged." in pv
    auction = next(f for f in found if f.startswith("Going from no market to the community auction (2 pairs"))
    assert "raises energy traded locally by 20.0 kWh (0.0 to 40.0)" in auction  # median of 0 and 40
    assert "leaves the highest voltage, the lowest voltage, losses," in auction
    assert (
        "With bilateral contracts (same-phase-first) the contracts cause 50 % less loss per kWh traded than with "
        "the community auction (1 pair; 5.0 Wh per kWh, exact method)." in found
    )
    assert found[-1] == (
        "Over the 2 scenarios with contracts, phase-only charges the contracts 25 % less than exact; "
        "pro-rata charges the contracts the same as exact."
    )
