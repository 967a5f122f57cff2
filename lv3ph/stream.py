"""Long runs in bounded memory: the power flow streamed into a store, block by block.

A run is cut into blocks of ``block_steps`` steps on a grid fixed to step 1 (block ``j``
holds steps ``j * block_steps + 1 ... (j + 1) * block_steps``), each solved by one
:meth:`lv3ph.dss.Engine.run` call. That call starts OpenDSS's iteration afresh, so every
block gives the same numbers bit for bit whether the run was solved in one go, resumed
after a kill, or split over processes. Each block is captured at the chosen level, its
EN 50160 interval values computed (:mod:`lv3ph.en50160`; ``block_steps`` is a multiple of
the interval so intervals never straddle blocks) and appended to a zarr store
(:class:`lv3ph.io.BlockStore`); then it is dropped. At the end the per-week statistics are
computed from the stored interval values, the store is marked complete and renamed.

Capture levels (every level also has the feeder totals per step of
:func:`lv3ph.powerflow.feeder_totals`, the customer extremes per step ``customer_v_min_v``,
``customer_v_max_v``, ``customer_vuf_max_pct``, ``customer_pvur_max_pct``, and the EN 50160
interval values and weekly statistics):

* ``full``: the Dataset of :func:`lv3ph.powerflow.capture` merged with
  :func:`lv3ph.unbalance.unbalance` (what ``lv3ph powerflow`` always wrote).
* ``customers``: :func:`lv3ph.powerflow.capture_customers` plus VUF and PVUR at every
  customer (``customer_vuf_pct``, ``customer_pvur_pct``).
* ``stats``: nothing per element or customer per step; memory and disk independent of
  the number of steps but for the per-step totals (a few numbers per step).
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from lv3ph.dss import Engine
from lv3ph.en50160 import STEP_EXTREMES, En50160, customer_quality, interval_dataset, period_statistics
from lv3ph.errors import Lv3phError, ModelError
from lv3ph.io import BlockStore
from lv3ph.model import ComplexArray, FeederModel
from lv3ph.powerflow import (
    RunSpec,
    capture,
    capture_customers,
    capture_totals,
    customer_ports,
    feeder_totals,
    measured_devices,
    open_feeder,
    run_attrs,
)
from lv3ph.unbalance import unbalance

CAPTURES = ("full", "customers", "stats")


@dataclass(frozen=True)
class Feeder:
    """How to open the feeder (kept in the store so that a run can be resumed)."""

    model: str
    vmaxpu: float | None = None
    pme_ohm: float | None = None
    pme_customers: tuple[str, ...] | None = None
    commands: tuple[str, ...] = ()
    drop_isolated: bool = False

    def open(self) -> tuple[Engine, FeederModel]:
        return open_feeder(
            self.model,
            vmaxpu=self.vmaxpu,
            commands=self.commands,
            pme_ohm=self.pme_ohm,
            pme_customers=list(self.pme_customers) if self.pme_customers else None,
            drop_isolated=self.drop_isolated,
        )

    def to_attrs(self) -> dict[str, Any]:
        return {
            "feeder_model": str(Path(self.model).resolve()),
            "feeder_vmaxpu": "none" if self.vmaxpu is None else self.vmaxpu,
            "feeder_pme_ohm": "none" if self.pme_ohm is None else self.pme_ohm,
            "feeder_pme_customers": list(self.pme_customers) if self.pme_customers is not None else "none",
            "feeder_commands": list(self.commands),
            "feeder_drop_isolated": int(self.drop_isolated),
        }

    @classmethod
    def from_attrs(cls, a: dict[str, Any]) -> Feeder:
        def opt(key: str) -> Any:
            return None if a[key] == "none" else a[key]

        return cls(
            model=str(a["feeder_model"]),
            vmaxpu=opt("feeder_vmaxpu"),
            pme_ohm=opt("feeder_pme_ohm"),
            pme_customers=tuple(a["feeder_pme_customers"]) if a["feeder_pme_customers"] != "none" else None,
            commands=tuple(a["feeder_commands"]),
            drop_isolated=bool(a.get("feeder_drop_isolated", 0)),
        )


def default_block_steps(stepsize_s: float, config: En50160) -> int:
    """One day of steps (at least one), rounded down to whole aggregation intervals."""
    day = max(1, int(86400.0 // stepsize_s))
    per = config.steps_per_interval(stepsize_s)
    return max(per, day - day % per) if per else day


def check_block_steps(block_steps: int, stepsize_s: float, config: En50160) -> None:
    """Raise unless ``block_steps`` is a positive multiple of the steps per interval."""
    per = config.steps_per_interval(stepsize_s)
    if block_steps < 1:
        raise Lv3phError(f"--block-steps must be >= 1, got {block_steps}")
    if per and block_steps % per:
        raise Lv3phError(
            f"--block-steps {block_steps} is not a multiple of the {per} steps of one "
            f"{config.interval_s:g} s aggregation interval"
        )


def block_ranges(start: int, steps: int, block_steps: int) -> list[tuple[int, int]]:
    """``(first step, steps)`` of each block of a run, on the grid fixed to step 1."""
    out = []
    k, end = start, start + steps
    while k < end:
        nxt = min(end, ((k - 1) // block_steps + 1) * block_steps + 1)
        out.append((k, nxt - k))
        k = nxt
    return out


def fingerprint(model: FeederModel) -> str:
    """A short hash of the model's nodes and elements (a resumed run must solve the same feeder)."""
    text = (
        "|".join(model.nodes) + "#" + "|".join(model.element_names()) + "#" + "|".join(c.name for c in model.customers)
    )
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def capture_block(
    model: FeederModel,
    spec: RunSpec,
    vt: ComplexArray,
    measured: dict[str, ComplexArray],
    level: str,
    config: En50160,
) -> xr.Dataset:
    """One block (``spec`` = the block's steps) at capture ``level`` with its interval values."""
    v, vuf, pvur = customer_quality(model, vt)
    names = [c.name for c in model.customers]
    steps = np.arange(spec.start, spec.start + vt.shape[1])
    with np.errstate(all="ignore"):
        extremes = {
            f"customer_{name}": ("time", _nan_reduce(op, x), {"units": unit, "long_name": f"{what} (over customers)"})
            for name, op, x, unit, what in (
                ("v_min_v", np.fmin, v, "V", "lowest phase-to-neutral voltage"),
                ("v_max_v", np.fmax, v, "V", "highest phase-to-neutral voltage"),
                ("vuf_max_pct", np.fmax, vuf, "%", "highest VUF"),
                ("pvur_max_pct", np.fmax, pvur, "%", "highest PVUR"),
            )
        }
    if level == "full":
        pf = capture(model, spec, vt, measured)
        totals = capture_totals(spec, pf)
        ds = xr.merge([pf, unbalance(pf)], compat="override")
        ds = ds.assign({k: totals[k] for k in totals.data_vars if k not in ds})
    elif level == "customers":
        ds = capture_customers(model, spec, vt, measured)
        pad = np.full((vt.shape[1], ds.sizes["customer"] - len(names)), np.nan)  # orphan devices
        dims = ("time", "customer")
        ds = ds.assign(
            {
                "customer_vuf_pct": (
                    dims,
                    np.hstack([vuf, pad]),
                    {"units": "%", "long_name": "VUF at the customer's bus"},
                ),
                "customer_pvur_pct": (
                    dims,
                    np.hstack([pvur, pad]),
                    {"units": "%", "long_name": "PVUR at the customer's bus"},
                ),
            }
        )
    else:
        ds = feeder_totals(model, spec, vt)[2]
    ds = ds.assign(extremes)
    if config.steps_per_interval(spec.stepsize_s):
        # the capture's customers end with orphan devices: their interval values are NaN
        iv = interval_dataset(names, steps, spec.stepsize_s, v, vuf, pvur, config)
        ds = xr.merge([ds, iv], compat="override", join="left", combine_attrs="drop_conflicts")
    return ds.drop_attrs(deep=False)


def _nan_reduce(op: np.ufunc, x: np.ndarray) -> np.ndarray:
    """Reduce all but the first axis with ``op`` (fmin/fmax ignore NaN)."""
    flat = x.reshape(x.shape[0], -1)
    return np.asarray(op.reduce(flat, axis=1)) if flat.shape[1] else np.full(x.shape[0], np.nan)


def run_streamed(
    feeder: Feeder,
    spec: RunSpec,
    out: str | Path,
    *,
    capture_level: str = "full",
    block_steps: int | None = None,
    config: En50160 | None = None,
    progress: bool = True,
) -> Path:
    """Solve ``spec`` on ``feeder`` block by block into the store ``out`` (see the module docstring).

    Validation happens before anything is written. A bad input found while solving (a step
    that does not converge) removes the unfinished store; any other interruption leaves
    ``<out>.incomplete`` for :func:`resume`. Returns the path of the complete store.
    """
    cfg = config or En50160()
    if capture_level not in CAPTURES:
        raise Lv3phError(f"unknown capture {capture_level!r}: use one of {', '.join(CAPTURES)}")
    bs = block_steps if block_steps is not None else default_block_steps(spec.stepsize_s, cfg)
    check_block_steps(bs, spec.stepsize_s, cfg)
    engine, model = feeder.open()
    if spec.mode == "snap" and spec.steps != 1:
        raise ModelError("mode snap solves one step: use --steps 1")
    engine.check_profiles(spec.mode, spec.stepsize_s, spec.start, spec.steps, repeat=spec.repeat_profiles)
    attrs = {
        **run_attrs(model, spec, spec.steps),
        **feeder.to_attrs(),
        **cfg.to_attrs(),
        "capture": capture_level,
        "block_steps": bs,
        "repeat_profiles": int(spec.repeat_profiles),
        "model_fingerprint": fingerprint(model),
        "en50160_computed": int(cfg.steps_per_interval(spec.stepsize_s) is not None),
    }
    store = BlockStore.create(out, attrs)
    return _solve_into(store, engine, model, spec, capture_level, bs, cfg, out, progress)


def resume(out: str | Path, *, progress: bool = True) -> Path:
    """Finish the unfinished run of ``out`` with the settings it was started with."""
    store = BlockStore.reopen(out)
    a = store.attrs
    spec = RunSpec(
        mode=str(a["mode"]),
        stepsize_s=float(a["stepsize_s"]),
        start=int(a["start"]),
        steps=int(a["steps"]),
        repeat_profiles=bool(a["repeat_profiles"]),
    )
    engine, model = Feeder.from_attrs(a).open()
    if fingerprint(model) != a["model_fingerprint"]:
        raise ModelError(f"{a['feeder_model']} has changed since the run started: cannot resume {store.path}")
    return _solve_into(
        store, engine, model, spec, str(a["capture"]), int(a["block_steps"]), En50160.from_attrs(a), out, progress
    )


def _solve_into(
    store: BlockStore,
    engine: Engine,
    model: FeederModel,
    spec: RunSpec,
    level: str,
    block_steps: int,
    cfg: En50160,
    out: str | Path,
    progress: bool,
) -> Path:
    measure = measured_devices(customer_ports(model))
    done = store.progress()["time"]
    blocks = [b for b in block_ranges(spec.start, spec.steps, block_steps) if b[0] >= spec.start + done]

    def solved(bar: Any) -> Iterator[tuple[int, ComplexArray, dict[str, ComplexArray]]]:
        for k0, n in blocks:
            vt, measured = engine.run(
                spec.mode,
                spec.stepsize_s,
                k0,
                n,
                measure=measure,
                on_step=lambda _k: bar.update(),
                repeat_profiles=spec.repeat_profiles,
            )
            yield k0, vt, measured

    with tqdm(
        total=spec.steps, initial=done, desc="power flow", unit="step", delay=2.0, disable=not progress, leave=False
    ) as bar:
        return _fill(store, model, spec, level, block_steps, cfg, out, solved(bar))


def write_captured(
    model: FeederModel,
    spec: RunSpec,
    vt: ComplexArray,
    measured: dict[str, ComplexArray],
    out: str | Path,
    *,
    capture_level: str,
    block_steps: int | None = None,
    config: En50160 | None = None,
) -> Path:
    """Write a run already solved in memory (``vt`` (n_nodes, steps), V) as a store at
    ``capture_level``, block by block, exactly as :func:`run_streamed` lays it out."""
    cfg = config or En50160()
    bs = block_steps if block_steps is not None else default_block_steps(spec.stepsize_s, cfg)
    check_block_steps(bs, spec.stepsize_s, cfg)
    attrs = {
        **run_attrs(model, spec, spec.steps),
        **cfg.to_attrs(),
        "capture": capture_level,
        "block_steps": bs,
        "repeat_profiles": int(spec.repeat_profiles),
        "model_fingerprint": fingerprint(model),
    }
    blocks = (
        (
            k0,
            vt[:, k0 - spec.start : k0 - spec.start + n],
            {d: m[k0 - spec.start : k0 - spec.start + n] for d, m in measured.items()},
        )
        for k0, n in block_ranges(spec.start, spec.steps, bs)
    )
    return _fill(BlockStore.create(out, attrs), model, spec, capture_level, bs, cfg, out, blocks)


def _fill(
    store: BlockStore,
    model: FeederModel,
    spec: RunSpec,
    level: str,
    block_steps: int,
    cfg: En50160,
    out: str | Path,
    blocks: Iterable[tuple[int, ComplexArray, dict[str, ComplexArray]]],
) -> Path:
    """Capture and append every block, add the weekly statistics, finish the store.

    Pipelined: a worker thread captures and appends block ``k`` while ``blocks`` yields
    (OpenDSS solves) block ``k + 1``; block ``k + 1`` is handed over only once block ``k``
    is in the store, so at most two blocks are in memory and the store and its progress
    grow block by block in order, as without the thread. The worker starts by setting up
    what the first capture needs (imports, kernels, matrices) while the first block is solved.
    """
    chunks = {"time": block_steps}
    per = cfg.steps_per_interval(spec.stepsize_s)
    if per:
        chunks["interval"] = block_steps // per

    def write(k0: int, vt: ComplexArray, measured: dict[str, ComplexArray]) -> None:
        block = capture_block(model, replace(spec, start=k0, steps=vt.shape[1]), vt, measured, level, cfg)
        store.append(block, chunks)

    try:
        with _switching(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="lv3ph-capture") as worker:
            pending = worker.submit(_warm_up, model, spec, level)
            for k0, vt, measured in blocks:
                pending.result()
                pending = worker.submit(write, k0, vt, measured)
                del vt, measured  # the worker holds the block now
            pending.result()
        if per:
            names = ["v10_v", "vuf10_pct", "pvur10_pct", *STEP_EXTREMES]
            iv = store.read(names)
            store.add(period_statistics(iv.sel(customer=[c.name for c in model.customers]), cfg))
    except Lv3phError:
        store.discard()
        raise
    return store.finish(out)


#: GIL switch interval while a block is captured beside the solve, s (Python's default 5 ms
#: would let the capture's Python parts hold the solving thread for up to 5 ms per OpenDSS call).
SWITCH_INTERVAL_S = 1e-4


_switch_lock = threading.Lock()
_switch_users: list[float] = []  # the interval to restore, once per run in progress


@contextlib.contextmanager
def _switching() -> Iterator[None]:
    """:data:`SWITCH_INTERVAL_S` while any run of the process is in :func:`_fill`."""
    with _switch_lock:
        _switch_users.append(sys.getswitchinterval())
        sys.setswitchinterval(min(_switch_users[0], SWITCH_INTERVAL_S))
    try:
        yield
    finally:
        with _switch_lock:
            old = _switch_users.pop()
            if not _switch_users:
                sys.setswitchinterval(old)


def _warm_up(model: FeederModel, spec: RunSpec, level: str) -> None:
    """One capture of a made-up step (1 V everywhere) and a first Dataset: loads the
    kernels, the lazy imports and the model's matrices that every block reuses."""
    vt = np.ones((model.n_nodes, 1), dtype=np.complex128)
    one = replace(spec, steps=1)
    ports = customer_ports(model)
    measured = {
        d: np.zeros((1, int(ports.n_phases[i])), dtype=np.complex128) for i in ports.measured for d in ports.measured[i]
    }
    with np.errstate(all="ignore"):
        if level == "full":
            capture(model, one, vt, measured)
        elif level == "customers":
            capture_customers(model, one, vt, measured)
        else:
            feeder_totals(model, one, vt)
        customer_quality(model, vt)
