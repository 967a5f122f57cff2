"""Dynamic phase switching vs the static (as-built) run vs naive text-edit re-phasing.

Feeder: the IEEE EU LV four-wire twin (``dss_models/ieee_eu_lv_4wire/Master.dss``,
``vmaxpu=1.5``), its own 55 one-minute load profiles, no PV. Switches: a share of the
single-phase customers (default all 55), reassigned every 15 min with at most 4
operations per customer per day (:func:`lv3ph.phases.switching_schedule`, perfect
forecast of the profiles).

Timed (power-flow solve loop only, best of ``--repeat``, every engine warmed up first):

* ``static``: the as-built feeder, loads on their shapes (:func:`lv3ph.powerflow.solve_raw`).
* ``dynamic (three loads)``: :func:`lv3ph.phases.run_switching` on the switchable feeder:
  each switch-equipped customer is three phase Loads set per step through the fast API.
* ``text edit on change``: the as-built feeder, ``Load.x.bus1=...`` issued only when a
  customer's phase changes (the matrix is rebuilt at those steps only); all steps.
* ``naive text edit``: ``Load.x.bus1=...`` for every switch-equipped customer at every
  step (a rebuild per step); only ``--edit-steps`` steps are solved and the time is
  **extrapolated** linearly to all steps.

A second table shows what the re-phasing buys in physics (OpenDSS power flow + lv3ph
capture): as built, static rebalancing (proxy ``neutral`` and ``pvur``, greedy) and the
dynamic schedule.

Run: ``.venv/bin/python benchmarks/bench_switching.py``
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")

import numpy as np

from lv3ph import phases
from lv3ph.dss import Engine
from lv3ph.model import FeederModel
from lv3ph.powerflow import RunSpec, capture, open_feeder, solve_raw

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "dss_models/ieee_eu_lv_4wire/Master.dss"


def text_edit_hook(
    engine: Engine, model: FeederModel, schedule: np.ndarray, switches: list[str], start: int, every_step: bool
) -> Callable[[int], None]:
    """A before_step that re-phases the switch-equipped customers' Loads by text edits."""
    idx = model.customer_index()
    cols = [idx[n] for n in switches]
    buses = [model.customers[c].bus for c in cols]
    live = [model.customers[c].phases[0] for c in cols]

    def hook(k: int) -> None:
        row = schedule[k - start]
        for j, c in enumerate(cols):
            ph = int(row[c])
            if every_step or ph != live[j]:
                engine.command(f"Load.{switches[j]}.bus1={buses[j]}.{ph}.4")
                live[j] = ph

    return hook


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1440)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--share", type=float, default=1.0, help="share of single-phase customers with a switch")
    parser.add_argument("--interval", type=float, default=900.0, help="switching interval, s")
    parser.add_argument("--cap", type=int, default=4, help="switching operations per customer per day")
    parser.add_argument("--edit-steps", type=int, default=240, help="steps solved for the naive text edit")
    parser.add_argument("--no-effects", action="store_true", help="skip the physics table")
    args = parser.parse_args()
    run = RunSpec("yearly", 60.0, 1, args.steps)

    e_static, model = open_feeder(MODEL, vmaxpu=1.5)
    load_kw, load_kvar = phases.customer_profiles(e_static, model, run)
    switches = phases.choose_switches(model, share=args.share, seed=0)
    t = time.perf_counter()
    schedule = phases.switching_schedule(
        model, load_kw, None, switches, stepsize_s=run.stepsize_s, interval_s=args.interval,
        max_ops_per_day=args.cap, load_kvar=load_kvar,
    )  # fmt: skip
    t_schedule = time.perf_counter() - t
    ops = phases.switching_operations(
        schedule, stepsize_s=run.stepsize_s, initial=phases.as_built_schedule(model, 1)[0]
    )

    e_dyn, m_dyn = open_feeder(MODEL, vmaxpu=1.5)
    smodel = phases.make_switchable(e_dyn, m_dyn, switches)
    e_txt, m_txt = open_feeder(MODEL, vmaxpu=1.5)

    def static() -> object:
        return solve_raw(e_static, model, run, progress=False)

    def dynamic() -> object:
        return phases.run_switching(e_dyn, smodel, run, load_kw, None, schedule)

    def edit_on_change() -> object:
        hook = text_edit_hook(e_txt, m_txt, schedule, switches, run.start, every_step=False)
        try:
            return solve_raw(e_txt, m_txt, run, progress=False, before_step=hook)
        finally:  # back to as built
            e_txt.apply(
                [
                    f"Load.{n}.bus1={m_txt.customers[m_txt.customer_index()[n]].bus}.{phases.as_built(m_txt)[n]}.4"
                    for n in switches
                ]
            )

    n_edit = min(args.edit_steps, run.steps)
    edit_run = RunSpec(run.mode, run.stepsize_s, run.start, n_edit)

    def edit_every_step() -> object:
        hook = text_edit_hook(e_txt, m_txt, schedule, switches, run.start, every_step=True)
        return solve_raw(e_txt, m_txt, edit_run, progress=False, before_step=hook)

    warm = RunSpec(run.mode, run.stepsize_s, run.start, 10)
    solve_raw(e_static, model, warm, progress=False)
    phases.run_switching(e_dyn, smodel, warm, load_kw[:10], None, schedule[:10])
    solve_raw(e_txt, m_txt, warm, progress=False)

    t_static = best_of(args.repeat, static)
    t_dynamic = best_of(args.repeat, dynamic)
    t_change = best_of(args.repeat, edit_on_change)
    t_naive = best_of(args.repeat, edit_every_step) * run.steps / n_edit
    e_txt.apply(
        [
            f"Load.{n}.bus1={m_txt.customers[m_txt.customer_index()[n]].bus}.{phases.as_built(m_txt)[n]}.4"
            for n in switches
        ]
    )

    print(
        f"IEEE EU LV 4-wire twin, {run.steps} one-minute steps, {len(switches)} of "
        f"{len(phases.movable_customers(model))} single-phase customers with a switch, "
        f"interval {args.interval / 60:g} min, cap {args.cap}/day"
    )
    print(
        f"schedule: {t_schedule * 1000:.0f} ms to compute; {int(ops.sum())} switching operations, "
        f"max {int(ops.max())} per customer per day; {int((np.diff(schedule, axis=0) != 0).any(axis=1).sum())} steps with a switch"
    )
    print()
    print(f"{'variant':<34} {'steps solved':>12} {'time (s)':>9} {'ms/step':>8} {'vs static':>9}")
    rows = [
        ("static (as built, load shapes)", run.steps, t_static, ""),
        ("dynamic (three loads, fast API)", run.steps, t_dynamic, ""),
        ("text edit on change", run.steps, t_change, ""),
        ("naive text edit every step", n_edit, t_naive, f"  (extrapolated from {n_edit} steps)"),
    ]
    for label, solved, sec, note in rows:
        print(f"{label:<34} {solved:>12} {sec:>9.3f} {1000 * sec / run.steps:>8.3f} {sec / t_static:>8.2f}x{note}")
    print(f"(best of {args.repeat}; target dynamic/static <= 1.5x)")

    if args.no_effects:
        return
    print()
    vt, meas = static()  # type: ignore[misc]
    results = {"as built": phases.feeder_metrics(model, capture(model, run, vt, meas))}
    for objective in ("neutral", "pvur"):
        plan = phases.rebalance_plan(model, load_kw, None, objective=objective, load_kvar=load_kvar)  # type: ignore[arg-type]
        label = f"static rebalance ({objective}, {len(plan.moved)} moved)"
        results[label] = phases.evaluate_arrangement(e_static, model, run, plan.arrangement)
    vt, meas = dynamic()  # type: ignore[misc]
    results[f"dynamic ({int(ops.sum())} operations)"] = phases.feeder_metrics(smodel, capture(smodel, run, vt, meas))
    cols = [
        ("pvur_max_pct", "PVUR max %"),
        ("pvur_mean_pct", "PVUR mean %"),
        ("vuf_max_pct", "VUF max %"),
        ("head_neutral_max_a", "In max A"),
        ("head_neutral_mean_a", "In mean A"),
        ("neutral_loss_kwh", "N loss kWh"),
        ("loss_kwh", "loss kWh"),
        ("vmin_pn_v", "Vmin V"),
    ]
    print(f"{'arrangement':<40}" + "".join(f"{h:>12}" for _, h in cols))
    for label, r in results.items():
        print(f"{label:<40}" + "".join(f"{r[k]:>12.3f}" for k, _ in cols))
    print("(PVUR/VUF: worst bus per step; max and mean over the steps; In: neutral current of the head line)")


if __name__ == "__main__":
    main()
