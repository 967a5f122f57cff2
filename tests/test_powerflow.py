"""Power-flow capture against OpenDSS's own per-element numbers, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lv3ph import Engine, RunSpec, run_powerflow
from lv3ph.errors import ConvergenceError, ModelError, ProfileError, UnknownItemError
from lv3ph.powerflow import capture, element_flows, element_flows_reference, open_feeder, solve
from tests.conftest import IEEE, IEEE_4W, IEEE_4W_PME, TWO_CUSTOMER, write_feeder

TNCS_PME = Path(__file__).parent / "feeders" / "tncs_pme.dss"


@pytest.fixture(scope="module")
def pme_step() -> tuple[Engine, object, object]:
    """Four-wire IEEE twin with PME, solved at minute 566, and its captured Dataset."""
    engine, model = open_feeder(IEEE_4W_PME, vmaxpu=1.5)
    ds = solve(engine, model, RunSpec("yearly", 60.0, 566, 1), progress=False)
    return engine, model, ds


def test_currents_match_opendss_per_conductor(pme_step) -> None:
    engine, model, ds = pme_step
    checked = 0
    for e in model.elements:
        ref = engine.element_currents(e.name)[: e.n_conductors]
        ours = ds.current.sel(element=e.name).values[0, : e.n_conductors]
        # OpenDSS forms I = Y V1 - Y V2; on the faithful twin's 1e-6 ohm/km neutrals Y is ~1e9 S,
        # so its own currents carry ~1e-6 A of rounding (lv3ph takes V1 - V2 first).
        assert np.allclose(ours, ref, rtol=1e-9, atol=1e-5), e.name
        checked += 1
    assert checked == len(model.elements) > 900
    earthing = [e.name for e in model.elements if e.kind == "earthing"]
    assert len(earthing) == 56  # transformer star point + 55 customers
    i_earth = np.abs(ds.current.sel(element=earthing).values[0, :, 0])
    assert i_earth.max() > 0.1  # PME really carries return current


def test_losses_match_opendss_phase_neutral_earth(pme_step) -> None:
    engine, model, ds = pme_step
    ref = engine.element_losses_w()
    for e in model.elements:
        total = float(ds.loss_kw.sel(element=e.name)[0]) * 1000
        assert total == pytest.approx(ref[e.name].real, rel=1e-9, abs=1e-6), e.name
        if e.kind == "line":
            per_conductor = engine.element_phase_losses_kw(e.name).real  # kW, conductors 1..4
            assert float(ds.loss_phase_kw.sel(element=e.name)[0]) == pytest.approx(
                per_conductor[:3].sum(), rel=1e-9, abs=1e-12
            )
            assert float(ds.loss_neutral_kw.sel(element=e.name)[0]) == pytest.approx(
                per_conductor[3], rel=1e-9, abs=1e-12
            )
        if e.kind == "earthing":
            assert float(ds.loss_earth_kw.sel(element=e.name)[0]) * 1000 == pytest.approx(
                ref[e.name].real, rel=1e-9, abs=1e-12
            )
    assert float(ds.loss_neutral_kw.sum()) > 0.05 * float(ds.loss_total_kw.sum())
    assert float(ds.loss_earth_kw.sum()) > 0


def test_total_loss_is_source_input_minus_consumption(pme_step) -> None:
    engine, _model, ds = pme_step
    ref_total_kw = sum(v.real for v in engine.element_losses_w().values()) / 1000
    assert float(ds.loss_total_kw[0]) == pytest.approx(ref_total_kw, rel=1e-9)
    # customers' power is read at the network side of the converged solution; it differs
    # from their set-points only by OpenDSS's convergence tolerance
    balance = float(ds.source_p_kw[0] - ds.customer_p_kw.sum())
    assert balance == pytest.approx(ref_total_kw, rel=1e-6)
    # Circuit.Losses() leaves out the earth electrodes (Reactors)
    circuit_kw = (
        engine.dss.Circuit.Losses()[0] / 1000
        if np.ndim(engine.dss.Circuit.Losses())
        else engine.dss.Circuit.Losses().real / 1000
    )
    assert ref_total_kw - circuit_kw == pytest.approx(float(ds.loss_earth_kw.sum()), rel=1e-6)


def test_customer_power_matches_opendss(pme_step) -> None:
    engine, model, ds = pme_step
    for c in model.customers:
        s = engine.element_powers_kva(f"load.{c.name}")
        # OpenDSS reports a PQ load at its set-point; the network side of the converged
        # solution differs by the convergence tolerance (1e-4 pu on voltage; 0.1 W here)
        assert float(ds.customer_p_kw.sel(customer=c.name)[0]) == pytest.approx(s.real.sum(), rel=1e-4, abs=1e-4)
        assert float(ds.customer_q_kvar.sel(customer=c.name)[0]) == pytest.approx(s.imag.sum(), rel=1e-4, abs=1e-4)


def test_numba_capture_kernel_matches_reference() -> None:
    engine, model = open_feeder(IEEE_4W_PME, vmaxpu=1.5)
    vt, _ = engine.run("yearly", 60.0, 560, 12)
    fast, ref = element_flows(model, vt), element_flows_reference(model, vt)
    scale_i = np.nanmax(np.abs(ref.current))
    assert np.nanmax(np.abs(fast.current - ref.current)) <= 1e-10 * scale_i
    assert np.abs(fast.p_cond - ref.p_cond).max() <= 1e-10 * np.abs(ref.p_cond).max()
    # currents of a few elements only (a line, the transformer, none): the same numbers bit for bit
    tx = [i for i, e in enumerate(model.elements) if e.kind == "transformer"]
    for pick in ([5, *tx], []):
        some = element_flows(model, vt, np.array(pick, dtype=np.int64))
        assert some.current.shape == (len(pick), *fast.current.shape[1:])
        assert np.array_equal(some.current, fast.current[pick], equal_nan=True)
        assert np.array_equal(some.p_cond, fast.p_cond) and np.array_equal(some.winding_s_kva, fast.winding_s_kva)


def test_pq_departure_matches_opendss_without_vmaxpu_override() -> None:
    """Without vmaxpu=1.5 OpenDSS turns the IEEE loads (rated 230 V, sitting at 240-252 V)
    into constant impedances; lv3ph's departure must equal what the loads really draw."""
    engine, model = open_feeder(IEEE)
    vt, _ = engine.run("yearly", 60.0, 566, 1)
    ds = capture(model, RunSpec("yearly", 60.0, 566, 1), vt)
    shape = engine.dss.LoadShape
    flagged = 0
    for c in model.customers:
        engine.dss.Loads.Name(c.name)
        shape.Name(engine.dss.Loads.Yearly())
        setpoint_kw = engine.dss.Loads.kW() * shape.PMult()[565]
        drawn = float(ds.customer_p_kw.sel(customer=c.name)[0])
        dep = float(ds.customer_pq_departure_pct.sel(customer=c.name)[0])
        assert 100 * (drawn / setpoint_kw - 1) == pytest.approx(dep, abs=0.05), c.name
        flagged += abs(dep) > 1
    assert flagged > 10


def test_snap_and_daily_modes(tmp_path: Path) -> None:
    path = write_feeder(tmp_path, TWO_CUSTOMER)
    snap = run_powerflow(path, mode="snap", steps=1, progress=False)
    assert snap.sizes["time"] == 1
    assert float(snap.customer_p_kw.sel(customer="c2")[0]) == pytest.approx(6.0, rel=1e-4)
    daily = run_powerflow(path, mode="daily", stepsize="1h", start=1, steps=3, progress=False)
    assert list(daily.time.values) == [1, 2, 3]
    assert np.allclose(daily.customer_p_kw.values, [4.0, 6.0], rtol=1e-4)  # no shapes: base kW


# ------------------------------------------------------------------ bad input
def test_missing_model(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        run_powerflow(tmp_path / "nope.dss", steps=1)


def test_compile_error_carries_opendss_message(tmp_path: Path) -> None:
    path = write_feeder(tmp_path, TWO_CUSTOMER + "\nnew line.bad bus1=3 bus2=4 linecode=doesnotexist length=1\n")
    with pytest.raises(ModelError, match="doesnotexist|LineCode|linecode"):
        run_powerflow(path, steps=1)


def test_unknown_mode(tmp_path: Path) -> None:
    path = write_feeder(tmp_path, TWO_CUSTOMER)
    with pytest.raises(ModelError, match="unknown mode 'weekly'"):
        run_powerflow(path, mode="weekly", steps=1)


def test_nan_profile_names_shape(tmp_path: Path) -> None:
    text = (
        TWO_CUSTOMER.replace("new load.c2", "new loadshape.bad npts=3 interval=1 mult=[1 nan 1]\nnew load.c2")
        + "\nedit load.c2 yearly=bad\n"
    )
    path = write_feeder(tmp_path, text)
    with pytest.raises(ProfileError, match="bad.*NaN at point 2"):
        run_powerflow(path, mode="yearly", stepsize="1h", steps=3)


def test_profile_too_short_for_run(tmp_path: Path) -> None:
    text = (
        TWO_CUSTOMER.replace("new load.c2", "new loadshape.short npts=3 interval=1 mult=[1 0.5 1]\nnew load.c2")
        + "\nedit load.c2 yearly=short\n"
    )
    path = write_feeder(tmp_path, text)
    with pytest.raises(ProfileError, match="short.*covers 3 h.*ends at 5 h"):
        run_powerflow(path, mode="yearly", stepsize="1h", steps=5)


def test_non_convergence_names_step(tmp_path: Path) -> None:
    text = (
        TWO_CUSTOMER.replace("new load.c2", "new loadshape.spike npts=3 interval=1 mult=[1 1 400]\nnew load.c2")
        + "\nedit load.c2 yearly=spike\nset maxiterations=5\n"
    )
    path = write_feeder(tmp_path, text)
    with pytest.raises(ConvergenceError, match="step 3"):
        run_powerflow(path, mode="yearly", stepsize="1h", steps=3)


def test_unknown_customer_for_pme() -> None:
    with pytest.raises(UnknownItemError, match="nosuchload"):
        open_feeder(IEEE_4W, pme_ohm=20, pme_customers=["nosuchload"])


def test_pme_on_three_wire_model_is_refused() -> None:
    with pytest.raises(ModelError, match="three-wire"):
        open_feeder(IEEE, pme_ohm=20)


def test_pme_on_an_earthed_model_adds_electrodes_in_parallel(tmp_path: Path) -> None:
    """tncs_pme.dss already has Reactor.pme_h1..h3: --pme adds a second electrode at each
    neutral (unique names) and the voltages equal OpenDSS solving the model with those
    parallel electrodes written by hand."""
    engine, model = open_feeder(TNCS_PME, pme_ohm=5.0)
    names = {e.name for e in model.elements if e.kind == "earthing"}
    assert {"reactor.pme_h1", "reactor.pme_h1_1", "reactor.pme_h3_1"} <= names
    ours = solve(engine, model, RunSpec("snap", 3600.0, 0, 1), progress=False)
    extra = "".join(f"new reactor.extra_{h} phases=1 bus1={h}.4 bus2={h}.0 R=5 X=0\n" for h in ("h1", "h2", "h3"))
    text = TNCS_PME.read_text().replace("set voltagebases", extra + "set voltagebases")
    ref_engine, ref_model = open_feeder(write_feeder(tmp_path, text))
    ref = solve(ref_engine, ref_model, RunSpec("snap", 3600.0, 0, 1), progress=False)
    for bus in ("h1", "h2", "h3"):
        a = ours.voltage.sel(bus=bus).values
        b = ref.voltage.sel(bus=bus).values
        assert np.allclose(a, b, rtol=0, atol=1e-9)
    # the parallel electrodes change the neutral shift: not the earthed-once answer
    once_engine, once_model = open_feeder(TNCS_PME)
    once = solve(once_engine, once_model, RunSpec("snap", 3600.0, 0, 1), progress=False)
    assert not np.allclose(ours.voltage.sel(bus="h3").values, once.voltage.sel(bus="h3").values, atol=1e-3)
