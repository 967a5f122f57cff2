"""Validation against the published OpenDSS reference solution of the IEEE EU LV feeder,
and the four-wire twin's equivalence with it (phase-to-neutral = published phase-to-earth)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lv3ph import run_powerflow
from tests.conftest import IEEE, IEEE_4W

REF = Path(__file__).parent / "data" / "ieee_reference"
BASE_V = 416.0 / np.sqrt(3.0)
CASES = {1: "Snapshot_1min_Initialization_Off_Peak", 566: "Snapshot_566min_On_Peak", 1440: "Snapshot_1440min_End"}


def published(minute: int) -> pd.DataFrame:
    """Published |V| (V) per LV bus (rows) and phase 1..3 (columns)."""
    df = pd.read_csv(REF / f"{CASES[minute]}__Voltages.csv", dtype={"Bus": str})
    df = df[df.Bus.str.upper() != "SOURCEBUS"].set_index("Bus")
    return df[["Magnitude1", "Magnitude2", "Magnitude3"]].set_axis([1, 2, 3], axis=1)


def phase_neutral_magnitudes(minute: int, model: Path) -> pd.DataFrame:
    pf = run_powerflow(model, mode="yearly", stepsize="1m", start=minute, steps=1, vmaxpu=1.5, progress=False)
    v = pf.voltage.isel(time=0)
    vn = v.sel(terminal=4).fillna(0) if 4 in v.terminal else 0
    vpn = np.abs(v.sel(terminal=[1, 2, 3]) - vn)
    return pd.DataFrame(vpn.values, index=v.bus.values, columns=[1, 2, 3])


@pytest.mark.parametrize("minute", [1, 566, 1440])
def test_ieee_matches_published_solution(minute: int) -> None:
    ref = published(minute)
    ours = phase_neutral_magnitudes(minute, IEEE).loc[ref.index]
    assert ref.size == 2718
    err_pu = np.abs(ours.values - ref.values) / BASE_V
    assert err_pu.max() < 1e-4, f"worst bus-phase {err_pu.max():.2e} pu"


def test_four_wire_twin_reproduces_published_minute_566() -> None:
    ref = published(566)
    ours = phase_neutral_magnitudes(566, IEEE_4W).loc[ref.index]
    err_pu = np.abs(ours.values - ref.values) / BASE_V
    assert err_pu.max() < 1e-4, f"worst bus-phase {err_pu.max():.2e} pu"
