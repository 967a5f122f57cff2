"""Tests of lv3ph.unbalance with hand-computed expected values.

Notation: ``pol(m, d)`` is the phasor of magnitude m at d degrees; ``a = 1/120 deg``.
"""

from __future__ import annotations

import cmath
import dataclasses
import itertools
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lv3ph.errors import Lv3phError, StudyError, UnknownItemError
from lv3ph.unbalance import (
    CHECKS,
    Limits,
    lvur_pct,
    pvur_pct,
    sequence_components,
    unbalance,
    v0uf_pct,
    violation_summary,
    violations,
    vuf_pct,
)

NAN = complex(math.nan, math.nan)
A = cmath.exp(2j * math.pi / 3)


def pol(mag: float, deg: float) -> complex:
    return cmath.rect(mag, math.radians(deg))


def balanced(mag: float = 230.0, deg: float = 0.0) -> np.ndarray:
    return np.array([pol(mag, deg), pol(mag, deg - 120), pol(mag, deg + 120)])


# 230/230/220 V at 0/-120/+120 deg: phase c is 10 V low.
ONE_LOW = np.array([pol(230, 0), pol(230, -120), pol(220, 120)])
# mean = (230 + 230 + 220)/3 = 680/3 = 226.6667; max dev = 230 - 226.6667 = 6.6667
# PVUR = 6.6667 / 226.6667 * 100 = 20/680 * 100 = 2.941176 %
PVUR_ONE_LOW = 20.0 / 680.0 * 100.0
# V1 = (230 + a*230/-120 + a^2*220/120)/3 = (230 + 230 + 220)/3 = 680/3 (all at 0 deg)
# V2 = (230 + a^2*230/-120 + a*220/120)/3 = (230 + 230/120 + 220/-120)/3
#    = (0 - 10/-120)/3 -> |V2| = 10/3;  V0 = (230 + 230/-120 + 220/120)/3 -> |V0| = 10/3
# VUF = V0UF = (10/3)/(680/3)*100 = 10/680*100 = 1.470588 %
VUF_ONE_LOW = 10.0 / 680.0 * 100.0
# Line-to-line: |Vab| = 230*sqrt(3) = 398.3717
#   |Vbc|^2 = |230/-120 - 220/120|^2 = 230^2 + 220^2 - 2*230*220*cos(240 deg)
#           = 52900 + 48400 + 50600 = 151900 -> |Vbc| = |Vca| = 389.7435
#   mean = (398.3717 + 2*389.7435)/3 = 392.6196; max dev = 398.3717 - 392.6196 = 5.7521
#   LVUR = 5.7521 / 392.6196 * 100 = 1.46506 %
_VAB, _VBC = 230.0 * math.sqrt(3.0), math.sqrt(151900.0)
LVUR_ONE_LOW = (_VAB - (_VAB + 2 * _VBC) / 3) / ((_VAB + 2 * _VBC) / 3) * 100.0


# ----------------------------------------------------------------------------- arrays


def test_balanced_set_gives_zero() -> None:
    v = balanced(230.0, 17.0)
    for f in (pvur_pct, lvur_pct, vuf_pct, v0uf_pct):
        assert float(f(v)) == pytest.approx(0.0, abs=1e-9)
    seq = sequence_components(v)
    # V0 = 0, V1 = Va = 230/17deg, V2 = 0
    assert seq[0] == pytest.approx(0.0, abs=1e-9)
    assert seq[1] == pytest.approx(pol(230, 17), abs=1e-9)
    assert seq[2] == pytest.approx(0.0, abs=1e-9)


def test_one_phase_low_hand_computed() -> None:
    assert pytest.approx(2.941176, abs=1e-6) == PVUR_ONE_LOW
    assert float(pvur_pct(ONE_LOW)) == pytest.approx(PVUR_ONE_LOW, rel=1e-12)
    # magnitudes are enough for PVUR
    assert float(pvur_pct(np.array([230.0, 230.0, 220.0]))) == pytest.approx(PVUR_ONE_LOW)
    assert float(vuf_pct(ONE_LOW)) == pytest.approx(VUF_ONE_LOW, rel=1e-12)
    assert float(v0uf_pct(ONE_LOW)) == pytest.approx(VUF_ONE_LOW, rel=1e-12)
    assert pytest.approx(1.46506, abs=1e-5) == LVUR_ONE_LOW
    assert float(lvur_pct(ONE_LOW)) == pytest.approx(LVUR_ONE_LOW, rel=1e-12)


def test_sequence_components_one_low() -> None:
    v0, v1, v2 = sequence_components(ONE_LOW)
    # from the comment above: V1 = 680/3 at 0 deg; V2 = -(10/-120)/3 = 10/3 at 60 deg;
    # V0 = (230 + 230/-120 + 220/120)/3 = -(10/120)/3 = 10/3 at -60 deg
    assert v1 == pytest.approx(680.0 / 3.0, abs=1e-9)
    assert v2 == pytest.approx(pol(10.0 / 3.0, 60.0), abs=1e-9)
    assert v0 == pytest.approx(pol(10.0 / 3.0, -60.0), abs=1e-9)


def test_pure_negative_sequence_addition() -> None:
    # V = 230/10deg positive sequence + 4.6/-25deg negative sequence
    v1, v2 = pol(230.0, 10.0), pol(4.6, -25.0)
    v = np.array([v1 + v2, A**2 * v1 + A * v2, A * v1 + A**2 * v2])
    # VUF = 4.6/230*100 = 2.0 % exactly; no zero sequence
    assert float(vuf_pct(v)) == pytest.approx(2.0, rel=1e-12)
    assert float(v0uf_pct(v)) == pytest.approx(0.0, abs=1e-12)
    seq = sequence_components(v)
    np.testing.assert_allclose(seq, [0.0, v1, v2], atol=1e-12)


def test_pure_zero_sequence_addition() -> None:
    # V = balanced 230/0deg + the same 11.5/30deg on every phase
    v = balanced(230.0) + pol(11.5, 30.0)
    # V0UF = 11.5/230*100 = 5.0 %, VUF = 0
    assert float(v0uf_pct(v)) == pytest.approx(5.0, rel=1e-12)
    assert float(vuf_pct(v)) == pytest.approx(0.0, abs=1e-12)
    # line-to-line voltages do not see the zero sequence
    assert float(lvur_pct(v)) == pytest.approx(0.0, abs=1e-9)


def test_lvur_hand_computed_missing_voltage_on_c() -> None:
    # Va = 230/0, Vb = 230/-120, Vc = 0 (phase c collapsed to neutral):
    # |Vab| = 230*sqrt(3), |Vbc| = |Vb| = 230, |Vca| = |Va| = 230
    # mean = 230*(sqrt(3) + 2)/3, dev = 230*sqrt(3) - mean = 230*(2*sqrt(3) - 2)/3
    # LVUR = (2*sqrt(3) - 2)/(sqrt(3) + 2)*100 = 1.464102/3.732051*100 = 39.2305 %
    v = np.array([pol(230, 0), pol(230, -120), 0.0])
    expected = (2 * math.sqrt(3) - 2) / (math.sqrt(3) + 2) * 100
    assert expected == pytest.approx(39.2305, abs=1e-4)
    assert float(lvur_pct(v)) == pytest.approx(expected, rel=1e-12)
    # PVUR of 230/230/0: mean 153.333, dev 153.333 -> 100 %
    assert float(pvur_pct(v)) == pytest.approx(100.0)


def test_leading_shape_and_nan_propagation() -> None:
    v = np.broadcast_to(ONE_LOW, (2, 5, 3)).copy()
    v[1, 3, 2] = NAN
    for f in (pvur_pct, lvur_pct, vuf_pct, v0uf_pct):
        out = f(v)
        assert out.shape == (2, 5)
        assert np.isnan(out[1, 3])
        assert np.isfinite(np.delete(out.ravel(), 8)).all()
    seq = sequence_components(v)
    assert seq.shape == (2, 5, 3)
    assert np.isnan(seq[1, 3]).all()


def test_zero_voltage_gives_nan_not_warning() -> None:
    with np.errstate(all="raise"):
        for f in (pvur_pct, lvur_pct, vuf_pct, v0uf_pct):
            assert np.isnan(f(np.zeros(3, dtype=complex)))


def test_wrong_shape_raises() -> None:
    for f in (pvur_pct, lvur_pct, vuf_pct, v0uf_pct, sequence_components):
        with pytest.raises(Lv3phError, match="shape"):
            f(np.ones((4, 2)))
        with pytest.raises(Lv3phError):
            f(1.0)


# ----------------------------------------------------------------------------- properties

_mag = st.floats(150.0, 300.0)
_dev = st.floats(-20.0, 20.0)


@st.composite
def three_phase(draw: st.DrawFn) -> np.ndarray:
    """A plausible, not necessarily balanced, positive-sequence phase set."""
    return np.array([pol(draw(_mag), nominal + draw(_dev)) for nominal in (0.0, -120.0, 120.0)])


METRICS = (pvur_pct, lvur_pct, vuf_pct, v0uf_pct)


@settings(max_examples=200, deadline=None)
@given(three_phase(), st.floats(-math.pi, math.pi))
def test_rotation_invariance(v: np.ndarray, theta: float) -> None:
    rotated = v * cmath.exp(1j * theta)
    for f in METRICS:
        assert float(f(rotated)) == pytest.approx(float(f(v)), rel=1e-9, abs=1e-9)


@settings(max_examples=200, deadline=None)
@given(three_phase(), st.floats(0.01, 100.0), st.floats(-math.pi, math.pi))
def test_scaling_invariance(v: np.ndarray, k: float, theta: float) -> None:
    for scaled in (v * k, v * cmath.rect(k, theta)):
        for f in METRICS:
            assert float(f(scaled)) == pytest.approx(float(f(v)), rel=1e-9, abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(three_phase())
def test_permutation_invariance_of_pvur_and_lvur(v: np.ndarray) -> None:
    p0, l0 = float(pvur_pct(v)), float(lvur_pct(v))
    for perm in itertools.permutations(range(3)):
        assert float(pvur_pct(v[list(perm)])) == pytest.approx(p0, rel=1e-9, abs=1e-9)
        assert float(lvur_pct(v[list(perm)])) == pytest.approx(l0, rel=1e-9, abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(three_phase())
def test_swapping_two_phases_swaps_v1_and_v2(v: np.ndarray) -> None:
    # swapping phases b and c turns positive sequence into negative and vice versa
    swapped = v[[0, 2, 1]]
    seq, seq_s = np.abs(sequence_components(v)), np.abs(sequence_components(swapped))
    np.testing.assert_allclose(seq_s, seq[[0, 2, 1]], rtol=1e-12, atol=1e-9)
    # hence VUF(swapped) = |V1|/|V2|*100 = 1e4 / VUF (when VUF is not ~0)
    vuf = float(vuf_pct(v))
    assume(vuf > 1e-3)
    assert float(vuf_pct(swapped)) == pytest.approx(1e4 / vuf, rel=1e-6)


@settings(max_examples=100, deadline=None)
@given(three_phase())
def test_vuf_same_from_line_to_line(v: np.ndarray) -> None:
    # the docstring claim: VUF from phase-to-neutral == VUF from line-to-line
    v_ll = np.array([v[0] - v[1], v[1] - v[2], v[2] - v[0]])
    seq_ll = sequence_components(v_ll)
    assert abs(seq_ll[0]) == pytest.approx(0.0, abs=1e-9)
    assert abs(seq_ll[2]) / abs(seq_ll[1]) * 100 == pytest.approx(float(vuf_pct(v)), rel=1e-9)


@settings(max_examples=100, deadline=None)
@given(three_phase())
def test_sequence_components_reconstruct(v: np.ndarray) -> None:
    v0, v1, v2 = sequence_components(v)
    back = np.array([v0 + v1 + v2, v0 + A**2 * v1 + A * v2, v0 + A * v1 + A**2 * v2])
    np.testing.assert_allclose(back, v, atol=1e-9)


# ----------------------------------------------------------------------------- Dataset

SHIFT = 12.0 + 0.0j  # neutral-to-earth voltage of b4w at t = 11
V3W_T11 = 230.0 * np.array([1, A**2, A]) + 6.9 * np.array([1, A, A**2])  # 3 % negative seq


def make_pf() -> xr.Dataset:
    """2 steps (time 10, 11), buses b4w (4-wire), b3w (no neutral), b1 (1-phase), dead."""
    v = np.full((2, 4, 4), NAN, dtype=complex)
    # b4w: t10 balanced, neutral at 0 V; t11 230/230/220 phase-to-neutral, neutral 12 V
    v[0, 0, :3], v[0, 0, 3] = balanced(), 0.0
    v[1, 0, :3], v[1, 0, 3] = ONE_LOW + SHIFT, SHIFT
    # b3w: terminal 4 NaN; t10 balanced; t11 230 V positive + 6.9 V negative sequence
    v[0, 1, :3] = balanced()
    v[1, 1, :3] = V3W_T11
    # b1: phase a and neutral; t10 200 V, t11 258 V to earth with neutral 3 V -> 255 V
    v[0, 2, 0], v[0, 2, 3] = 200.0, 0.0
    v[1, 2, 0], v[1, 2, 3] = 258.0, 3.0
    # dead: all NaN

    cur = np.full((2, 4, 4), NAN, dtype=complex)
    cur[0, 0] = [50, 50, 50, 0]
    cur[1, 0] = [120, 80, 60, 40 + 30j]  # max |I| = 120 A of 100 A -> 120 %
    cur[:, 1] = 1000.0  # line.l2 has no rating: never checked
    cur[:, 2] = 500.0  # transformer: not a line, never line-checked
    cur[:, 3, 0] = 0.0
    s_kva = np.full((2, 4), np.nan)
    s_kva[:, 2] = [80.0, 110.0]  # 110 kVA of 100 kVA -> 110 %
    return xr.Dataset(
        {
            "voltage": (("time", "bus", "terminal"), v),
            "current": (("time", "element", "conductor"), cur),
            "winding_s_kva": (("time", "element"), s_kva),
        },
        coords={
            "time": [10, 11],
            "bus": ["b4w", "b3w", "b1", "dead"],
            "terminal": [1, 2, 3, 4],
            "element": ["line.l1", "line.l2", "transformer.tx", "reactor.rn"],
            "conductor": [1, 2, 3, 4],
            "element_kind": ("element", ["line", "line", "transformer", "earthing"]),
            "element_normamps": ("element", [100.0, np.nan, 50.0, np.nan]),
            "element_kva": ("element", [np.nan, np.nan, 100.0, np.nan]),
            "customer_bus": ("customer", ["b4w", "b1", "b1"]),
        },
    )


def test_unbalance_dataset_values_and_nan_rules() -> None:
    unb = unbalance(make_pf())
    assert set(unb.data_vars) == {
        "pvur_pct",
        "lvur_pct",
        "vuf_pct",
        "v0uf_pct",
        "vne_v",
        "vmin_pn_v",
        "vmax_pn_v",
    }
    for name, da in unb.data_vars.items():
        assert da.dims == ("time", "bus"), name
        assert da.attrs["units"] in ("%", "V"), name
    assert list(unb.time.values) == [10, 11]
    assert list(unb.bus.values) == ["b4w", "b3w", "b1", "dead"]

    b4w, b3w = unb.sel(bus="b4w"), unb.sel(bus="b3w")
    # t10 balanced: all zero
    for name in ("pvur_pct", "lvur_pct", "vuf_pct", "v0uf_pct", "vne_v"):
        assert float(b4w[name].sel(time=10)) == pytest.approx(0.0, abs=1e-9)
        assert float(b3w[name].sel(time=10)) == pytest.approx(0.0, abs=1e-9)
    # b4w t11: neutral removed -> the ONE_LOW set
    t = b4w.sel(time=11)
    assert float(t.pvur_pct) == pytest.approx(PVUR_ONE_LOW)
    assert float(t.lvur_pct) == pytest.approx(LVUR_ONE_LOW)
    assert float(t.vuf_pct) == pytest.approx(VUF_ONE_LOW)
    assert float(t.v0uf_pct) == pytest.approx(VUF_ONE_LOW)
    assert float(t.vne_v) == pytest.approx(12.0)
    assert float(t.vmin_pn_v) == pytest.approx(220.0)
    assert float(t.vmax_pn_v) == pytest.approx(230.0)
    # b3w t11: VUF = 6.9/230 = 3 %. |Va| = 236.9;
    # |Vb|^2 = |Vc|^2 = 230^2 + 6.9^2 + 2*230*6.9*cos(240) = 52900 + 47.61 - 1587
    #        = 51360.61 -> 226.6288; mean = (236.9 + 2*226.6288)/3 = 230.0525
    # PVUR = (236.9 - 230.0525)/230.0525*100 = 2.97648 %; no neutral -> vne 0
    t = b3w.sel(time=11)
    vb = math.sqrt(51360.61)
    mean = (236.9 + 2 * vb) / 3
    assert float(t.vuf_pct) == pytest.approx(3.0)
    assert float(t.v0uf_pct) == pytest.approx(0.0, abs=1e-9)
    assert float(t.pvur_pct) == pytest.approx((236.9 - mean) / mean * 100)
    assert float(t.pvur_pct) == pytest.approx(2.97648, abs=1e-5)
    assert float(t.vne_v) == 0.0
    assert float(t.vmax_pn_v) == pytest.approx(236.9)
    assert float(t.vmin_pn_v) == pytest.approx(vb)
    # b1: single phase -> NaN unbalance; vmin = vmax = phase-to-neutral; vne = |Vn|
    b1 = unb.sel(bus="b1")
    for name in ("pvur_pct", "lvur_pct", "vuf_pct", "v0uf_pct"):
        assert np.isnan(b1[name]).all(), name
    np.testing.assert_allclose(b1.vmin_pn_v, [200.0, 255.0])
    np.testing.assert_allclose(b1.vmax_pn_v, [200.0, 255.0])
    np.testing.assert_allclose(b1.vne_v, [0.0, 3.0])
    # dead bus: everything NaN
    for name, da in unb.sel(bus="dead").data_vars.items():
        assert np.isnan(da).all(), name


def test_neutral_shift_changes_vne_only() -> None:
    pf = make_pf()
    unb = unbalance(pf)
    s = pol(7.0, 40.0)
    shifted = pf.copy(deep=True)
    shifted["voltage"].loc[{"bus": "b4w"}] = pf["voltage"].sel(bus="b4w") + s
    unb2 = unbalance(shifted)
    for name in (
        "pvur_pct",
        "lvur_pct",
        "vuf_pct",
        "v0uf_pct",
        "vmin_pn_v",
        "vmax_pn_v",
    ):
        xr.testing.assert_allclose(unb2[name], unb[name])
    # vne: t10 |0 + 7/40| = 7; t11 |12 + 7/40| = sqrt(12^2 + 7^2 + 2*12*7*cos 40)
    expected_t11 = math.sqrt(144 + 49 + 168 * math.cos(math.radians(40)))
    np.testing.assert_allclose(unb2.vne_v.sel(bus="b4w"), [7.0, expected_t11])
    assert expected_t11 == pytest.approx(17.936, abs=1e-3)


def test_terminal_dimension_without_neutral_and_in_other_order() -> None:
    # terminal coord 3,1,2 only (no neutral at all): vne 0, metrics as ONE_LOW
    v = ONE_LOW[[2, 0, 1]].reshape(1, 1, 3)
    pf = xr.Dataset(
        {"voltage": (("bus", "terminal", "time"), v.transpose(1, 2, 0))},
        coords={"time": [0], "bus": ["x"], "terminal": [3, 1, 2]},
    )
    unb = unbalance(pf)
    assert unb.pvur_pct.dims == ("time", "bus")
    one = unb.isel(time=0, bus=0)
    assert float(one.pvur_pct) == pytest.approx(PVUR_ONE_LOW)
    assert float(one.vuf_pct) == pytest.approx(VUF_ONE_LOW)
    assert float(one.vne_v) == 0.0


def test_unbalance_requires_voltage() -> None:
    with pytest.raises(Lv3phError, match="voltage"):
        unbalance(xr.Dataset())


# ----------------------------------------------------------------------------- violations

EXPECTED_CUSTOMERS = [
    # time, check, item, value, limit, unit
    (10, "voltage_low", "b1", 200.0, 207.0, "V"),  # 200 < 230*0.9 = 207
    (11, "line_thermal", "line.l1", 120.0, 100.0, "%"),  # 120 A / 100 A
    (11, "pvur", "b4w", PVUR_ONE_LOW, 2.0, "%"),  # 2.941 > 2
    (11, "transformer_thermal", "transformer.tx", 110.0, 100.0, "%"),  # 110/100 kVA
    (11, "vne", "b4w", 12.0, 10.0, "V"),  # |12 V| > 10
    (11, "voltage_high", "b1", 255.0, 253.0, "V"),  # 258 - 3 = 255 > 230*1.1 = 253
]


def assert_rows(df: pd.DataFrame, expected: Sequence[tuple[object, ...]]) -> None:
    assert list(df.columns) == ["time", "check", "item", "value", "limit", "unit"]
    assert len(df) == len(expected), df
    assert list(df.index) == list(range(len(expected)))
    for row, exp in zip(df.itertuples(index=False), expected, strict=True):
        assert (row.time, row.check, row.item, row.unit) == (
            exp[0],
            exp[1],
            exp[2],
            exp[5],
        )
        assert row.value == pytest.approx(exp[3])
        assert row.limit == pytest.approx(exp[4])


def test_violations_at_customers() -> None:
    pf = make_pf()
    df = violations(pf, unbalance(pf), Limits())
    assert_rows(df, EXPECTED_CUSTOMERS)
    assert set(df.check) <= set(CHECKS)


def test_violations_at_all_buses() -> None:
    pf = make_pf()
    df = violations(pf, unbalance(pf), Limits(where="all"))
    # b3w (not a customer bus) adds pvur 2.976 % and vuf 3 % at t11; sorted in
    expected = list(EXPECTED_CUSTOMERS)
    expected.insert(2, (11, "pvur", "b3w", 2.9764815, 2.0, "%"))
    expected.append((11, "vuf", "b3w", 3.0, 2.0, "%"))
    assert_rows(df, expected)


def test_violations_limits_disabled_and_changed() -> None:
    pf = make_pf()
    unb = unbalance(pf)
    off = Limits.from_dict({k: None for k in Limits().to_dict() if k not in ("v_nominal_v", "where", "basis")})
    df = violations(pf, unb, off)
    assert df.empty
    assert list(df.columns) == ["time", "check", "item", "value", "limit", "unit"]
    # only a 1 % VUF limit: b4w at t11 (1.4706 %) is the only customer-bus violation
    only_vuf = Limits(
        v_band_pct=None,
        vuf_pct=1.0,
        pvur_pct=None,
        vne_v=None,
        line_loading_pct=None,
        transformer_loading_pct=None,
    )
    assert_rows(violations(pf, unb, only_vuf), [(11, "vuf", "b4w", VUF_ONE_LOW, 1.0, "%")])


def test_violations_customer_bus_errors() -> None:
    pf = make_pf()
    unb = unbalance(pf)
    bad = pf.assign_coords(customer_bus=("customer", ["b4w", "nowhere", "b1"]))
    with pytest.raises(UnknownItemError, match="nowhere"):
        violations(bad, unb, Limits())
    no_customers = pf.drop_vars("customer_bus")
    with pytest.raises(Lv3phError, match="customer_bus"):
        violations(no_customers, unb, Limits())
    # a customer without a connected node (bus "") is ignored
    unconnected = pf.assign_coords(customer_bus=("customer", ["b4w", "", "b1"]))
    assert_rows(violations(unconnected, unb, Limits()), EXPECTED_CUSTOMERS)
    # where="all" does not need customers
    assert len(violations(no_customers, unb, Limits(where="all"))) == 8


def test_violations_missing_winding_s_kva() -> None:
    pf = make_pf().drop_vars("winding_s_kva")
    unb = unbalance(pf)
    with pytest.raises(Lv3phError, match="winding_s_kva"):
        violations(pf, unb, Limits())
    df = violations(pf, unb, Limits(transformer_loading_pct=None))
    assert "transformer_thermal" not in set(df.check)


def test_violation_summary() -> None:
    df = pd.DataFrame(
        {
            "time": [1, 2, 3, 2, 3, 3],
            "check": ["voltage_low"] * 3 + ["vuf"] * 2 + ["line_thermal"],
            "item": ["b1"] * 3 + ["bx"] * 2 + ["l1"],
            "value": [205.0, 200.0, 203.0, 2.5, 3.5, 150.0],
            "limit": [207.0] * 3 + [2.0] * 2 + [100.0],
            "unit": ["V"] * 3 + ["%"] * 3,
        }
    )
    s = violation_summary(df)
    assert list(s.check) == ["line_thermal", "voltage_low", "vuf"]
    assert list(s.item) == ["l1", "b1", "bx"]
    assert list(s.n_steps) == [1, 3, 2]
    assert list(s.first_time) == [3, 1, 2]
    assert list(s.last_time) == [3, 3, 3]
    # voltage_low: worst is the lowest (200 V at t2); others the highest
    assert list(s.worst_value) == [150.0, 200.0, 3.5]
    assert list(s.worst_time) == [3, 2, 3]
    assert list(s.unit) == ["%", "V", "%"]
    assert list(s.limit) == [100.0, 207.0, 2.0]

    empty = violation_summary(df.iloc[:0])
    assert empty.empty
    assert "worst_value" in empty.columns


def test_summary_of_study_violations() -> None:
    pf = make_pf()
    s = violation_summary(violations(pf, unbalance(pf), Limits()))
    assert len(s) == len(EXPECTED_CUSTOMERS)
    assert (s.n_steps == 1).all()


# ----------------------------------------------------------------------------- Limits


def test_limits_defaults() -> None:
    lim = Limits()
    assert lim.v_low_v == pytest.approx(207.0)
    assert lim.v_high_v == pytest.approx(253.0)
    assert (lim.vuf_pct, lim.pvur_pct, lim.vne_v) == (2.0, 2.0, 10.0)
    assert (lim.line_loading_pct, lim.transformer_loading_pct) == (100.0, 100.0)
    assert lim.where == "customers"
    assert Limits.from_dict({}) == lim
    assert Limits.from_dict(lim.to_dict()) == lim
    with pytest.raises(dataclasses.FrozenInstanceError):
        lim.vuf_pct = 3.0  # type: ignore[misc]


def test_limits_from_dict_values() -> None:
    lim = Limits.from_dict({"vuf_pct": 3, "vne_v": None, "where": "all"})
    assert lim.vuf_pct == 3.0 and isinstance(lim.vuf_pct, float)
    assert lim.vne_v is None
    assert lim.where == "all"
    assert Limits.from_dict({"v_band_pct": None}).v_low_v is None


def test_limits_unknown_key() -> None:
    with pytest.raises(StudyError, match=r"unknown limits key 'vuf'"):
        Limits.from_dict({"vuf": 2.0})
    with pytest.raises(StudyError, match="vuf_pct"):  # lists the valid keys
        Limits.from_dict({"vuf": 2.0})


@pytest.mark.parametrize(
    ("key", "value", "shown"),
    [
        ("vuf_pct", -1.0, "-1.0"),
        ("vne_v", float("nan"), "nan"),
        ("line_loading_pct", float("inf"), "inf"),
        ("pvur_pct", "2", "'2'"),
        ("transformer_loading_pct", True, "True"),
        ("v_nominal_v", 0.0, "0.0"),
        ("v_nominal_v", None, "None"),
        ("v_band_pct", 100.0, "100.0"),
        ("where", "everywhere", "'everywhere'"),
    ],
)
def test_limits_bad_values(key: str, value: object, shown: str) -> None:
    with pytest.raises(StudyError) as info:
        Limits.from_dict({key: value})
    msg = str(info.value)
    assert f"limits.{key}" in msg
    assert shown in msg
    assert "\n" not in msg
    assert isinstance(info.value, ValueError)


def test_limits_not_a_mapping() -> None:
    with pytest.raises(StudyError, match="mapping"):
        Limits.from_dict([("vuf_pct", 2.0)])  # type: ignore[arg-type]


def test_limits_direct_construction_is_validated() -> None:
    with pytest.raises(StudyError, match="limits.vuf_pct"):
        Limits(vuf_pct=-2.0)
