"""Audit comparisons (lv3ph.allocation.audit) and the Kron reduction (lv3ph.kron)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import opendssdirect
import pandas as pd
import pytest

from lv3ph.allocation.audit import (
    METHODS,
    allocate_method,
    compare,
    largest_differences,
    loss_sensitivities,
    radial_tree,
    trade_flows,
)
from lv3ph.allocation.contracts import contract_shares
from lv3ph.allocation.exact import loss_network
from lv3ph.kron import MANIFEST, kron_matrix, kron_reduce, read_report
from lv3ph.powerflow import RunSpec, capture, customer_ports, open_feeder
from tests.conftest import HAND, IEEE, write_feeder

#: A small branched four-wire feeder with coupled cables (mutual R and X), PME at two
#: customers and four yearly steps. Sellers: c2 (load + PV on phase a at bus 4) and c4
#: (a negative load on phase c at bus 6). Buyers: c1 (a, bus 3), c3 (b, bus 5), c5 (b, bus 4).
#:
#:     sourcebus -tx- 1 -l1- 2 -l2- 3 -l3- 4
#:                           2 -l4- 5 -l5- 6
SMALL = """
clear
set defaultbasefrequency=50
new circuit.small basekv=11 pu=1.0 isc3=3000 isc1=5
new transformer.tx buses=[sourcebus 1.1.2.3.4] conns=[delta wye] kvs=[11 0.416] kvas=[200 200] xhl=4 %loadloss=1 %noloadloss=0.2
new reactor.earth_tx phases=1 bus1=1.4 bus2=1.0 R=1 X=0
new linecode.cable nphases=4 units=km rmatrix=[0.32 | 0.05 0.32 | 0.05 0.05 0.32 | 0.06 0.06 0.06 0.5] xmatrix=[0.25 | 0.2 0.25 | 0.19 0.2 0.25 | 0.2 0.19 0.2 0.27] cmatrix=[0 | 0 0 | 0 0 0 | 0 0 0 0]
new line.l1 bus1=1.1.2.3.4 bus2=2.1.2.3.4 phases=4 linecode=cable length=0.1 units=km
new line.l2 bus1=2.1.2.3.4 bus2=3.1.2.3.4 phases=4 linecode=cable length=0.08 units=km
new line.l3 bus1=3.1.2.3.4 bus2=4.1.2.3.4 phases=4 linecode=cable length=0.06 units=km
new line.l4 bus1=2.1.2.3.4 bus2=5.1.2.3.4 phases=4 linecode=cable length=0.09 units=km
new line.l5 bus1=5.1.2.3.4 bus2=6.1.2.3.4 phases=4 linecode=cable length=0.05 units=km
new loadshape.day npts=4 minterval=1 mult=[0.6 1.0 0.8 1.2]
new loadshape.sun npts=4 minterval=1 mult=[0.2 0.9 1.0 0.5]
new load.c1 phases=1 bus1=3.1.4 kv=0.23 kw=5 pf=0.95 yearly=day vminpu=0.5 vmaxpu=1.5
new load.c2 phases=1 bus1=4.1.4 kv=0.23 kw=1 pf=0.95 yearly=day vminpu=0.5 vmaxpu=1.5
new pvsystem.pv_c2 phases=1 bus1=4.1.4 kv=0.23 kva=8 pmpp=7 irradiance=1 %cutin=0.01 %cutout=0.01 yearly=sun vminpu=0.5 vmaxpu=1.5
new load.c3 phases=1 bus1=5.2.4 kv=0.23 kw=4 pf=0.95 yearly=day vminpu=0.5 vmaxpu=1.5
new load.c4 phases=1 bus1=6.3.4 kv=0.23 kw=-3 pf=1 vminpu=0.5 vmaxpu=1.5
new load.c5 phases=1 bus1=4.2.4 kv=0.23 kw=3 pf=0.95 yearly=day vminpu=0.5 vmaxpu=1.5
new reactor.pme_c2 phases=1 bus1=4.4 bus2=4.0 R=20 X=0
new reactor.pme_c3 phases=1 bus1=5.4 bus2=5.0 R=20 X=0
set voltagebases=[11 0.416]
calcvoltagebases
"""


def table(rows: list[tuple[str, int, str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["contract", "time", "seller", "buyer", "kw"])


def solved(
    path: Path, run: RunSpec, contracts: pd.DataFrame, vmaxpu: float | None = None, commands: tuple[str, ...] = ()
):
    engine, model = open_feeder(path, vmaxpu=vmaxpu)
    if commands:
        engine.apply(list(commands))
        model = engine.model()
    vt, measured = engine.run(run.mode, run.stepsize_s, run.start, run.steps)
    pf = capture(model, run, vt, measured)
    shares = contract_shares(contracts, pf.customer_p_kw.values, customer_ports(model).names, pf.time.values)
    kw = {"engine": engine, "model": model, "pf": pf, "vt": vt, "contracts": contracts, "shares": shares, "run": run}
    return kw | {"net": loss_network(model)}


SMALL_RUN = RunSpec("yearly", 60.0, 1, 4)
SMALL_CONTRACTS = table(
    [
        (f"k{k}_{t}", t, s, b, kw)
        for t in range(1, 5)
        for k, (s, b, kw) in enumerate([("c2", "c1", 0.4), ("c4", "c3", 1.5), ("c2", "c5", 0.3)])
    ]
)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("small")
    path = write_feeder(folder, SMALL)
    inputs = solved(path, SMALL_RUN, SMALL_CONTRACTS)
    results = {}
    for m in METHODS:
        extra = {"kron_dir": folder / "kron"} if m == "kron" else {}
        results[m] = allocate_method(m, **inputs, exact=results.get("exact"), **extra)
    return path, folder, inputs, results


def per_step(ds) -> np.ndarray:
    return ds.loss_total_kw.groupby(ds.row_time).sum().values


def test_every_method_sums_to_the_loss_every_step(small) -> None:
    _, folder, inputs, results = small
    pf = inputs["pf"]
    loss = pf.loss_total_kw.values
    assert loss.min() > 0
    for m, ds in results.items():
        assert list(ds.contract.values) == list(results["exact"].contract.values), m
        assert np.array_equal(ds.row_time.values, results["exact"].row_time.values), m
        assert np.allclose(ds.feeder_loss_kw.values, loss, rtol=1e-12), m
        assert np.allclose(ds.step_loss_kw.values, per_step(ds), rtol=1e-12), m
        if m == "kron":
            continue
        assert np.allclose(per_step(ds), loss, rtol=1e-6, atol=0), m
    # kron adds up to the reduced model's own loss, checked against plain OpenDSS
    kron = results["kron"]
    assert kron.attrs["transformations"] == "kron_reduce"
    assert np.allclose(per_step(kron), kron.kron_loss_kw.values, rtol=1e-6, atol=0)
    dss = opendssdirect.dss
    dss.Text.Command(f'compile "{folder / "kron" / "Master.dss"}"')
    dss.Text.Command("set mode=yearly number=1 stepsize=1m")
    dss.Solution.Hour(0)
    dss.Solution.Seconds(60.0)  # the next solve is step 2
    dss.Solution.Solve()
    total_w = 0.0
    for name in dss.PDElements.AllNames():
        dss.Circuit.SetActiveElement(name)
        total_w += dss.CktElement.Losses()[0]
    assert per_step(kron)[1] == pytest.approx(total_w / 1000, rel=1e-4)
    # the three-wire model misses the neutral's loss
    assert np.all(kron.kron_loss_kw.values < loss)
    assert np.all(kron.loss_neutral_kw.values == 0) and np.all(kron.loss_earth_kw.values == 0)


def test_pro_rata_by_hand(tmp_path: Path) -> None:
    path = write_feeder(tmp_path, HAND)
    run = RunSpec("snap", 1.0, 1, 1)
    inputs = solved(path, run, table([("k1", 1, "seller", "buyer", 1.0), ("k2", 1, "seller", "buyer", 2.0)]))
    ds = allocate_method("pro-rata", **inputs)
    pf = inputs["pf"]
    p = dict(zip(pf.customer.values, pf.customer_p_kw.values[0], strict=True))
    loss = float(pf.loss_total_kw[0])
    # residuals: seller -4 + 3 sold = -1, buyer 6 - 3 bought = 3 (measured powers)
    r_s, r_b = abs(p["seller"] + 3.0), abs(p["buyer"] - 3.0)
    assert r_s == pytest.approx(1.0, rel=1e-3) and r_b == pytest.approx(3.0, rel=1e-3)
    w = 1.0 + 2.0 + r_s + r_b
    got = dict(zip(ds.contract.values, ds.loss_total_kw.values, strict=True))
    assert got["k1"] == pytest.approx(loss * 1.0 / w, rel=1e-12)
    assert got["k2"] == pytest.approx(loss * 2.0 / w, rel=1e-12)
    assert got["grid:seller"] == pytest.approx(loss * r_s / w, rel=1e-12)
    assert got["grid:buyer"] == pytest.approx(loss * r_b / w, rel=1e-12)
    assert got["grid:no-load"] == 0.0
    assert np.isnan(ds.loss_phase_kw.values).all() and ds.attrs["parts"] == "none"


def test_phase_only_equals_exact_without_neutral() -> None:
    """Published three-wire IEEE feeder: exact has no neutral/earth parts, so phase-only
    is exact with scale factor 1."""
    _, model = open_feeder(IEEE, vmaxpu=1.5)
    sellers = {c.name: c for c in model.customers[:3]}
    pv = [
        f"new pvsystem.pv_{n} phases=1 bus1={c.bus}.{c.phases[0]} kv=0.23 kva=5 pmpp=4 irradiance=1 %cutin=0.01 %cutout=0.01"
        for n, c in sellers.items()
    ]
    buyers = [c.name for c in model.customers[10:13]]
    contracts = table([(f"k{i}", 1, s, b, 0.3 + 0.2 * i) for i, (s, b) in enumerate(zip(sellers, buyers, strict=True))])
    inputs = solved(IEEE, RunSpec("snap", 1.0, 1, 1), contracts, vmaxpu=1.5, commands=tuple(pv))
    exact = allocate_method("exact", **inputs)
    phase = allocate_method("phase-only", **inputs, exact=exact)
    assert not inputs["model"].explicit_neutral
    assert np.all(exact.loss_neutral_kw.values == 0) and np.all(exact.loss_earth_kw.values == 0)
    assert float(phase.scale_factor[0]) == pytest.approx(1.0, rel=1e-9)
    assert np.allclose(phase.loss_total_kw.values, exact.loss_total_kw.values, rtol=1e-9, atol=1e-12)
    assert np.allclose(phase.loss_transformer_kw.values, exact.loss_transformer_kw.values, rtol=1e-9, atol=1e-12)


def test_phase_only_scales_up_on_four_wire(small) -> None:
    results = small[3]
    exact, phase = results["exact"], results["phase-only"]
    assert np.all(phase.scale_factor.values > 1.0)  # neutral and earth losses spread over the phase parts
    assert np.allclose(phase.loss_total_kw, phase.loss_phase_kw + phase.loss_transformer_kw, rtol=1e-12, atol=1e-15)
    ratio = phase.loss_phase_kw.values / np.where(exact.loss_phase_kw.values != 0, exact.loss_phase_kw.values, np.nan)
    f = phase.scale_factor.values[np.searchsorted(phase.time.values, phase.row_time.values)]
    ok = np.isfinite(ratio)
    assert np.allclose(ratio[ok], f[ok], rtol=1e-9)


def _opendss_fd_lsf(
    path: Path, step: int, names: list[str], devices: dict[str, list[str]], delta_kw: float
) -> dict[str, float]:
    """Independent central difference with plain opendssdirect: base kW +- delta, kvar held."""
    dss = opendssdirect.dss
    dss.Text.Command(f'compile "{path}"')
    dss.Text.Command("set mode=yearly number=1 stepsize=1m tolerance=1e-11 maxiterations=100")

    def solve() -> tuple[float, dict[str, float]]:
        dss.Solution.Hour(0)
        dss.Solution.Seconds(60.0 * (step - 1))
        dss.Solution.Solve()
        assert dss.Solution.Converged()
        loss = 0.0
        for el in dss.PDElements.AllNames():
            dss.Circuit.SetActiveElement(el)
            loss += dss.CktElement.Losses()[0] / 1000
        p = {}
        for n in names:
            p[n] = 0.0
            for d in devices[n]:
                dss.Circuit.SetActiveElement(d)
                p[n] += sum(dss.CktElement.Powers()[0::2])
        return loss, p

    out = {}
    for n in names:
        dss.Loads.Name(n)
        kw0, kvar0 = dss.Loads.kW(), dss.Loads.kvar()
        pts = []
        for sign in (1, -1):
            dss.Loads.Name(n)
            dss.Loads.kW(kw0 + sign * delta_kw)
            dss.Loads.kvar(kvar0)
            pts.append(solve())
        dss.Loads.Name(n)
        dss.Loads.kW(kw0)
        dss.Loads.kvar(kvar0)
        out[n] = (pts[0][0] - pts[1][0]) / (pts[0][1][n] - pts[1][1][n])
    return out


def test_lsf_matches_an_independent_finite_difference(small) -> None:
    path, _, inputs, results = small
    engine, model, run = inputs["engine"], inputs["model"], inputs["run"]
    names = [c.name for c in model.customers]
    wanted = np.zeros((run.steps, len(names)), dtype=bool)
    wanted[2] = True  # step 3: load shapes at 0.8 (loads) and 1.0 (PV)
    engine.dss.Loads.Name("c1")
    before = (engine.dss.Loads.kW(), engine.dss.Loads.kvar(), engine.dss.Loads.PF())
    lsf, solves = loss_sensitivities(engine, model, inputs["net"], run, inputs["pf"].time.values, wanted)
    assert solves == 1 + 2 * len(names) + 1
    engine.dss.Loads.Name("c1")
    assert (engine.dss.Loads.kW(), engine.dss.Loads.kvar(), engine.dss.Loads.PF()) == pytest.approx(before, rel=1e-12)
    devices = {c.name: list(c.devices) for c in model.customers}
    ref = _opendss_fd_lsf(path, 3, names, devices, delta_kw=0.05)
    for j, n in enumerate(names):
        assert lsf[2, j] == pytest.approx(ref[n], rel=1e-4, abs=1e-7), n
    assert np.isnan(lsf[[0, 1, 3]]).all()
    # the engine is left at the unperturbed solution of step 3
    assert np.allclose(engine.node_voltages(), inputs["vt"][:, 2], rtol=0, atol=1e-3)
    # charges in the result: halved (LSF_b - LSF_s) P_c from its own LSFs
    ds = results["lsf"]
    own = ds.lsf.sel(time=3)
    row = ds.where(ds.contract == "k1_3", drop=True)
    expected = 0.5 * (float(own.sel(customer="c3")) - float(own.sel(customer="c4"))) * 1.5
    assert float(row.loss_total_kw[0]) == pytest.approx(expected, rel=1e-12)
    assert float(own.sel(customer="c3")) == pytest.approx(ref["c3"], rel=1e-4)


def test_ptdf_paths_on_a_radial_feeder(small) -> None:
    _, _, inputs, results = small
    model, pf = inputs["model"], inputs["pf"]
    pos = {e.name: i for i, e in enumerate(model.elements)}
    tree = radial_tree(model)
    assert tree.root == "sourcebus"
    assert tree.path("4") == [pos["line.l3"], pos["line.l2"], pos["line.l1"], pos["transformer.tx"]]
    assert tree.path("6") == [pos["line.l5"], pos["line.l4"], pos["line.l1"], pos["transformer.tx"]]
    assert tree.path("sourcebus") == []

    def nonzero(f: np.ndarray) -> dict[tuple[str, int], float]:
        return {(model.elements[e].name, p + 1): float(f[e, p]) for e, p in zip(*np.nonzero(f), strict=True)}

    # same phase, neighbours: only the section between them, towards the buyer
    assert nonzero(trade_flows(tree, model, ("4", (1,)), ("3", (1,)), 2.0)) == {("line.l3", 1): 2.0}
    # cross-phase c -> b between buses 6 and 5: up the seller's path on c, down the buyer's on b
    assert nonzero(trade_flows(tree, model, ("6", (3,)), ("5", (2,)), 1.0)) == {
        ("line.l5", 3): 1.0, ("line.l4", 3): 1.0, ("line.l1", 3): 1.0, ("transformer.tx", 3): 1.0,
        ("line.l4", 2): -1.0, ("line.l1", 2): -1.0, ("transformer.tx", 2): -1.0,
    }  # fmt: skip
    # a balanced three-phase trade between the two laterals cancels above bus 2
    f = trade_flows(tree, model, ("4", (1, 2, 3)), ("6", (1, 2, 3)), 3.0)
    assert set(nonzero(f)) == {(f"line.l{i}", p) for i in (2, 3, 4, 5) for p in (1, 2, 3)}
    # a contract's weight is sum |f| R |I| over its path (k0: c2 -> c1 on l3, phase a)
    ds = results["ptdf"]
    r_l3 = 0.32 * 0.06
    i_l3 = abs(complex(pf.current.sel(time=2, element="line.l3", conductor=1)))
    row = ds.where(ds.contract == "k0_2", drop=True)
    assert float(row.weight[0]) == pytest.approx(0.4 * r_l3 * i_l3, rel=1e-9)
    assert ds.attrs["ptdf_root"] == "sourcebus"


def test_kron_matrix_by_hand() -> None:
    # 2 x 2: one phase and its neutral, z_aa - z_an^2 / z_nn
    z = np.array([[0.5 + 0.3j, 0.1 + 0.2j], [0.1 + 0.2j, 0.8 + 0.25j]])
    assert kron_matrix(z, [0], [1])[0, 0] == pytest.approx(0.5 + 0.3j - (0.1 + 0.2j) ** 2 / (0.8 + 0.25j), rel=1e-14)
    # 4 x 4: equals the inverse of the phase block of the admittance (Schur complement)
    rng = np.random.default_rng(3)
    a = rng.uniform(0, 0.1, (4, 4)) + 1j * rng.uniform(0, 0.1, (4, 4))
    z4 = a @ a.T + np.diag([0.3, 0.3, 0.3, 0.5]) + 1j * np.diag([0.2, 0.2, 0.2, 0.25])
    assert np.allclose(kron_matrix(z4, [0, 1, 2], [3]), np.linalg.inv(np.linalg.inv(z4)[:3, :3]), rtol=1e-12)


def test_kron_reduce_writes_the_hand_reduced_lines(small) -> None:
    folder = small[1]
    master = folder / "kron" / "Master.dss"
    assert master.is_file()
    report = read_report(master)
    assert report["transformation"] == "kron_reduce"
    assert report["lines_reduced"] == 5 and report["conductors_eliminated"] == 5
    assert report["dropped"] == ["reactor.earth_tx", "reactor.pme_c2", "reactor.pme_c3"]
    assert json.loads((master.parent / MANIFEST).read_text()) == report
    assert master.read_text().startswith("! Kron-reduced three-wire model written by lv3ph.kron.kron_reduce")
    r = np.array(
        [[0.32, 0.05, 0.05, 0.06], [0.05, 0.32, 0.05, 0.06], [0.05, 0.05, 0.32, 0.06], [0.06, 0.06, 0.06, 0.5]]
    )
    x = np.array([[0.25, 0.2, 0.19, 0.2], [0.2, 0.25, 0.2, 0.19], [0.19, 0.2, 0.25, 0.2], [0.2, 0.19, 0.2, 0.27]])
    dss = opendssdirect.dss
    dss.Text.Command(f'compile "{master}"')
    for name, length in (("l1", 0.1), ("l4", 0.09)):
        z = (r + 1j * x) * length
        by_hand = z[:3, :3] - np.outer(z[:3, 3], z[3, :3]) / z[3, 3]
        dss.Lines.Name(name)
        assert dss.Lines.Phases() == 3 and dss.Lines.Length() == 1.0
        assert dss.Lines.Bus1().split(".")[1:] == ["1", "2", "3"]
        got = np.asarray(dss.Lines.RMatrix()).reshape(3, 3) + 1j * np.asarray(dss.Lines.XMatrix()).reshape(3, 3)
        assert np.allclose(got, by_hand, rtol=1e-12, atol=1e-15), name
        assert abs(by_hand[0, 1] - z[0, 1]) > 1e-4  # the neutral's mutuals do change the 3 x 3
    dss.Loads.Name("c1")
    assert dss.CktElement.BusNames()[0] == "3.1.0"  # phase to earth
    dss.Circuit.SetActiveElement("pvsystem.pv_c2")
    assert dss.CktElement.BusNames()[0] == "4.1.0"
    dss.Circuit.SetActiveElement("transformer.tx")
    assert dss.CktElement.BusNames()[1] == "1.1.2.3.0"  # solidly earthed star point
    assert not any(n.lower().startswith("reactor.") for n in dss.PDElements.AllNames())
    assert all(int(n.rsplit(".", 1)[1]) <= 3 for n in dss.Circuit.YNodeOrder())


def _phase_deviation(engine4, model4, engine3, model3) -> tuple[float, float, float]:
    """Max |V_phase(Kron) - V_pn(four-wire)|, max voltage drop (V) and max |V_neutral| (V)."""
    v4 = dict(zip(model4.nodes, engine4.node_voltages(), strict=True))
    v3 = dict(zip(model3.nodes, engine3.node_voltages(), strict=True))
    dev, drop = 0.0, 0.0
    for node, v in v3.items():
        bus, t = node.rsplit(".", 1)
        if f"{bus}.4" in v4:
            vpn = v4[node] - v4[f"{bus}.4"]
            dev = max(dev, abs(v - vpn))
            drop = max(drop, abs(v4[f"sourcebus.{t}"]) - abs(vpn))
    vn = max(abs(v) for n, v in v4.items() if n.endswith(".4"))
    return dev, drop, vn


def test_kron_enwl_close_when_neutral_current_small(enwl_feeder1: Path, tmp_path: Path) -> None:
    tight = ["set tolerance=1e-9 maxiterations=100"]
    engine, model = open_feeder(enwl_feeder1)
    engine.apply(tight)
    e3, m3 = open_feeder(kron_reduce(engine, tmp_path / "unbalanced", model=model))
    e3.apply(tight)
    dev_u, drop_u, vn_u = _phase_deviation(engine, model, e3, m3)
    assert len(m3.customers) == len(model.customers) == 55
    assert all(c.neutral_node == -1 for c in m3.customers)
    # as published (single-phase customers): off by up to the neutral's voltage rise
    assert 0.05 * drop_u < dev_u < vn_u
    # balanced: every customer gets the same load on the two other phases of its bus;
    # the neutral then carries almost nothing and the three-wire model is close
    cmds = []
    for c in model.customers:
        engine.dss.Loads.Name(c.name)
        kw = engine.dss.Loads.kW()
        cmds += [
            f"new load.bal_{c.name}_{q} phases=1 bus1={c.bus}.{q}.4 kv=0.23 kw={kw} pf=0.95"
            for q in {1, 2, 3} - set(c.phases)
        ]
    engine.apply(cmds)
    model = engine.model()
    i_n = max(abs(engine.element_currents(e.name)[3]) for e in model.elements if e.kind == "line")
    i_ph = max(np.abs(engine.element_currents(e.name)[:3]).max() for e in model.elements if e.kind == "line")
    assert i_n < 0.01 * i_ph
    e3, m3 = open_feeder(kron_reduce(engine, tmp_path / "balanced", model=model))
    e3.apply(tight)
    dev_b, drop_b, _ = _phase_deviation(engine, model, e3, m3)
    assert dev_b < 0.03 * drop_b
    assert dev_b / drop_b < 0.25 * dev_u / drop_u


def test_compare_table_and_totals(small) -> None:
    _, _, inputs, results = small
    df = compare(results)
    total = df[df.kind == "total"].iloc[0]
    contracts = df[df.kind == "contract"]
    assert len(contracts) == len(SMALL_CONTRACTS)
    assert set(df.kind) == {"contract", "grid", "no-load", "total"}
    for m in METHODS[1:]:
        assert np.allclose(df[f"{m}_err_kw"].iloc[:-1], df[m].iloc[:-1] - df.exact.iloc[:-1])
        ok = df.exact.iloc[:-1] != 0
        assert np.allclose(
            df[f"{m}_err_pct"].iloc[:-1][ok], 100 * df[f"{m}_err_kw"].iloc[:-1][ok] / df.exact.iloc[:-1][ok].abs()
        )
        assert total[m] == pytest.approx(df.attrs["totals_kw"][m], rel=1e-12)
    assert df.attrs["opendss_total_kw"] == pytest.approx(float(inputs["pf"].loss_total_kw.sum()), rel=1e-12)
    for m in ("phase-only", "pro-rata", "lsf", "ptdf"):
        assert total[m] == pytest.approx(total.exact, rel=1e-6)
    assert total.kron < total.exact
    top = largest_differences(df, n=5)
    assert len(top) == 5 and top.err_kw.abs().is_monotonic_decreasing
    assert set(top.columns) >= {"method", "contract", "reference_kw", "value_kw", "err_kw", "err_pct"}
    with pytest.raises(ValueError, match="does not have the rows"):
        compare({"exact": results["exact"], "ptdf": results["ptdf"].isel(row=slice(1, None))})
    with pytest.raises(ValueError, match="reference method 'exact'"):
        compare({"ptdf": results["ptdf"]})


def test_unknown_method_names_the_known_ones(small) -> None:
    _, _, inputs, _ = small
    with pytest.raises(
        ValueError, match=r"unknown allocation method 'mw-mile'.*exact, kron, phase-only, pro-rata, lsf, ptdf"
    ):
        allocate_method("mw-mile", **inputs)
