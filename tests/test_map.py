"""Feeder map: a small feeder with known bus coordinates is drawn where its coordinates
say, in the colours its values map to (values checked against OpenDSS run directly)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import opendssdirect as dss
import pytest
import xarray as xr
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from PIL import Image

from lv3ph.powerflow import RunSpec, open_feeder, solve
from lv3ph.report.map import QUANTITIES, map_data, phase_colour, plot_feeder_map
from lv3ph.report.plots import PHASE_COLOURS
from lv3ph.study import feeder_variables
from lv3ph.unbalance import unbalance
from tests.conftest import TWO_CUSTOMER, write_feeder

#: TWO_CUSTOMER plus a branch 2 -> 4 with a customer on phase c, and a three-phase customer at 4.
FEEDER = TWO_CUSTOMER.replace(
    "set voltagebases",
    "new line.l3 bus1=2.1.2.3.4 bus2=4.1.2.3.4 phases=4 linecode=lc length=0.1 units=km\n"
    "new load.c3 phases=1 bus1=4.3.4 kv=0.23 kw=3 pf=0.95 vminpu=0.8 vmaxpu=1.2\n"
    "new load.c4 phases=3 bus1=4.1.2.3.4 kv=0.4 kw=3 pf=0.95 vminpu=0.8 vmaxpu=1.2\n"
    "set voltagebases",
)
#: Bus coordinates in the file (metres); the MV source bus has none.
COORDS = {"1": (0.0, 0.0), "2": (200.0, 0.0), "3": (350.0, 0.0), "4": (200.0, 100.0)}
LINES = {"line.l1": ("1", "2"), "line.l2": ("2", "3"), "line.l3": ("2", "4")}
CUSTOMER_BUS = {"c1": "2", "c2": "3", "c3": "4", "c4": "4"}


def write_model(folder: Path, coords: bool = True) -> Path:
    text = FEEDER
    if coords:
        (folder / "coords.csv").parent.mkdir(parents=True, exist_ok=True)
        (folder / "coords.csv").write_text("".join(f"{b},{x},{y}\n" for b, (x, y) in COORDS.items()))
        text += "buscoords coords.csv\n"
    return write_feeder(folder, text)


def feeder_series(path: Path) -> xr.Dataset:
    """One snapshot through lv3ph: the map variables of the study, plus the voltage envelope."""
    engine, model = open_feeder(path)
    pf = solve(engine, model, RunSpec(mode="snap", stepsize_s=60.0, start=1, steps=1), progress=False)
    unb = unbalance(pf)
    fv = feeder_variables(
        model, model.customers, engine.bus_coordinates(), pf, unb, {"c1": 4.0}, ["c1"], ["c3"], 1 / 60
    )
    return fv.assign(vmax_pn_v=unb.vmax_pn_v.max("time"))


def opendss_neutral_currents(path: Path) -> dict[str, float]:
    """|I| of conductor 4 at terminal 1 of each line, from OpenDSS directly."""
    dss.Text.Command(f"compile [{path}]")
    dss.Solution.Solve()
    out = {}
    for name in LINES:
        dss.Circuit.SetActiveElement(name)
        out[name] = float(dss.CktElement.CurrentsMagAng()[2 * 3])
    return out


@pytest.fixture(scope="module")
def feeder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, xr.Dataset]:
    path = write_model(tmp_path_factory.mktemp("map"))
    return path, feeder_series(path)


def test_bus_coordinates_are_read_from_the_model(feeder: tuple[Path, xr.Dataset]) -> None:
    _, series = feeder
    got = {
        b: (float(x), float(y))
        for b, x, y in zip(series.bus.values, series.bus_x.values, series.bus_y.values, strict=True)
    }
    for bus, xy in COORDS.items():
        assert got[bus] == xy
    assert np.isnan(got["sourcebus"][0])
    assert list(series.electrode_bus.values) == ["1", "3"]  # earth_tx at the transformer, pme_c2 at c2
    assert list(series.transformer_bus.values) == ["1"]


def test_lines_customers_and_colours_are_where_and_what_the_values_say(feeder: tuple[Path, xr.Dataset]) -> None:
    path, series = feeder
    reference = opendss_neutral_currents(path)
    data = map_data(series)
    assert data is not None and data.source == "buscoords"
    values = dict(zip(data.lines, data.values["neutral_a"], strict=True))
    for name, ref in reference.items():
        assert values[name] == pytest.approx(ref, rel=1e-6, abs=1e-9)
    fig = plot_feeder_map(data, "neutral_a")
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    ax = fig.axes[0]
    lc = next(c for c in ax.collections if c.get_gid() == "lines")
    segments = lc.get_segments()
    colours = lc.get_colors()
    lo, hi = min(reference.values()), max(reference.values())
    cmap = colormaps[QUANTITIES["neutral_a"].cmap]
    for i, name in enumerate(data.lines):
        a, b = LINES[name]
        np.testing.assert_allclose(segments[i], [COORDS[a], COORDS[b]])
        expected = cmap((reference[name] - lo) / (hi - lo))
        np.testing.assert_allclose(colours[i], expected, atol=1e-3)
    customers = next(c for c in ax.collections if c.get_gid() == "customers")
    np.testing.assert_allclose(customers.get_offsets(), [COORDS[CUSTOMER_BUS[c]] for c in data.customers])
    phases = {"c1": "a", "c2": "b", "c3": "c", "c4": "abc"}
    for c, face in zip(data.customers, customers.get_facecolors(), strict=True):
        np.testing.assert_allclose(face, to_rgba(phase_colour(phases[c])))
    assert phase_colour("a") == PHASE_COLOURS["a"]
    pv = next(c for c in ax.collections if c.get_gid() == "device-pv")
    bat = next(c for c in ax.collections if c.get_gid() == "device-battery")
    np.testing.assert_allclose(pv.get_offsets(), [COORDS["2"]])
    np.testing.assert_allclose(bat.get_offsets(), [COORDS["2"]])
    ev = next(c for c in ax.collections if c.get_gid() == "device-ev")
    np.testing.assert_allclose(ev.get_offsets(), [COORDS[CUSTOMER_BUS["c3"]]])

    # the PNG: pixels at the middle of each line have its colour, at each one-phase customer its phase colour
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    img = np.asarray(Image.open(buf).convert("RGB"), dtype=float) / 255.0
    height = img.shape[0]

    def pixel(x: float, y: float) -> np.ndarray:
        px, py = ax.transData.transform((x, y))
        return img[round(float(height - py)), round(float(px))]

    for i, name in enumerate(data.lines):
        (x1, y1), (x2, y2) = (COORDS[b] for b in LINES[name])
        at = pixel(x1 + 0.3 * (x2 - x1), y1 + 0.3 * (y2 - y1))
        np.testing.assert_allclose(at, colours[i][:3], atol=0.06)
    for c in ("c2",):
        np.testing.assert_allclose(pixel(*COORDS[CUSTOMER_BUS[c]]), to_rgba(PHASE_COLOURS["b"])[:3], atol=0.06)


def test_bus_values_colour_a_line_by_its_worse_end(feeder: tuple[Path, xr.Dataset]) -> None:
    _, series = feeder
    data = map_data(series)
    assert data is not None
    vmax = series.vmax_pn_v.to_series()
    for name, v in zip(data.lines, data.values["vmax_v"], strict=True):
        a, b = LINES[name]
        assert v == max(vmax[a], vmax[b])


def test_without_coordinates_a_graph_layout_is_drawn(tmp_path: Path) -> None:
    series = feeder_series(write_model(tmp_path, coords=False))
    assert np.isnan(series.bus_x.values).all()
    data = map_data(series)
    assert data is not None and data.source == "layout"
    assert np.isfinite(data.segments).all() and np.isfinite(data.customer_xy).all()
    ends = {}
    for (p1, p2), name in zip(data.segments, data.lines, strict=True):
        a, b = LINES[name]
        for bus, p in ((a, p1), (b, p2)):
            ends.setdefault(bus, p)
            np.testing.assert_allclose(ends[bus], p)  # one position per bus, shared by its lines
    for c, xy in zip(data.customers, data.customer_xy, strict=True):
        np.testing.assert_allclose(xy, ends[CUSTOMER_BUS[c]])
    assert len({tuple(np.round(p, 9)) for p in ends.values()}) == len(ends)  # distinct positions
