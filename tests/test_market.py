"""Local market clearing, contracts and bills (lv3ph.market)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lv3ph.errors import ContractError, Lv3phError, ProfileError, StudyError
from lv3ph.market import (
    CONTRACT_COLUMNS,
    MarketResult,
    Tariffs,
    bilateral,
    bills,
    community_auction,
    contracts_from_file,
    no_market,
    traded_per_customer,
)
from lv3ph.market.clearing import Preference

TOL = 1e-9


def _names(n: int) -> list[str]:
    return [f"load{i + 1}" for i in range(n)]


def _check_invariants(
    res: MarketResult,
    net: np.ndarray,
    customers: list[str],
    times: np.ndarray,
    tariffs: Tariffs,
    *,
    full: bool,
) -> None:
    """Market invariants; ``full``: traded must be min(total surplus, total demand)."""
    c = res.contracts
    assert tuple(c.columns) == CONTRACT_COLUMNS
    assert (c["kw"] > 0).all()
    assert (c["seller"] != c["buyer"]).all()
    assert c["contract"].is_unique
    expected_ids = "t" + c["time"].astype(str) + "-" + c["seller"] + "-" + c["buyer"]
    assert (c["contract"] == expected_ids).all()
    sold, bought = traded_per_customer(c, customers, times)
    surplus = np.maximum(-net, 0.0)
    demand = np.maximum(net, 0.0)
    scale = 1.0 + np.abs(net).sum()
    assert np.all(sold <= surplus + TOL * scale), "a seller sold more than its surplus"
    assert np.all(bought <= demand + TOL * scale), "a buyer bought more than its demand"
    np.testing.assert_allclose(sold.sum(axis=1), res.traded_kw, atol=TOL * scale)
    np.testing.assert_allclose(bought.sum(axis=1), res.traded_kw, atol=TOL * scale)
    if full:
        np.testing.assert_allclose(
            res.traded_kw,
            np.minimum(surplus.sum(axis=1), demand.sum(axis=1)),
            atol=TOL * scale,
        )
    price = res.price_eur_kwh
    assert list(price.index) == list(times)
    assert (price >= tariffs.grid_export_eur_kwh - 1e-12).all()
    assert (price <= tariffs.grid_import_eur_kwh + 1e-12).all()


net_positions = st.integers(1, 6).flatmap(
    lambda steps: st.integers(1, 8).flatmap(
        lambda n: arrays(
            np.float64,
            (steps, n),
            elements=st.one_of(st.just(0.0), st.floats(-20.0, 20.0, allow_nan=False, width=32)),
        )
    )
)
tariff_strategy = st.builds(
    lambda imp, frac, rule: Tariffs(imp, imp * frac, rule),
    st.floats(0.01, 1.0),
    st.floats(0.0, 1.0),
    st.sampled_from(["mid", "auction"]),
)


@settings(max_examples=150, deadline=None)
@given(net=net_positions, tariffs=tariff_strategy, seed=st.integers(0, 2**16))
def test_invariants_all_markets(net: np.ndarray, tariffs: Tariffs, seed: int) -> None:
    steps, n = net.shape
    customers = _names(n)
    times = np.arange(1, steps + 1) * 3  # any unique integer steps
    rng = np.random.default_rng(seed)
    dist = rng.random((n, n))
    phases = [str(int(rng.integers(1, 4))) for _ in range(n)]

    res = community_auction(net, customers, times, tariffs)
    _check_invariants(res, net, customers, times, tariffs, full=True)

    bids = rng.uniform(-0.1, 1.2, net.shape) * tariffs.grid_import_eur_kwh
    bids[rng.random(net.shape) < 0.3] = np.nan
    res = community_auction(net, customers, times, tariffs, bids=bids)
    _check_invariants(res, net, customers, times, tariffs, full=False)

    cases: list[tuple[Preference, dict[str, Any]]] = [
        ("random", {}),
        ("electrical-distance", {"distance": dist}),
        ("same-phase-first", {"phases": phases}),
        ("same-phase-first", {"phases": phases, "distance": dist}),
    ]
    for pref, kw in cases:
        res = bilateral(net, customers, times, tariffs, preference=pref, seed=seed, **kw)
        _check_invariants(res, net, customers, times, tariffs, full=True)

    res = no_market(net, customers, times, tariffs)
    _check_invariants(res, net, customers, times, tariffs, full=False)
    assert res.contracts.empty and not res.traded_kw.any()


@settings(max_examples=60, deadline=None)
@given(net=net_positions, tariffs=tariff_strategy)
def test_community_savings_equal_traded_energy_times_spread(net: np.ndarray, tariffs: Tariffs) -> None:
    """Every locally traded kWh replaces one exported and one imported kWh."""
    steps, n = net.shape
    customers, times, dt_h = _names(n), np.arange(1, steps + 1), 0.25
    res = community_auction(net, customers, times, tariffs)
    b = bills(net, customers, times, res.contracts, res.price_eur_kwh, tariffs, dt_h)
    spread = tariffs.grid_import_eur_kwh - tariffs.grid_export_eur_kwh
    expected = res.traded_kw.sum() * dt_h * spread
    assert b["savings_eur"].sum() == pytest.approx(expected, rel=1e-9, abs=1e-9)
    # prices within the tariffs: nobody is worse off than without the market
    assert (b["savings_eur"] >= -1e-9).all()


# --------------------------------------------------------------------- auction


def test_auction_pro_rata_two_sellers_three_buyers() -> None:
    """Hand-computed pro-rata shares, short supply (step 1) and long supply (step 2).

    Step 1: surplus s = (3, 1), S = 4; demand d = (2, 4, 2), D = 8 -> sellers sell all,
    buyers get S * d / D = (1, 2, 1); seller i -> buyer j = s_i * b_j / 4.
    Step 2: s = (6, 2), S = 8; d = (1, 2, 1), D = 4 -> buyers fully served, sellers sell
    D * s / S = (3, 1); the same matrix as step 1.
    """
    customers = ["a", "b", "x", "y", "z"]
    net = np.array([[-3.0, -1.0, 2.0, 4.0, 2.0], [-6.0, -2.0, 1.0, 2.0, 1.0]])
    tariffs = Tariffs(0.30, 0.05, "auction")
    res = community_auction(net, customers, [1, 2], tariffs)
    expected = {
        ("a", "x"): 0.75,
        ("a", "y"): 1.5,
        ("a", "z"): 0.75,
        ("b", "x"): 0.25,
        ("b", "y"): 0.5,
        ("b", "z"): 0.25,
    }
    for t in (1, 2):
        got = res.contracts[res.contracts["time"] == t]
        assert len(got) == 6
        for row in got.itertuples():
            assert row.kw == pytest.approx(expected[(str(row.seller), str(row.buyer))])
            assert row.contract == f"t{t}-{row.seller}-{row.buyer}"
    np.testing.assert_allclose(res.traded_kw, [4.0, 4.0])
    # SDR pricing: step 1 SDR = 0.5 -> 0.3 * 0.05 / (0.25 * 0.5 + 0.05); step 2 SDR = 2
    assert res.price_eur_kwh[1] == pytest.approx(0.015 / 0.175)
    assert res.price_eur_kwh[2] == pytest.approx(0.05)
    mid = community_auction(net, customers, [1, 2], Tariffs(0.30, 0.05, "mid"))
    assert list(mid.price_eur_kwh) == pytest.approx([0.175, 0.175])


def test_sdr_price_extremes() -> None:
    tariffs = Tariffs(0.30, 0.05, "auction")
    customers = ["a", "b"]
    # no supply -> import price; supply but no demand -> export price
    res = community_auction(np.array([[1.0, 2.0], [-1.0, -2.0]]), customers, [1, 2], tariffs)
    assert list(res.price_eur_kwh) == pytest.approx([0.30, 0.05])
    assert res.contracts.empty


def test_auction_with_bids_hand_example() -> None:
    """Asks 0.10 (5 kW), 0.20 (5 kW); bids 0.15 (3 kW), 0.25 (4 kW).

    Traded volume is 5 kW for prices in [0.10, 0.15] and 4 kW above 0.15, so the price is
    0.125; only the 0.10 seller is accepted and sells 5 kW pro rata to both buyers.
    """
    customers = ["s1", "s2", "b1", "b2"]
    net = np.array([[-5.0, -5.0, 3.0, 4.0]])
    bids = np.array([[0.10, 0.20, 0.15, 0.25]])
    res = community_auction(net, customers, [7], Tariffs(0.30, 0.05), bids=bids)
    assert res.price_eur_kwh[7] == pytest.approx(0.125)
    c = res.contracts.set_index(["seller", "buyer"])["kw"]
    assert set(c.index) == {("s1", "b1"), ("s1", "b2")}
    assert c[("s1", "b1")] == pytest.approx(5 * 3 / 7)
    assert c[("s1", "b2")] == pytest.approx(5 * 4 / 7)
    # a seller asking more than the import price never sells; a bid below export never buys
    res = community_auction(
        net,
        customers,
        [7],
        Tariffs(0.30, 0.05),
        bids=np.array([[0.5, 0.2, 0.01, 0.25]]),
    )
    assert set(zip(res.contracts["seller"], res.contracts["buyer"], strict=True)) == {("s2", "b2")}
    assert res.price_eur_kwh[7] == pytest.approx(0.225)
    # NaN bids = no limit: same as the plain auction
    plain = community_auction(net, customers, [7], Tariffs(0.30, 0.05))
    nan_bids = community_auction(net, customers, [7], Tariffs(0.30, 0.05), bids=np.full((1, 4), np.nan))
    pd.testing.assert_frame_equal(plain.contracts, nan_bids.contracts)


# -------------------------------------------------------------------- bilateral


@pytest.mark.parametrize("seed", range(8))
def test_bilateral_same_phase_first(seed: int) -> None:
    """Buyers x (phase 1) and y (phase 2); sellers a (phase 2) and b (phase 1).

    Every seller's surplus equals its same-phase buyer's demand, so same-phase-first
    must give exactly b -> x and a -> y whatever the buyer order.
    """
    customers = ["a", "x", "b", "y"]
    phases = ["2", "1", "1", "2"]
    net = np.array([[-2.0, 2.0, -2.0, 2.0], [-1.0, 1.0, -1.0, 1.0]])
    res = bilateral(
        net,
        customers,
        [1, 2],
        Tariffs(),
        preference="same-phase-first",
        seed=seed,
        phases=phases,
    )
    pairs = {(r.time, r.seller, r.buyer): r.kw for r in res.contracts.itertuples()}
    assert pairs == {
        (1, "b", "x"): 2.0,
        (1, "a", "y"): 2.0,
        (2, "b", "x"): 1.0,
        (2, "a", "y"): 1.0,
    }


def test_bilateral_same_phase_then_nearest_other_phase() -> None:
    """x (phase 1, 3 kW) buys 1 kW from same-phase b, then the rest from the nearer c."""
    customers = ["x", "a", "b", "c"]
    phases = ["1", "2", "1", "3"]
    dist = np.array(
        [
            [0.0, 5.0, 9.0, 1.0],
            [5.0, 0.0, 1.0, 1.0],
            [9.0, 1.0, 0.0, 1.0],
            [1.0, 1.0, 1.0, 0.0],
        ]
    )
    net = np.array([[3.0, -5.0, -1.0, -5.0]])
    res = bilateral(
        net,
        customers,
        [1],
        Tariffs(),
        preference="same-phase-first",
        seed=0,
        phases=phases,
        distance=dist,
    )
    pairs = {(r.seller, r.buyer): r.kw for r in res.contracts.itertuples()}
    assert pairs == {("b", "x"): 1.0, ("c", "x"): 2.0}
    res = bilateral(
        net,
        customers,
        [1],
        Tariffs(),
        preference="electrical-distance",
        seed=0,
        distance=dist,
    )
    pairs = {(r.seller, r.buyer): r.kw for r in res.contracts.itertuples()}
    assert pairs == {("c", "x"): 3.0}


def test_bilateral_reproducible_with_seed() -> None:
    rng = np.random.default_rng(3)
    net = rng.normal(0.0, 3.0, (20, 12))
    customers = _names(12)
    times = np.arange(1, 21)
    a = bilateral(net, customers, times, Tariffs(), preference="random", seed=42)
    b = bilateral(net, customers, times, Tariffs(), preference="random", seed=42)
    c = bilateral(net, customers, times, Tariffs(), preference="random", seed=43)
    pd.testing.assert_frame_equal(a.contracts, b.contracts)
    assert not a.contracts.equals(c.contracts)


def test_bilateral_needs_distance_or_phases() -> None:
    net = np.array([[1.0, -1.0]])
    with pytest.raises(StudyError, match="distance"):
        bilateral(net, ["a", "b"], [1], Tariffs(), preference="electrical-distance", seed=0)
    with pytest.raises(StudyError, match="phases"):
        bilateral(net, ["a", "b"], [1], Tariffs(), preference="same-phase-first", seed=0)
    with pytest.raises(StudyError, match="phases given"):
        bilateral(
            net,
            ["a", "b"],
            [1],
            Tariffs(),
            preference="same-phase-first",
            seed=0,
            phases=["1"],
        )


# ------------------------------------------------------------------------ inputs


def test_tariffs_validation() -> None:
    with pytest.raises(StudyError, match="exceeds"):
        Tariffs(grid_import_eur_kwh=0.1, grid_export_eur_kwh=0.2)
    with pytest.raises(StudyError, match="local_price_rule"):
        Tariffs(local_price_rule="pay-as-bid")  # type: ignore[arg-type]
    assert Tariffs().mid_eur_kwh == pytest.approx(0.175)


def test_market_input_errors_are_typed() -> None:
    with pytest.raises(ProfileError, match="customer columns"):
        community_auction(np.zeros((2, 3)), ["a", "b"], [1, 2], Tariffs())
    with pytest.raises(ProfileError, match="NaN"):
        community_auction(np.array([[np.nan, 1.0]]), ["a", "b"], [1], Tariffs())
    with pytest.raises(ProfileError, match="times"):
        community_auction(np.zeros((2, 2)), ["a", "b"], [1], Tariffs())
    with pytest.raises(ProfileError, match="unique"):
        community_auction(np.zeros((2, 2)), ["a", "b"], [1, 1], Tariffs())
    with pytest.raises(ProfileError, match="bids shape"):
        community_auction(np.zeros((2, 2)), ["a", "b"], [1, 2], Tariffs(), bids=np.zeros(2))
    assert issubclass(ProfileError, Lv3phError) and issubclass(Lv3phError, ValueError)


# ------------------------------------------------------------------------ bills


def test_bills_hand_example() -> None:
    """2 customers, 2 steps of 0.5 h, one contract a -> b of 4 kW at 0.20 EUR/kWh.

    a: step 1 -4 kW (sells 4, residual 0), step 2 +2 kW -> imports 1 kWh = 0.30,
       earns 2 kWh * 0.20 = 0.40 -> bill -0.10; without market 0.30 - 2 kWh * 0.05 = 0.20.
    b: step 1 +6 kW (buys 4, imports 2 kW), step 2 +1 kW -> imports 1.5 kWh = 0.45,
       pays 0.40 -> bill 0.85; without market 3.5 kWh * 0.30 = 1.05.
    """
    net = np.array([[-4.0, 6.0], [2.0, 1.0]])
    contracts = pd.DataFrame({"contract": ["c1"], "time": [1], "seller": ["a"], "buyer": ["b"], "kw": [4.0]})
    price = pd.Series([0.20, 0.175], index=[1, 2])
    b = bills(net, ["a", "b"], [1, 2], contracts, price, Tariffs(0.30, 0.05), 0.5)
    assert b.loc["a", "import_kwh"] == pytest.approx(1.0)
    assert b.loc["a", "export_kwh"] == pytest.approx(0.0)
    assert b.loc["a", "sold_kwh"] == pytest.approx(2.0)
    assert b.loc["a", "bought_kwh"] == pytest.approx(0.0)
    assert b.loc["a", "bill_market_eur"] == pytest.approx(-0.10)
    assert b.loc["a", "bill_no_market_eur"] == pytest.approx(0.20)
    assert b.loc["a", "savings_eur"] == pytest.approx(0.30)
    assert b.loc["b", "import_kwh"] == pytest.approx(1.5)
    assert b.loc["b", "bought_kwh"] == pytest.approx(2.0)
    assert b.loc["b", "local_paid_eur"] == pytest.approx(0.40)
    assert b.loc["b", "bill_market_eur"] == pytest.approx(0.85)
    assert b.loc["b", "bill_no_market_eur"] == pytest.approx(1.05)
    assert b.loc["b", "savings_eur"] == pytest.approx(0.20)


def test_bills_without_market_equal_grid_tariffs() -> None:
    rng = np.random.default_rng(5)
    net = rng.normal(0.5, 2.0, (48, 6))
    customers, times, dt_h = _names(6), np.arange(1, 49), 0.5
    tariffs = Tariffs(0.28, 0.04, "auction")
    res = no_market(net, customers, times, tariffs)
    b = bills(net, customers, times, res.contracts, res.price_eur_kwh, tariffs, dt_h)
    imp = np.maximum(net, 0).sum(axis=0) * dt_h
    exp = np.maximum(-net, 0).sum(axis=0) * dt_h
    np.testing.assert_allclose(b["import_kwh"], imp)
    np.testing.assert_allclose(b["export_kwh"], exp)
    np.testing.assert_allclose(b["bill_market_eur"], imp * 0.28 - exp * 0.04)
    np.testing.assert_allclose(b["bill_no_market_eur"], imp * 0.28 - exp * 0.04)
    np.testing.assert_allclose(b["savings_eur"], 0.0, atol=1e-12)


def test_bills_reject_unknown_customer_and_time() -> None:
    net = np.array([[-1.0, 1.0]])
    price = pd.Series([0.2], index=[1])
    bad = pd.DataFrame({"contract": ["c9"], "time": [1], "seller": ["zz"], "buyer": ["b"], "kw": [1.0]})
    with pytest.raises(ContractError, match="c9.*unknown seller 'zz'"):
        bills(net, ["a", "b"], [1], bad, price, Tariffs(), 1.0)
    bad = bad.assign(seller="a", time=5)
    with pytest.raises(ContractError, match="time 5"):
        bills(net, ["a", "b"], [1], bad, price, Tariffs(), 1.0)


# -------------------------------------------------------------------- contracts


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "contracts.csv"
    path.write_text(text)
    return path


def test_contracts_from_file_roundtrip(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "contract,time,seller,buyer,kw\nc1,1,Load1,load2,1.5\nc1,2, load1 ,load2,0\n",
    )
    c = contracts_from_file(path)
    assert tuple(c.columns) == CONTRACT_COLUMNS
    assert list(c["seller"]) == ["load1", "load1"]
    assert c["time"].dtype == np.int64 and c["kw"].dtype == np.float64
    assert list(c["kw"]) == [1.5, 0.0]
    # a market result written out and read back is the same table
    res = community_auction(np.array([[-2.0, 1.0, 1.0]]), ["a", "b", "c"], [4], Tariffs())
    res.contracts.to_csv(tmp_path / "out.csv", index=False)
    pd.testing.assert_frame_equal(contracts_from_file(tmp_path / "out.csv"), res.contracts)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("contract,time,seller,kw\nc1,1,a,1\n", r"line 1: missing column\(s\) buyer"),
        ("contract,time,seller,buyer,kw,x\nc1,1,a,b,1,2\n", "line 1: unexpected.*x"),
        (
            "contract,time,seller,buyer,kw\nc1,1,a,b,1\nc2,1,a,b,abc\n",
            "line 3: kw 'abc' is not a number",
        ),
        ("contract,time,seller,buyer,kw\nc1,1,a,b,\n", "line 2: kw is NaN"),
        ("contract,time,seller,buyer,kw\nc1,1,a,b,NaN\n", "line 2: kw is NaN"),
        (
            "contract,time,seller,buyer,kw\nc1,1,a,b,1\nc1,2,a,b,-0.5\n",
            "line 3: kw -0.5 is negative",
        ),
        (
            "contract,time,seller,buyer,kw\nc1,1,a,A,1\n",
            "line 2: seller and buyer are the same",
        ),
        (
            "contract,time,seller,buyer,kw\nc1,1.5,a,b,1\n",
            "line 2: time '1.5' is not an integer",
        ),
        ("contract,time,seller,buyer,kw\nc1,0,a,b,1\n", "line 2: time 0 is not a step"),
        ("contract,time,seller,buyer,kw\nc1,1,,b,1\n", "line 2: empty seller"),
    ],
)
def test_contracts_from_file_errors(tmp_path: Path, text: str, pattern: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ContractError, match=pattern) as info:
        contracts_from_file(path)
    assert str(path) in str(info.value)


def test_contracts_from_file_missing_and_empty(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="not found"):
        contracts_from_file(tmp_path / "nope.csv")
    assert contracts_from_file(_write(tmp_path, "contract,time,seller,buyer,kw\n")).empty


# ------------------------------------------------------------------ performance
