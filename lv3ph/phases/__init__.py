"""Phase rebalancing and dynamic phase switching of single-phase customers.

Two ways to fight phase imbalance on a four-wire LV feeder:

* **Static rebalancing** (:func:`rebalance`, :func:`rebalance_plan`): one re-phasing of
  single-phase customers for the whole study period (a field crew moves service
  connections once). The search runs on a cheap *proxy* of the imbalance computed from
  the customers' net powers (:func:`proxy_objective`), never on the power flow; the
  physical effect of an arrangement is then checked with the real OpenDSS power flow
  (:func:`evaluate_arrangement`).
* **Dynamic switching** (Horta et al. 2018, single-phase prosumers fitted with phase
  selector switches): at every interval (e.g. 15 min) the switch-equipped customers are
  greedily moved to the phase that most reduces the interval's proxy imbalance, with a
  cap on switching operations per customer per day (:func:`switching_schedule`). The
  decisions use the known profiles of the interval, i.e. a **perfect forecast** of the
  customers' net positions (the market outcome is taken as known at decision time).
  :func:`run_switching` solves the schedule in OpenDSS.


Modules, by what each does:

* :mod:`lv3ph.phases.customers`: which customers can change phase, their profiles;
* :mod:`lv3ph.phases.proxy`: the proxy objectives and their fast evaluation;
* :mod:`lv3ph.phases.rebalance`: static rebalancing (greedy + local search, MILP);
* :mod:`lv3ph.phases.switching`: dynamic switching schedules;
* :mod:`lv3ph.phases.switchable`: the switchable model and its per-step setter;
* :mod:`lv3ph.phases.evaluate`: re-phasing edits solved by OpenDSS, feeder metrics.


Reference: Horta et al. (2018), dynamic phase switching of single-phase prosumers with
phase selector switches (reassignment at fixed intervals from the prosumers' net
positions, cap on the number of switching operations).
"""

from lv3ph.phases.customers import (
    Objective,
    Stat,
    as_built,
    choose_switches,
    customer_profiles,
    movable_customers,
)
from lv3ph.phases.evaluate import arrangement_commands, evaluate_arrangement, feeder_metrics, head_currents
from lv3ph.phases.proxy import proxy_objective
from lv3ph.phases.rebalance import MILP_POLYGON_SIDES, RebalancePlan, rebalance, rebalance_plan
from lv3ph.phases.switchable import (
    PhaseMover,
    make_switchable,
    run_switching,
    switchable_commands,
    switchable_customers,
    switching_setter,
)
from lv3ph.phases.switching import (
    as_built_schedule,
    pv_aware_schedule,
    schedule_objective,
    switching_operations,
    switching_schedule,
)

__all__ = [
    "MILP_POLYGON_SIDES",
    "Objective",
    "PhaseMover",
    "RebalancePlan",
    "Stat",
    "arrangement_commands",
    "as_built",
    "as_built_schedule",
    "choose_switches",
    "customer_profiles",
    "evaluate_arrangement",
    "feeder_metrics",
    "head_currents",
    "make_switchable",
    "movable_customers",
    "proxy_objective",
    "pv_aware_schedule",
    "rebalance",
    "rebalance_plan",
    "run_switching",
    "schedule_objective",
    "switchable_commands",
    "switchable_customers",
    "switching_operations",
    "switching_schedule",
    "switching_setter",
]
