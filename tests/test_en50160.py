"""EN 50160 aggregation: pandas resample reference, constructed verdicts, OpenDSS's own sequence voltages."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lv3ph.en50160 import En50160, aggregate, customer_quality, en50160_table, interval_values
from lv3ph.errors import StudyError
from lv3ph.powerflow import open_feeder
from tests.conftest import IEEE_4W_PME


@pytest.mark.parametrize("how", ["rms", "mean"])
def test_interval_values_equal_pandas_resample(how: str) -> None:
    rng = np.random.default_rng(3)
    start, steps = 7, 95  # starts and ends mid-interval: partial first and last intervals
    x = 230 + 10 * rng.standard_normal((steps, 2))
    k = np.arange(start, start + steps)
    # step k stands for [(k - 1) * 60 s, k * 60 s): label it with its start and resample (bins from midnight)
    t0 = pd.Timestamp("2024-01-01")
    df = pd.DataFrame(x, index=t0 + pd.to_timedelta((k - 1) * 60.0, unit="s"))
    sq = np.sqrt((df**2).resample("10min").mean()) if how == "rms" else df.resample("10min").mean()
    idx, n, agg, lo, hi = interval_values(x, k, 60.0, 600.0, how)  # type: ignore[arg-type]
    assert list(idx) == list(((sq.index - t0).total_seconds() // 600).astype(int))
    assert list(n) == list(df.resample("10min").count()[0])
    assert n[0] == 4 and n[-1] == 1 and (n[1:-1] == 10).all()
    np.testing.assert_allclose(agg, sq.to_numpy(), rtol=1e-13)
    np.testing.assert_array_equal(lo, df.resample("10min").min().to_numpy())
    np.testing.assert_array_equal(hi, df.resample("10min").max().to_numpy())


def _period(v: list[float], vuf: list[float] | None = None) -> pd.Series:
    """Verdict of one customer over one period of len(v) 10-minute values (step = interval)."""
    n = len(v)
    cfg = En50160(interval_s=600.0, period_s=600.0 * n)
    volts = np.array(v, dtype=float)[:, None, None]
    u = np.array(vuf if vuf is not None else [0.5] * n, dtype=float)[:, None]
    _, periods = aggregate(volts, u, u / 2, start=1, stepsize_s=600.0, customers=["c"], config=cfg)
    return en50160_table(periods).iloc[0]


def test_exactly_95_percent_in_band_is_compliant() -> None:
    # 190 of 200 values at 230 V, 10 at 200 V: inside +10/-15 % (195.5 V) but outside +/-10 % (207 V)
    row = _period([230.0] * 190 + [200.0] * 10)
    assert row.v_within_band_pct == 95.0 and row.compliant == "yes"
    assert row.v10_min_v == 200.0 and row.v10_max_v == 230.0
    row = _period([230.0] * 189 + [200.0] * 11)  # 94.5 %
    assert row.v_within_band_pct == 94.5 and row.compliant == "no"


def test_one_value_outside_the_envelope_is_not_compliant() -> None:
    assert _period([230.0] * 199 + [195.0]).compliant == "no"  # 99.5 % in band, but below 195.5 V
    assert _period([230.0] * 199 + [195.6]).compliant == "yes"
    assert _period([230.0] * 199 + [253.2]).compliant == "no"  # above 253 V (+10 % is both band and envelope)


def test_vuf_95th_percentile() -> None:
    ok = _period([230.0] * 200, vuf=[1.0] * 190 + [3.0] * 10)
    assert ok.vuf_p95_pct == 1.0 and ok.compliant == "yes"  # nearest rank: 95 % of the values <= 1 %
    bad = _period([230.0] * 200, vuf=[1.0] * 189 + [3.0] * 11)
    assert bad.vuf_p95_pct == 3.0 and bad.compliant == "no"


def test_weeks_and_pvur_limit() -> None:
    steps = 2 * 7 * 144  # two weeks of 10-minute steps
    v = np.full((steps, 1, 1), 230.0)
    v[7 * 144 + 5] = 180.0  # one bad value in week 2
    u = np.full((steps, 1), 0.5)
    pvur = np.full((steps, 1), 3.0)
    _, weeks = aggregate(v, u, pvur, start=1, stepsize_s=600.0)
    table = en50160_table(weeks)
    assert list(table.week) == [1, 2] and list(table.compliant) == ["yes", "no"]
    assert table.pvur_p95_pct.tolist() == [3.0, 3.0]  # EN 50160 has no PVUR limit: reported only
    _, weeks = aggregate(v, u, pvur, start=1, stepsize_s=600.0, config=En50160(pvur_pct=2.0))
    assert list(en50160_table(weeks).compliant) == ["no", "no"]


def test_bad_settings_are_reported() -> None:
    with pytest.raises(StudyError, match="interval_s"):
        En50160(interval_s=-1)
    with pytest.raises(StudyError, match="unknown en50160 key 'intervl'"):
        En50160.from_dict({"intervl": 600})
    with pytest.raises(StudyError, match="not a multiple of the step size"):
        aggregate(np.ones((4, 1, 1)), np.ones((4, 1)), np.ones((4, 1)), start=1, stepsize_s=900.0)


def test_customer_quality_against_opendss() -> None:
    """Phase-to-neutral voltage from the load's own terminal voltages; VUF from OpenDSS's
    bus sequence voltages (phase-to-earth: the neutral shift is common mode and moves V0 only)."""
    engine, model = open_feeder(IEEE_4W_PME, vmaxpu=1.5)
    vt, _ = engine.run("yearly", 60.0, 566, 1)
    v, vuf, pvur = customer_quality(model, vt)
    dss = engine.dss
    for c in model.customers[::9]:
        j = model.customers.index(c)
        dss.Circuit.SetActiveElement(f"load.{c.name}")
        term = np.asarray(dss.CktElement.Voltages()).ravel()  # phase, neutral (node-to-earth)
        assert v[0, j, 0] == pytest.approx(abs(term[0] - term[1]), rel=1e-9), c.name
        dss.Circuit.SetActiveBus(c.bus)
        seq = np.asarray(dss.Bus.SeqVoltages(), dtype=float)  # |V0|, |V1|, |V2|
        assert vuf[0, j] == pytest.approx(100 * seq[2] / seq[1], rel=1e-6, abs=1e-9), c.name
        nodes = list(dss.Bus.Nodes())
        volts = np.asarray(dss.Bus.Voltages()).ravel()
        pn = np.abs([volts[nodes.index(t)] - volts[nodes.index(4)] for t in (1, 2, 3)])
        assert pvur[0, j] == pytest.approx(100 * np.max(np.abs(pn - pn.mean())) / pn.mean(), rel=1e-9), c.name


def test_period_carries_the_per_step_extremes() -> None:
    steps = 7 * 1440  # one week of minutes
    v = np.full((steps, 1, 1), 230.0)
    v[100, 0, 0] = 190.0  # one minute low: the 10-minute rms stays above 226 V
    u = np.full((steps, 1), 0.5)
    u[200, 0] = 2.5
    _, week = aggregate(v, u, u, start=1, stepsize_s=60.0)
    assert float(week.week_v_step_min_v[0, 0]) == 190.0 and float(week.week_v_step_max_v[0, 0]) == 230.0
    assert float(week.week_vuf_step_max_pct[0, 0]) == 2.5
    assert float(week.v10_min_v[0, 0]) == pytest.approx(np.sqrt((9 * 230.0**2 + 190.0**2) / 10))
    assert bool(week.compliant[0, 0])  # per-step extremes do not decide EN 50160
