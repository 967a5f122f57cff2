"""Stochastic (Monte Carlo) PV hosting capacity of an LV feeder, PVUR-aware.

What is computed
----------------
A *placement* is a random order of the feeder's single-phase customers, each with a random
PV size (kWp, uniform in ``kwp_range``), drawn from ``numpy.random.default_rng([seed,
placement])``: placement ``k`` is the same whatever the number of placements, the order in
which they run or the worker that runs them.

Penetration grows along that order: at a total of ``P`` kWp the first customers carry their
full size and the next one carries the remainder, so ``P`` runs continuously from 0 to the
placement's total kWp, adding customers one by one with the last one part-sized. The
*hosting capacity* of a placement is the largest ``P`` at which no enabled limit is violated
at any step of the run (voltage band, VUF, PVUR, neutral-to-earth voltage, line and
transformer thermal: :class:`lv3ph.unbalance.Limits`, same definitions as
:func:`lv3ph.unbalance.violations`), found to within ``step_kw``. The *binding limit* is
the worst violation (largest excess over its threshold, in units of the limit) at the first
failing level ``P_fail <= P + step_kw``: its check, item (bus or element) and step.

* ``search="scan"`` (default) follows that definition literally: it adds whole customers
  one by one, solving each level, until the first one that fails, then bisects inside that
  customer's size. ``search="bisect"`` bisects on ``P`` in ``[0, total]`` directly (fewer
  levels: about ``log2(total / step_kw)``), which is right only where violations grow
  monotonically with PV. On a four-wire feeder they often do not: PV on another phase
  pulls the shifted neutral back and *lowers* a phase-to-neutral voltage that an earlier
  customer had pushed over the limit, and PVUR falls again as the phases fill up. On the
  IEEE twin (source at 1.00 pu, PVUR off) bisection overshot the first violation in 27 of
  100 placements, by up to 105 kWp (median 25 kWp); ``tests/test_hosting.py`` builds a
  two-customer case by hand where bisection reports 18 kWp and the first violation is at
  7.2 kWp, and on its six-customer feeder PVUR binds at 2-10 kWp where bisection reports
  up to the whole 30 kWp.
* If no level up to the total fails, the placement is *censored*: ``hosting_kw`` is the
  total and ``binding_limit`` is ``"none"``.

What "violated" means is :mod:`lv3ph.hosting.criteria`: by default relative to the feeder
without PV, per item (``pre_existing="item"``), per step or on EN 50160 10-minute values
(``basis``). The PV may run with inverter controls (``controls``: Q(U), volt-watt, both,
through OpenDSS ``InvControl``; every step's control iterations are checked for
convergence, and the energy each customer's inverter did not deliver is reported), and the
customers may be re-phased statically or switched dynamically, PV-blind or PV-aware
(:mod:`lv3ph.hosting.arrangements`, :mod:`lv3ph.hosting.switching`).

Inverter controls and screening: the linearised prediction of the screening ignores the
inverters' reactive power (it over-predicts the voltage rise under Q(U)); its error factor
``alpha`` grows with the error seen, so more steps are kept, and the result level is, as
always, confirmed by a whole-window solve with the controls. The controls' state carries
over between solves (each solve starts its control iterations from the last state), so
:meth:`lv3ph.dss.Engine.add_inverter_control` iterates them to a tight var tolerance: the
converged state then depends on the step only, whichever steps were solved before
(``tests/test_hosting_controls.py`` checks it against an InvControl solved directly).

Cost
----
IEEE twin, 1440 one-minute steps (947 with PV output), source at 1.00 pu, PVUR off,
``search="scan"``: 29 levels per placement, most solved at 15-20 kept steps (up to ~110
next to the limit), plus one whole-window check; about 1 s per placement. Solving every
level on the whole window gives the same table 13x slower. Dynamic switching builds its
switchable engine once (not per candidate) and touches OpenDSS only at a switch; PV-aware
switching re-plans the schedule at every candidate level (~0.1-0.3 s each), which
dominates its cost. ``benchmarks/bench_hosting.py`` and README.md have the measured numbers.

Modules, by stage: :mod:`~lv3ph.hosting.settings` (validation), :mod:`~lv3ph.hosting.criteria`
(check values, base-relative thresholds), :mod:`~lv3ph.hosting.engine` (OpenDSS engine, PV devices,
evaluation), :mod:`~lv3ph.hosting.screening` (time-step screening), :mod:`~lv3ph.hosting.search`
(scan / bisection), :mod:`~lv3ph.hosting.placement` (one placement), :mod:`~lv3ph.hosting.runner`
(entry point, Dask), :mod:`~lv3ph.hosting.result`, :mod:`~lv3ph.hosting.arrangements`,
:mod:`~lv3ph.hosting.switching` (dynamic switching in the engine); plots:
:func:`lv3ph.report.plots.plot_hosting`.
"""

from lv3ph.hosting.arrangements import ARRANGEMENTS, arrangement_setup
from lv3ph.hosting.criteria import BASES, PRE_EXISTING, PRE_EXISTING_TOL
from lv3ph.hosting.result import HostingResult
from lv3ph.hosting.runner import hosting_capacity
from lv3ph.hosting.settings import CONTROLS, DEVICES, QU_CURVE, SEARCHES, VW_CURVE

__all__ = [
    "ARRANGEMENTS",
    "BASES",
    "CONTROLS",
    "DEVICES",
    "PRE_EXISTING",
    "PRE_EXISTING_TOL",
    "QU_CURVE",
    "SEARCHES",
    "VW_CURVE",
    "HostingResult",
    "arrangement_setup",
    "hosting_capacity",
]
