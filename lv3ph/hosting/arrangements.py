"""Phase arrangements for hosting capacity: as-built, static re-phasing, dynamic switching."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

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
) -> tuple[list[str], dict[str, Any] | None]:
    """``(commands, switching)`` for :func:`hosting_capacity` under ``arrangement``.

    ``as-built``: nothing. ``static-rebalanced``: OpenDSS edits for one re-phasing from the
    customers' load profiles (:func:`lv3ph.phases.rebalance`; PV placements are random, so
    the arrangement cannot depend on them). ``dynamic``: phase selector switches on the
    movable customers (``switching``: share, interval_s, max_ops_per_day, objective, seed),
    scheduled from the load forecast for the same reason.
    """
    if arrangement not in ARRANGEMENTS:
        raise StudyError(f"unknown arrangement {arrangement!r} for hosting capacity (known: {', '.join(ARRANGEMENTS)})")
    if arrangement == "as-built":
        return [], None
    if arrangement == "dynamic":
        return [], {"share": 1.0, "interval_s": 900.0, "max_ops_per_day": 4, "objective": "neutral", "seed": 0} | dict(
            switching or {}
        )
    from lv3ph.phases import arrangement_commands, rebalance

    engine, model = open_feeder(model_path, vmaxpu=vmaxpu, commands=tuple(commands))
    names, load_kw, _ = engine.load_setpoints(run.mode, run.stepsize_s, run.start, run.steps)
    order = [names.index(c.name) for c in model.customers]
    edits, _ = arrangement_commands(model, rebalance(model, load_kw[:, order], objective=objective))  # type: ignore[arg-type]
    return edits, None
