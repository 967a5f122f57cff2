"""Tests of the four-wire twin (lv3ph.twin) against OpenDSS used directly.

The reference is the published, Kron-reduced IEEE EU LV feeder in
``dss_models/ieee_eu_lv`` solved with opendssdirect in its own engine context; the twin
in ``dss_models/ieee_eu_lv_4wire`` is solved in another one.
"""

from __future__ import annotations

import filecmp
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from opendssdirect import dss

from lv3ph.twin import (
    build_ieee_eu_lv_4wire,
    customer_buses_from_loads,
    four_wire_matrices,
    make_four_wire_twin,
    read_sequence_linecodes,
)

DSS_MODELS = Path(__file__).resolve().parents[1] / "dss_models"
PUBLISHED = DSS_MODELS / "ieee_eu_lv"
TWIN = DSS_MODELS / "ieee_eu_lv_4wire"
V_BASE = 416.0 / math.sqrt(3.0)  # V, LV phase base
N_BUSES = 906  # LV buses 1..906


def _solve(master: Path, minute: int = 566):  # -> opendssdirect context
    """Compile ``master`` in a fresh engine and solve the published time step ``minute``."""
    ctx = dss.NewContext()
    ctx.Text.Command(f"compile [{master}]")
    ctx.Text.Command("batchedit load..* vmaxpu=1.5")
    ctx.Text.Command(f"set mode=yearly stepsize=1m number={minute}")
    ctx.Solution.Solve()
    assert ctx.Solution.Converged(), master
    return ctx


def _node_voltages(ctx, bus: str) -> dict[int, complex]:
    ctx.Circuit.SetActiveBus(bus)
    v = np.asarray(ctx.Bus.Voltages())
    return dict(zip(ctx.Bus.Nodes(), v[0::2] + 1j * v[1::2], strict=True))


def _phase_voltages_pu(ctx, four_wire: bool) -> tuple[np.ndarray, float]:
    """|V_phase - V_neutral| (pu of 240.18 V) of buses 1..906 x phases 1..3 and max |V_n| (V)."""
    out = np.empty((N_BUSES, 3))
    vn_max = 0.0
    for b in range(1, N_BUSES + 1):
        d = _node_voltages(ctx, str(b))
        vn = d[4] if four_wire else 0.0
        vn_max = max(vn_max, abs(vn))
        out[b - 1] = [abs(d[ph] - vn) / V_BASE for ph in (1, 2, 3)]
    return out, vn_max


def _total_losses_kw(ctx) -> float:
    """Sum of the losses of all PD elements incl. reactors (Circuit.Losses omits them)."""
    total = 0.0
    for name in ctx.PDElements.AllNames():
        ctx.Circuit.SetActiveElement(name)
        total += ctx.CktElement.Losses()[0] / 1000.0
    return total


def test_faithful_twin_reproduces_published_voltages_at_minute_566() -> None:
    ref = _solve(PUBLISHED / "Master.dss")
    twin = _solve(TWIN / "Master.dss")
    v_ref, _ = _phase_voltages_pu(ref, four_wire=False)
    v_twin, vn_max = _phase_voltages_pu(twin, four_wire=True)

    assert v_ref.size == 2718
    assert np.max(np.abs(v_twin - v_ref)) < 1e-4  # measured: 2.6e-9 pu
    assert 0.99 < v_ref.min() < v_ref.max() < 1.07  # the on-peak step, not a flat start
    # same losses; the neutral really carries current (invisible in the published model)
    assert _total_losses_kw(twin) == pytest.approx(_total_losses_kw(ref), rel=1e-6)
    assert 4.0 < vn_max < 6.0  # measured: 4.77 V at bus 899
    # the star point is the only earth connection, so (numerically) no earth current
    twin.Circuit.SetActiveElement("Reactor.earth_tx")
    assert twin.CktElement.CurrentsMagAng()[0] < 1e-3


def test_linecode_matrix_equals_formula() -> None:
    # published sequence data of 4c_70 and 35_SAC_XSC, ohm/km (ieee_eu_lv/LineCode.txt)
    r1, x1, r0, x0 = 0.446, 0.071, 1.505, 0.083
    zn = (complex(r0, x0) - complex(r1, x1)) / 3.0
    r_expected = np.diag([r1, r1, r1, zn.real])
    x_expected = np.diag([x1, x1, x1, zn.imag])

    ctx = dss.NewContext()
    ctx.Text.Command(f"compile [{TWIN / 'Master.dss'}]")
    ctx.LineCodes.Name("4c_70")
    assert ctx.LineCodes.Phases() == 4
    np.testing.assert_allclose(np.reshape(ctx.LineCodes.Rmatrix(), (4, 4)), r_expected, atol=1e-12)
    np.testing.assert_allclose(np.reshape(ctx.LineCodes.Xmatrix(), (4, 4)), x_expected, atol=1e-12)
    np.testing.assert_array_equal(ctx.LineCodes.Cmatrix(), np.zeros(16))
    # a line of that code: ohm/m, phases=4, buses bus.1.2.3.4
    ctx.Lines.Name("LINE1")
    assert (ctx.Lines.Phases(), ctx.Lines.Bus1(), ctx.Lines.Bus2()) == (
        4,
        "1.1.2.3.4",
        "2.1.2.3.4",
    )
    np.testing.assert_allclose(np.reshape(ctx.Lines.RMatrix(), (4, 4)), r_expected / 1000.0, atol=1e-15)

    # faithful: negative neutral R of 35_SAC_XSC kept, Z0 = Z1 two-core -> tiny neutral
    ctx.LineCodes.Name("35_SAC_XSC")
    assert ctx.LineCodes.Rmatrix()[15] == pytest.approx((0.76 - 0.868) / 3.0, abs=1e-12)
    ctx.LineCodes.Name("2c_.007")
    assert ctx.LineCodes.Rmatrix()[15] == pytest.approx(1e-6, abs=1e-15)
    assert ctx.LineCodes.Xmatrix()[15] == 0.0

    # physical variant: those neutrals become the phase conductor (Zn = Z1)
    phys = dss.NewContext()
    phys.Text.Command(f"compile [{TWIN / 'Master_physical.dss'}]")
    for name, rp, xp in [("35_SAC_XSC", 0.868, 0.092), ("2c_.007", 3.97, 0.099)]:
        phys.LineCodes.Name(name)
        assert phys.LineCodes.Rmatrix()[15] == pytest.approx(rp, abs=1e-12)
        assert phys.LineCodes.Xmatrix()[15] == pytest.approx(xp, abs=1e-12)
    phys.LineCodes.Name("4c_70")
    np.testing.assert_allclose(np.reshape(phys.LineCodes.Rmatrix(), (4, 4)), r_expected, atol=1e-12)

    # the pure-Python matrices agree with the formula too
    codes = read_sequence_linecodes(PUBLISHED / "LineCode.txt")
    r, x = four_wire_matrices(codes["4c_70"])
    np.testing.assert_allclose(r, r_expected, atol=1e-15)
    np.testing.assert_allclose(x, x_expected, atol=1e-15)


def test_regenerating_the_bundled_twin_is_byte_identical(tmp_path: Path) -> None:
    # same layout as dss_models/, so the relative profile paths come out the same
    shutil.copytree(PUBLISHED, tmp_path / "ieee_eu_lv")
    out = build_ieee_eu_lv_4wire(tmp_path)

    committed = sorted(
        p.relative_to(TWIN)
        for p in TWIN.rglob("*")
        if p.is_file() and not p.name.startswith(".")  # .gitattributes is not generated
    )
    generated = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert generated == committed
    match, mismatch, errors = filecmp.cmpfiles(TWIN, out, [str(p) for p in committed], shallow=False)
    assert mismatch == [] and errors == []
    assert len(match) == len(committed)


def test_pme_earthing_is_off_by_default_and_on_in_master_pme() -> None:
    base = dss.NewContext()
    base.Text.Command(f"compile [{TWIN / 'Master.dss'}]")
    reactors = [n.lower() for n in base.Reactors.AllNames()]
    assert reactors == ["earth_tx"]

    pme = _solve(TWIN / "Master_PME.dss")
    names = [n.lower() for n in pme.Reactors.AllNames()]
    customers = customer_buses_from_loads(PUBLISHED / "Loads.txt")
    assert len(customers) == 55
    assert sorted(names) == sorted(["earth_tx"] + [f"pme_{c.lower()}" for c in customers])
    _, vn_max = _phase_voltages_pu(pme, four_wire=True)
    assert vn_max < 4.0  # 4.77 V without PME; measured 2.57 V (at the transformer)


def test_make_four_wire_twin_rejects_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        make_four_wire_twin(PUBLISHED, tmp_path, transformer_earth_ohm=0.0)
    with pytest.raises(ValueError):
        make_four_wire_twin(PUBLISHED, tmp_path, variant="kron")  # type: ignore[arg-type]
