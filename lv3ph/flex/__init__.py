"""Flexible prosumers: EVs, shiftable demand and price-responsive batteries.

* :mod:`lv3ph.flex.devices` -- :class:`FlexSpec`, the seeded EV fleet (travel-statistics
  model), uncontrolled EV charging, shiftable-demand windows.
* :mod:`lv3ph.flex.lp` -- the LP device model shared with the OPF-cleared market.
* :mod:`lv3ph.flex.schedule` -- each customer's price-responsive schedule.
"""

from lv3ph.flex.devices import EvFleet, FlexSpec, dumb_ev_charging, ev_fleet, shift_windows
from lv3ph.flex.schedule import Fleet, FlexResult, interval_index, schedule, uncontrolled

__all__ = [
    "EvFleet",
    "Fleet",
    "FlexResult",
    "FlexSpec",
    "dumb_ev_charging",
    "ev_fleet",
    "interval_index",
    "schedule",
    "shift_windows",
    "uncontrolled",
]
