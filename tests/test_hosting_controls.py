"""Inverter controls, base-relative criteria and PV-aware switching of the hosting study."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import opendssdirect as dss
import pytest

from lv3ph.hosting import hosting_capacity
from lv3ph.hosting.settings import QU_CURVE
from lv3ph.model import loadshape_command, pv_commands
from lv3ph.powerflow import open_feeder
from lv3ph.unbalance import Limits
from tests.conftest import write_feeder
from tests.test_hosting import HOURLY, SUN, one_line

FEEDER = one_line(customers=("c1.1", "c2.2"))
SIZES = {"c1": 4.0, "c2": 3.0}
NOON = 12  # hourly step 12 ends at 12:00: SUN = 1


def curve_q(v_pu: float) -> float:
    """Q(U) of QU_CURVE by hand (pu of kVA, supplied positive)."""
    xs, ys = zip(*QU_CURVE, strict=True)
    return float(np.interp(v_pu, xs, ys))


def test_qu_control_equals_opendss_invcontrol_run_directly(tmp_path: Path) -> None:
    """Two PVs on one line far enough out to sit on the slope of the Q(U) curve: the
    engine's InvControl gives the same kvar and voltages as an InvControl written by hand
    and solved through opendssdirect, and both sit on the curve at the PV's own voltage
    (per unit of 230 V) within InvControl's var tolerance."""
    path = write_feeder(tmp_path, FEEDER)
    engine, model = open_feeder(path)
    engine.apply([loadshape_command("sun", SUN, 3600.0), *pv_commands(model, SIZES, "sun")])
    names = [f"pv_{n}" for n in SIZES]
    engine.add_inverter_control("qu", names, volt_var=QU_CURVE)
    read = engine.pv_powers_kw(names)
    engine.set_mode("daily", 3600.0)
    engine.solve_step("daily", 3600.0, NOON)
    ours, v_ours = read(), engine.node_voltages()

    # ---- the same by hand, straight through opendssdirect
    dss.Text.Command(f"redirect {path}")
    dss.Text.Command(f"new loadshape.sun npts=24 interval=1 mult=[{' '.join(f'{x:g}' for x in SUN)}]")
    for n, kwp in SIZES.items():
        bus = {"c1": "c.1.4", "c2": "c.2.4"}[n]
        dss.Text.Command(
            f"new pvsystem.pv_{n} phases=1 bus1={bus} kv=0.23 kva={1.1 * kwp} pmpp={kwp} irradiance=1 "
            "%cutin=0 %cutout=0 daily=sun vminpu=0.5 vmaxpu=1.5"
        )
    dss.Text.Command("new xycurve.vv npts=6 xarray=[0.5 0.92 0.96 1.04 1.08 1.5] yarray=[0.44 0.44 0 0 -0.44 -0.44]")
    dss.Text.Command(
        "new invcontrol.ref derlist=[pvsystem.pv_c1 pvsystem.pv_c2] mode=voltvar vvc_curve1=vv "
        "voltage_curvex_ref=rated refreactivepower=varmax varchangetolerance=0.0001"
    )
    dss.Text.Command("set maxcontroliter=200")
    dss.Text.Command("set mode=daily number=1 stepsize=1h")
    dss.Solution.Hour(NOON - 1)
    dss.Solution.Seconds(0.0)
    dss.Solution.Solve()
    assert dss.Solution.Converged() and dss.Solution.ControlIterations() < 200
    ref = []
    for n in SIZES:
        dss.PVsystems.Name(f"pv_{n}")
        ref.append(complex(dss.PVsystems.kW(), dss.PVsystems.kvar()))
    flat = np.asarray(dss.Circuit.YNodeVArray(), dtype=float)  # re, im pairs
    v_ref = flat[0::2] + 1j * flat[1::2]
    np.testing.assert_allclose(ours, ref, atol=1e-3)
    np.testing.assert_allclose(v_ours, v_ref, atol=1e-3)

    # ---- on the curve: InvControl reads the PV terminal's voltage to earth (here the
    # neutral is earthed at the source only, so that differs from phase-to-neutral)
    nodes = {b: i for i, b in enumerate(model.nodes)}
    for (n, kwp), s in zip(SIZES.items(), ours, strict=True):
        ph = {"c1": "c.1", "c2": "c.2"}[n]
        v_pe = abs(v_ours[nodes[ph]])
        q_pu = s.imag / (1.1 * kwp)
        assert 1.04 < v_pe / 230.0 < 1.08  # on the slope, not saturated
        assert q_pu == pytest.approx(curve_q(v_pe / 230.0), abs=0.025)
        assert q_pu < -0.05  # absorbing
        assert s.real == pytest.approx(kwp, rel=1e-3)  # no active-power curtailment at cos phi > 0.9


def test_qu_raises_hosting_capacity_and_reports_curtailment(tmp_path: Path) -> None:
    """On a feeder with reactance, Q(U) absorbs reactive power and lowers the voltage rise:
    the hosting capacity with Q(U) is at least that without; volt-watt curtails energy."""
    text = one_line(0.8, 0.8, customers=("c1.1", "c2.2")).replace(
        "xmatrix=[0 | 0 0 | 0 0 0 | 0 0 0 0]", "xmatrix=[0.6 | 0 0.6 | 0 0 0.6 | 0 0 0 0.6]"
    )
    path = write_feeder(tmp_path, text)
    kw = {
        "run": HOURLY,
        "limits": Limits(v_nominal_v=230.0, pvur_pct=None, vuf_pct=None, vne_v=None),
        "placements": 3,
        "seed": 1,
        "kwp_range": (6.0, 12.0),
        "pv_profile": SUN,
        "serial": True,
        "progress": False,
        "step_kw": 0.1,
    }
    plain = hosting_capacity(path, **kw)  # type: ignore[arg-type]
    qu = hosting_capacity(path, controls="qu", **kw)  # type: ignore[arg-type]
    vw = hosting_capacity(path, controls="qu+vw", **kw)  # type: ignore[arg-type]
    assert (plain.placements.curtailed_kwh == 0).all() and plain.curtailment.empty
    assert (plain.placements.binding_limit == "voltage_high").all()
    assert (qu.placements.hosting_kw >= plain.placements.hosting_kw - 0.1).all()
    assert qu.placements.hosting_kw.sum() > plain.placements.hosting_kw.sum()
    assert qu.settings["controls"] == "qu"
    assert (vw.placements.curtailed_kwh >= 0).all()
    assert len(vw.curtailment) > 0 and set(vw.curtailment.columns) >= {"customer", "curtailed_kwh", "pv_kwh"}
    assert math.isclose(vw.curtailment.curtailed_kwh.sum(), vw.placements.curtailed_kwh.sum(), rel_tol=1e-9)
