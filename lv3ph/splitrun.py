"""One long power flow on many cores: the window split into contiguous blocks, one engine each.

Where the steps of a run are independent -- every set-point is known before the run (load
shapes, PV shapes) and no OpenDSS element carries state from one step to the next -- the
window ``start .. start + steps - 1`` is cut into ``workers`` contiguous blocks. Each block
has its own OpenDSS engine in its own process (the first block this process's, the others
local processes started for the run, or Dask workers given ``scheduler``), sets OpenDSS's
clock to its first step (step ``k`` is time ``k x stepsize``: :meth:`lv3ph.dss.Engine.run`),
solves its steps and hands back the node voltages; the blocks are joined in order and captured once
(:func:`lv3ph.powerflow.capture`), exactly as a serial run.

Why a block starts :data:`OVERLAP` steps early: OpenDSS solves each step iteratively from the
previous step's solution, so a block that started cold at its first step would converge to
the same solution only to within the solver tolerance (measured on the IEEE twin: 3.8e-8 of
the largest voltage). Solving a few steps before the block and discarding them gives the
next step the starting point a serial run has: measured on the IEEE twin, the first kept
step differs from the serial run by 9.9e-12 of the largest voltage after one warm-up step,
up to 1.8e-12 after two, and 1e-13 to 3e-13 after three to thirty (the floor of OpenDSS's own
iteration); :data:`OVERLAP` is 5. The first block starts at the run's first step as the
serial run does. Derived quantities inherit the difference amplified by the element's
admittance: losses and customer powers agree to ~5e-11 relative, conductor currents of
near-zero-impedance elements to ~1e-7 relative.

Refused (:class:`~lv3ph.errors.ModelError`, naming the elements): models with controls or
devices whose state at a step depends on earlier steps (:data:`STATEFUL`): inverter and
exponential controls, storage and its controllers, regulators, capacitor and switch controls,
protection (fuses, relays, reclosers), generator dispatchers, UPFC controls.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from hashlib import sha256
from multiprocessing import get_context
from pathlib import Path
from typing import Final

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from lv3ph.dss import Engine
from lv3ph.errors import ModelError
from lv3ph.model import ComplexArray, FeederModel
from lv3ph.modelpack import ModelPack, local_master, pack_model
from lv3ph.parallel import run_jobs, single_threaded
from lv3ph.powerflow import RunSpec, capture, customer_ports, measured_devices, open_feeder

#: Steps solved (and discarded) before each block but the first.
OVERLAP: Final[int] = 5

#: OpenDSS classes whose elements carry state from one step to the next, and why.
STATEFUL: Final[dict[str, str]] = {
    "invcontrol": "inverter control with delays and the previous step's operating point",
    "expcontrol": "exponential control with the previous step's operating point",
    "storage": "state of charge",
    "storagecontroller": "dispatch that follows the storage state",
    "regcontrol": "tap position and time delays",
    "capcontrol": "capacitor state and time delays",
    "swtcontrol": "switch state and time delays",
    "fuse": "fuse state",
    "relay": "relay state",
    "recloser": "recloser state",
    "gendispatcher": "dispatch state",
    "upfccontrol": "UPFC control state",
}


def stateful_elements(engine: Engine) -> dict[str, int]:
    """Enabled elements of the :data:`STATEFUL` classes in the compiled model, by class."""
    return {cls: n for cls, n in engine.enabled_counts(list(STATEFUL)).items() if n}


def blocks(start: int, steps: int, n: int) -> list[tuple[int, int]]:
    """``n`` contiguous blocks ``(first step, steps)`` covering the window (sizes differ by at most 1)."""
    sizes = [len(a) for a in np.array_split(np.arange(steps), max(1, min(n, steps)))]
    firsts = start + np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return [(int(f), int(s)) for f, s in zip(firsts, sizes, strict=True)]


@dataclass(frozen=True)
class _Block:
    """One block's job (picklable): model (path or pack), how to open it, what to solve."""

    model: str | ModelPack
    key: str  # identity of the model's files (digest of the pack, or path, size and mtime)
    vmaxpu: float | None
    commands: tuple[str, ...]
    pme_ohm: float | None
    pme_customers: tuple[str, ...] | None
    drop_isolated: bool
    mode: str
    stepsize_s: float
    first: int  # first step solved (warm-up included)
    start: int  # first step kept
    steps: int  # steps kept
    measure: tuple[str, ...]
    repeat_profiles: bool = False


_LOCAL = threading.local()


def _engine(b: _Block) -> Engine:
    """This thread's engine for the block's model and options: compiled on first use, then
    reused by later blocks of the same model (their warm-up steps make up for the state the
    engine was left in). One per thread: an OpenDSS context must not be shared."""
    key = (b.key, b.vmaxpu, b.commands, b.pme_ohm, b.pme_customers, b.drop_isolated)
    cached = getattr(_LOCAL, "engine", None)
    if cached is None or cached[0] != key:
        _LOCAL.engine = None
        with local_master(b.model) as path:
            engine, _ = open_feeder(
                path,
                vmaxpu=b.vmaxpu,
                commands=b.commands,
                pme_ohm=b.pme_ohm,
                pme_customers=list(b.pme_customers) if b.pme_customers is not None else None,
                drop_isolated=b.drop_isolated,
            )
        _LOCAL.engine = cached = (key, engine)
    return cached[1]


def _solve_block(b: _Block) -> tuple[ComplexArray, dict[str, ComplexArray]]:
    """Dask worker: this worker's engine for the model (compiled from the files sent with the
    block on first use), the block's warm-up steps and steps; keep the block's."""
    with single_threaded():
        skip = b.start - b.first
        vt, measured = _engine(b).run(
            b.mode, b.stepsize_s, b.first, skip + b.steps, measure=b.measure, repeat_profiles=b.repeat_profiles
        )
    return vt[:, skip:], {k: v[skip:] for k, v in measured.items()}


def solve_split(
    engine: Engine,
    model: FeederModel,
    spec: RunSpec,
    *,
    workers: int,
    vmaxpu: float | None = None,
    commands: Sequence[str] = (),
    pme_ohm: float | None = None,
    pme_customers: Sequence[str] | None = None,
    drop_isolated: bool = False,
    scheduler: str | None = None,
    progress: bool = True,
) -> xr.Dataset:
    """Solve ``spec`` in ``workers`` contiguous blocks in parallel and capture it as one run
    (:func:`solve_split_raw`, then :func:`lv3ph.powerflow.capture`)."""
    vt, measured = solve_split_raw(
        engine,
        model,
        spec,
        workers=workers,
        vmaxpu=vmaxpu,
        commands=commands,
        pme_ohm=pme_ohm,
        pme_customers=pme_customers,
        drop_isolated=drop_isolated,
        scheduler=scheduler,
        progress=progress,
    )
    return capture(model, spec, vt, measured)


def solve_split_raw(
    engine: Engine,
    model: FeederModel,
    spec: RunSpec,
    *,
    workers: int,
    vmaxpu: float | None = None,
    commands: Sequence[str] = (),
    pme_ohm: float | None = None,
    pme_customers: Sequence[str] | None = None,
    drop_isolated: bool = False,
    scheduler: str | None = None,
    progress: bool = True,
) -> tuple[ComplexArray, dict[str, ComplexArray]]:
    """Solve ``spec`` in ``workers`` contiguous blocks in parallel: node voltages
    (n_nodes, steps) and measured currents, as :func:`lv3ph.powerflow.solve_raw`.

    ``engine``/``model``: the feeder freshly compiled here with the same options (``vmaxpu``,
    ``commands``, ``pme_ohm``, ``pme_customers``, ``drop_isolated`` as
    :func:`lv3ph.powerflow.open_feeder`).

    ``engine`` solves the first block here while ``workers - 1`` local processes (or Dask
    workers of the cluster at ``scheduler``) each compile their own copy and solve one of the
    others; with ``scheduler`` the model files travel with the blocks (:mod:`lv3ph.modelpack`).

    The result equals :func:`lv3ph.powerflow.solve` on the same inputs to ~1e-12 of the
    largest voltage (module docstring).

    Raises:
        ModelError: the model has stateful controls or devices (names them), or ``snap`` mode.
        ProfileError: a load shape does not cover the window (checked before any block runs).
    """
    found = stateful_elements(engine)
    if found:
        what = "; ".join(f"{n} {cls} ({STATEFUL[cls]})" for cls, n in found.items())
        raise ModelError(
            f"{model.path}: cannot split the run across workers, steps depend on earlier steps: {what}; "
            "run it on one worker (--workers 1)"
        )
    if spec.mode == "snap":
        raise ModelError("mode snap solves one step: nothing to split (use --workers 1)")
    engine.check_profiles(spec.mode, spec.stepsize_s, spec.start, spec.steps, repeat=spec.repeat_profiles)
    source: str | ModelPack = pack_model(model.path) if scheduler else str(Path(model.path).resolve())
    if isinstance(source, ModelPack):
        key = sha256(source.data).hexdigest()
    else:
        st = Path(source).stat()
        key = f"{source}:{st.st_size}:{st.st_mtime_ns}"
    measure = tuple(measured_devices(customer_ports(model)))
    jobs = []
    for first, steps in blocks(spec.start, spec.steps, workers):
        warm = min(OVERLAP, first - spec.start)
        jobs.append(
            _Block(
                model=source,
                key=key,
                vmaxpu=vmaxpu,
                commands=tuple(commands),
                pme_ohm=pme_ohm,
                pme_customers=tuple(pme_customers) if pme_customers is not None else None,
                drop_isolated=drop_isolated,
                mode=spec.mode,
                stepsize_s=spec.stepsize_s,
                first=first - warm,
                start=first,
                steps=steps,
                measure=measure,
                repeat_profiles=spec.repeat_profiles,
            )
        )
    parts = _solve_blocks(engine, jobs, workers=workers, scheduler=scheduler, progress=progress)
    vt = np.concatenate([p[0] for p in parts], axis=1)
    measured = {name: np.concatenate([p[1][name] for p in parts], axis=0) for name in measure}
    return vt, measured


def _solve_blocks(
    engine: Engine, jobs: list[_Block], *, workers: int, scheduler: str | None, progress: bool
) -> list[tuple[ComplexArray, dict[str, ComplexArray]]]:
    """The first block on ``engine`` here (fresh, as a serial run) while the others run
    elsewhere: on ``workers - 1`` local processes (started for this run, each solving in its
    main thread), or on the Dask cluster at ``scheduler``.

    Blocks never share a process: two OpenDSS contexts of one process used from two threads
    at once crashed OpenDSS (segmentation fault in ``libdss_capi``); so did short-lived local
    Dask workers on this machine, which solve in a thread of their own (see the README).
    """
    rest: list[tuple[ComplexArray, dict[str, ComplexArray]]] = []
    failed: list[BaseException] = []
    pool: ProcessPoolExecutor | None = None
    background: threading.Thread | None = None
    if len(jobs) > 1 and scheduler:

        def others() -> None:
            try:
                rest.extend(
                    run_jobs(
                        _solve_block,
                        [(b,) for b in jobs[1:]],
                        scheduler=scheduler,
                        desc="blocks",
                        progress=False,
                        single_in_process=False,
                    )
                )
            except BaseException as exc:  # re-raised in the caller's thread
                failed.append(exc)

        background = threading.Thread(target=others, name="lv3ph-blocks")
        background.start()
    elif len(jobs) > 1:
        pool = ProcessPoolExecutor(max_workers=min(workers, len(jobs)) - 1, mp_context=get_context("spawn"))
    try:
        futures = [pool.submit(_solve_block, b) for b in jobs[1:]] if pool is not None else []
        first = jobs[0]
        with tqdm(
            total=first.steps, desc="power flow (block 1)", unit="step", delay=2.0, disable=not progress, leave=False
        ) as bar:
            head = engine.run(
                first.mode,
                first.stepsize_s,
                first.start,
                first.steps,
                measure=first.measure,
                on_step=lambda _k: bar.update(),
                repeat_profiles=first.repeat_profiles,
            )
        rest.extend(f.result() for f in futures)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if background is not None:
        background.join()
    if failed:
        raise failed[0]
    return [head, *rest]
