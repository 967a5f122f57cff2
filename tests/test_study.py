"""Study runner: file validation, scenario grid, serial vs Dask, outputs, device physics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lv3ph.errors import StudyError
from lv3ph.study import load_study, run_scenario, run_scenarios, scenarios, write_outputs
from tests.conftest import IEEE_4W


def study_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "study.toml"
    path.write_text(body)
    return path


SMALL = f"""
[study]
name = "small"
model = "{IEEE_4W}"
vmaxpu = 1.5
out = "out"
seed = 5

[time]
mode = "yearly"
stepsize = "1m"
start = 715
steps = 12

[pv]
kwp = [4.0, 6.0]

[allocation]
methods = ["exact", "phase-only", "pro-rata"]

[scenarios]
pv_share = [0.5]
market = ["community-auction", "bilateral:same-phase-first"]
battery = ["off", "self-consumption"]
"""


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = study_file(
        tmp_path,
        f"""
[study]
name = "bad"
model = "{IEEE_4W}"
colour = "red"
[time]
steps = 10
[scenarios]
pv_share = [0.2, 2.0]
market = ["none", "barter"]
battery = ["maybe"]
[allocation]
methods = ["exact", "guess"]
[extras]
x = 1
""",
    )
    with pytest.raises(StudyError) as err:
        load_study(path)
    msg = str(err.value)
    for fragment in (
        "unknown key [study].colour",
        "unknown table [extras]",
        "[scenarios].pv_share must be in [0, 1], got 2.0",
        "unknown market 'barter'",
        "unknown strategy 'maybe'",
        "unknown method 'guess'",
    ):
        assert fragment in msg


def test_scenario_grid_and_names(tmp_path: Path) -> None:
    spec = load_study(
        study_file(
            tmp_path,
            SMALL.replace(
                'battery = ["off", "self-consumption"]', 'battery = ["off", "self-consumption"]\npme_ohm = [0, 20]'
            ),
        )
    )
    grid = scenarios(spec)
    assert len(grid) == 1 * 2 * 2 * 2
    assert len({s.name for s in grid}) == len(grid)
    assert "pv50_community-auction_bat-off_pme-20" in {s.name for s in grid}


def test_pv_and_battery_devices_follow_their_set_points(tmp_path: Path) -> None:
    """Each customer's drawn power in OpenDSS = load - PV + battery charging (kW)."""
    spec = load_study(study_file(tmp_path, SMALL))
    sc = next(s for s in scenarios(spec) if s.battery == "self-consumption")
    r = run_scenario(spec, sc)
    s = r.series
    drawn = s.load_kw - s.pv_kw + s.battery_kw  # set-points summed over customers
    # the measured total draw is the source power minus losses
    measured = s.source_p_kw - s.loss_total_kw
    assert np.allclose(drawn.values, measured.values, rtol=1e-3, atol=0.05)
    assert float(s.pv_kw.max()) > 10 and float(np.abs(s.battery_kw).max()) > 0.5


def test_serial_and_dask_give_identical_numbers_and_complete_outputs(tmp_path: Path) -> None:
    spec = load_study(study_file(tmp_path, SMALL))
    grid = scenarios(spec)
    serial = run_scenarios(spec, grid, serial=True, progress=False)
    parallel = run_scenarios(spec, grid, serial=False, workers=2, progress=False)
    assert [r.scenario.name for r in serial] == [r.scenario.name for r in parallel]
    for a, b in zip(serial, parallel, strict=True):
        assert a.summary == b.summary
        pd.testing.assert_frame_equal(a.allocation, b.allocation)
        assert a.series.identical(b.series)
    contracts = serial[0].allocation[~serial[0].allocation.contract.str.startswith("grid:")]
    assert len(contracts) > 0
    report = write_outputs(spec, serial)
    out = spec.out
    assert report == out / "report.html" and report.stat().st_size > 10_000
    for r in serial:
        for f in ("series.nc", "allocation.csv", "bills.csv", "violations.csv"):
            assert (out / r.scenario.name / f).is_file()
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.scenario) == [s.name for s in grid]
    assert not list(out.rglob("*.tmp"))


def test_hosting_study_file(tmp_path: Path) -> None:
    body = f"""
[study]
name = "h"
model = "{IEEE_4W}"
[hosting]
placements = 3
kwp = [2.0, 4.0]
source_pu = 1.0
[scenarios]
arrangement = ["as-built", "dynamic"]
"""
    with pytest.raises(StudyError, match="unknown arrangement 'rotated'"):
        load_study(study_file(tmp_path, body.replace(', "dynamic"', ', "rotated"')))
    spec = load_study(study_file(tmp_path, body))
    assert spec.hosting is not None and spec.hosting.kwp == (2.0, 4.0) and spec.hosting.source_pu == 1.0
    assert spec.arrangement == ("as-built", "dynamic")


LONG = f"""
[study]
name = "long"
model = "{IEEE_4W}"
vmaxpu = 1.5
out = "out"

[time]
start = 1431
steps = 20
repeat_profiles = REPEAT

[limits]
basis = "en50160"

[output]
capture = "stats"
block_steps = 10

[scenarios]
pv_share = [0.0]
"""


def test_repeated_profiles_en50160_basis_and_streamed_capture(tmp_path: Path) -> None:
    from lv3ph.errors import ProfileError
    from lv3ph.io import open_result

    spec = load_study(study_file(tmp_path, LONG.replace("REPEAT", "false")))
    with pytest.raises(ProfileError, match="covers 24 h but the run ends at 24.1667 h"):
        run_scenario(spec, scenarios(spec)[0])
    spec = load_study(study_file(tmp_path, LONG.replace("REPEAT", "true")))
    r = run_scenario(spec, scenarios(spec)[0])
    assert r.summary["repeat_profiles"] == "yes" and any("repeated" in n for n in r.notes)
    assert r.summary["limits_basis"] == "en50160"
    # basis en50160: voltage band, VUF and PVUR are judged on 10-minute values, not per step
    assert not set(r.violations.check) & {"voltage_high", "voltage_low", "vuf", "pvur"}
    assert list(r.en50160.columns[:2]) == ["customer", "week"] and len(r.en50160) == 55
    store = open_result(spec.out / r.scenario.name / "powerflow.zarr")
    assert store.attrs["capture"] == "stats" and store.sizes["time"] == 20 and store.sizes["interval"] == 2
    assert np.array_equal(store.vuf_p95_pct.values[0], r.en50160.vuf_p95_pct.values)
    assert r.summary["en50160_noncompliant_customers"] == int((r.en50160.compliant == "no").sum())


def test_bad_output_and_basis_are_reported(tmp_path: Path) -> None:
    body = LONG.replace("REPEAT", "1").replace('"stats"', '"everything"').replace("block_steps = 10", "block_steps = 7")
    body = body.replace('basis = "en50160"', 'basis = "weekly"') + "[en50160]\ninterval_s = 0\n"
    with pytest.raises(StudyError) as err:
        load_study(study_file(tmp_path, body))
    msg = str(err.value)
    for part in ("[time].repeat_profiles", "[output].capture", "[output].block_steps", "limits.basis", "[en50160]"):
        assert part in msg, part


def test_hosting_study_variants(tmp_path: Path) -> None:
    """[hosting] criterion / basis / controls / pv_aware: one run per variant, labelled;
    PV-aware planning does not apply to the as-built arrangement."""
    body = f"""
[study]
name = "h"
model = "{IEEE_4W}"
[hosting]
placements = 3
criterion = "item"
basis = "en50160"
controls = ["none", "qu"]
pv_aware = [false, true]
[scenarios]
arrangement = ["as-built", "dynamic"]
"""
    spec = load_study(study_file(tmp_path, body))
    h = spec.hosting
    assert h is not None and h.basis == "en50160" and h.criterion == "item"
    assert [v[0] for v in h.variants("as-built")] == ["as-built", "as-built+qu"]
    assert [v[0] for v in h.variants("dynamic")] == ["dynamic", "dynamic+qu", "dynamic-pv-aware", "dynamic-pv-aware+qu"]
    with pytest.raises(StudyError, match=r"\[hosting\].basis: unknown 'hourly'"):
        load_study(study_file(tmp_path, body.replace('"en50160"', '"hourly"')))
