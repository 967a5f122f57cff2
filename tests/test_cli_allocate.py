"""``lv3ph allocate`` on the command line: every method alone, and every --method/--compare
combination either works or is one line.

References are plain opendssdirect runs of the same feeder: the loss of every step (sum of
all power-delivery elements, electrodes included), the customers' drawn powers (for the
pro-rata closed form) and, for ``kron``, the loss of the Kron-reduced model solved by OpenDSS.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from opendssdirect import dss

from lv3ph.allocation.audit import METHODS
from lv3ph.cli import main
from lv3ph.kron import kron_reduce
from tests.conftest import write_feeder
from tests.test_audit import SMALL, SMALL_CONTRACTS

STEPS = 4
#: Customer -> its OpenDSS elements (c2 has a PV system behind its meter).
DEVICES = {
    "c1": ["load.c1"],
    "c2": ["load.c2", "pvsystem.pv_c2"],
    "c3": ["load.c3"],
    "c4": ["load.c4"],
    "c5": ["load.c5"],
}
CONSERVING = ("exact", "phase-only", "pro-rata", "lsf", "ptdf")


def opendss_steps(master: Path, steps: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Loss (kW, all PD elements) and drawn kW per customer at steps 1..steps, plain OpenDSS."""
    ctx = dss.NewContext()
    cwd = os.getcwd()
    try:
        ctx.Text.Command(f'compile "{master}"')
    finally:
        os.chdir(cwd)
    ctx.Solution.Solve()  # the snapshot first, as lv3ph does: the steps start from the same state
    ctx.Text.Command("set mode=yearly number=1 stepsize=1m")
    loss = np.zeros(steps)
    drawn = {c: np.zeros(steps) for c in DEVICES}
    for i in range(steps):
        ctx.Solution.Hour(0)
        ctx.Solution.Seconds(60.0 * i)  # the next solve is step i + 1
        ctx.Solution.Solve()
        assert ctx.Solution.Converged()
        for name in ctx.PDElements.AllNames():
            ctx.Circuit.SetActiveElement(name)
            loss[i] += ctx.CktElement.Losses()[0] / 1000.0
        for c, elements in DEVICES.items():  # device side: what the element itself draws
            for e in elements:
                ctx.Circuit.SetActiveElement(e)
                drawn[c][i] += float(np.sum(np.real(np.asarray(ctx.CktElement.Powers()).ravel()[::2])))
    return loss, drawn


@pytest.fixture(scope="module")
def feeder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray, dict[str, np.ndarray]]:
    folder = tmp_path_factory.mktemp("cli_allocate")
    master = write_feeder(folder, SMALL)
    contracts = folder / "contracts.csv"
    SMALL_CONTRACTS.to_csv(contracts, index=False)
    loss, drawn = opendss_steps(master, STEPS)
    return master, contracts, loss, drawn


def allocate(master: Path, contracts: Path, out: Path, *extra: str, steps: int = STEPS) -> int:
    return main(
        ["allocate", str(master), "--contracts", str(contracts), "--steps", str(steps), "--out", str(out)]
        + ["--no-progress", *extra]
    )


@pytest.mark.parametrize("method", METHODS)
def test_each_method_alone(method: str, feeder, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    master, contracts, loss, drawn = feeder
    out = tmp_path / "k.csv"
    assert allocate(master, contracts, out, "--method", method, "--compare", "none") == 0
    assert capsys.readouterr().err == ""
    table = pd.read_csv(out)
    assert list(table.contract[table.time == 1][:3]) == ["k0_1", "k1_1", "k2_1"]
    assert set(table.contract) >= {f"grid:{c}" for c in DEVICES} | set(SMALL_CONTRACTS.contract)
    per_step = table.groupby("time").loss_total_kw.sum().to_numpy()
    if method in CONSERVING:
        np.testing.assert_allclose(per_step, loss, rtol=1e-6)
    else:  # kron: the three-wire model's own loss, which misses the neutral's
        reduced = kron_reduce(master, tmp_path / "kron")
        np.testing.assert_allclose(per_step, opendss_steps(reduced, STEPS)[0], rtol=1e-4)
        assert np.all(per_step < loss)
    if method == "exact":  # the parts add up to each row's total
        parts = table[["loss_phase_kw", "loss_neutral_kw", "loss_earth_kw", "loss_transformer_kw"]].sum(axis=1)
        np.testing.assert_allclose(parts, table.loss_total_kw, rtol=1e-9, atol=1e-12)
    if method == "pro-rata":  # closed form from OpenDSS's loss and drawn powers. lv3ph measures the
        # drawn powers on the network side (KCL at the customer's nodes), OpenDSS on the device:
        # they agree to the convergence tolerance (1e-4 pu), here within 1e-3 kW per customer,
        # which moves a row by at most loss x 5 x 1e-3 kW / W
        for t in range(1, STEPS + 1):
            day = SMALL_CONTRACTS[SMALL_CONTRACTS.time == t]
            net = {c: day.kw[day.buyer == c].sum() - day.kw[day.seller == c].sum() for c in DEVICES}
            residual = {c: abs(drawn[c][t - 1] - net[c]) for c in DEVICES}
            w = day.kw.sum() + sum(residual.values())
            rows = table[table.time == t].set_index("contract").loss_total_kw
            tol = loss[t - 1] * len(DEVICES) * 1e-3 / w
            for _, c in day.iterrows():
                assert rows[c.contract] == pytest.approx(loss[t - 1] * c.kw / w, abs=tol)
            for c, r in residual.items():
                assert rows[f"grid:{c}"] == pytest.approx(loss[t - 1] * r / w, abs=tol)


def test_kron_with_the_default_comparison_works(feeder, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Used to end in a traceback (``compare needs the reference method 'exact'``)."""
    master, contracts, _, _ = feeder
    assert allocate(master, contracts, tmp_path / "k.csv", "--method", "kron") == 0
    out = capsys.readouterr().out
    assert "largest differences from exact" in out
    assert [line.split()[0] for line in out.splitlines()[2:6]] == ["kron", "phase-only", "pro-rata", "exact"]


COMBINATIONS = [(m, c) for m in METHODS for c in ("", "none", "all", "magic", "exact,magic", *METHODS)]


@pytest.mark.parametrize(("method", "compare"), COMBINATIONS, ids=[f"{m}+{c or 'empty'}" for m, c in COMBINATIONS])
def test_every_method_and_compare_combination_works_or_is_one_line(
    method: str, compare: str, feeder, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    master, _, _, _ = feeder
    contracts = tmp_path / "c.csv"
    SMALL_CONTRACTS[SMALL_CONTRACTS.time == 1].to_csv(contracts, index=False)
    out = tmp_path / "k.csv"
    code = allocate(
        master,
        contracts,
        out,
        "--method",
        method,
        "--compare",
        ",".join(METHODS) if compare == "all" else compare,
        steps=1,
    )
    captured = capsys.readouterr()
    if "magic" in compare:
        assert code == 2 and not out.exists()
        assert captured.err.strip() == f"lv3ph: error: unknown method 'magic': use one of {', '.join(METHODS)}"
        return
    assert code == 0 and captured.err == ""
    assert len(pd.read_csv(out)) == 3 + len(DEVICES) + 1  # contracts, grid rows, no-load row
    compared = compare not in ("", "none") and compare != method
    assert ("largest differences from exact" in captured.out) == compared
