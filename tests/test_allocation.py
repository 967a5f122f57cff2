"""Exact loss allocation: hand calculation, conservation, superposition, symmetry, equivalence."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lv3ph.allocation import allocate
from lv3ph.allocation.contracts import contract_shares, validate_contracts
from lv3ph.allocation.exact import exact_allocation, loss_network, party_rows_for, party_voltages
from lv3ph.errors import ContractError
from lv3ph.model import loadshape_command, pv_commands
from lv3ph.powerflow import RunSpec, capture, customer_ports, open_feeder
from tests.conftest import HAND, IEEE, IEEE_4W, write_feeder


def contracts(rows: list[tuple[str, int, str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["contract", "time", "seller", "buyer", "kw"])


def test_two_customer_hand_calculation(tmp_path: Path) -> None:
    path = write_feeder(tmp_path, HAND)
    engine, model = open_feeder(path)
    vt, _ = engine.run("snap", 1.0, 1, 1)
    i1 = engine.element_currents("line.l1")[:4]  # A into l1 at the source side: a, b, c, n
    i2 = engine.element_currents("line.l2")[:4]
    r = np.array([0.2, 0.2, 0.2, 0.5])
    # unity pf: each customer's current is all active. Buyer draws I_b = i2[0] on phase a;
    # the seller injects I_s = I_b - i1[0] at b2. Contract 3 kW: alpha = 3/4 of the seller,
    # beta = 3/6 of the buyer. Its current: on l2 beta*I_b (phase) and -beta*I_b (neutral);
    # on l1 beta*I_b - alpha*I_s and the opposite on the neutral.
    i_b = i2[0]
    i_s = i2[0] - i1[0]
    # measured powers (set-points -4 / 6 kW within OpenDSS's convergence tolerance)
    v = dict(zip(model.nodes, vt[:, 0], strict=True))
    p_s = ((v["b2.1"] - v["b2.4"]) * np.conj(i_s)).real / 1000
    p_b = ((v["b3.1"] - v["b3.4"]) * np.conj(i_b)).real / 1000
    assert p_s == pytest.approx(4, rel=1e-3) and p_b == pytest.approx(6, rel=1e-3)
    alpha, beta = 3 / p_s, 3 / p_b
    ic_l1 = np.array([beta * i_b - alpha * i_s, 0, 0, -(beta * i_b - alpha * i_s)])
    ic_l2 = np.array([beta * i_b, 0, 0, -beta * i_b])
    # equal split of cross terms: L_c = sum_k r_k Re(conj(I_c,k) I_k)
    expected_phase = r[0] * ((np.conj(ic_l1[0]) * i1[0]).real + (np.conj(ic_l2[0]) * i2[0]).real)
    expected_neutral = r[3] * ((np.conj(ic_l1[3]) * i1[3]).real + (np.conj(ic_l2[3]) * i2[3]).real)
    al, pf = allocate(path, contracts([("k1", 1, "seller", "buyer", 3.0)]), mode="snap", steps=1, progress=False)
    row = al.sel(row=0)
    assert float(row.loss_phase_kw) * 1000 == pytest.approx(expected_phase, rel=1e-6)
    assert float(row.loss_neutral_kw) * 1000 == pytest.approx(expected_neutral, rel=1e-6)
    assert float(al.loss_total_kw.sum()) == pytest.approx(float(pf.loss_total_kw[0]), rel=1e-9)
    # grid rows: the buyer's other half and the seller's unsold quarter
    grid_b = al.where(al.contract == "grid:buyer", drop=True)
    ib_l1 = np.array([(1 - beta) * i_b, 0, 0, -(1 - beta) * i_b])
    exp_b = sum(r[k] * (np.conj(ib_l1[k]) * i1[k]).real + r[k] * (np.conj(ib_l1[k]) * i2[k]).real for k in (0, 3))
    assert float(grid_b.loss_total_kw.sum()) * 1000 == pytest.approx(exp_b, rel=1e-6)


def solar_shape(steps: int = 1440) -> np.ndarray:
    t = np.arange(1, steps + 1) / 60.0
    return np.clip(np.sin(np.pi * (t - 6) / 12), 0, None) ** 1.5


def random_contracts(pf, rng: np.random.Generator, per_step: int) -> pd.DataFrame:
    drawn = pf.customer_p_kw.values
    names = list(pf.customer.values)
    rows = []
    for ti, t in enumerate(pf.time.values):
        sellers = np.nonzero(drawn[ti] < -0.05)[0]
        buyers = np.nonzero(drawn[ti] > 0.05)[0]
        if not sellers.size or not buyers.size:
            continue
        for j in range(per_step):
            s, b = rng.choice(sellers), rng.choice(buyers)
            kw = min(-drawn[ti, s], drawn[ti, b]) * rng.uniform(0, 1) / per_step
            rows.append((f"c{t}_{j}", int(t), names[s], names[b], kw))
    return contracts(rows)


@pytest.fixture(scope="module")
def pme_day():
    """Four-wire IEEE twin with PV at 20 customers and PME at every customer, 24 h at 1 min."""
    engine, model = open_feeder(IEEE_4W, vmaxpu=1.5, pme_ohm=20.0)
    rng = np.random.default_rng(7)
    chosen = rng.choice([c.name for c in model.customers], size=20, replace=False)
    engine.apply(
        [loadshape_command("sun", solar_shape(), 60.0), *pv_commands(model, dict.fromkeys(chosen, 4.0), "sun")]
    )
    model = engine.model()
    spec = RunSpec("yearly", 60.0, 1, 1440)
    vt, meas = engine.run(spec.mode, spec.stepsize_s, spec.start, spec.steps)
    pf = capture(model, spec, vt, meas)
    table = random_contracts(pf, rng, per_step=3)
    names = customer_ports(model).names
    shares = contract_shares(table, pf.customer_p_kw.values, names, pf.time.values)
    net = loss_network(model)
    al = exact_allocation(model, pf, vt, table, shares, net=net)
    return engine, model, pf, vt, table, shares, net, al


def test_conservation_every_step_pme_day(pme_day) -> None:
    engine, model, pf, vt, table, shares, net, al = pme_day
    assert len(table) > 1000
    per_step = al.loss_total_kw.groupby(al.row_time).sum().values
    assert np.allclose(per_step, pf.loss_total_kw.values, rtol=1e-6, atol=0)
    # the network's own parts match the power flow's phase/neutral/earth/transformer split
    # (the twin's conductors are uncoupled, so both conventions agree)
    assert np.allclose(
        al.network_loss_kw.sel(part="earth").values, pf.loss_earth_kw.sum("element").values, rtol=1e-6, atol=1e-9
    )
    assert np.allclose(
        al.network_loss_kw.sel(part="neutral").values, pf.loss_neutral_kw.sum("element").values, rtol=1e-6, atol=1e-9
    )
    # per part the allocation works on V = Z_E J_E; OpenDSS's voltages carry a tiny KCL
    # residual at other nodes, amplified by the faithful twin's 1e-6 ohm/km neutrals
    # (admittance ~1e9 S): a few 1e-6 of the small neutral part
    by_part = {p: al[f"loss_{p}_kw"].groupby(al.row_time).sum().values for p in ("earth", "neutral")}
    assert np.allclose(by_part["earth"], pf.loss_earth_kw.sum("element").values, rtol=1e-5, atol=1e-9)
    assert np.allclose(by_part["neutral"], pf.loss_neutral_kw.sum("element").values, rtol=1e-5, atol=1e-9)
    # PV exporters relieve flows: some contracts get credits, and they are reported
    assert float(al.loss_total_kw.where(al.kw > 0).min()) < 0


def test_superposition_currents_add_up(pme_day) -> None:
    engine, model, pf, vt, table, shares, net, al = pme_day
    rows = party_rows_for(net, model, pf, vt, table, shares)
    t = 720  # noon, PV exporting
    at_t = np.nonzero(rows.time == t)[0]
    v_parts = party_voltages(net, rows, at_t)
    assert np.abs(v_parts.sum(axis=0) - vt[:, t]).max() < 1e-8 * np.abs(vt[:, t]).max()  # V
    # every line's conductor currents: parties' contributions add up to OpenDSS's current
    ref_pf = pf.current.isel(time=t)
    for e in [x for x in model.elements if x.kind in ("line", "earthing")][::37]:
        k = e.n_conductors
        y = e.yprim[:k, :k] if e.n_terminals == 2 else e.yprim
        nodes = e.nodes
        v_el = np.where(nodes >= 0, v_parts[:, np.maximum(nodes, 0)], 0)
        dv = v_el[:, :k] - v_el[:, k:] if e.n_terminals == 2 else v_el
        contributions = dv @ y.T
        assert np.allclose(contributions.sum(axis=0), ref_pf.sel(element=e.name).values[:k], atol=1e-5), e.name


def test_null_and_identical_contracts(tmp_path: Path) -> None:
    path = write_feeder(tmp_path, HAND.replace("kw=-4", "kw=-5"))
    table = contracts(
        [("zero", 1, "seller", "buyer", 0.0), ("a", 1, "seller", "buyer", 2.0), ("b", 1, "seller", "buyer", 2.0)]
    )
    al, pf = allocate(path, table, mode="snap", steps=1, progress=False)
    tot = dict(zip(al.contract.values, al.loss_total_kw.values, strict=True))
    assert tot["zero"] == 0.0
    assert tot["a"] == pytest.approx(tot["b"], rel=1e-12)
    assert tot["a"] != 0


def test_shapley_brute_force_equals_equal_split(tmp_path: Path) -> None:
    """With loss L(S) = V_S^H G V_S for coalitions S (V_S the coalition's superposed
    voltages, the no-load term always present), the Shapley value equals the equal split."""
    path = write_feeder(tmp_path, HAND.replace("kw=-4", "kw=-5"))
    table = contracts(
        [("a", 1, "seller", "buyer", 1.0), ("b", 1, "seller", "buyer", 2.5), ("c", 1, "seller", "buyer", 0.7)]
    )
    engine, model = open_feeder(path)
    spec = RunSpec("snap", 1.0, 1, 1)
    vt, _ = engine.run("snap", 1.0, 1, 1)
    pf = capture(model, spec, vt)
    ports = customer_ports(model)
    shares = contract_shares(table, pf.customer_p_kw.values, ports.names, pf.time.values)
    net = loss_network(model)
    al = exact_allocation(model, pf, vt, table, shares, net=net)
    rows = party_rows_for(net, model, pf, vt, table, shares)
    x = net.row_map @ party_voltages(net, rows, np.arange(rows.time.size)).T  # loss rows x players
    players = list(range(x.shape[1]))

    def loss(coalition: tuple[int, ...]) -> float:
        xs = x[:, list(coalition)].sum(axis=1) if coalition else np.zeros(x.shape[0])
        return float(np.real(np.conj(xs) @ (net.row_b @ xs)))

    n = len(players)
    shapley = np.zeros(n)
    for i in players:
        others = [p for p in players if p != i]
        for size in range(n):
            for coal in itertools.combinations(others, size):
                weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
                shapley[i] += weight * (loss((*coal, i)) - loss(coal))
    assert np.allclose(shapley / 1000, al.loss_total_kw.values, rtol=1e-8, atol=1e-12)


def test_four_wire_twin_allocates_like_published_model() -> None:
    """The published model is the sequence equivalent of the twin earthed at the transformer
    only: with the same PV and contracts, exact gives every row the same share."""
    minute = 720
    profile = solar_shape(minute)
    chosen = ["load1", "load5", "load9", "load20", "load31", "load40", "load52"]
    results = {}
    for path in (IEEE, IEEE_4W):
        engine, model = open_feeder(path, vmaxpu=1.5)
        engine.apply([loadshape_command("sun", profile, 60.0), *pv_commands(model, dict.fromkeys(chosen, 5.0), "sun")])
        model = engine.model()
        spec = RunSpec("yearly", 60.0, minute, 1)
        vt, _ = engine.run(spec.mode, spec.stepsize_s, minute, 1)
        pf = capture(model, spec, vt)
        results[path] = (model, pf, vt)
    pf3 = results[IEEE][1]
    table = random_contracts(pf3, np.random.default_rng(3), per_step=12)
    assert len(table) == 12
    shares = {}
    for path, (model, pf, vt) in results.items():
        names = list(pf.customer.values)
        sh = contract_shares(table, pf.customer_p_kw.values, names, pf.time.values)
        al = exact_allocation(model, pf, vt, table, sh)
        shares[path] = pd.Series(al.loss_total_kw.values, index=al.contract.values)
    a, b = shares[IEEE], shares[IEEE_4W]
    rows = [x for x in a.index if x != "grid:no-load"]
    assert len(rows) == 12 + 55
    assert np.allclose(a[rows].values, b[rows].values, rtol=1e-6, atol=1e-9)
    assert a[table.contract].abs().min() > 0


def test_oversold_seller_is_an_error_naming_the_contract(tmp_path: Path) -> None:
    path = write_feeder(tmp_path, HAND)
    with pytest.raises(ContractError, match="seller seller at step 1 is contracted for 5 kW but exports 4.*k9"):
        allocate(path, contracts([("k9", 1, "seller", "buyer", 5.0)]), mode="snap", steps=1, progress=False)
    al, _ = allocate(
        path, contracts([("k9", 1, "seller", "buyer", 5.0)]), mode="snap", steps=1, progress=False, oversold="scale"
    )
    assert float(al.kw.sel(row=0)) == pytest.approx(4.0, rel=1e-3)
    assert al.attrs["scaled_contracts"] == 1


def test_unknown_customer_and_time(tmp_path: Path) -> None:
    path = write_feeder(tmp_path, HAND)
    with pytest.raises(ContractError, match="unknown buyer 'nobody'.*time 7 is outside the run"):
        allocate(
            path,
            contracts([("k1", 1, "seller", "nobody", 1.0), ("k2", 7, "seller", "buyer", 1.0)]),
            mode="snap",
            steps=1,
            progress=False,
        )


def test_duplicate_contract_id_at_one_step_names_both_rows() -> None:
    table = contracts(
        [
            ("k1", 1, "seller", "buyer", 1.0),
            ("k1", 2, "seller", "buyer", 1.0),  # a standing agreement: the same id at another step is fine
            ("k2", 1, "buyer", "seller", 1.0),
            ("k1", 1, "buyer", "seller", 2.0),
            ("k2", 1, "seller", "nobody", 1.0),
        ]
    )
    errors = validate_contracts(table, ["seller", "buyer"], [1, 2])
    assert errors == [
        "contracts row 6 (contract k2): unknown buyer 'nobody'",
        "contracts row 5 (contract k1): duplicate id: row 2 has the same contract at step 1",
        "contracts row 6 (contract k2): duplicate id: row 4 has the same contract at step 1",
    ]
