"""PV profiles, PV placement and battery dispatch (lv3ph.prosumers)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lv3ph.errors import ProfileError, StudyError
from lv3ph.prosumers import (
    DEFAULT_ALTITUDE_M,
    DEFAULT_LATITUDE,
    DEFAULT_LONGITUDE,
    Battery,
    dispatch_p2p,
    dispatch_self_consumption,
    place_pv,
    pv_profile_kw_per_kwp,
)

JUNE = "2024-06-21"  # day of year 173
MINUTE_DAY: dict[str, Any] = {
    "date": JUNE,
    "stepsize_s": 60.0,
    "start": 1,
    "steps": 1440,
}
MANCHESTER: dict[str, Any] = {
    "latitude": DEFAULT_LATITUDE,
    "longitude": DEFAULT_LONGITUDE,
    "altitude": DEFAULT_ALTITUDE_M,
}


@pytest.fixture(scope="module")
def june_utc() -> np.ndarray:
    return pv_profile_kw_per_kwp(**MANCHESTER, **MINUTE_DAY, tz="UTC")


# ------------------------------------------------------------------- PV profile


def _solar_noon_utc_min(longitude: float, doy: int) -> float:
    """Solar noon in minutes after 00:00 UTC (equation of time, Spencer/Cooper form)."""
    b = math.radians(360.0 / 365.0 * (doy - 81))
    eot = 9.87 * math.sin(2 * b) - 7.53 * math.cos(b) - 1.5 * math.sin(b)
    return 720.0 - 4.0 * longitude - eot


def _extraterrestrial_daily_kwh_m2(latitude: float, doy: int) -> float:
    """Daily extraterrestrial irradiation on a horizontal plane H0 (Duffie & Beckman 1.10.3)."""
    phi = math.radians(latitude)
    delta = math.radians(23.45 * math.sin(math.radians(360.0 * (284 + doy) / 365.0)))
    ws = math.acos(-math.tan(phi) * math.tan(delta))
    ecc = 1.0 + 0.033 * math.cos(math.radians(360.0 * doy / 365.0))
    return (
        24.0
        / math.pi
        * 1.367
        * ecc
        * (math.cos(phi) * math.cos(delta) * math.sin(ws) + ws * math.sin(phi) * math.sin(delta))
    )


def test_pv_zero_at_night_and_non_negative(june_utc: np.ndarray) -> None:
    p = june_utc
    assert p.shape == (1440,)
    assert (p >= 0).all() and np.isfinite(p).all()
    # Manchester, 21 June: sunset ~21:40 UTC, sunrise ~03:40 UTC (BST 22:40 / 04:40)
    assert not p[: 3 * 60].any(), "output between 00:01 and 03:00 UTC"
    assert not p[22 * 60 :].any(), "output after 22:00 UTC"
    assert p.max() > 0.5


def test_pv_peak_near_solar_noon(june_utc: np.ndarray) -> None:
    noon = _solar_noon_utc_min(DEFAULT_LONGITUDE, 173)  # ~12:10.6 UTC
    peak_min = (int(np.argmax(june_utc)) + 1) * 1.0  # step k at k minutes
    assert abs(peak_min - noon) <= 15.0
    # local time zone: the same instant is one hour later on the BST wall clock
    bst = pv_profile_kw_per_kwp(**MANCHESTER, **MINUTE_DAY, tz="Europe/London")
    assert int(np.argmax(bst)) - int(np.argmax(june_utc)) == 60


def test_pv_daily_energy_clear_june_day_manchester(june_utc: np.ndarray) -> None:
    """Daily energy per kWp, bounded independently of pvlib.

    H0 (extraterrestrial, horizontal) at 53.48 N on 21 June is ~11.6 kWh/m2. A clear
    day passes 60-78 % of it to the ground (clear-sky clearness index), a 30 deg south
    plane collects 0.95-1.10x the horizontal sum at this latitude and season, and the
    performance ratio of a rooftop system (14 % losses, 96 % inverter, warm cells) is
    0.75-0.85. The product bounds the yield to [0.43, 0.73] x H0, i.e. ~5.0-8.4
    kWh/kWp; pvlib gives ~6.0.
    """
    h0 = _extraterrestrial_daily_kwh_m2(DEFAULT_LATITUDE, 173)
    assert h0 == pytest.approx(11.6, abs=0.2)
    energy = june_utc.sum() / 60.0  # kWh/kWp from 1-min kW/kWp
    assert 0.60 * 0.95 * 0.75 * h0 <= energy <= 0.78 * 1.10 * 0.85 * h0
    assert 5.0 <= energy <= 8.0


def test_pv_december_much_lower_than_june(june_utc: np.ndarray) -> None:
    dec = pv_profile_kw_per_kwp(**MANCHESTER, **{**MINUTE_DAY, "date": "2024-12-21"})
    assert 0.5 < dec.sum() / 60.0 < 0.5 * june_utc.sum() / 60.0


def test_pv_start_and_steps_select_a_window(june_utc: np.ndarray) -> None:
    # 15-min steps 41..56 = 10:15 .. 14:00 UTC equal the 1-min profile at those instants
    p = pv_profile_kw_per_kwp(**MANCHESTER, date=JUNE, stepsize_s=900, start=41, steps=16)
    idx = np.arange(41, 57) * 15 - 1
    np.testing.assert_allclose(p, june_utc[idx], rtol=1e-9)


def _weather_from_clearsky(path: Path, times: pd.DatetimeIndex) -> pd.DataFrame:
    import pvlib  # type: ignore[import-untyped]

    site = pvlib.location.Location(DEFAULT_LATITUDE, DEFAULT_LONGITUDE, tz="UTC", altitude=DEFAULT_ALTITUDE_M)
    cs = site.get_clearsky(times)
    df = pd.DataFrame(
        {
            "time": np.arange(1, len(times) + 1),
            "ghi": cs["ghi"].to_numpy(),
            "dni": cs["dni"].to_numpy(),
            "dhi": cs["dhi"].to_numpy(),
        }
    )
    df.to_csv(path, index=False)
    return df


def test_pv_weather_file_matches_clear_sky(tmp_path: Path, june_utc: np.ndarray) -> None:
    times = pd.date_range("2024-06-21 00:01", periods=1440, freq="1min", tz="UTC")
    path = tmp_path / "weather.csv"
    df = _weather_from_clearsky(path, times)
    p = pv_profile_kw_per_kwp(**MANCHESTER, **MINUTE_DAY, weather_file=path)
    np.testing.assert_allclose(p, june_utc, atol=1e-6)
    # timestamps instead of step indices; a hotter day lowers the output
    df = df.assign(time=times.strftime("%Y-%m-%d %H:%M:%S"), temp_air=35.0)
    df.to_csv(path, index=False)
    hot = pv_profile_kw_per_kwp(**MANCHESTER, **MINUTE_DAY, weather_file=path)
    assert hot.sum() < june_utc.sum()


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda df: df.drop(columns="dni"), r"missing column\(s\) dni"),
        (
            lambda df: df.assign(ghi=df["ghi"].where(df.index != 4)),
            "ghi has 1 NaN.*line 6",
        ),
        (lambda df: df.iloc[:-1], "has 1439 data rows, expected 1440"),
        (lambda df: df.assign(time=df["time"] + 1), "line 2: time 2 is not step 1"),
        (lambda df: df.assign(dhi=-df["dhi"] - 1), "dhi is negative"),
        (lambda df: df.assign(time="yesterday"), "neither step indices nor timestamps"),
    ],
)
def test_pv_weather_file_errors(tmp_path: Path, mutate, pattern: str) -> None:  # type: ignore[no-untyped-def]
    times = pd.date_range("2024-06-21 00:01", periods=1440, freq="1min", tz="UTC")
    path = tmp_path / "weather.csv"
    df = _weather_from_clearsky(path, times)
    mutate(df).to_csv(path, index=False)
    with pytest.raises(ProfileError, match=pattern) as info:
        pv_profile_kw_per_kwp(**MANCHESTER, **MINUTE_DAY, weather_file=path)
    assert str(path) in str(info.value)


def test_pv_weather_file_timestamps_across_dst(tmp_path: Path) -> None:
    """Hourly steps on the UK spring-forward day, timestamps with changing UTC offsets."""
    kw: dict[str, Any] = {
        "date": "2024-03-31",
        "stepsize_s": 3600.0,
        "start": 1,
        "steps": 24,
    }
    ref = pv_profile_kw_per_kwp(**MANCHESTER, **kw, tz="Europe/London")
    times = pd.date_range("2024-03-31 01:00", periods=24, freq="1h", tz="UTC").tz_convert("Europe/London")
    path = tmp_path / "weather.csv"
    df = _weather_from_clearsky(path, times)
    df.assign(time=[t.isoformat() for t in times]).to_csv(path, index=False)
    p = pv_profile_kw_per_kwp(**MANCHESTER, **kw, tz="Europe/London", weather_file=path)
    np.testing.assert_allclose(p, ref, atol=1e-6)
    assert ref.max() > 0.3


def test_pv_weather_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="not found"):
        pv_profile_kw_per_kwp(**MANCHESTER, **MINUTE_DAY, weather_file=tmp_path / "x.csv")


def test_pv_bad_arguments() -> None:
    with pytest.raises(StudyError, match="date"):
        pv_profile_kw_per_kwp(**MANCHESTER, **{**MINUTE_DAY, "date": "not a date"})
    with pytest.raises(StudyError, match="stepsize"):
        pv_profile_kw_per_kwp(**MANCHESTER, **{**MINUTE_DAY, "stepsize_s": 0})
    with pytest.raises(StudyError, match="system_loss_pct"):
        pv_profile_kw_per_kwp(**MANCHESTER, **MINUTE_DAY, system_loss_pct=100)


# --------------------------------------------------------------------- place_pv


@pytest.mark.parametrize(
    ("share", "n", "count"),
    [(0.0, 55, 0), (0.3, 55, 17), (0.5, 5, 3), (1.0, 55, 55), (0.25, 10, 3)],
)
def test_place_pv_count(share: float, n: int, count: int) -> None:
    customers = [f"load{i + 1}" for i in range(n)]
    placed = place_pv(customers, share=share, kwp=4.0, seed=1)
    assert len(placed) == count == math.floor(share * n + 0.5)
    assert set(placed) <= set(customers)
    assert all(v == 4.0 for v in placed.values())
    assert list(placed) == [c for c in customers if c in placed]  # feeder order


def test_place_pv_reproducible_and_sizes() -> None:
    customers = [f"load{i + 1}" for i in range(55)]
    a = place_pv(customers, share=0.4, kwp=(2.0, 6.0), seed=7)
    b = place_pv(customers, share=0.4, kwp=(2.0, 6.0), seed=7)
    c = place_pv(customers, share=0.4, kwp=(2.0, 6.0), seed=8)
    assert a == b and a != c
    assert all(2.0 <= v <= 6.0 for v in a.values())
    sizes = {name: float(i + 1) for i, name in enumerate(customers)}
    m = place_pv(customers, share=0.2, kwp=sizes, seed=7)
    assert all(v == sizes[k] for k, v in m.items())
    # the choice of customers does not depend on how sizes are given
    assert set(place_pv(customers, share=0.4, kwp=3.0, seed=7)) == set(a)


def test_place_pv_validation() -> None:
    with pytest.raises(StudyError, match="share"):
        place_pv(["a", "b"], share=1.5, kwp=4.0, seed=0)
    with pytest.raises(StudyError, match="share"):
        place_pv(["a", "b"], share=-0.1, kwp=4.0, seed=0)
    with pytest.raises(StudyError, match="kwp"):
        place_pv(["a", "b"], share=1.0, kwp=(5.0, 2.0), seed=0)
    with pytest.raises(StudyError, match="no kwp given"):
        place_pv(["a", "b"], share=1.0, kwp={"a": 3.0}, seed=0)
    with pytest.raises(StudyError, match="unique"):
        place_pv(["a", "A"], share=1.0, kwp=1.0, seed=0)


# ---------------------------------------------------------------------- battery


def test_battery_validation() -> None:
    with pytest.raises(StudyError, match="soc"):
        Battery(kwh=5, kw=2, soc0=0.95)
    with pytest.raises(StudyError, match="efficiency"):
        Battery(kwh=5, kw=2, efficiency=1.2)
    with pytest.raises(StudyError, match="kwh"):
        Battery(kwh=0, kw=2)


def test_self_consumption_hand_computed() -> None:
    """10 kWh / 2 kW, round trip 0.81 (0.9 each way), soc 0.5 in [0.1, 0.9], 1 h steps.

    charge 2 kW -> +0.18; 2 kW -> +0.18 (0.86); only 0.4444 kW fit (0.9);
    discharge 1 kW -> -1/9 (0.7889); 2, 2, 2 kW -> -2/9 each (0.1222); only 0.2 kW (0.1).
    """
    batt = Battery(kwh=10, kw=2, efficiency=0.81, soc0=0.5, soc_min=0.1, soc_max=0.9)
    net = np.array([-3.0, -3.0, -3.0, 1.0, 5.0, 5.0, 5.0, 5.0, 5.0])
    p, soc = dispatch_self_consumption(net, batt, 1.0)
    np.testing.assert_allclose(p, [2, 2, 0.4 / 0.9, -1, -2, -2, -2, -0.2, 0], atol=1e-12)
    np.testing.assert_allclose(
        soc,
        [
            0.5,
            0.68,
            0.86,
            0.9,
            0.9 - 1 / 9,
            0.9 - 3 / 9,
            0.9 - 5 / 9,
            0.9 - 7 / 9,
            0.1,
            0.1,
        ],
        atol=1e-12,
    )
    # energy balance: stored = 0.9 * charged - discharged / 0.9
    charged = p[p > 0].sum()
    discharged = -p[p < 0].sum()
    assert 10 * (soc[-1] - soc[0]) == pytest.approx(0.9 * charged - discharged / 0.9)


batteries = st.builds(
    lambda kwh, kw, eff, lo, span, pos: Battery(
        kwh=kwh,
        kw=kw,
        efficiency=eff,
        soc_min=lo,
        soc_max=lo + span * (1 - lo),
        soc0=lo + pos * span * (1 - lo),
    ),
    st.floats(0.5, 20),
    st.floats(0, 10),
    st.floats(0.5, 1.0),
    st.floats(0, 0.5),
    st.floats(0, 1),
    st.floats(0, 1),
)
profiles = arrays(np.float64, st.integers(1, 60), elements=st.floats(-15, 15, width=32))
prices = arrays(np.float64, 60, elements=st.floats(0.0, 0.5, width=32))


@settings(max_examples=150, deadline=None)
@given(net=profiles, batt=batteries, dt_h=st.sampled_from([1 / 60, 0.25, 1.0]), lp=prices)
def test_battery_limits_balance_and_self_consumption(
    net: np.ndarray, batt: Battery, dt_h: float, lp: np.ndarray
) -> None:
    eta = math.sqrt(batt.efficiency)
    for p, soc in (
        dispatch_self_consumption(net, batt, dt_h),
        dispatch_p2p(net, lp[: net.size], 0.30, 0.05, batt, dt_h),
    ):
        assert p.shape == net.shape and soc.shape == (net.size + 1,)
        assert soc[0] == batt.soc0
        assert (soc >= batt.soc_min).all() and (soc <= batt.soc_max).all()
        assert (np.abs(p) <= batt.kw + 1e-12).all()
        stored = (np.where(p > 0, p * eta, p / eta) * dt_h).sum()
        assert batt.kwh * (soc[-1] - soc[0]) == pytest.approx(stored, abs=1e-9 * (1 + batt.kwh))
    p, _ = dispatch_self_consumption(net, batt, dt_h)
    after = net + p
    # never imports to charge nor exports from the battery; grid import and export shrink
    assert (np.sign(p) * np.sign(net) <= 0).all()
    assert (np.maximum(after, 0) <= np.maximum(net, 0) + 1e-12).all()
    assert (np.maximum(-after, 0) <= np.maximum(-net, 0) + 1e-12).all()


def test_self_consumption_reduces_grid_import_on_pv_day(june_utc: np.ndarray) -> None:
    load = 0.4 + 0.8 * np.exp(-(((np.arange(1440) - 19 * 60) / 90.0) ** 2))  # evening peak
    net = load - 4.0 * june_utc
    p, soc = dispatch_self_consumption(net, Battery(kwh=5, kw=2.5), 1 / 60)
    before = np.maximum(net, 0).sum() / 60
    after = np.maximum(net + p, 0).sum() / 60
    assert after < before - 1.0  # at least 1 kWh less imported
    assert soc.max() == pytest.approx(0.9)  # the PV surplus fills the battery


def test_p2p_dispatch_follows_price() -> None:
    batt = Battery(kwh=10, kw=2, efficiency=1.0, soc0=0.5)
    net = np.array([1.0, 1.0, -1.0, -1.0])
    # cheap -> charge at kW even with own demand; dear -> discharge at kW even with surplus
    p, _ = dispatch_p2p(net, [0.10, 0.10, 0.25, 0.25], 0.30, 0.05, batt, 1.0)
    np.testing.assert_allclose(p, [2, 2, -2, -2])
    # at the mid price it is self-consumption
    mid, _ = dispatch_p2p(net, 0.175, 0.30, 0.05, batt, 1.0)
    sc, _ = dispatch_self_consumption(net, batt, 1.0)
    np.testing.assert_allclose(mid, sc)


def test_battery_dispatch_two_dimensional() -> None:
    rng = np.random.default_rng(2)
    net = rng.normal(0, 3, (96, 3))
    batts = [
        Battery(kwh=5, kw=2),
        Battery(kwh=10, kw=3, soc0=0.2),
        Battery(kwh=2, kw=1),
    ]
    p, soc = dispatch_self_consumption(net, batts, 0.25)
    assert p.shape == (96, 3) and soc.shape == (97, 3)
    for j, b in enumerate(batts):
        pj, sj = dispatch_self_consumption(net[:, j], b, 0.25)
        np.testing.assert_allclose(p[:, j], pj)
        np.testing.assert_allclose(soc[:, j], sj)
    with pytest.raises(StudyError, match="one Battery per customer"):
        dispatch_self_consumption(net, batts[:2], 0.25)
    with pytest.raises(ProfileError, match="NaN"):
        dispatch_self_consumption(np.array([np.nan]), batts[0], 0.25)
