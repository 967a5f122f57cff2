"""Reports: figures (:mod:`~lv3ph.report.plots`), the feeder map (:mod:`~lv3ph.report.map`),
findings (:mod:`~lv3ph.report.findings`) and self-contained interactive HTML pages
(:mod:`~lv3ph.report.html`) of a study, a hosting-capacity run or a fleet of feeders."""

from lv3ph.report.findings import findings, scenario_finding
from lv3ph.report.html import fleet_page, fleet_report, render_html, write_hosting_report, write_report
from lv3ph.report.map import map_data, plot_feeder_map
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
    "findings",
    "fleet_page",
    "fleet_report",
    "map_data",
    "plot_allocation",
    "plot_feeder_map",
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
