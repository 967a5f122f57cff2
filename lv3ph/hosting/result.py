"""The result of a hosting-capacity run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd
from numpy.typing import NDArray

RESULT_COLUMNS: Final[list[str]] = [
    "placement",
    "hosting_kw",
    "n_customers",
    "binding_limit",
    "item",
    "step",
    "value",
    "limit",
    "censored",
    "total_kw",
    "fail_kw",
    "evaluations",
    "full_checks",
    "n_kept_steps",
    "pv_kwh",
    "curtailed_kwh",
    "seconds",
    "cpu_seconds",
]


@dataclass
class HostingResult:
    """Hosting capacity of every placement.

    Attributes:
        placements: one row per placement: ``placement``, ``hosting_kw`` (largest total
            installed PV, kWp, with no violation), ``n_customers`` (customers with PV at that
            level; the last one may be part-sized), ``binding_limit`` (check of the worst
            violation at the first failing level, ``"convergence"`` if OpenDSS failed there,
            ``"none"`` if censored), ``item`` (bus or element), ``step`` (step index, -1 if
            censored), ``value`` / ``limit`` (in the check's unit), ``censored`` (no
            violation up to ``total_kw``), ``total_kw`` (the placement's full kWp),
            ``fail_kw`` (first failing level), ``evaluations`` (candidate levels solved),
            ``full_checks`` (whole-window checks; more than 1 means screening missed a step
            at first), ``n_kept_steps``, ``pv_kwh`` / ``curtailed_kwh`` (PV energy available and
            not delivered at the hosting capacity, with inverter controls; 0 without), ``seconds``
            (wall) and ``cpu_seconds`` (this process's CPU time: robust on a shared machine).
        steps: kept steps per placement: ``placement``, ``step``, ``reasons`` (``+``-joined:
            a check name = predicted worst for it; ``near_<check>`` = predicted within the
            widened margin of its threshold (``near_line_thermal``: a line's loading bound
            within 0.5 %-points of it); ``export`` = largest PV minus load (``export_a``..
            per phase without the linearisation); ``missed`` = found by a whole-window check).
        orders: the placements: ``placement``, ``rank``, ``customer``, ``phase``, ``kwp``.
        curtailment: with inverter controls, per placement and customer with PV at the
            hosting capacity: ``kwp``, ``pv_kwh`` (available over the PV window) and
            ``curtailed_kwh`` (not delivered); empty without controls.
        pre_existing: violations without PV inside the PV window (check, item, n_steps,
            first_step, last_step, worst_value, limit).
        settings: what was run (model, limits, run, seed, kwp_range, step_kw, ...).
        label: name used in plots.
    """

    placements: pd.DataFrame
    steps: pd.DataFrame
    orders: pd.DataFrame
    pre_existing: pd.DataFrame
    curtailment: pd.DataFrame = field(default_factory=pd.DataFrame)
    settings: dict[str, Any] = field(default_factory=dict)
    label: str = "hosting capacity"

    @property
    def kept_steps(self) -> NDArray[np.int64]:
        """Every step kept by the screening in any placement, sorted."""
        return np.unique(self.steps["step"].to_numpy(dtype=np.int64))

    @property
    def summary(self) -> dict[str, float | int]:
        """min, p5, median, mean, p95, max of ``hosting_kw`` (kWp) and the censored count."""
        hc = self.placements["hosting_kw"].to_numpy(dtype=float)
        return {
            "placements": int(hc.size),
            "min_kw": float(hc.min()),
            "p5_kw": float(np.percentile(hc, 5)),
            "median_kw": float(np.median(hc)),
            "mean_kw": float(hc.mean()),
            "p95_kw": float(np.percentile(hc, 95)),
            "max_kw": float(hc.max()),
            "censored": int(self.placements["censored"].sum()),
        }

    def binding_counts(self) -> pd.Series:
        """How many placements each limit bound."""
        return self.placements["binding_limit"].value_counts()

    def plot(self, path: str | Path, *others: HostingResult) -> Path:
        """Write a PNG (histogram and ECDF of ``hosting_kw``) of this result and ``others``."""
        from lv3ph.report.plots import plot_hosting

        return plot_hosting([self, *others], path)
