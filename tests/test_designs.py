"""Network-aware market designs: sensitivities vs OpenDSS, screening / OPF on a hand-checkable
feeder, loss-charge iteration, flexible devices, reproducibility, the unconstrained baseline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lv3ph.allocation.exact import loss_network
from lv3ph.flex import Fleet, FlexSpec, dumb_ev_charging, ev_fleet, schedule
from lv3ph.market import Tariffs
from lv3ph.market.designs import MarketSpec, fee_matrix, loss_charge_iteration, marginal_prices, zones_by_distance
from lv3ph.market.linear import monitored, step_rows
from lv3ph.market.opf import opf_clear
from lv3ph.market.screen import screen_step
from lv3ph.market.sensitivity import port_network, step_sensitivity
from lv3ph.powerflow import RunSpec, capture, open_feeder, solve_raw
from lv3ph.prosumers import Battery
from lv3ph.study import run_scenario
from lv3ph.studyfile import load_study, scenarios
from lv3ph.unbalance import Limits
from tests.conftest import IEEE_4W, write_feeder

SNAP = RunSpec(mode="snap", stepsize_s=60.0, start=0, steps=1)


def _solve(engine, model, run=SNAP):  # type: ignore[no-untyped-def]
    with engine.tolerance(1e-12):
        vt, measured = solve_raw(engine, model, run, progress=False)
    return vt, capture(model, run, vt, measured)


# ----------------------------------------------------------------- sensitivities vs OpenDSS


@pytest.mark.parametrize("pme_ohm", [None, 20.0])
def test_sensitivities_equal_opendss_finite_differences(pme_ohm: float | None) -> None:
    """Perturb one customer's injection by +-0.5 kW, re-solve OpenDSS, compare every node
    voltage and every line conductor current with the linearisation (1e-3 relative)."""
    engine, model = open_feeder(IEEE_4W, vmaxpu=1.5, pme_ohm=pme_ohm)
    run = RunSpec(mode="yearly", stepsize_s=60.0, start=1100, steps=1)  # evening peak
    vt, pf = _solve(engine, model, run)
    net = loss_network(model)
    pn = port_network(model, net)
    sens = step_sensitivity(pn, vt[:, 0], pf.customer_injection.values[0])
    dv = sens.node_voltages(pn, np.arange(model.n_nodes))
    di = sens.line_currents(pn)
    names = [c.name for c in model.customers]
    for k in (0, 27, 54):
        kw, kvar, _ = engine.load_base(names[k])
        mult = pf.customer_p_kw.values[0, k] / kw  # the load shape's multiplier at this step
        volts = []
        for sign in (1.0, -1.0):  # inject +0.5 kW: the drawn kW falls
            engine.set_load_base(names[k], kw - sign * 0.5 / mult, kvar=kvar)
            volts.append(_solve(engine, model, run)[0][:, 0])
        engine.set_load_base(names[k], kw, kvar=kvar)
        fd_v = (volts[0] - volts[1]) / 1.0
        fd_i = pn.vprim_line @ fd_v
        assert np.abs(fd_v - dv[:, k]).max() <= 1e-3 * np.abs(fd_v).max()
        assert np.abs(fd_i - di[:, k]).max() <= 1e-3 * np.abs(fd_i).max()
        # the neutral point moves: a single-phase injection shifts the customer's neutral
        nn = model.customers[k].neutral_node
        assert abs(fd_v[nn]) > 1e-3
        assert abs(fd_v[nn] - dv[nn, k]) <= 1e-3 * abs(fd_v[nn])


# ------------------------------------------------- screening and OPF with a binding limit

#: 4-wire line, 0.15 ohm in each phase and in the neutral (0.3 ohm/km x 0.5 km), almost
#: no reactance; the star point earthed at the source. Seller s (phase 1) exports 9.5 kW
#: (10 kW PV, 0.5 kW load); buyer b (phase 2) draws 3 kW at the same bus.
SMALL = """
clear
new circuit.small basekv=0.416 pu=1.0 phases=3 bus1=src mvasc3=1e6 mvasc1=1e6
new reactor.earth phases=1 bus1=src.4 bus2=src.0 r=0.001 x=0
new linecode.lc nphases=4 units=km normamps=200
~ rmatrix=[0.3|0 0.3|0 0 0.3|0 0 0 0.3] xmatrix=[0.001|0 0.001|0 0 0.001|0 0 0 0.001] cmatrix=[0|0 0|0 0 0|0 0 0 0]
new line.l1 bus1=src.1.2.3.4 bus2=b1.1.2.3.4 linecode=lc length=0.5 units=km
new load.s phases=1 bus1=b1.1.4 kv=0.24 kw=0.5 pf=1 model=1 vminpu=0.5 vmaxpu=1.5
new load.b phases=1 bus1=b1.2.4 kv=0.24 kw=3 pf=1 model=1 vminpu=0.5 vmaxpu=1.5
new generator.pv_s phases=1 bus1=b1.1.4 kv=0.24 kw=10 pf=1 model=1 vminpu=0.5 vmaxpu=1.5
set voltagebases=[0.416]
calcvoltagebases
"""


def test_screen_and_opf_respect_a_binding_voltage_limit(tmp_path: Path) -> None:
    """Hand check: one more kW exported by the seller adds 1000 / V A through phase and
    neutral (R_phase + R_neutral = 0.3 ohm), ``0.3 x 1000 / V`` V; its own constant-power
    export answers the rise (I = P / V falls by I dV / V), which divides that by
    ``1 + 0.3 I / V`` (I = 9.5 kW / V): ~1.14 V per kW at V ~ 252 V. With the upper limit
    3 V below its voltage, screening must curtail 3 / 1.14 = ~2.6 kW of its 3 kW trade, the
    OPF the same (one binding row, one seller); OpenDSS then finds the limit met to within
    the linearisation's residual, which is reported."""
    engine, model = open_feeder(write_feeder(tmp_path, SMALL))
    vt, pf = _solve(engine, model)
    net = loss_network(model)
    pn = port_network(model, net)
    mon = monitored(model, pn)
    names = [c.name for c in model.customers]
    s = names.index("s")
    v_s = abs(vt[model.customers[s].phase_nodes[0], 0] - vt[model.customers[s].neutral_node, 0])
    limits = Limits(v_nominal_v=v_s / 1.1 - 3.0 / 1.1 + 1e-9, v_band_pct=10.0, vuf_pct=None, pvur_pct=None, vne_v=None)
    rows = step_rows(pn, mon, step_sensitivity(pn, vt[:, 0], pf.customer_injection.values[0]), vt[:, 0], limits)
    high = np.flatnonzero((rows.check == "voltage_high") & (rows.g0 > 0))
    assert high.size == 1 and rows.g0[high[0]] == pytest.approx(3.0, abs=1e-6)
    hand = 0.3 * 1000.0 / v_s / (1.0 + 0.3 * 9500.0 / v_s**2)  # V per kW
    assert rows.a[high[0], s] == pytest.approx(hand, rel=0.01)
    sellable = np.zeros(len(names))
    sellable[s] = 3.0  # its trade with b
    cut, promised = screen_step(rows, sellable)
    assert promised.all()
    assert cut[s] == pytest.approx(3.0 / rows.a[high[0], s], rel=1e-9)
    assert cut[s] == pytest.approx(3.0 / hand, rel=0.01)
    opf = opf_clear(
        {},
        np.array([[0.5 - 10.0 if n == "s" else 3.0 for n in names]]),
        np.zeros((1, len(names))),
        np.array([[10.0 if n == "s" else 0.0 for n in names]]),
        [rows],
        dt_h=np.ones(1),
        import_eur_kwh=0.30,
        export_eur_kwh=0.05,
        wear_eur_kwh=0.0,
    )
    assert not opf.broken
    assert opf.curtail_kw[0, s] == pytest.approx(cut[s], rel=1e-6)
    # OpenDSS check of the curtailed outcome
    engine.command(f"edit generator.pv_s kw={10.0 - cut[s]:.12g}")
    vt2, _ = _solve(engine, model)
    v_after = abs(vt2[model.customers[s].phase_nodes[0], 0] - vt2[model.customers[s].neutral_node, 0])
    residual = v_after - limits.v_high_v  # type: ignore[operator]
    print(f"screened: curtailed {cut[s]:.4f} kW, OpenDSS residual beyond the limit {residual:+.2e} V")
    assert abs(residual) < 0.05  # second-order error of a 2.6 kW change (-0.035 V: conservative)


# ----------------------------------------------------------------- loss-charge iteration


def test_loss_charge_iteration_two_sellers_hand_answer() -> None:
    """Sellers a (near, loss 0.01 kW per kW^2) and c (far, 0.04) with 2 kW surplus each,
    buyer b draws 3 kW. Iteration 1: pro-rata auction, 1.5 kW each -> loss rates 0.015 and
    0.06 kWh/kWh. Re-clear: b buys from a first: a 2 kW, c 1 kW -> rates 0.02 and 0.04.
    Re-clear: the same contracts -> converged after 3 clearings. Loss charges at
    0.30 EUR/kWh: 0.30 x (0.01 x 2^2 + 0.04 x 1^2) = 0.024 EUR per 1-hour step."""
    names = ["a", "b", "c"]
    r = {("a", "b"): 0.01, ("c", "b"): 0.04}
    net = np.array([[-2.0, 3.0, -2.0]])
    times = np.array([1])

    def allocate(res):  # type: ignore[no-untyped-def]
        c = res.contracts
        key = (c.seller + ">" + c.buyer).to_numpy()
        loss = [r[(s, b)] * kw**2 for s, b, kw in zip(c.seller, c.buyer, c.kw, strict=True)]
        return pd.Series(loss, index=key).groupby(level=0).sum()

    dist = np.array([[0, 1, 4], [1, 0, 4], [4, 4, 0]], dtype=float)
    it = loss_charge_iteration(
        net, names, times, Tariffs(), allocate, dist, dt_h=1.0, seed=0, max_iterations=10, tolerance_kw=1e-9
    )
    assert it.converged and it.iterations == 3
    assert it.changes == pytest.approx([0.5, 0.0])
    got = {
        (s, b): kw
        for s, b, kw in zip(it.result.contracts.seller, it.result.contracts.buyer, it.result.contracts.kw, strict=True)
    }
    assert got == pytest.approx({("a", "b"): 2.0, ("c", "b"): 1.0})
    assert it.rates[0, 1] == pytest.approx(0.02) and it.rates[2, 1] == pytest.approx(0.04)
    assert 0.30 * it.loss_kwh.sum() == pytest.approx(0.024)


# ------------------------------------------------------------ network charges and prices


def test_fees_and_marginal_prices_hand_values() -> None:
    spec = MarketSpec()
    dist = np.array([[0.0, 0.4], [0.4, 0.0]])
    assert fee_matrix("distance", spec, dist, np.zeros(2, np.int64))[0, 1] == pytest.approx(0.10 * 0.4)
    assert fee_matrix("zonal", spec, dist, np.array([0, 1]))[0, 1] == pytest.approx(0.04)
    assert fee_matrix("zonal", spec, dist, np.array([1, 1]))[0, 1] == 0.0
    zones = zones_by_distance(np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]), 3)
    assert zones.tolist() == [0, 0, 1, 1, 2, 2]
    # short community (step 1): buy at import, sell at local; long (step 2): buy local, sell export
    net = np.array([[2.0, -1.0], [-3.0, 1.0]])
    buy, sell = marginal_prices(net, np.array([0.175, 0.175]), Tariffs(), buy_charge=0.01, sell_charge=0.02)
    np.testing.assert_allclose(buy, [[0.30, 0.30], [0.185, 0.185]])
    np.testing.assert_allclose(sell, [[0.155, 0.155], [0.05, 0.05]])


# ------------------------------------------------------------------- flexible devices

STEP_S = 900.0  # 15-minute steps, one interval each


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    kwh=st.floats(2.0, 15.0),
    kw=st.floats(0.5, 5.0),
    soc0=st.floats(0.2, 0.8),
    share=st.floats(0.0, 0.5),
)
def test_flexible_devices_respect_their_limits(seed: int, kwh: float, kw: float, soc0: float, share: float) -> None:
    rng = np.random.default_rng(seed)
    steps, n = 96, 4
    load = rng.uniform(0.1, 2.0, (steps, n))
    pv = np.zeros((steps, n))
    pv[36:64, :2] = rng.uniform(0.0, 5.0, (28, 2))
    battery = Battery(kwh=kwh, kw=kw, soc0=soc0, soc_min=0.1, soc_max=0.9)
    spec = FlexSpec(ev_share=0.5, shift_share=share, shift_window_h=4.0, interval_s=STEP_S, seed=seed)
    ev = ev_fleet(n, spec)
    fleet = Fleet(spec, {0: battery}, ev, True, True, load, STEP_S, 1)
    base = load - fleet.shift_base_kw() - pv
    buy = rng.uniform(0.1, 0.3, (steps, n))
    res = schedule(fleet, base, buy, buy - rng.uniform(0.0, 0.1, (steps, n)))
    dt = STEP_S / 3600
    # battery: power and state of charge within limits, ends no emptier than it began
    p = res.battery_kw[:, 0]
    assert (np.abs(p) <= kw + 1e-7).all()
    eta = np.sqrt(battery.efficiency)
    energy = soc0 * kwh + np.cumsum(np.where(p > 0, p * eta, p / eta) * dt)
    assert energy.min() >= 0.1 * kwh - 1e-6 and energy.max() <= 0.9 * kwh + 1e-6
    assert energy[-1] >= soc0 * kwh - 1e-6
    # EVs: only while parked, at most the charger's kW, exactly the need
    parked = ev.parked(STEP_S, 1, steps)
    ev_kw = res.ev_kw[:, ev.owners]
    assert (ev_kw[~parked] == 0).all() and (ev_kw <= spec.ev_kw + 1e-7).all() and (ev_kw >= -1e-9).all()
    np.testing.assert_allclose(ev_kw.sum(axis=0) * dt, ev.need_in_run(STEP_S, 1, steps), atol=1e-6)
    # shiftable demand: every 4-hour window keeps its energy, at most base + shift_kw per step
    base_shift = fleet.shift_base_kw()
    win = np.arange(steps) // 16
    for w in range(6):
        np.testing.assert_allclose(res.shift_kw[win == w].sum(axis=0), base_shift[win == w].sum(axis=0), atol=1e-6)
    assert (res.shift_kw >= -1e-9).all() and (res.shift_kw <= base_shift + spec.shift_kw + 1e-7).all()


def test_uncontrolled_ev_charges_from_arrival_until_full() -> None:
    spec = FlexSpec(ev_share=1.0, seed=3)
    ev = ev_fleet(3, spec)
    kw = dumb_ev_charging(ev, 60.0, 1, 1440)
    np.testing.assert_allclose(kw.sum(axis=0) / 60, ev.need_kwh, rtol=1e-9)
    for e in range(3):
        on = np.flatnonzero(kw[:, e] > 0)
        first = int(np.ceil(ev.arrive_h[e] * 60))  # first whole parked minute (step k ends at k min)
        assert on[0] == first and kw[on[0], e] == pytest.approx(3.7)


def test_schedulers_are_reproducible_under_their_seed() -> None:
    spec = FlexSpec(ev_share=0.5, shift_share=0.2, seed=11)
    a, b, c = ev_fleet(20, spec), ev_fleet(20, spec), ev_fleet(20, FlexSpec(ev_share=0.5, seed=12))
    assert np.array_equal(a.owners, b.owners) and np.array_equal(a.arrive_h, b.arrive_h)
    assert not np.array_equal(a.arrive_h, c.arrive_h)
    rng = np.random.default_rng(0)
    load = rng.uniform(0.1, 2.0, (1440, 20))
    price = np.where(np.arange(1440) % 300 < 150, 0.30, 0.10)[:, None] * np.ones((1, 20))
    runs = []
    for fleet_ev in (a, b):
        fleet = Fleet(spec, {0: Battery(5, 2.5), 3: Battery(5, 2.5)}, fleet_ev, True, True, load, 60.0, 1)
        runs.append(schedule(fleet, load * 0.8 - 1.0, price, price - 0.05))
    for name in ("battery_kw", "ev_kw", "shift_kw"):
        np.testing.assert_array_equal(getattr(runs[0], name), getattr(runs[1], name))


# ------------------------------------------------------------------------ study level

STUDY = f"""
[study]
name = "designs"
model = "{IEEE_4W}"
vmaxpu = 1.5
out = "out"
seed = 5

[time]
mode = "yearly"
stepsize = "1m"
start = 705
steps = 30

[pv]
kwp = [4.0, 6.0]

[flex]
interval = "5m"

[allocation]
methods = ["exact"]

[scenarios]
pv_share = [0.6]
"""


def test_unconstrained_reproduces_todays_community_auction(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(STUDY + 'market = ["community-auction", "unconstrained"]\nbattery = ["self-consumption"]\n')
    spec = load_study(path)
    today, baseline = (run_scenario(spec, sc) for sc in scenarios(spec))
    keys = set(today.summary) - {"scenario", "market"}
    assert set(baseline.summary) - {"scenario", "market"} == keys
    assert {k: today.summary[k] for k in keys} == {k: baseline.summary[k] for k in keys}
    pd.testing.assert_frame_equal(today.allocation, baseline.allocation)
    pd.testing.assert_frame_equal(today.bills, baseline.bills)
    assert today.series.identical(baseline.series)


def test_opf_cleared_market_changes_the_physics_reproducibly(tmp_path: Path) -> None:
    """With price-responsive batteries the OPF-cleared market moves power (batteries charge
    from the noon surplus), so OpenDSS sees other losses and voltages than the
    unconstrained market; OpenDSS draws what the design set; the same seed gives the same
    numbers."""
    path = tmp_path / "s.toml"
    path.write_text(STUDY + 'market = ["unconstrained", "opf-cleared"]\nbattery = ["price"]\n')
    spec = load_study(path)
    free, opf = scenarios(spec)
    a, b, again = run_scenario(spec, free), run_scenario(spec, opf), run_scenario(spec, opf)
    assert b.summary == again.summary
    assert b.summary["battery_throughput_kwh"] > 1.0
    assert abs(b.summary["loss_kwh"] - a.summary["loss_kwh"]) > 0.01 * a.summary["loss_kwh"]
    assert b.summary["vmax_v"] < a.summary["vmax_v"]
    s = b.series
    drawn = s.load_kw - s.pv_kw + s.battery_kw  # set-points summed over customers
    assert np.allclose(drawn.values, (s.source_p_kw - s.loss_total_kw).values, rtol=1e-3, atol=0.05)
    for key in ("promise_broken_minutes", "welfare_eur", "minutes_pvur", "curtailed_kwh", "opf_rows"):
        assert key in b.summary
    # the map marks the batteries beside the PV (not the design's device generator at everyone)
    devices = dict(zip(s.customer.values, s.customer_devices.values, strict=True))
    with_pv = {c for c, kwp in zip(s.customer.values, s.customer_pv_kwp.values, strict=True) if kwp > 0}
    assert {c for c, d in devices.items() if "battery" in d.split("+")} == with_pv
    assert not any("generator" in d for d in devices.values())
