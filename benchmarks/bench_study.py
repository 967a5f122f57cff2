"""Scenarios per minute for the main study: serial vs a Dask LocalCluster of 2 workers.

Runs the last ``--scenarios`` scenarios of ``studies/eu_lv_p2p.toml`` (24 h at 1 minute):
* serial in this process, after one warm-up scenario (imports, numba cache, first arrays);
* on a fresh 2-worker cluster, cold (cluster start-up and each worker's imports included);
* on the same cluster again, warm.
Target: >= 1.7x. Results are checked to be identical.

Run: ``.venv/bin/python benchmarks/bench_study.py [--scenarios 6]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import dask
from dask.distributed import Client, LocalCluster

from lv3ph.parallel import WORKER_ENV
from lv3ph.study import load_study, run_scenario, run_scenarios, scenarios

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", type=int, default=6)
    parser.add_argument("--study", type=Path, default=ROOT / "studies/eu_lv_p2p.toml")
    args = parser.parse_args()
    spec = load_study(args.study)
    grid = scenarios(spec)[-args.scenarios :]  # the last ones have PV and markets
    run_scenarios(spec, grid[:1], serial=True, progress=False)
    t = time.perf_counter()
    serial = run_scenarios(spec, grid, serial=True, progress=False)
    t_serial = time.perf_counter() - t
    t = time.perf_counter()
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)  # as lv3ph.parallel does
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        cluster = LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, env=WORKER_ENV
        )
    with cluster, Client(cluster) as client:
        cold = client.gather([client.submit(run_scenario, spec, sc, pure=False) for sc in grid])
        t_cold = time.perf_counter() - t
        t = time.perf_counter()
        warm = client.gather([client.submit(run_scenario, spec, sc, pure=False) for sc in grid])
        t_warm = time.perf_counter() - t
    same = all(a.summary == b.summary == c.summary for a, b, c in zip(serial, cold, warm, strict=True))
    n = len(grid)
    print(f"{n} scenarios of {spec.name} ({spec.run.steps} steps each), 2 cores")
    print(f"{'serial (warm process)':<34} {t_serial:7.1f} s  {60 * n / t_serial:6.1f} scenarios/min")
    print(
        f"{'Dask 2 workers, cold (incl. start)':<34} {t_cold:7.1f} s  {60 * n / t_cold:6.1f} scenarios/min  {t_serial / t_cold:.2f}x"
    )
    print(
        f"{'Dask 2 workers, warm':<34} {t_warm:7.1f} s  {60 * n / t_warm:6.1f} scenarios/min  {t_serial / t_warm:.2f}x"
    )
    print(f"(target >= 1.7x; identical results serial / cold / warm: {same})")


if __name__ == "__main__":
    main()
