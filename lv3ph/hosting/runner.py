"""Entry point of a hosting-capacity run: placements in this process or on Dask."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from numpy.typing import ArrayLike

from lv3ph.hosting.criteria import PRE_EXISTING_TOL
from lv3ph.hosting.engine import Context, cache, context
from lv3ph.hosting.placement import placement_task, run_placement
from lv3ph.hosting.result import RESULT_COLUMNS, HostingResult
from lv3ph.hosting.settings import Job, chosen_checks, pv_profile_of, validate
from lv3ph.parallel import run_jobs
from lv3ph.powerflow import RunSpec
from lv3ph.unbalance import Limits


def hosting_capacity(
    model_path: str | Path,
    *,
    run: RunSpec,
    limits: Limits | Mapping[str, Any],
    placements: int,
    seed: int,
    kwp_range: tuple[float, float] = (3.0, 8.0),
    pv_profile: ArrayLike | None = None,
    pv_settings: Mapping[str, Any] | None = None,
    checks: Sequence[str] | None = None,
    vmaxpu: float | None = None,
    pme_ohm: float | None = None,
    commands: Sequence[str] = (),
    customers: Sequence[str] | None = None,
    step_kw: float = 0.5,
    screening: bool = True,
    screen_steps: int = 3,
    search: str = "scan",
    pre_existing: str = "item",
    basis: str = "step",
    tolerance: Mapping[str, float] | None = None,
    controls: str | None = None,
    device: str = "pvsystem",
    serial: bool = False,
    workers: int = 2,
    scheduler: str | None = None,
    progress: bool = True,
    label: str | None = None,
    switching: Mapping[str, Any] | None = None,
) -> HostingResult:
    """Monte Carlo PV hosting capacity of a feeder (see the module docstring for the method).

    Args:
        model_path: OpenDSS master file.
        run: time window (``daily`` or ``yearly`` mode, step size, first step, steps).
        limits: :class:`~lv3ph.unbalance.Limits` or a mapping for ``Limits.from_dict``;
            every limit that is not None is checked (unless ``checks`` narrows them).
        placements: number of random placements (>= 1).
        seed: placement ``k`` draws from ``numpy.random.default_rng([seed, k])``.
        kwp_range: PV size per customer, uniform in ``[low, high]`` kWp.
        pv_profile: PV output per step of the run, kW per kWp (the AC output of 1 kWp).
        pv_settings: or keyword arguments of :func:`lv3ph.prosumers.pv_profile_kw_per_kwp`
            (default: clear sky at the feeder's default site, Manchester, on 2024-06-21).
        checks: subset of :data:`lv3ph.unbalance.CHECKS` to apply (default every enabled one).
        vmaxpu, pme_ohm, commands: as :func:`lv3ph.powerflow.open_feeder`.
        customers: candidate customers (default every single-phase customer).
        step_kw: resolution of the search, kWp.
        screening: solve candidates at the screened steps only (False: whole PV window).
        screen_steps: steps kept per screening criterion.
        search: ``scan`` (customer by customer until the first violation, then bisection
            inside that customer) or ``bisect`` (bisection on the total; faster, assumes
            violations grow monotonically with PV).
        pre_existing: ``item`` (base-relative per item), ``worsened`` (per item and step),
            ``exclude`` or ``count`` (absolute limits); see :mod:`lv3ph.hosting.criteria`.
        basis: ``step`` (every step) or ``en50160`` (10-minute values).
        controls: inverter controls of the PV through OpenDSS ``InvControl``: ``qu``
            (:data:`~lv3ph.hosting.settings.QU_CURVE`), ``vw`` (volt-watt,
            :data:`~lv3ph.hosting.settings.VW_CURVE`) or ``qu+vw``; None: unity power factor.
        tolerance: per limit, how much worse than without PV a pre-existing violation may
            get (V or %-points; default :data:`~lv3ph.hosting.criteria.PRE_EXISTING_TOL`).
        device: ``pvsystem`` or ``generator``.
        serial: run in this process instead of on Dask.
        workers: Dask worker processes (a ``LocalCluster``), unless ``scheduler`` is given.
        scheduler: address of a running Dask scheduler.
        progress: progress bar.
        label: the result's name in plots (default: the model file name).

    Raises:
        StudyError: bad settings (placements < 1, unknown or disabled limit, bad range ...).
        ProfileError: a PV profile of the wrong length, negative, NaN or all zero.
        ModelError: the model does not compile.
    """
    if not isinstance(limits, Limits):
        limits = Limits.from_dict(limits)
    validate(
        placements,
        seed,
        kwp_range,
        step_kw,
        workers,
        screen_steps,
        device,
        search,
        pre_existing,
        run,
        basis,
        tolerance,
        controls,
    )
    chosen = chosen_checks(limits, checks)
    profile = pv_profile_of(run, pv_profile, pv_settings)
    job = Job(
        model_path=str(Path(model_path).resolve()),
        vmaxpu=vmaxpu,
        pme_ohm=pme_ohm,
        commands=tuple(commands),
        run=run,
        limits=limits,
        checks=chosen,
        profile=profile,
        kwp_range=(float(kwp_range[0]), float(kwp_range[1])),
        step_kw=float(step_kw),
        screening=bool(screening),
        screen_steps=int(screen_steps),
        device=device,
        pre_existing=pre_existing,
        basis=basis,
        tolerance=tuple(sorted(dict(tolerance or {}).items())),
        search=search,
        seed=int(seed),
        customers=None if customers is None else tuple(c.lower() for c in customers),
        token=uuid.uuid4().hex,
        switching=None if switching is None else dict(switching),
        controls=controls,
    )
    t0 = time.perf_counter()
    ctx = context(job)  # validates the model and the customers here, before any worker starts
    pre = ctx.pre_existing
    try:
        if serial or placements == 1:
            outs = run_serial(ctx, placements, progress)
        else:
            outs = run_dask(job, placements, workers, scheduler, progress)
    finally:
        cache().pop(job.token, None)
    table = pd.DataFrame([o["row"] for o in outs], columns=RESULT_COLUMNS)
    steps = pd.DataFrame([s for o in outs for s in o["steps"]], columns=["placement", "step", "reasons"])
    orders = pd.DataFrame(
        [r for o in outs for r in o["order"]], columns=["placement", "rank", "customer", "phase", "kwp"]
    )
    curtailment = pd.DataFrame(
        [r for o in outs for r in o["curtailment"]],
        columns=["placement", "customer", "kwp", "pv_kwh", "curtailed_kwh"],
    )
    settings = {
        "model": job.model_path,
        "run": run,
        "limits": limits.to_dict(),
        "checks": chosen,
        "placements": placements,
        "seed": seed,
        "kwp_range": job.kwp_range,
        "step_kw": job.step_kw,
        "screening": job.screening,
        "screen_steps": job.screen_steps,
        "search": search,
        "pre_existing": pre_existing,
        "basis": basis,
        "controls": controls,
        "tolerance": PRE_EXISTING_TOL | dict(tolerance or {}),
        "device": device,
        "vmaxpu": vmaxpu,
        "pme_ohm": pme_ohm,
        "commands": job.commands,
        "pv_window": (int(ctx.window[0]), int(ctx.window[-1])),
        "pv_peak_kw_per_kwp": float(profile.max()),
        "candidates": len(ctx.names),
        "linearised_screening": ctx.screener.zsel is not None,
        "wall_seconds": time.perf_counter() - t0,
    }
    return HostingResult(
        placements=table,
        steps=steps,
        orders=orders,
        curtailment=curtailment,
        pre_existing=pre,
        settings=settings,
        label=label or Path(model_path).stem,
    )


def run_serial(ctx: Context, placements: int, progress: bool) -> list[dict[str, Any]]:
    from tqdm.auto import tqdm

    return [run_placement(ctx, p) for p in tqdm(range(placements), desc="placements", disable=not progress)]


def run_dask(job: Job, placements: int, workers: int, scheduler: str | None, progress: bool) -> list[dict[str, Any]]:
    results = run_jobs(
        placement_task,
        [(job, p) for p in range(placements)],
        workers=workers,
        scheduler=scheduler,
        desc="placements",
        progress=progress,
        keys=[f"hosting-{job.token}-{p}" for p in range(placements)],
    )
    return sorted(results, key=lambda r: r["row"]["placement"])
