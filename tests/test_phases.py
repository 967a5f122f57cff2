"""Phase rebalancing and dynamic phase switching (lv3ph.phases)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lv3ph import phases
from lv3ph.dss import Engine
from lv3ph.errors import ModelError, ProfileError, StudyError, UnknownItemError
from lv3ph.model import FeederModel, loadshape_command, pv_commands
from lv3ph.powerflow import RunSpec, capture, head_line, open_feeder, solve_raw
from tests.conftest import IEEE_4W, write_feeder

#: A branched four-wire feeder: eight single-phase customers on their own service buses
#: (two of them, s7 and s8, share bus 5), one three-phase customer (t1) on bus 4.
SMALL = """
clear
set defaultbasefrequency=50
new circuit.small basekv=11 pu=1.0 isc3=3000 isc1=5
new transformer.tx buses=[sourcebus 1.1.2.3.4] conns=[delta wye] kvs=[11 0.416] kvas=[200 200] xhl=4 %r=0.5
new reactor.earth_tx phases=1 bus1=1.4 bus2=1.0 R=1 X=0
new linecode.main nphases=4 units=km rmatrix=[0.3 | 0 0.3 | 0 0 0.3 | 0 0 0 0.6] xmatrix=[0.08 | 0 0.08 | 0 0 0.08 | 0 0 0 0.08]
new linecode.drop nphases=4 units=km rmatrix=[1.2 | 0 1.2 | 0 0 1.2 | 0 0 0 1.2] xmatrix=[0.09 | 0 0.09 | 0 0 0.09 | 0 0 0 0.09]
new line.l12 bus1=1.1.2.3.4 bus2=2.1.2.3.4 phases=4 linecode=main length=0.10 units=km
new line.l23 bus1=2.1.2.3.4 bus2=3.1.2.3.4 phases=4 linecode=main length=0.10 units=km
new line.l34 bus1=3.1.2.3.4 bus2=4.1.2.3.4 phases=4 linecode=main length=0.08 units=km
new line.l25 bus1=2.1.2.3.4 bus2=5.1.2.3.4 phases=4 linecode=main length=0.12 units=km
new line.d1 bus1=3.1.2.3.4 bus2=c1.1.2.3.4 phases=4 linecode=drop length=0.02 units=km
new line.d2 bus1=3.1.2.3.4 bus2=c2.1.2.3.4 phases=4 linecode=drop length=0.03 units=km
new line.d3 bus1=4.1.2.3.4 bus2=c3.1.2.3.4 phases=4 linecode=drop length=0.02 units=km
new line.d4 bus1=4.1.2.3.4 bus2=c4.1.2.3.4 phases=4 linecode=drop length=0.04 units=km
new line.d5 bus1=2.1.2.3.4 bus2=c5.1.2.3.4 phases=4 linecode=drop length=0.02 units=km
new line.d6 bus1=5.1.2.3.4 bus2=c6.1.2.3.4 phases=4 linecode=drop length=0.03 units=km
new load.s1 phases=1 bus1=c1.1.4 kv=0.23 kw=4 pf=0.95 vminpu=0.8 vmaxpu=1.2
new load.s2 phases=1 bus1=c2.2.4 kv=0.23 kw=3 pf=0.95 vminpu=0.8 vmaxpu=1.2
new load.s3 phases=1 bus1=c3.1.4 kv=0.23 kw=5 pf=0.95 vminpu=0.8 vmaxpu=1.2
new load.s4 phases=1 bus1=c4.3.4 kv=0.23 kw=2 pf=0.95 vminpu=0.8 vmaxpu=1.2
new load.s5 phases=1 bus1=c5.1.4 kv=0.23 kw=6 pf=0.95 vminpu=0.8 vmaxpu=1.2
new load.s6 phases=1 bus1=c6.2.4 kv=0.23 kw=3 pf=0.95 vminpu=0.8 vmaxpu=1.2
new load.s7 phases=1 bus1=5.1.4 kv=0.23 kw=2 pf=0.95 vminpu=0.8 vmaxpu=1.2
new load.s8 phases=1 bus1=5.3.4 kv=0.23 kw=1 pf=0.95 vminpu=0.8 vmaxpu=1.2
new load.t1 phases=3 bus1=4.1.2.3.4 kv=0.416 kw=9 pf=0.95 vminpu=0.8 vmaxpu=1.2
set voltagebases=[11 0.416]
calcvoltagebases
"""
SINGLE = ["s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8"]


@pytest.fixture(scope="module")
def small_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_feeder(tmp_path_factory.mktemp("small"), SMALL)


@pytest.fixture(scope="module")
def small(small_path: Path) -> FeederModel:
    return open_feeder(small_path)[1]


@pytest.fixture(scope="module")
def ieee() -> tuple[Engine, FeederModel, np.ndarray, np.ndarray]:
    """The four-wire IEEE twin (as built, never edited) and its real 1440-minute profiles."""
    engine, model = open_feeder(IEEE_4W, vmaxpu=1.5)
    kw, kvar = phases.customer_profiles(engine, model, RunSpec("yearly", 60.0, 1, 1440))
    return engine, model, kw, kvar


def _profiles(rng: np.random.Generator, steps: int, n: int, scale: float = 5.0) -> np.ndarray:
    return rng.uniform(0.0, scale, size=(steps, n))


# ----------------------------------------------------------------------------- proxy and static


def test_movable_and_as_built(small: FeederModel) -> None:
    assert phases.movable_customers(small) == SINGLE
    assert phases.as_built(small) == {"s1": 1, "s2": 2, "s3": 1, "s4": 3, "s5": 1, "s6": 2, "s7": 1, "s8": 3}


def test_neutral_proxy_is_the_head_phase_current_sum(small: FeederModel) -> None:
    """Unity power factor, balanced voltages: |Pa + a^2 Pb + a Pc| / V (a three-phase customer adds nothing)."""
    rng = np.random.default_rng(1)
    kw = _profiles(rng, 5, len(small.customers))
    per_phase = np.zeros((5, 3))
    for i, c in enumerate(small.customers):
        if len(c.phases) == 1:
            per_phase[:, c.phases[0] - 1] += kw[:, i]
    v = 416.0 / math.sqrt(3.0)
    expect = np.abs(per_phase @ np.exp(-2j * np.pi * np.arange(3) / 3)) * 1000.0 / v
    assert phases.proxy_objective(small, kw, stat="max") == pytest.approx(expect.max(), rel=1e-12)
    assert phases.proxy_objective(small, kw, stat="rms") == pytest.approx(np.sqrt(np.mean(expect**2)), rel=1e-12)


def _check_plan(
    model: FeederModel,
    plan: phases.RebalancePlan,
    kw: np.ndarray,
    pv: np.ndarray | None,
    movable: list[str] | None,
    kvar: np.ndarray | None = None,
) -> None:
    base = phases.as_built(model)
    assert set(plan.arrangement) == set(base)
    assert all(p in (1, 2, 3) for p in plan.arrangement.values())
    allowed = set(movable) if movable is not None else set(phases.movable_customers(model))
    assert set(plan.moved) <= allowed
    other = "rms" if plan.stat == "max" else "max"
    kwargs = {"objective": plan.objective, "load_kvar": kvar}
    before = phases.proxy_objective(model, kw, pv, None, stat=plan.stat, **kwargs)  # type: ignore[arg-type]
    after = phases.proxy_objective(model, kw, pv, plan.arrangement, stat=plan.stat, **kwargs)  # type: ignore[arg-type]
    assert plan.before == pytest.approx(before, rel=1e-12)
    assert plan.after == pytest.approx(after, rel=1e-12)
    assert after <= before  # never worse
    if plan.moved:  # a change must be a lexicographic improvement
        b2 = phases.proxy_objective(model, kw, pv, None, stat=other, **kwargs)  # type: ignore[arg-type]
        a2 = phases.proxy_objective(model, kw, pv, plan.arrangement, stat=other, **kwargs)  # type: ignore[arg-type]
        assert (after, a2) < (before, b2)
    else:
        assert plan.arrangement == base


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**31),
    steps=st.integers(1, 12),
    objective=st.sampled_from(["neutral", "pvur"]),
    stat=st.sampled_from(["max", "rms"]),
    with_pv=st.booleans(),
    with_kvar=st.booleans(),
    movable=st.none() | st.lists(st.sampled_from(SINGLE), max_size=8, unique=True),
    max_moves=st.none() | st.integers(0, 4),
)
def test_rebalance_never_worsens_its_objective(
    small: FeederModel,
    seed: int,
    steps: int,
    objective: str,
    stat: str,
    with_pv: bool,
    with_kvar: bool,
    movable: list[str] | None,
    max_moves: int | None,
) -> None:
    rng = np.random.default_rng(seed)
    n = len(small.customers)
    kw = _profiles(rng, steps, n)
    pv = _profiles(rng, steps, n, 7.0) * (rng.random(n) < 0.5) if with_pv else None
    kvar = 0.33 * kw if with_kvar else None
    plan = phases.rebalance_plan(
        small,
        kw,
        pv,
        objective=objective,
        stat=stat,
        movable=movable,
        seed=seed,
        load_kvar=kvar,
        max_moves=max_moves,  # type: ignore[arg-type]
    )
    _check_plan(small, plan, kw, pv, movable, kvar)
    if max_moves is not None:
        assert len(plan.moved) <= max_moves


def _brute_force(model: FeederModel, kw: np.ndarray, names: list[str], objective: str) -> float:
    best = math.inf
    for combo in itertools.product((1, 2, 3), repeat=len(names)):
        arrangement = dict(zip(names, combo, strict=True))
        best = min(best, phases.proxy_objective(model, kw, None, arrangement, objective=objective, stat="max"))  # type: ignore[arg-type]
    return best


@pytest.mark.parametrize("objective", ["pvur", "neutral"])
@pytest.mark.parametrize("seed", [3, 11])
def test_milp_is_exact_on_a_small_case(small: FeederModel, objective: str, seed: int) -> None:
    """MILP = brute force for the pvur proxy; within the 36-gon factor for the neutral proxy."""
    rng = np.random.default_rng(seed)
    kw = _profiles(rng, 6, len(small.customers))
    names = ["s1", "s2", "s3", "s5", "s6"]
    opt = _brute_force(small, kw, names, objective)
    plan = phases.rebalance_plan(small, kw, objective=objective, movable=names, method="milp", time_limit_s=20)  # type: ignore[arg-type]
    assert plan.milp_status == "optimal"
    _check_plan(small, plan, kw, None, names)
    if objective == "pvur":
        assert plan.after == pytest.approx(opt, rel=1e-6, abs=1e-12)
    else:
        assert opt - 1e-9 <= plan.after <= opt / math.cos(math.pi / phases.MILP_POLYGON_SIDES) + 1e-9
    greedy = phases.rebalance_plan(small, kw, objective=objective, movable=names, stat="max")  # type: ignore[arg-type]
    assert greedy.after >= opt - 1e-9


@pytest.mark.parametrize("objective", ["neutral", "pvur"])
@pytest.mark.parametrize("stat", ["max", "rms"])
def test_rebalance_ieee_twin_real_profiles(
    ieee: tuple[Engine, FeederModel, np.ndarray, np.ndarray], objective: str, stat: str
) -> None:
    _, model, kw, _ = ieee
    plan = phases.rebalance_plan(model, kw, None, objective=objective, stat=stat)  # type: ignore[arg-type]
    _check_plan(model, plan, kw, None, None)
    assert plan.after < 0.8 * plan.before  # 55 customers on a real day: plenty of room


def test_rebalance_returns_as_built_when_nothing_helps(small: FeederModel) -> None:
    kw = np.zeros((4, len(small.customers)))  # no power: no arrangement is better than another
    assert phases.rebalance(small, kw) == phases.as_built(small)
    assert phases.rebalance(small, kw, objective="pvur", method="milp") == phases.as_built(small)


# ----------------------------------------------------------------------------- physics of an arrangement


def test_evaluate_arrangement_runs_the_power_flow_and_restores_the_engine(small_path: Path) -> None:
    engine, model = open_feeder(small_path)
    run = RunSpec("snap", 60.0, 0, 1)
    as_built = phases.evaluate_arrangement(engine, model, run)
    vt_before = engine.node_voltages()
    # put every single-phase customer on phase 1: the head neutral current rises
    worse = phases.evaluate_arrangement(engine, model, run, dict.fromkeys(SINGLE, 1))
    assert worse["head_neutral_max_a"] > as_built["head_neutral_max_a"] + 1.0
    assert worse["pvur_max_pct"] > as_built["pvur_max_pct"]
    # the engine is as built again
    again = phases.evaluate_arrangement(engine, model, run)
    assert again == pytest.approx(as_built, rel=1e-12)
    vt, _ = solve_raw(engine, model, run, progress=False)
    np.testing.assert_allclose(vt[:, 0], vt_before, rtol=1e-12)
    with pytest.raises(UnknownItemError, match="nobody"):
        phases.evaluate_arrangement(engine, model, run, {"nobody": 2})
    with pytest.raises(StudyError, match="t1"):
        phases.evaluate_arrangement(engine, model, run, {"t1": 2})


def test_rebalanced_arrangement_lowers_the_physical_neutral_current(
    ieee: tuple[Engine, FeederModel, np.ndarray, np.ndarray],
) -> None:
    engine, model, kw, kvar = ieee
    run = RunSpec("yearly", 60.0, 1081, 60)  # 18:00-19:00, the evening peak
    window = slice(run.start - 1, run.start - 1 + run.steps)
    plan = phases.rebalance_plan(model, kw[window], None, objective="neutral", load_kvar=kvar[window])
    before = phases.evaluate_arrangement(engine, model, run)
    after = phases.evaluate_arrangement(engine, model, run, plan.arrangement)
    assert after["head_neutral_mean_a"] < 0.6 * before["head_neutral_mean_a"]
    # the proxy is the physics, to first order
    assert plan.before == pytest.approx(np.sqrt(np.mean(np.square(_head_neutral(engine, model, run)))), rel=0.1)


def _head_neutral(engine: Engine, model: FeederModel, run: RunSpec) -> np.ndarray:
    vt, measured = solve_raw(engine, model, run, progress=False)
    pf = capture(model, run, vt, measured)
    return np.abs(pf.current.sel(element="line.line1", conductor=4).values)


# ----------------------------------------------------------------------------- dynamic schedule


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**31),
    cap=st.integers(0, 5),
    per=st.sampled_from([1, 2, 3, 4]),
    objective=st.sampled_from(["neutral", "pvur"]),
    switches=st.lists(st.sampled_from(SINGLE), min_size=1, max_size=8, unique=True),
    start=st.integers(1, 300),
)
def test_switching_cap_is_respected(
    small: FeederModel, seed: int, cap: int, per: int, objective: str, switches: list[str], start: int
) -> None:
    """Two and a half days of 15-min steps: operations per customer per day <= cap, changes only
    at interval starts and only for switch-equipped customers."""
    rng = np.random.default_rng(seed)
    steps = 240
    kw = _profiles(rng, steps, len(small.customers), 8.0)
    step_s = 900.0
    sched = phases.switching_schedule(
        small,
        kw,
        None,
        switches,
        stepsize_s=step_s,
        interval_s=per * step_s,
        start=start,
        max_ops_per_day=cap,
        objective=objective,  # type: ignore[arg-type]
    )
    base = phases.as_built_schedule(small, steps)
    assert sched.shape == base.shape
    idx = small.customer_index()
    fixed = [i for i in range(len(small.customers)) if small.customers[i].name not in switches]
    np.testing.assert_array_equal(sched[:, fixed], base[:, fixed])
    ops = phases.switching_operations(sched, stepsize_s=step_s, start=start, initial=base[0])
    assert ops.max(initial=0) <= cap
    assert ops.shape[0] == (start + steps - 2) // 96 - (start - 1) // 96 + 1
    changed = np.nonzero((np.diff(sched, axis=0) != 0).any(axis=1))[0] + 1
    k = start + changed
    assert np.all((k - 1) % per == 0)  # clock-aligned interval starts
    if cap == 0:
        np.testing.assert_array_equal(sched, base)
    assert set(np.unique(sched[:, [idx[s] for s in switches]])) <= {1, 2, 3}


def test_switching_reduces_the_interval_objective(small: FeederModel) -> None:
    """With an ample cap every interval ends no worse than it would with the phases it inherited."""
    rng = np.random.default_rng(5)
    kw = _profiles(rng, 96, len(small.customers), 8.0)
    sched = phases.switching_schedule(small, kw, None, SINGLE, stepsize_s=900.0, interval_s=900.0, max_ops_per_day=96)
    base = phases.as_built_schedule(small, 96)
    name = [c.name for c in small.customers]
    for t in range(96):
        now = dict(zip(name, sched[t].tolist(), strict=True))
        prev = dict(zip(name, (sched[t - 1] if t else base[0]).tolist(), strict=True))
        row = kw[t : t + 1]
        single = {n: p for n, p in now.items() if n in SINGLE}
        single_prev = {n: p for n, p in prev.items() if n in SINGLE}
        assert (
            phases.proxy_objective(small, row, arrangement=single)
            <= phases.proxy_objective(small, row, arrangement=single_prev) + 1e-12
        )
    assert (sched != base).any()


# ----------------------------------------------------------------------------- switchable model and runs


def test_switchable_model_keeps_customer_identity(small_path: Path) -> None:
    engine, model = open_feeder(small_path)
    sm = phases.make_switchable(engine, model, ["s1", "s5"])
    assert [c.name for c in sm.customers] == [c.name for c in model.customers]
    assert phases.switchable_customers(sm) == ["s1", "s5"]
    s1 = sm.customers[sm.customer_index()["s1"]]
    assert s1.phases == (1, 2, 3)
    assert s1.devices == ("load.s1_p1", "load.s1_p2", "load.s1_p3")
    assert [sm.nodes[n] for n in s1.phase_nodes] == ["c1.1", "c1.2", "c1.3"]
    assert sm.nodes[s1.neutral_node] == "c1.4"
    with pytest.raises(StudyError, match="s1"):  # already switchable: no longer a single-phase customer
        phases.switchable_commands(sm, ["s1"])


def test_dynamic_with_switches_disabled_reproduces_as_built(
    ieee: tuple[Engine, FeederModel, np.ndarray, np.ndarray],
) -> None:
    engine, model, kw, kvar = ieee
    run = RunSpec("yearly", 60.0, 1, 90)
    kw, kvar = kw[:90], kvar[:90]
    plain, _ = solve_raw(engine, model, run, progress=False)
    # no switch at all: the same run, bit for bit
    sched = phases.switching_schedule(model, kw, None, [], stepsize_s=60.0)
    np.testing.assert_array_equal(sched, phases.as_built_schedule(model, 90))
    vt, _ = phases.run_switching(engine, model, run, kw, None, sched)
    np.testing.assert_array_equal(vt, plain)
    # every customer on the three-load formulation, switches disabled (cap 0)
    e2, m2 = open_feeder(IEEE_4W, vmaxpu=1.5)
    everyone = phases.movable_customers(m2)
    sm = phases.make_switchable(e2, m2, everyone)
    sched = phases.switching_schedule(model, kw, None, everyone, stepsize_s=60.0, max_ops_per_day=0)
    np.testing.assert_array_equal(sched, phases.as_built_schedule(model, 90))
    for _ in range(2):  # and again: the phase loads are reset between runs
        vt, measured = phases.run_switching(e2, sm, run, kw, None, sched, load_kvar=kvar)
        assert np.abs(vt - plain).max() <= 1e-9 * np.abs(plain).max()
    pf = capture(sm, run, vt, measured)
    pf0 = capture(model, run, plain, {})
    np.testing.assert_allclose(pf.customer_p_kw.values, pf0.customer_p_kw.values, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(pf.loss_total_kw.values, pf0.loss_total_kw.values, rtol=1e-9)


def test_three_loads_equal_text_edited_rephasing(ieee: tuple[Engine, FeederModel, np.ndarray, np.ndarray]) -> None:
    """A fixed arrangement through the three phase Loads vs Loads whose bus1 was really changed."""
    _, model, kw, kvar = ieee
    run = RunSpec("yearly", 60.0, 1101, 40)
    kw, kvar = kw[1100:1140], kvar[1100:1140]
    moves = {"load1": 2, "load2": 3, "load17": 1, "load30": 2, "load55": 3}
    idx = model.customer_index()
    e_txt, m_txt = open_feeder(IEEE_4W, vmaxpu=1.5)
    e_txt.apply([f"Load.{n}.bus1={model.customers[idx[n]].bus}.{p}.4" for n, p in moves.items()])
    m_txt = e_txt.model()
    v_txt, meas_txt = solve_raw(e_txt, m_txt, run, progress=False)
    e_sw, m_sw = open_feeder(IEEE_4W, vmaxpu=1.5)
    sm = phases.make_switchable(e_sw, m_sw, list(moves))
    sched = phases.as_built_schedule(model, run.steps)
    for n, p in moves.items():
        sched[:, idx[n]] = p
    v_sw, meas_sw = phases.run_switching(e_sw, sm, run, kw, None, sched, load_kvar=kvar)
    assert m_txt.nodes == sm.nodes
    v_base = 416.0 / math.sqrt(3.0)
    assert np.abs(v_sw - v_txt).max() < 1e-4 * v_base  # OpenDSS's convergence tolerance (1e-4 pu)
    pf_sw = capture(sm, run, v_sw, meas_sw)
    pf_txt = capture(m_txt, run, v_txt, meas_txt)
    np.testing.assert_allclose(pf_sw.customer_p_kw.values, pf_txt.customer_p_kw.values, atol=5e-3)
    # the switchable customer's power flows on the live phase port only (the idle as-built phase
    # Load keeps its admittance in the factorised matrix: a residue of the convergence tolerance)
    inj = np.abs(pf_sw.customer_injection.sel(customer="load1").values)
    assert inj[:, 1].min() > 1.0 and inj[:, [0, 2]].max() < 1e-3


def test_dynamic_run_follows_the_schedule_and_nets_pv(small_path: Path) -> None:
    """A switchable customer with PV: its PVSystem is folded into its phase loads (pv_kw)."""
    engine, model = open_feeder(small_path)
    steps = 8
    shape = np.linspace(0.2, 1.0, steps)
    engine.apply([loadshape_command("pvs", shape, 60.0), *pv_commands(model, {"s1": 5.0}, "pvs")])
    model = engine.model()
    assert "pvsystem.pv_s1" in model.customers[model.customer_index()["s1"]].devices
    run = RunSpec("daily", 60.0, 1, steps)
    plain, _ = solve_raw(engine, model, run, progress=False)
    kw, kvar = phases.customer_profiles(engine, model, run)
    pv = np.zeros_like(kw)
    pv[:, model.customer_index()["s1"]] = 5.0 * shape
    sm = phases.make_switchable(engine, model, ["s1", "s3"])
    base = phases.as_built_schedule(model, steps)
    with pytest.raises(StudyError, match="pv_s1"):
        phases.run_switching(engine, sm, run, kw, None, base)
    vt, _ = phases.run_switching(engine, sm, run, kw, pv, base, load_kvar=kvar)
    assert np.abs(vt - plain).max() < 1e-4 * 240.0  # PVSystem vs netted load: same physics
    sched = base.copy()
    sched[4:, model.customer_index()["s1"]] = 3
    sched[2:, model.customer_index()["s3"]] = 2
    vt, measured = phases.run_switching(engine, sm, run, kw, pv, sched, load_kvar=kvar)
    pf = capture(sm, run, vt, measured)
    s1 = pf.customer_injection.sel(customer="s1")
    amps = np.abs(s1.values[:, :3])
    np.testing.assert_array_equal(amps.argmax(axis=1), [0, 0, 0, 0, 2, 2, 2, 2])
    assert np.sort(amps, axis=1)[:, 1].max() < 1e-2 < 0.5 < amps.max(axis=1).min()  # idle ports: convergence residue
    np.testing.assert_allclose(pf.customer_p_kw.sel(customer="s1").values, kw[:, 0] - 5.0 * shape, rtol=2e-3)
    # outside a run the switchable customers' set-points are their original ones
    kw2, kvar2 = phases.customer_profiles(engine, sm, run)
    np.testing.assert_array_equal(kw2, kw)
    np.testing.assert_array_equal(kvar2, kvar)


# ----------------------------------------------------------------------------- bad input


def test_bad_input_names_the_item(small: FeederModel, small_path: Path) -> None:
    kw = np.ones((4, len(small.customers)))
    with pytest.raises(UnknownItemError, match="ghost"):
        phases.switching_schedule(small, kw, None, ["s1", "ghost"], stepsize_s=60.0)
    with pytest.raises(UnknownItemError, match="ghost"):
        phases.choose_switches(small, customers=["ghost"])
    with pytest.raises(StudyError, match="max_ops_per_day"):
        phases.switching_schedule(small, kw, None, ["s1"], stepsize_s=60.0, max_ops_per_day=-1)
    with pytest.raises(StudyError, match="interval 100 s"):
        phases.switching_schedule(small, kw, None, ["s1"], stepsize_s=60.0, interval_s=100.0)
    with pytest.raises(StudyError, match="t1"):
        phases.switching_schedule(small, kw, None, ["t1"], stepsize_s=60.0)
    with pytest.raises(StudyError, match="share"):
        phases.choose_switches(small, share=1.5)
    with pytest.raises(UnknownItemError, match="ghost"):
        phases.rebalance(small, kw, movable=["ghost"])
    with pytest.raises(StudyError, match="stat"):
        phases.rebalance(small, kw, stat="mean")
    with pytest.raises(StudyError, match="objective"):
        phases.rebalance(small, kw, objective="losses")  # type: ignore[arg-type]
    with pytest.raises(ProfileError, match="load_kw"):
        phases.rebalance(small, kw[:, :3])
    with pytest.raises(ProfileError, match="s2"):
        bad = kw.copy()
        bad[2, 1] = np.nan
        phases.rebalance(small, bad)
    engine, model = open_feeder(small_path)
    with pytest.raises(ModelError, match="s7"):
        phases.make_switchable(engine, model, ["s7"])  # shares bus 5 with s8
    sm = phases.make_switchable(engine, model, ["s1"])
    run = RunSpec("snap", 60.0, 0, 1)
    sched = phases.as_built_schedule(model, 1)
    sched[0, model.customer_index()["s2"]] = 3
    with pytest.raises(StudyError, match="s2"):
        phases.run_switching(engine, sm, run, kw[:1], None, sched)
    sched = phases.as_built_schedule(model, 1)
    sched[0, model.customer_index()["s1"]] = 4
    with pytest.raises(StudyError, match="s1"):
        phases.run_switching(engine, sm, run, kw[:1], None, sched)
    with pytest.raises(StudyError, match="shape"):
        phases.run_switching(engine, sm, run, kw[:1], None, sched[:, :3])


def test_head_currents_of_a_three_wire_model_have_no_neutral() -> None:
    """A Kron-reduced model has no neutral conductor at its head; the phase currents are
    OpenDSS's own magnitudes of the head line (terminal 1) at minute 566."""
    import opendssdirect as dss

    from tests.conftest import IEEE

    engine, model = open_feeder(IEEE, vmaxpu=1.5)
    run = RunSpec(mode="yearly", stepsize_s=60.0, start=566, steps=1)
    vt, measured = solve_raw(engine, model, run, progress=False)
    ph, neutral = phases.head_currents(model, capture(model, run, vt, measured))
    assert neutral is None
    head = model.elements[head_line(model)].name
    dss.Text.Command(f'compile "{IEEE}"')
    dss.Text.Command("batchedit load..* vmaxpu=1.5")
    dss.Text.Command("set mode=yearly stepsize=1m number=566")
    dss.Solution.Solve()
    dss.Circuit.SetActiveElement(head)
    ref = np.asarray(dss.CktElement.CurrentsMagAng()[0:6:2])
    np.testing.assert_allclose(ph.values[0], ref, rtol=2e-4)  # two OpenDSS runs, each within its 1e-4 tolerance
