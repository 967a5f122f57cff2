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
from lv3ph.powerflow import RunSpec, open_feeder
from lv3ph.unbalance import Limits
from tests.conftest import ieee_90min_kw, write_feeder
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


# ----------------------------------------------------------------------------- base-relative criterion
def two_lines(p0_kw: float) -> str:
    """Stiff 416 V source, two 4-wire 0.3 km resistive lines (0.5 ohm/km, the neutral earthed
    at the source only) to buses c and d; customer c1 on c.1 already has a generator of
    ``p0_kw`` (unity power factor) that lifts c above the limit without any new PV;
    customer d1 on d.2 has nothing."""
    return f"""
clear
set defaultbasefrequency=50
new circuit.hc basekv=0.416 pu=1.0 phases=3 bus1=src R1=1e-7 X1=1e-7 R0=1e-7 X0=1e-7
new linecode.lc nphases=4 units=km rmatrix=[0.5 | 0 0.5 | 0 0 0.5 | 0 0 0 0.5] xmatrix=[0 | 0 0 | 0 0 0 | 0 0 0 0] cmatrix=[0 | 0 0 | 0 0 0 | 0 0 0 0]
new line.l1 bus1=src.1.2.3.0 bus2=c.1.2.3.4 phases=4 linecode=lc length=0.3 units=km
new line.l2 bus1=src.1.2.3.0 bus2=d.1.2.3.4 phases=4 linecode=lc length=0.3 units=km
new load.c1 phases=1 bus1=c.1.4 kv=0.23 kw=0 pf=1 vminpu=0.5 vmaxpu=1.5
new load.d1 phases=1 bus1=d.2.4 kv=0.23 kw=0 pf=1 vminpu=0.5 vmaxpu=1.5
new generator.g0 phases=1 bus1=c.1.4 kv=0.23 kw={p0_kw} pf=1 model=1 vminpu=0.5 vmaxpu=1.5
set voltagebases=[0.416]
calcvoltagebases
"""


def test_base_relative_criterion_on_a_feeder_that_already_violates(tmp_path: Path) -> None:
    # A generation P at the far end of one line (loop resistance R = 0.3 ohm: phase out,
    # neutral back, the neutral floating at the far end) gives V_pn = V_s + R P / V_pn,
    # i.e. P(V) = V (V - V_s) / R. The existing generator puts bus c at 254 V, above the
    # 253 V limit, without any new PV. Base-relative (``item``): c may get worse by the
    # tolerance (0.5 V here) -> new PV at c up to P(254.5) - P(254); bus d, clean without
    # PV, binds at the limit itself -> P(253). Absolute limits (``count``) host nothing.
    v_s, r, tol = 416.0 / math.sqrt(3.0), 0.3, 0.5

    def p_kw(v: float) -> float:
        return v * (v - v_s) / r / 1000.0

    path = write_feeder(tmp_path, two_lines(p_kw(254.0)))
    kw = {
        "run": RunSpec("daily", 3600.0, 12, 1),
        "limits": Limits(vuf_pct=None, pvur_pct=None, vne_v=None),
        "placements": 6,
        "seed": 5,
        "kwp_range": (20.0, 20.0),
        "pv_profile": [1.0],
        "step_kw": 0.01,
        "serial": True,
        "progress": False,
    }
    item = hosting_capacity(path, pre_existing="item", tolerance={"voltage_high": tol}, **kw)  # type: ignore[arg-type]
    pre = item.pre_existing
    assert list(pre.check) == ["voltage_high"] and list(pre["item"]) == ["c"]
    assert pre.worst_value.iloc[0] == pytest.approx(254.0, abs=0.05)
    first = item.orders[item.orders["rank"] == 1].set_index("placement").customer
    assert set(first) == {"c1", "d1"}  # both orders occur
    for row in item.placements.itertuples():
        if first[row.placement] == "c1":  # worsening the existing violation at c
            want, bus = p_kw(254.0 + tol) - p_kw(254.0), "c"
        else:  # a new violation at d (c is untouched: its own line from a stiff source)
            want, bus = p_kw(253.0), "d"
        assert row.binding_limit == "voltage_high" and row.item == bus
        assert abs(row.hosting_kw - want) < 0.01 + 0.03
    count = hosting_capacity(path, pre_existing="count", **kw)  # type: ignore[arg-type]
    assert (count.placements.hosting_kw == 0).all()
    assert item.settings["basis"] == "step" and item.settings["tolerance"]["voltage_high"] == tol


def test_en50160_basis_judges_ten_minute_means(tmp_path: Path) -> None:
    """A one-minute PV spike to 4x its level for 1 of 10 minutes: per step it binds at a
    quarter of the PV the 10-minute (quadratic-mean) basis allows, give or take the
    curvature of the voltage in P; the result says which basis was used."""
    path = write_feeder(tmp_path, one_line())
    prof = np.full(20, 0.25)
    prof[14] = 1.0
    kw = {
        "run": RunSpec("daily", 60.0, 601, 20),
        "limits": Limits(vuf_pct=None, pvur_pct=None, vne_v=None),
        "placements": 1,
        "seed": 0,
        "kwp_range": (60.0, 60.0),
        "pv_profile": prof,
        "step_kw": 0.02,
        "serial": True,
        "progress": False,
    }
    step = hosting_capacity(path, basis="step", **kw)  # type: ignore[arg-type]
    agg = hosting_capacity(path, basis="en50160", **kw)  # type: ignore[arg-type]
    v_s, r = 416.0 / math.sqrt(3.0), 0.3
    p_253 = 253.0 * (253.0 - v_s) / r / 1000.0
    assert step.placements.hosting_kw.iloc[0] == pytest.approx(p_253, abs=0.05)  # the spike minute binds
    assert step.placements.step.iloc[0] == 615
    assert agg.placements.hosting_kw.iloc[0] > 2.5 * step.placements.hosting_kw.iloc[0]
    assert agg.settings["basis"] == "en50160" and step.settings["basis"] == "step"


# ----------------------------------------------------------------------------- PV-aware switching
def test_pv_aware_switching_never_worse_than_pv_blind_on_its_own_objective() -> None:
    """Random PV placements on the IEEE twin: the schedule planned from the net demand
    scores at most the PV-blind schedule's value of the objective both are judged on (the
    head neutral current proxy over the switching intervals, with the PV), under the same
    cap of 4 operations per customer per day; with PV it is strictly better here."""
    from lv3ph.phases import (
        choose_switches,
        customer_profiles,
        pv_aware_schedule,
        schedule_objective,
        switching_operations,
        switching_schedule,
    )
    from tests.conftest import IEEE_4W

    run = RunSpec("yearly", 60.0, 481, 480)  # 08:01-16:00
    engine, model = open_feeder(IEEE_4W, vmaxpu=1.5)
    load_kw, _ = customer_profiles(engine, model, run)
    switches = choose_switches(model, share=1.0, seed=0)
    plan = {"stepsize_s": 60.0, "interval_s": 900.0, "start": run.start}
    blind = switching_schedule(model, load_kw, None, switches, max_ops_per_day=4, **plan)  # type: ignore[arg-type]
    sun = np.clip(np.sin(np.pi * (np.arange(run.start, run.start + run.steps) / 60.0 - 5.0) / 16.0), 0, None)
    rng = np.random.default_rng(11)
    gains = []
    for _ in range(3):
        kwp = np.where(rng.random(len(model.customers)) < 0.4, rng.uniform(3.0, 8.0, len(model.customers)), 0.0)
        pv = np.outer(sun, kwp)
        aware, _ = pv_aware_schedule(model, load_kw, pv, switches, max_ops_per_day=4, blind=blind, **plan)  # type: ignore[arg-type]
        assert switching_operations(aware, stepsize_s=60.0, start=run.start).max() <= 4
        a = schedule_objective(model, load_kw, pv, aware, **plan)  # type: ignore[arg-type]
        b = schedule_objective(model, load_kw, pv, blind, **plan)  # type: ignore[arg-type]
        assert a <= b
        gains.append(b - a)
    assert max(gains) > 0.0


def test_dynamic_pv_aware_screening_equals_whole_window_and_is_reproducible() -> None:
    """PV-aware dynamic switching on a 90-minute window of the IEEE twin: the screened
    search gives the table of the search that solves every candidate on the whole window,
    and the same seed gives the same table."""
    from tests.conftest import IEEE_4W

    kw = ieee_90min_kw(seed=4, step_kw=1.0, switching={"max_ops_per_day": 4, "interval_s": 900, "pv_aware": True})
    screened = hosting_capacity(IEEE_4W, **kw)  # type: ignore[arg-type]
    again = hosting_capacity(IEEE_4W, **kw)  # type: ignore[arg-type]
    whole = hosting_capacity(IEEE_4W, screening=False, **kw)  # type: ignore[arg-type]
    cols = ["hosting_kw", "binding_limit", "item", "step", "censored"]
    assert screened.placements[cols].equals(whole.placements[cols])
    assert screened.placements[cols].equals(again.placements[cols])
    assert (screened.placements.hosting_kw > 0).all()
