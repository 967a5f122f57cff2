"""Shared fixtures: bundled models and small constructed feeders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

from lv3ph.powerflow import RunSpec
from lv3ph.unbalance import Limits

# CI runs the property-based tests on a fixed set of examples (reproducible verdicts);
# locally hypothesis explores new examples on every run.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

# an internal failure of lv3ph.cli.main raises (with its traceback) instead of printing one line
os.environ.setdefault("LV3PH_TRACEBACK", "1")

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "dss_models"
IEEE = MODELS / "ieee_eu_lv" / "Master.dss"
#: 90 minutes around noon for hosting runs on the IEEE twin, with a half-sine PV profile
IEEE_RUN_90 = RunSpec("yearly", 60.0, 690, 90)
IEEE_SUN_90 = np.clip(np.sin(np.linspace(0.2, 2.9, 90)), 0, None)


def ieee_90min_kw(**extra: object) -> dict[str, object]:
    """hosting_capacity arguments on :data:`IEEE_RUN_90`: 2 serial placements, source at
    1.0 pu, no PVUR limit, 0.5 kWp search step (``extra`` overrides)."""
    return {
        "run": IEEE_RUN_90,
        "limits": Limits(pvur_pct=None),
        "placements": 2,
        "seed": 3,
        "vmaxpu": 1.5,
        "pv_profile": IEEE_SUN_90,
        "commands": ["Edit Vsource.source pu=1.0"],
        "serial": True,
        "progress": False,
        "step_kw": 0.5,
    } | extra


IEEE_4W = MODELS / "ieee_eu_lv_4wire" / "Master.dss"
IEEE_4W_PME = MODELS / "ieee_eu_lv_4wire" / "Master_PME.dss"
SHARED = ROOT.parent / "shared" / "data"
ENWL_F1 = SHARED / "enwl_4wire" / "network_1" / "Feeder_1" / "Master.dss"


@pytest.fixture(scope="session")
def enwl_feeder1() -> Path:
    """ENWL network 1 feeder 1 (four-wire, CC BY-NC: read from ../shared, never shipped)."""
    if not ENWL_F1.is_file():
        pytest.skip("../shared/data/enwl_4wire not available")
    return ENWL_F1


def write_feeder(folder: Path, text: str, name: str = "Master.dss") -> Path:
    """Write a small OpenDSS model into ``folder`` and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


#: A two-customer four-wire feeder: 11 kV source, Dyn transformer, 2 lines, loads on phases a and b,
#: an earth electrode at customer 2 (so the neutral/earth network has a loop).
TWO_CUSTOMER = """
clear
set defaultbasefrequency=50
new circuit.two basekv=11 pu=1.0 isc3=3000 isc1=5
new transformer.tx buses=[sourcebus 1.1.2.3.4] conns=[delta wye] kvs=[11 0.416] kvas=[100 100] xhl=4 %r=0.5
new reactor.earth_tx phases=1 bus1=1.4 bus2=1.0 R=1 X=0
new linecode.lc nphases=4 units=km rmatrix=[0.3 | 0 0.3 | 0 0 0.3 | 0 0 0 0.6] xmatrix=[0.08 | 0 0.08 | 0 0 0.08 | 0 0 0 0.08]
new line.l1 bus1=1.1.2.3.4 bus2=2.1.2.3.4 phases=4 linecode=lc length=0.2 units=km
new line.l2 bus1=2.1.2.3.4 bus2=3.1.2.3.4 phases=4 linecode=lc length=0.15 units=km
new load.c1 phases=1 bus1=2.1.4 kv=0.23 kw=4 pf=0.95 vminpu=0.8 vmaxpu=1.2
new load.c2 phases=1 bus1=3.2.4 kv=0.23 kw=6 pf=0.95 vminpu=0.8 vmaxpu=1.2
new reactor.pme_c2 phases=1 bus1=3.4 bus2=3.0 R=20 X=0
set voltagebases=[11 0.416]
calcvoltagebases
"""


#: Stiff 416 V source with its neutral earthed at the source only; two 4-wire line sections
#: (phase r = 0.2 ohm, neutral r = 0.5 ohm, no mutuals); a seller at bus b2 and a buyer at
#: bus b3, both on phase a, unity power factor.
HAND = """
clear
set defaultbasefrequency=50
new circuit.hand basekv=0.416 pu=1.0 isc3=1e8 isc1=1e8 bus1=s.1.2.3
new reactor.earth phases=1 bus1=s.4 bus2=s.0 R=0 X=1e-9
new linecode.lc nphases=4 units=km rmatrix=[0.2 | 0 0.2 | 0 0 0.2 | 0 0 0 0.5] xmatrix=[0.05 | 0 0.05 | 0 0 0.05 | 0 0 0 0.05]
new line.l1 bus1=s.1.2.3.4 bus2=b2.1.2.3.4 phases=4 linecode=lc length=1 units=km
new line.l2 bus1=b2.1.2.3.4 bus2=b3.1.2.3.4 phases=4 linecode=lc length=1 units=km
new load.seller phases=1 bus1=b2.1.4 kv=0.24 kw=-4 pf=1 vminpu=0.5 vmaxpu=1.5
new load.buyer phases=1 bus1=b3.1.4 kv=0.24 kw=6 pf=1 vminpu=0.5 vmaxpu=1.5
set voltagebases=[0.416]
calcvoltagebases
"""
