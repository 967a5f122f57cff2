"""Reports: figures (:mod:`~lv3ph.report.plots`) and the self-contained HTML page
(:mod:`~lv3ph.report.html`) of a study or a hosting-capacity run."""

from lv3ph.report.html import render_html, scenario_finding, write_hosting_report, write_report
from lv3ph.report.plots import (
    PHASE_COLOURS,
    PLOT_FILES,
    plot_allocation,
    plot_head_neutral_current,
    plot_hosting,
    plot_scenarios,
    plot_unbalance,
    plot_voltage_envelope,
)

__all__ = [
    "PHASE_COLOURS",
    "PLOT_FILES",
    "plot_allocation",
    "plot_head_neutral_current",
    "plot_hosting",
    "plot_scenarios",
    "plot_unbalance",
    "plot_voltage_envelope",
    "render_html",
    "scenario_finding",
    "write_hosting_report",
    "write_report",
]
