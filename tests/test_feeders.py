"""The conventions corpus (tests/feeders/): one small hand-written OpenDSS model per way of
numbering terminals, each with a truth file beside it, checked against OpenDSS run
directly through opendssdirect (never against lv3ph's own output)."""

from __future__ import annotations

import json
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lv3ph import phases
from lv3ph.allocation.contracts import contract_shares
from lv3ph.allocation.exact import exact_allocation, loss_network
from lv3ph.errors import ConvergenceError, IsolatedCustomerWarning, ModelError
from lv3ph.kron import kron_reduce
from lv3ph.model import FeederModel, battery_commands, pv_commands
from lv3ph.phases import arrangement_commands
from lv3ph.powerflow import RunSpec, capture, customer_ports, open_feeder, solve_raw
from lv3ph.topology import ISOLATED, customers_table, earthing_table, phase_labels
from tests.conftest import ROOT, SHARED
from tests.opendss_reference import opendss_snapshot
from tests.test_allocation_random import feeders

CORPUS = ROOT / "tests" / "feeders"
FEEDERS = sorted(p.stem for p in CORPUS.glob("*.dss"))


def _truth(name: str) -> dict[str, Any]:
    return json.loads((CORPUS / f"{name}.json").read_text())


def opendss_direct(text: str, folder: Path) -> tuple[dict[str, complex], dict[str, float], float]:
    """Write ``text`` and solve its snapshot in OpenDSS itself: node voltages (V) by node
    name, each PD element's loss (kW) and the sum of all PD elements' losses (kW)."""
    path = folder / "direct.dss"
    path.write_text(text)
    v, losses = opendss_snapshot(path)
    return v, losses, sum(losses.values())


def _open(path: Path, truth: dict[str, Any]) -> tuple[Any, FeederModel]:
    if not truth.get("drop_isolated"):
        return open_feeder(path)
    with pytest.raises(ModelError, match="on no traced phase") as err:
        open_feeder(path)
    for name in truth["isolated_customers"]:
        assert f"load.{name}" in str(err.value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", IsolatedCustomerWarning)
        opened = open_feeder(path, drop_isolated=True)
    text = " ".join(str(w.message) for w in caught)
    assert all(f"load.{n}" in text for n in truth["isolated_customers"])
    return opened


@pytest.fixture(scope="module", params=FEEDERS)
def case(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any], Any, FeederModel]:
    name = str(request.param)
    truth = _truth(name)
    engine, model = _open(CORPUS / f"{name}.dss", truth)
    return name, truth, engine, model


def test_traced_roles_equal_the_truth(case: tuple[str, dict[str, Any], Any, FeederModel]) -> None:
    _, truth, _, model = case
    table = customers_table(model).set_index("customer")
    assert sorted(table.index) == sorted(truth["customers"])
    for name, want in truth["customers"].items():
        row = table.loc[name]
        assert row.phases == want["phases"], name
        assert row.phase_nodes.split() == want["phase_nodes"], name
        assert row.neutral_node == want["neutral"], name
        assert bool(row.earthed) == want["earthed"], name
        if "group" in want:
            c = model.customers[model.customer_index()[name]]
            assert model.groups[int(model.node_group[c.phase_nodes[0]])] == want["group"]
    assert sorted(earthing_table(model).element) == sorted(truth["electrodes"])
    for node in truth.get("isolated_nodes", []):
        assert model.node_role[model.nodes.index(node)] == ISOLATED, node


def test_voltages_and_earth_losses_equal_opendss(
    case: tuple[str, dict[str, Any], Any, FeederModel], tmp_path: Path
) -> None:
    name, truth, engine, model = case
    spec = RunSpec("snap", 1.0, 1, 1)
    vt, measured = solve_raw(engine, model, spec, progress=False)
    pf = capture(model, spec, vt, measured)
    v, losses, total = opendss_direct((CORPUS / f"{name}.dss").read_text(), tmp_path)
    for cname, want in truth["customers"].items():
        ref_n = v[want["neutral"]] if want["neutral"] else 0.0
        ref = np.array([v[p] - ref_n for p in want["phase_nodes"]])
        got = pf.customer_voltage.sel(customer=cname).values[0, : ref.size]
        assert np.allclose(got, ref, rtol=1e-9, atol=0), cname
        assert np.all(np.abs(ref) > 100.0), cname  # a real phase-to-neutral voltage, not a neutral rise
    earth_ref = sum(losses[e] for e in truth["electrodes"])
    assert float(pf.loss_earth_kw.sum()) == pytest.approx(earth_ref, rel=1e-9, abs=1e-12)
    assert float(pf.loss_total_kw.sum()) == pytest.approx(total, rel=1e-9)


def test_allocation_conserves_every_step(case: tuple[str, dict[str, Any], Any, FeederModel]) -> None:
    _, truth, engine, model = case
    spec = RunSpec("daily", 3600.0, 10, 3)  # OpenDSS's default daily shape: three different steps
    vt, measured = solve_raw(engine, model, spec, progress=False)
    pf = capture(model, spec, vt, measured)
    names = customer_ports(model).names
    drawn = pd.DataFrame(pf.customer_p_kw.values, index=pf.time.values, columns=list(pf.customer.values))
    n = max(1, len(truth["contracts"]))  # each contract a fraction (<= 1) of 1/n of what both sides can trade
    rows = [
        (f"k{i}_{t}", t, s, b, f / n * max(0.0, min(-drawn.loc[t, s], drawn.loc[t, b])))
        for i, (s, b, f) in enumerate(truth["contracts"])
        for t in pf.time.values
    ]
    table = pd.DataFrame(rows, columns=["contract", "time", "seller", "buyer", "kw"])
    shares = contract_shares(table, pf.customer_p_kw.values, names, pf.time.values)
    al = exact_allocation(model, pf, vt, table, shares, net=loss_network(model))
    per_step = pd.Series(al.loss_total_kw.values).groupby(al.row_time.values).sum()
    loss = pf.loss_total_kw.to_series()
    assert np.allclose(per_step.reindex(loss.index).values, loss.values, rtol=1e-6, atol=0)
    earth = pd.Series(al.loss_earth_kw.values).groupby(al.row_time.values).sum()
    assert np.allclose(earth.reindex(loss.index).values, pf.loss_earth_kw.sum("element").values, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("name", [f for f in FEEDERS if _truth(f)["rephase"]])
def test_rephasing_equals_opendss_on_the_edited_text(name: str, tmp_path: Path) -> None:
    truth = _truth(name)
    path = CORPUS / f"{name}.dss"
    for move in truth["rephase"]:
        engine, model = _open(path, truth)
        edits, undo = arrangement_commands(model, {move["customer"]: move["phase"]})
        engine.apply(edits)
        moved = engine.model()
        c = moved.customers[moved.customer_index()[move["customer"]]]
        assert c.phases == (move["phase"],)
        ours = dict(zip(moved.nodes, engine.node_voltages(), strict=True))
        old, new = move["edit"]
        text = path.read_text()
        assert text.count(old) == 1
        ref, _, _ = opendss_direct(text.replace(old, new), tmp_path)
        base = {b: kv * 1000.0 for b, kv in zip(moved.buses, moved.bus_kv_base, strict=True)}
        err = max(abs(ours[n] - ref[n]) / base[n.rsplit(".", 1)[0]] for n in ref)
        assert err <= 1e-6, (move, err)
        engine.apply(undo)
        back = dict(zip(model.nodes, engine.node_voltages(), strict=True))
        ref0, _, _ = opendss_direct(text, tmp_path)
        assert max(abs(back[n] - ref0[n]) / base[n.rsplit(".", 1)[0]] for n in ref0) <= 1e-6


def test_service_cable_is_moved_at_its_feeder_side() -> None:
    _, model = open_feeder(CORPUS / "service_cable.dss")
    edits, undo = arrangement_commands(model, {"cust7": 1})
    assert edits == ["line.svc7.bus1=t3.1.4"]
    assert undo == ["line.svc7.bus1=t3.2.4"]


# ----------------------------------------------------------------------------- ENWL (../shared)
ENWL = SHARED / "enwl_4wire" / "network_1"


@pytest.mark.parametrize("feeder", ["Feeder_1", "Feeder_2"])
def test_enwl_network1_phases_follow_the_source_angles(feeder: str, tmp_path: Path) -> None:
    """Traced phases equal the phase whose source angle each customer's phase-to-neutral
    voltage sits nearest to, in OpenDSS's own solution (an independent truth)."""
    master = ENWL / feeder / "Master.dss"
    if not master.is_file():
        pytest.skip("../shared/data/enwl_4wire not available")
    engine, model = open_feeder(master)
    spec = RunSpec("snap", 1.0, 1, 1)
    vt, measured = solve_raw(engine, model, spec, progress=False)
    pf = capture(model, spec, vt, measured)
    v, _ = opendss_snapshot(master, ("batchedit energymeter..* enabled=no",))  # as lv3ph.dss.Engine.compile
    src = np.angle(v["sourcebus.1"])
    for c in model.customers:
        ph_node, n_node = model.nodes[int(c.phase_nodes[0])], model.nodes[c.neutral_node]
        vpn = v[ph_node] - v[n_node]
        lag = np.mod(src - np.angle(vpn) + np.pi / 3, 2 * np.pi)  # 0..2pi/3 -> a, then b, c
        assert c.phases == (int(lag // (2 * np.pi / 3)) + 1,), c.name
        got = pf.customer_voltage.sel(customer=c.name).values[0, 0]
        assert got == pytest.approx(vpn, rel=1e-9)
    electrodes = [e.name for e in model.elements if e.kind == "earthing"]
    assert electrodes == ["reactor.grounding"]


# ----------------------------------------------------------------------------- random remapped service cables
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(feeders(), st.data())
def test_random_terminal_numbering_changes_nothing(case: tuple[str, pd.DataFrame], data: st.DataObject) -> None:
    """A random radial four-wire feeder whose customers hang on two-wire service cables:
    house terminals numbered at random give the same voltages, loss split and allocation
    as the canonical numbering (phase on its feeder number, neutral on 4)."""
    text, table = case
    canonical, remapped = [], []
    for line in text.splitlines():
        m = re.match(r"new load\.(\S+) phases=1 bus1=(b\d+)\.(\d)\.4 (.*)", line)
        if not m:
            canonical.append(line)
            remapped.append(line)
            continue
        name, bus, ph, rest = m.groups()
        t_ph, t_n = data.draw(st.lists(st.integers(1, 6), min_size=2, max_size=2, unique=True))
        pme = data.draw(st.sampled_from([None, 10.0, 40.0]))
        for out, (a, b) in ((canonical, (int(ph), 4)), (remapped, (t_ph, t_n))):
            out.append(
                f"new line.s_{name} bus1={bus}.{ph}.4 bus2=h_{name}.{a}.{b} phases=2 length=20 units=m "
                "rmatrix=[1.2 | 0.1 1.2] xmatrix=[0.09 | 0.03 0.09]"
            )
            if pme is not None:
                out.append(f"new reactor.pme_{name} phases=1 bus1=h_{name}.{b} bus2=h_{name}.0 R={pme} X=0")
            out.append(f"new load.{name} phases=1 bus1=h_{name}.{a}.{b} {rest}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, lines in enumerate((canonical, remapped)):
            path = Path(tmp) / f"m{k}" / "Master.dss"
            path.parent.mkdir()
            path.write_text("\n".join(lines))
            try:
                engine, model = open_feeder(path)
            except ConvergenceError:
                assume(False)
            spec = RunSpec("snap", 1.0, 1, 1)
            vt, measured = solve_raw(engine, model, spec, progress=False)
            pf = capture(model, spec, vt, measured)
            drawn = pd.Series(pf.customer_p_kw.values[0], index=list(pf.customer.values))
            tab = table
            if len(tab):
                tab = tab.assign(
                    kw=[
                        f * min(-drawn[s], drawn[b]) / len(tab)
                        for f, s, b in zip(tab.kw, tab.seller, tab.buyer, strict=True)
                    ]
                )
            shares = contract_shares(tab, pf.customer_p_kw.values, customer_ports(model).names, pf.time.values)
            al = exact_allocation(model, pf, vt, tab, shares, net=loss_network(model))
            results.append((model, pf, al))
    (m0, pf0, al0), (m1, pf1, al1) = results
    assert [c.phases for c in m0.customers] == [c.phases for c in m1.customers]
    assert np.allclose(pf1.customer_voltage.values[:, :, 0], pf0.customer_voltage.values[:, :, 0], rtol=1e-8)
    for part in ("phase", "neutral", "earth", "total"):
        v0, v1 = (float(p[f"loss_{part}_kw"].sum()) for p in (pf0, pf1))
        assert v1 == pytest.approx(v0, rel=1e-7, abs=1e-12), part
    for var in ("loss_total_kw", "loss_phase_kw", "loss_neutral_kw", "loss_earth_kw"):
        assert np.allclose(al1[var].values, al0[var].values, rtol=1e-6, atol=1e-12), var


def test_switching_on_remapped_terminals_equals_the_edited_text(tmp_path: Path) -> None:
    """n_b sits on bus n1 whose phases a, b, c are terminals 1, 3, 4 and neutral 2: its three
    phase Loads land on those nodes, and the switched run equals OpenDSS on the text with n_b
    moved to phase c (n1.4.2), within OpenDSS's convergence tolerance."""
    path = CORPUS / "neutral_elsewhere.dss"
    engine, model = open_feeder(path)
    cmds = phases.switchable_commands(model, ["n_b"])
    assert [c.split(" bus1=")[1].split()[0] for c in cmds[:3]] == ["n1.1.2", "n1.3.2", "n1.4.2"]
    run = RunSpec("daily", 3600.0, 10, 2)
    kw, kvar = phases.customer_profiles(engine, model, run)
    sm = phases.make_switchable(engine, model, ["n_b"])
    sched = phases.as_built_schedule(model, run.steps)
    sched[:, model.customer_index()["n_b"]] = 3
    v_sw, _ = phases.run_switching(engine, sm, run, kw, None, sched, load_kvar=kvar)
    moved = tmp_path / "moved" / "Master.dss"
    moved.parent.mkdir()
    moved.write_text(path.read_text().replace("bus1=n1.3.2 kv=0.24 kw=4", "bus1=n1.4.2 kv=0.24 kw=4"))
    e_txt, m_txt = open_feeder(moved)
    v_txt, _ = solve_raw(e_txt, m_txt, run, progress=False)
    pos = [m_txt.nodes.index(n) for n in sm.nodes]
    assert np.abs(v_sw - v_txt[pos]).max() < 1e-4 * 240.0


def test_pv_and_battery_attach_to_the_traced_phase_and_neutral() -> None:
    _, model = open_feeder(CORPUS / "service_cable.dss")
    pv = pv_commands(model, {"cust7": 4.0, "cust5": 3.0}, "shape")
    assert " bus1=c7.1.2 " in pv[0] and " bus1=c5.2.1 " in pv[1]
    assert " bus1=c5.2.1 " in battery_commands(model, ["cust5"])[0]


def test_kron_reduction_earths_the_traced_neutrals(tmp_path: Path) -> None:
    engine, model = open_feeder(CORPUS / "service_cable.dss")
    master = kron_reduce(engine, tmp_path / "kron", model=model)  # verify=True: no neutral left
    _, reduced = open_feeder(master)
    assert not reduced.explicit_neutral
    assert [c.phases for c in reduced.customers] == [c.phases for c in model.customers]
    loads = (master.parent / "Load.dss").read_text().lower()
    lines = (master.parent / "Line.dss").read_text().lower()
    assert 'new "load.cust5" phases=1 bus1=c5.2.0 ' in loads  # house neutral c5.1 to earth
    assert 'new "line.svc5"' in lines and "bus1=t3.2 bus2=c5.2 phases=1" in lines  # the neutral core eliminated


def test_phase_labels_tell_the_two_networks_apart() -> None:
    _, model = open_feeder(CORPUS / "two_transformers.dss")
    assert phase_labels(model) == ["transformer.tx:a", "transformer.tx:b", "transformer.tx2:a", "transformer.tx2:c"]


def test_rebalanced_service_cables_equal_opendss_on_the_edited_text(tmp_path: Path) -> None:
    """A whole static rebalancing plan on the service-cable feeder: its edits equal OpenDSS
    re-solved on the model text with each moved house's cable re-terminated at the feeder
    bus (whose terminals 1-3 are phases a-c in this file)."""
    path = CORPUS / "service_cable.dss"
    engine, model = open_feeder(path)
    kw, _ = phases.customer_profiles(engine, model, RunSpec("daily", 3600.0, 10, 4))
    plan = phases.rebalance_plan(model, np.clip(kw, 0, None), np.clip(-kw, 0, None), objective="pvur")
    assert len(plan.moved) >= 2
    text = path.read_text()
    for name, (old, new) in plan.moved.items():
        house = name.replace("cust", "")
        m = re.search(rf"new line\.svc{house} bus1=(t\d)\.{old}\.4 ", text)
        assert m is not None, name
        text = text.replace(m.group(0), f"new line.svc{house} bus1={m.group(1)}.{new}.4 ")
    edits, _ = arrangement_commands(model, plan.arrangement)
    engine.apply(edits)
    moved = engine.model()
    assert {c.name: c.phases[0] for c in moved.customers} == plan.arrangement
    ours = dict(zip(moved.nodes, engine.node_voltages(), strict=True))
    ref, _, _ = opendss_direct(text, tmp_path)
    base = {b: kv * 1000.0 for b, kv in zip(moved.buses, moved.bus_kv_base, strict=True)}
    assert max(abs(ours[n] - ref[n]) / base[n.rsplit(".", 1)[0]] for n in ref) <= 1e-6
