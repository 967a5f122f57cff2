"""The interactive report in a real browser (headless Chromium, skipped where it is missing),
and ``lv3ph report RESULT_DIR`` re-rendering it from the saved results without solving.

A small study (the map test's four-customer feeder with bus coordinates, 2 x 2 scenarios,
8 steps) is run once through the command line; its ``report.html`` is opened with the
network switched off, and every plot must be drawn (SVG traces, non-blank pixels in the
screenshot), with no console error and no request other than the file itself.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lv3ph.cli import main
from lv3ph.hosting import HostingResult
from lv3ph.report import fleet_report, write_hosting_report
from lv3ph.report.html import COMPARISON_PLOTS, SCENARIO_PLOTS
from lv3ph.report.map import QUANTITIES
from lv3ph.results import HostingSpec, read_results
from tests.cdp import Chromium, find_chromium
from tests.test_map import COORDS, LINES, write_model

STUDY = """
[study]
name = "browser"
model = "{model}"
out = "out_of_the_file"
seed = 3

[time]
mode = "yearly"
stepsize = "15m"
start = 44
steps = 8

[pv]
kwp = [4.0, 6.0]

[scenarios]
pv_share = [0.0, 1.0]
market = ["none", "community-auction"]
"""
RENDERED = "document.body && (document.body.dataset.rendered === '1' || document.body.dataset.renderError)"


@pytest.fixture(scope="module")
def study_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("browser")
    model = write_model(folder)
    (folder / "study.toml").write_text(STUDY.format(model=model))
    out = folder / "results"
    assert main(["study", str(folder / "study.toml"), "--serial", "--no-progress", "--out", str(out)]) == 0
    assert not (folder / "out_of_the_file").exists()  # --out replaced the study file's folder
    return out


@pytest.fixture(scope="module")
def browser() -> Iterator[Chromium]:
    binary = find_chromium()
    if binary is None:
        pytest.skip("chromium is not installed (Debian package chromium)")
    with Chromium(binary) as b:
        b.offline()
        yield b


def open_page(b: Chromium, path: Path) -> None:
    b.events.clear()
    b.open(path)
    b.wait_for(f"location.href === {json.dumps(path.resolve().as_uri())} && {RENDERED}")
    assert b.evaluate("document.body.dataset.renderError || ''") == ""


def plots(b: Chromium) -> list[dict[str, Any]]:
    """Each plot div: id, page rectangle, plotly SVG traces and drawn points/paths."""
    value = b.evaluate(
        """JSON.stringify([...document.querySelectorAll('.plot')].map(e => {
            const r = e.getBoundingClientRect();
            return {id: e.id, x: r.left + scrollX, y: r.top + scrollY, w: r.width, h: r.height,
                    svg: e.querySelectorAll('svg.main-svg').length, traces: e.querySelectorAll('g.trace').length,
                    points: e.querySelectorAll('g.trace path.point').length,
                    lines: e.querySelectorAll('g.trace path.js-line').length,
                    bars: e.querySelectorAll('g.trace.bars path').length};
        }))"""
    )
    return list(json.loads(value))


def assert_drawn(shot: Image.Image, plot: dict[str, Any]) -> None:
    """The plot's region of the screenshot is not blank: >2 % non-white pixels, many colours."""
    box = (int(plot["x"]), int(plot["y"]), int(plot["x"] + plot["w"]), int(plot["y"] + plot["h"]))
    region = np.asarray(shot.crop(box).convert("RGB"), dtype=np.int16)
    ink = (np.abs(region - 255).sum(axis=2) > 60).mean()
    colours = len(np.unique(region.reshape(-1, 3)[::7], axis=0))
    assert ink > 0.02 and colours > 8, f"{plot['id']}: ink {ink:.3f}, {colours} colours"


def assert_clean(b: Chromium, page: Path) -> None:
    assert b.console_errors() == []
    urls = b.requested_urls()
    assert urls and all(u == page.resolve().as_uri() or u.startswith("data:") for u in urls), urls


def assert_map_geometry(b: Chromium, payload: dict[str, Any], colours: list[str]) -> None:
    """The interactive map's line traces join the buses' coordinates, each line in the
    colour bin its value falls in (values: the payload, checked in tests/test_map.py)."""
    traces = json.loads(
        b.evaluate(
            "JSON.stringify(document.getElementById('sc-map').data.filter(t => t.mode === 'lines')"
            ".map(t => ({x: t.x, y: t.y, colour: t.line.color})))"
        )
    )
    drawn = {}
    for t in traces:
        for k in range(0, len(t["x"]), 3):
            ends = ((t["x"][k], t["y"][k]), (t["x"][k + 1], t["y"][k + 1]))
            drawn[frozenset(ends)] = t["colour"]
    origin = np.array([payload["x0"], payload["y0"]])
    values = [v for v in payload["values"]["vmax_v"] if v is not None]
    lo, hi = min(values), max(values)
    assert len(drawn) == len(LINES)
    for name, (a, b_) in LINES.items():
        ends = frozenset(tuple(float(c) for c in np.array(COORDS[bus]) - origin) for bus in (a, b_))
        assert ends in drawn, (name, ends, list(drawn))
        v = payload["values"]["vmax_v"][payload["lines"].index(name)]
        assert drawn[ends] == colours[min(len(colours) - 1, int((v - lo) / (hi - lo) * len(colours)))], name


def test_study_report_draws_every_plot_offline(study_out: Path, browser: Chromium) -> None:
    page = study_out / "report.html"
    open_page(browser, page)
    drawn = {p["id"]: p for p in plots(browser)}
    assert set(drawn) == {*COMPARISON_PLOTS, *SCENARIO_PLOTS}
    for p in drawn.values():
        assert p["svg"] >= 1 and p["w"] > 300 and p["h"] > 150, p
    for name in COMPARISON_PLOTS:
        assert drawn[name]["traces"] >= 2 and drawn[name]["bars"] + drawn[name]["points"] > 0, drawn[name]
    data = json.loads(browser.evaluate("document.getElementById('lv3ph-data').textContent"))
    first = data["scenarios"][0]
    n_lines = sum(1 for v in first["map"]["x1"] if v is not None)
    n_customers = len(first["map"]["customers"])
    # map: line bins + the hover markers (one per line) + customers, electrodes, transformer
    assert drawn["sc-map"]["lines"] >= 1 and drawn["sc-map"]["points"] >= n_lines + n_customers
    for name in ("sc-envelope", "sc-unbalance", "sc-currents", "sc-power"):
        assert drawn[name]["traces"] >= 2 and drawn[name]["points"] + drawn[name]["lines"] > 0, drawn[name]
    assert_map_geometry(browser, first["map"], data["quantities"]["vmax_v"]["colours"])
    shot = Image.open(io.BytesIO(browser.screenshot()))
    for p in drawn.values():
        if p["id"] != "sc-allocation":  # no contracts in the first scenario: a titled empty plot
            assert_drawn(shot, p)

    # pick a scenario with contracts: its allocation chart has bars, the map is redrawn
    with_contracts = next(i for i, s in enumerate(data["scenarios"]) if s.get("allocation"))
    browser.evaluate(
        f"(() => {{ const p = document.getElementById('scenario-picker'); p.value = '{with_contracts}';"
        " p.dispatchEvent(new Event('change')); })()"
    )
    browser.wait_for(RENDERED)
    drawn = {p["id"]: p for p in plots(browser)}
    assert drawn["sc-allocation"]["bars"] > 0
    shown = browser.evaluate("document.getElementById('sc-finding').textContent")
    assert shown == data["scenarios"][with_contracts]["finding"] != data["scenarios"][0]["finding"]
    shot = Image.open(io.BytesIO(browser.screenshot()))
    assert_drawn(shot, drawn["sc-allocation"])
    # every map colouring draws
    for q in QUANTITIES:
        browser.evaluate(
            f"(() => {{ const s = document.getElementById('map-quantity'); s.value = '{q}';"
            " s.dispatchEvent(new Event('change')); })()"
        )
        browser.wait_for(RENDERED)
        title = browser.evaluate("document.querySelector('#sc-map .gtitle').textContent")
        assert title.startswith(QUANTITIES[q].label), title
    assert_clean(browser, page)


def test_hosting_and_fleet_pages_draw_offline(study_out: Path, browser: Chromium, tmp_path: Path) -> None:
    spec, _, _ = read_results(study_out)
    spec = replace(spec, hosting=HostingSpec(placements=5))
    rng = np.random.default_rng(0)
    results = {}
    for arrangement in ("as-built", "static-rebalanced"):
        placements = pd.DataFrame(
            {
                "placement": range(5),
                "hosting_kw": rng.uniform(5, 30, 5),
                "binding_limit": ["voltage_high", "pvur", "voltage_high", "none", "vuf"],
                "censored": [False, False, False, True, False],
            }
        )
        empty = pd.DataFrame()
        results[arrangement] = HostingResult(placements, empty, empty, empty, label=arrangement)
    summary = pd.DataFrame([{"arrangement": a, **r.summary} for a, r in results.items()])
    page = write_hosting_report(spec, results, summary, tmp_path / "hosting")
    open_page(browser, page)
    shot = Image.open(io.BytesIO(browser.screenshot()))
    drawn = plots(browser)
    assert [p["id"] for p in drawn] == ["hc-hist", "hc-ecdf", "hc-binding"]
    for p in drawn:
        assert p["traces"] == 2, p
        assert_drawn(shot, p)
    assert_clean(browser, page)

    fleet = pd.DataFrame({"feeder": ["f1", "f2", "f3"], "loss_kwh": [3.0, 9.5, 1.2], "pvur_max_pct": [1.0, 2.5, 0.4]})
    page = fleet_report(fleet, "loss_kwh", tmp_path / "fleet.html", title="Fleet", notes=["f4: did not converge"])
    open_page(browser, page)
    (bar,) = plots(browser)
    assert bar["id"] == "fleet-bar" and bar["bars"] == 3
    assert_drawn(Image.open(io.BytesIO(browser.screenshot())), bar)
    ranked = browser.evaluate("[...document.querySelectorAll('tbody tr td:nth-child(2)')].map(td => td.textContent)")
    assert ranked == ["f2", "f1", "f3"]
    drawn = browser.evaluate("JSON.stringify(document.getElementById('fleet-bar').data[0].y)")
    assert json.loads(drawn) == ["f2", "f1", "f3"]
    assert "f4: did not converge" in browser.evaluate("document.body.textContent")
    assert_clean(browser, page)
    page = fleet_report(fleet, "loss_kwh", tmp_path / "fleet_up.html", ascending=True, top=2, columns=["feeder"])
    open_page(browser, page)
    ranked = browser.evaluate("[...document.querySelectorAll('tbody tr td:nth-child(2)')].map(td => td.textContent)")
    assert ranked == ["f3", "f1"]
    assert browser.evaluate("document.querySelectorAll('thead th').length") == 3  # rank, feeder, loss_kwh
    assert_clean(browser, page)


def test_report_rerenders_from_saved_results_without_solving(study_out: Path, tmp_path: Path, monkeypatch: Any) -> None:
    def no_solving(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("lv3ph report must not solve")

    import lv3ph.dss
    import lv3ph.study

    monkeypatch.setattr(lv3ph.dss.Engine, "compile", no_solving)  # every OpenDSS run starts here
    monkeypatch.setattr(lv3ph.study, "run_scenario", no_solving)
    again = tmp_path / "again"
    assert main(["report", str(study_out), "--out", str(again)]) == 0

    def strip(path: Path) -> str:
        return "\n".join(line for line in path.read_text().splitlines() if "written" not in line)

    assert strip(again / "report.html") == strip(study_out / "report.html")
    assert (again / "feeder_map.png").read_bytes() == (study_out / "feeder_map.png").read_bytes()
    assert sorted(p.name for p in again.iterdir()) == sorted(
        p.name for p in study_out.iterdir() if p.is_file() and p.suffix in (".png", ".html")
    )


HOSTING = """
[study]
name = "hosting"
model = "{model}"

[time]
mode = "yearly"
stepsize = "15m"
start = 44
steps = 4

[hosting]
placements = 3
kwp = [2.0, 6.0]

[scenarios]
arrangement = ["as-built", "static-rebalanced"]
"""


def test_hosting_report_rerenders_from_saved_results(tmp_path: Path) -> None:
    model = write_model(tmp_path / "feeder")
    (tmp_path / "hosting.toml").write_text(HOSTING.format(model=model))
    out = tmp_path / "out"
    assert main(["study", str(tmp_path / "hosting.toml"), "--serial", "--no-progress", "--out", str(out)]) == 0
    assert main(["report", str(out), "--out", str(tmp_path / "again")]) == 0
    page = (out / "report.html").read_text()
    assert (tmp_path / "again" / "report.html").read_text() == page
    data = json.loads(page.split('id="lv3ph-data">')[1].split("</script>")[0])
    for arrangement in ("as-built", "static-rebalanced"):
        placements = pd.read_csv(out / f"hosting_{arrangement}.csv")
        np.testing.assert_allclose(
            data["arrangements"][arrangement]["hosting_kw"], np.sort(placements.hosting_kw), rtol=1e-4
        )
    assert (tmp_path / "again" / "hosting.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
