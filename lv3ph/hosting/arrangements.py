"""Phase arrangements for hosting capacity: as-built, static re-phasing, dynamic switching."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import ArrayLike

from lv3ph.errors import StudyError
from lv3ph.powerflow import RunSpec, open_feeder

ARRANGEMENTS: Final[tuple[str, ...]] = ("as-built", "static-rebalanced", "dynamic")


def arrangement_setup(
    model_path: str | Path,
    arrangement: str,
    *,
    run: RunSpec,
    vmaxpu: float | None = None,
    commands: Sequence[str] = (),
    objective: str = "pvur",
    switching: Mapping[str, Any] | None = None,
    pv_aware: bool = False,
    expected_kwp: float = 5.5,
    pv_profile: ArrayLike | None = None,
) -> tuple[list[str], dict[str, Any] | None]:
    """``(commands, switching)`` for :func:`hosting_capacity` under ``arrangement``.

    ``as-built``: nothing. ``static-rebalanced``: OpenDSS edits for one re-phasing
    (:func:`lv3ph.phases.rebalance`) from the customers' load profiles; with ``pv_aware``
    from their net demand with the PV one expects before knowing the placement:
    ``expected_kwp`` (default the middle of 3-8 kWp) at every single-phase customer,
    following ``pv_profile`` (per step of ``run``, kW per kWp; default the clear-sky
    profile of :func:`hosting_capacity`). ``dynamic``: phase selector switches on the
    movable customers (``switching``: share, interval_s, max_ops_per_day, objective, seed),
    scheduled from the load forecast, or with ``pv_aware`` at every candidate level from
    the net demand with that level's PV (:mod:`lv3ph.hosting.switching`).
    """
    if arrangement not in ARRANGEMENTS:
        raise StudyError(f"unknown arrangement {arrangement!r} for hosting capacity (known: {', '.join(ARRANGEMENTS)})")
    if arrangement == "as-built":
        return [], None
    if arrangement == "dynamic":
        return [], {"share": 1.0, "interval_s": 900.0, "max_ops_per_day": 4, "objective": "neutral", "seed": 0} | dict(
            switching or {}
        ) | {"pv_aware": bool(pv_aware)}
    from lv3ph.phases import arrangement_commands, rebalance

    engine, model = open_feeder(model_path, vmaxpu=vmaxpu, commands=tuple(commands))
    names, load_kw, _ = engine.load_setpoints(run.mode, run.stepsize_s, run.start, run.steps)
    order = [names.index(c.name) for c in model.customers]
    pv_kw = None
    if pv_aware:
        from lv3ph.hosting.settings import pv_profile_of

        prof = pv_profile_of(run, pv_profile, None)
        single = np.array([len(c.phases) == 1 for c in model.customers], dtype=float)
        pv_kw = np.outer(prof, single * float(expected_kwp))
    plan = rebalance(model, load_kw[:, order], pv_kw, objective=objective)  # type: ignore[arg-type]
    edits, _ = arrangement_commands(model, plan)
    return edits, None
