"""Scenarios per minute for the main study: serial vs a Dask LocalCluster of 2 workers.

Runs the first ``--scenarios`` scenarios of ``studies/eu_lv_p2p.toml`` (24 h at 1 minute)
both ways in the same process and prints the throughput and the speed-up (target >= 1.7x
on 2 cores). Results are checked to be identical.

Run: ``.venv/bin/python benchmarks/bench_study.py [--scenarios 6]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from lv3ph.study import load_study, run_scenarios, scenarios

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", type=int, default=6)
    parser.add_argument("--study", type=Path, default=ROOT / "studies/eu_lv_p2p.toml")
    args = parser.parse_args()
    spec = load_study(args.study)
    grid = scenarios(spec)[-args.scenarios :]  # the last ones have PV and markets
    run_scenarios(spec, grid[:1], serial=True, progress=False)  # warm-up: imports, numba cache
    t = time.perf_counter()
    serial = run_scenarios(spec, grid, serial=True, progress=False)
    t_serial = time.perf_counter() - t
    t = time.perf_counter()
    dask = run_scenarios(spec, grid, serial=False, workers=2, progress=False)
    t_dask = time.perf_counter() - t
    same = all(a.summary == b.summary for a, b in zip(serial, dask, strict=True))
    n = len(grid)
    print(f"{n} scenarios of {spec.name} ({spec.run.steps} steps each)")
    print(f"{'serial':<28} {t_serial:7.1f} s  {60 * n / t_serial:6.1f} scenarios/min")
    print(f"{'Dask LocalCluster, 2 workers':<28} {t_dask:7.1f} s  {60 * n / t_dask:6.1f} scenarios/min")
    print(f"speed-up {t_serial / t_dask:.2f}x (target >= 1.7x; includes cluster start-up); identical results: {same}")


if __name__ == "__main__":
    main()
