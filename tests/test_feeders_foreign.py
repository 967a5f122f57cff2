"""Feeders written by other people (tests/feeders/pmd/, PowerModelsDistribution.jl's
explicit-neutral cases) and further modelling habits (tests/feeders/habits/), each checked
against OpenDSS run directly in a fresh opendssdirect context (never lv3ph's own output)
and against the phases read from the file by hand (``truth.json`` beside the models)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from lv3ph.allocation.audit import radial_tree
from lv3ph.allocation.contracts import contract_shares
from lv3ph.allocation.exact import exact_allocation, loss_network
from lv3ph.model import FeederModel
from lv3ph.powerflow import RunSpec, capture, customer_ports, open_feeder, solve_raw
from lv3ph.topology import customers_table, earthing_table
from tests.conftest import ROOT
from tests.opendss_reference import opendss_snapshot

FOLDERS = ("pmd", "habits")
CASES = [
    (folder, name)
    for folder in FOLDERS
    for name in json.loads((ROOT / "tests" / "feeders" / folder / "truth.json").read_text())
]


@pytest.fixture(scope="module", params=CASES, ids=[f"{f}/{n}" for f, n in CASES])
def case(request: pytest.FixtureRequest) -> tuple[Path, dict[str, Any], Any, FeederModel]:
    folder, name = request.param
    base = ROOT / "tests" / "feeders" / folder
    truth = json.loads((base / "truth.json").read_text())[name]
    engine, model = open_feeder(base / f"{name}.dss")
    return base / f"{name}.dss", truth, engine, model


def test_phases_neutrals_and_electrodes_equal_the_file(case: tuple[Path, dict[str, Any], Any, FeederModel]) -> None:
    _, truth, _, model = case
    table = customers_table(model).set_index("customer")
    assert sorted(table.index) == sorted(truth["customers"])
    for name, (phases, phase_nodes, neutral) in truth["customers"].items():
        row = table.loc[name]
        assert (row.phases, row.phase_nodes.split(), row.neutral_node) == (phases, phase_nodes, neutral), name
    assert sorted(set(earthing_table(model).element)) == sorted(truth["electrodes"])


def test_voltages_and_losses_equal_opendss(case: tuple[Path, dict[str, Any], Any, FeederModel]) -> None:
    path, truth, engine, model = case
    spec = RunSpec("snap", 1.0, 1, 1)
    vt, measured = solve_raw(engine, model, spec, progress=False)
    pf = capture(model, spec, vt, measured)
    v, losses = opendss_snapshot(path)
    for name, (_, phase_nodes, neutral) in truth["customers"].items():
        ref = np.array([v[p] - (v[neutral] if neutral else 0.0) for p in phase_nodes])
        got = pf.customer_voltage.sel(customer=name).values[0, : ref.size]
        assert np.allclose(got, ref, rtol=1e-9, atol=0), name
        assert np.all(np.abs(ref) > 100.0), name
    earth = sum(losses[e] for e in truth["electrodes"])
    assert float(pf.loss_earth_kw.sum()) == pytest.approx(earth, rel=1e-9, abs=1e-12)
    assert float(pf.loss_total_kw.sum()) == pytest.approx(sum(losses.values()), rel=1e-9)
    ours = dict(zip(model.element_names(), pf.loss_kw.values[0], strict=True))
    assert sorted(ours) == sorted(losses)
    assert max(abs(ours[n] - losses[n]) for n in losses) <= 1e-9 * sum(losses.values())
    split = sum(float(pf[f"loss_{part}_kw"].sum()) for part in ("phase", "neutral", "earth"))
    assert split == pytest.approx(sum(losses.values()), rel=1e-9)


def test_allocation_conserves_the_losses(case: tuple[Path, dict[str, Any], Any, FeederModel]) -> None:
    _, truth, engine, model = case
    spec = RunSpec("snap", 1.0, 1, 1)
    vt, measured = solve_raw(engine, model, spec, progress=False)
    pf = capture(model, spec, vt, measured)
    names = list(truth["customers"])
    drawn = dict(zip(pf.customer.values, pf.customer_p_kw.values[0], strict=True))
    rows = [("k0", 1, names[0], names[-1], 0.5 * max(0.0, min(-drawn[names[0]], drawn[names[-1]])))]
    table = pd.DataFrame(rows if len(names) > 1 else [], columns=["contract", "time", "seller", "buyer", "kw"])
    shares = contract_shares(table, pf.customer_p_kw.values, customer_ports(model).names, pf.time.values)
    al = exact_allocation(model, pf, vt, table, shares, net=loss_network(model))
    assert float(al.loss_total_kw.sum()) == pytest.approx(float(pf.loss_total_kw.sum()), rel=1e-6)
    assert float(al.loss_earth_kw.sum()) == pytest.approx(float(pf.loss_earth_kw.sum()), rel=1e-6, abs=1e-12)


def test_a_neutral_run_as_its_own_line_is_no_loop_for_ptdf() -> None:
    _, model = open_feeder(ROOT / "tests" / "feeders" / "habits" / "separate_neutral.dss")
    tree = radial_tree(model)
    assert [model.elements[e].name for e in tree.path("n1")] == ["line.l1", "transformer.tx"]
