"""Fleet and split-run scaling on 2 cores: serial vs Dask workers, and one long run split.

1. **Fleet**: ``lv3ph.fleet.run_fleet`` with the ``window`` job (1440 one-minute steps) on a
   fleet of >= 8 feeders: the bundled ones (IEEE EU LV, its four-wire twin: faithful, PME,
   physical), the ENWL network-1 feeders from ``../shared`` (if present) and variants of them
   (PME at 20 ohm, the twin at 5 ohm PME), listed in a CSV. Timed: serially in this process
   (after one warm-up feeder); on a fresh ``LocalCluster`` of ``--workers`` processes, cold
   (start-up and each worker's imports included); on the same cluster again by its address,
   warm (the model files then travel with each job, as on a remote cluster). Tables are
   checked to be identical.
2. **One long run**: 1440 steps of the four-wire twin (``vmaxpu=1.5``). OpenDSS's own serial
   ``solve mode=yearly number=1440`` (nothing read; as ``bench_powerflow.py``) against lv3ph
   serial (solve loop + capture) and ``lv3ph.splitrun.solve_split`` with 2 blocks: this
   process solves the first while one Dask worker compiles the model and solves the second
   (warm: an already running worker; cold: a fresh ``LocalCluster``, as
   ``lv3ph powerflow --workers 2`` does). Results checked against the serial run.

Every time is the best of ``--repeat``. The machine is shared with other jobs: numbers move
by tens of percent from run to run.

Run: ``.venv/bin/python benchmarks/bench_fleet.py [--repeat 2] [--workers 2]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")

import dask
import numpy as np
import pandas as pd
from dask.distributed import LocalCluster

from lv3ph.fleet import FleetJob, run_fleet
from lv3ph.parallel import WORKER_ENV
from lv3ph.powerflow import RunSpec, capture, open_feeder
from lv3ph.splitrun import solve_split

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "enwl_4wire" / "network_1"
TWIN = ROOT / "dss_models" / "ieee_eu_lv_4wire" / "Master.dss"


def fleet_list(folder: Path) -> Path:
    """The benchmark fleet as a CSV list (model, feeder, settings)."""
    rows = [
        ("dss_models/ieee_eu_lv/Master.dss", "ieee", "1.5", ""),
        ("dss_models/ieee_eu_lv_4wire/Master.dss", "twin", "1.5", ""),
        ("dss_models/ieee_eu_lv_4wire/Master_PME.dss", "twin_pme20", "1.5", ""),
        ("dss_models/ieee_eu_lv_4wire/Master_physical.dss", "twin_physical", "1.5", ""),
        ("dss_models/ieee_eu_lv_4wire/Master.dss", "twin_pme5", "1.5", "5"),
        ("dss_models/ieee_eu_lv/Master.dss", "ieee_source", "", ""),
    ]
    if SHARED.is_dir():
        for f in ("Feeder_1", "Feeder_2"):
            rows += [(str(SHARED / f / "Master.dss"), f"enwl_{f}", "", ""), (str(SHARED / f / "Master.dss"), f"enwl_{f}_pme20", "", "20")]  # fmt: skip
    else:  # without ../shared: more variants of the bundled feeders
        rows += [
            ("dss_models/ieee_eu_lv_4wire/Master.dss", "twin_pme10", "1.5", "10"),
            ("dss_models/ieee_eu_lv_4wire/Master_physical.dss", "twin_physical_pme20", "1.5", "20"),
        ]
    text = "model,feeder,vmaxpu,pme_ohm\n" + "".join(
        f"{m if Path(m).is_absolute() else ROOT / m},{k},{v},{p}\n" for m, k, v, p in rows
    )
    path = folder / "fleet.csv"
    path.write_text(text)
    return path


def best(func: Callable[[], object], repeat: int) -> tuple[float, object]:
    out: object = None
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = func()
        times.append(time.perf_counter() - t)
    return min(times), out


def cluster(workers: int) -> LocalCluster:
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)  # as lv3ph.parallel does
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        return LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, env=WORKER_ENV
        )


def warm_up() -> None:
    """Imports, numba's cache and the first arrays of a process (run on every worker)."""
    from lv3ph.powerflow import run_powerflow

    run_powerflow(TWIN, vmaxpu=1.5, steps=10, progress=False)


def warm_workers(address: str) -> None:
    from dask.distributed import Client

    with Client(address) as client:  # as tasks (the worker's executor thread), not client.run
        workers = list(client.scheduler_info()["workers"])
        client.gather([client.submit(warm_up, pure=False, workers=[w]) for w in workers])


def table(res: object) -> pd.DataFrame:
    return res.table.drop(columns=["seconds"])  # type: ignore[attr-defined]


def bench_fleet(repeat: int, workers: int, steps: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        listing = fleet_list(Path(tmp))
        job = FleetJob(job="window", steps=steps)
        n = len(pd.read_csv(listing))
        out = Path(tmp) / "out"
        run_fleet(listing, FleetJob(job="window", steps=10), out, serial=True, progress=False)  # warm-up
        t_serial, serial = best(lambda: run_fleet(listing, job, out, serial=True, progress=False), repeat)
        t_cold, cold = best(lambda: run_fleet(listing, job, out, workers=workers, progress=False), repeat)
        with cluster(workers) as c:
            address = c.scheduler_address
            warm_workers(address)
            t_warm, warm = best(lambda: run_fleet(listing, job, out, scheduler=address, progress=False), repeat)
        same = table(serial).equals(table(cold)) and table(serial).equals(table(warm))
        per = float(serial.table.seconds.sum())  # type: ignore[attr-defined]
    print(f"fleet: {n} feeders, window job ({steps} one-minute steps each); best of {repeat}")
    print(f"  {'serial (this process)':<44} {t_serial:7.1f} s   (feeders alone: {per:.1f} s)")
    print(f"  {f'Dask {workers} workers, cold (cluster start incl.)':<44} {t_cold:7.1f} s   {t_serial / t_cold:.2f}x")
    print(f"  {f'Dask {workers} workers, warm (files travel)':<44} {t_warm:7.1f} s   {t_serial / t_warm:.2f}x")
    print(f"  identical tables serial / cold / warm: {same}")


def bench_split(repeat: int, steps: int) -> None:
    spec = RunSpec("yearly", 60.0, 1, steps)

    def native() -> float:
        engine, _ = open_feeder(TWIN, vmaxpu=1.5)
        t = time.perf_counter()
        engine.command(f"set mode=yearly stepsize=1m number={steps}")
        engine.dss.Solution.Solve()
        return time.perf_counter() - t

    def serial() -> tuple[float, object]:
        engine, model = open_feeder(TWIN, vmaxpu=1.5)
        t = time.perf_counter()
        vt, measured = engine.run(spec.mode, spec.stepsize_s, spec.start, spec.steps)
        pf = capture(model, spec, vt, measured)
        return time.perf_counter() - t, pf

    def split(scheduler: str | None) -> tuple[float, object]:
        engine, model = open_feeder(TWIN, vmaxpu=1.5)
        t = time.perf_counter()
        pf = solve_split(engine, model, spec, workers=2, vmaxpu=1.5, scheduler=scheduler, progress=False)
        return time.perf_counter() - t, pf

    native()
    serial()
    t_native = min(native() for _ in range(repeat))
    t_serial, pf = min((serial() for _ in range(repeat)), key=lambda r: r[0])
    t_cold, _ = min((split(None) for _ in range(repeat)), key=lambda r: r[0])
    with cluster(1) as c:
        warm_workers(c.scheduler_address)
        t_warm, pf2 = min((split(c.scheduler_address) for _ in range(repeat)), key=lambda r: r[0])
    v1, v2 = np.nan_to_num(pf.voltage.values), np.nan_to_num(pf2.voltage.values)  # type: ignore[attr-defined]
    err = float(np.abs(v1 - v2).max() / np.abs(v1).max())
    print(f"one long run: four-wire IEEE twin, {steps} one-minute steps; best of {repeat}")
    print(f"  {'OpenDSS yearly solve (serial, nothing read)':<48} {t_native:6.2f} s   1.00x")
    print(f"  {'lv3ph serial (solve loop + capture)':<48} {t_serial:6.2f} s   {t_serial / t_native:.2f}x")
    print(f"  {'lv3ph --workers 2, warm worker':<48} {t_warm:6.2f} s   {t_warm / t_native:.2f}x")
    print(f"  {'lv3ph --workers 2, cold (LocalCluster start)':<48} {t_cold:6.2f} s   {t_cold / t_native:.2f}x")
    print(f"  split vs serial: max |dV| / max |V| = {err:.1e}   (moonshot: warm <= 0.70x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=1440)
    parser.add_argument("--no-fleet", action="store_true")
    parser.add_argument("--no-split", action="store_true")
    args = parser.parse_args()
    if not args.no_split:
        bench_split(args.repeat, args.steps)
    if not args.no_fleet:
        bench_fleet(args.repeat, args.workers, args.steps)


if __name__ == "__main__":
    main()
