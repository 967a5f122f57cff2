"""OpenDSS run directly (a fresh opendssdirect context, no lv3ph code): the independent
reference the feeder tests compare lv3ph against."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import opendssdirect as odd


def as_complex(values: Any) -> np.ndarray:
    """OpenDSS's complex arrays as numpy complex (interleaved re, im without AdvancedTypes)."""
    a = np.asarray(values)
    return a if np.iscomplexobj(a) else a[0::2] + 1j * a[1::2]


def opendss_snapshot(path: Path, commands: Sequence[str] = ()) -> tuple[dict[str, complex], dict[str, float]]:
    """Compile ``path`` in a fresh OpenDSS context, run ``commands``, solve the snapshot:
    node voltages (V) by lower-case node name and each enabled power-delivery element's
    loss (kW), Faults included (OpenDSS's ``PDElements`` list leaves them out)."""
    dss = odd.NewContext()
    cwd = os.getcwd()
    try:
        dss.Text.Command(f'compile "{Path(path).resolve()}"')
        for cmd in commands:
            dss.Text.Command(cmd)
        dss.Text.Command("set mode=snap")
        dss.Solution.Solve()
    finally:
        os.chdir(cwd)
    assert dss.Solution.Converged()
    v = dict(zip((n.lower() for n in dss.Circuit.YNodeOrder()), as_complex(dss.Circuit.YNodeVArray()), strict=True))
    dss.Circuit.SetActiveClass("fault")
    names = list(dss.PDElements.AllNames()) + [f"fault.{n}" for n in dss.ActiveClass.AllNames()]
    losses = {}
    for name in names:
        dss.Circuit.SetActiveElement(name)
        if dss.CktElement.Enabled():
            losses[name.lower()] = float(as_complex(dss.CktElement.Losses())[0].real) / 1000.0
    return v, losses
