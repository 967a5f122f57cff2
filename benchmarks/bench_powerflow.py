"""Power flow with full capture vs OpenDSS's own yearly solve, same process, same steps.

Baseline: ``set mode=yearly stepsize=1m number=1440; solve`` (OpenDSS alone, nothing read),
on the same engine state as lv3ph's (monitors and energy meters disabled, as lv3ph does);
the model as shipped, with its monitors sampled, is printed for reference.
lv3ph: the same 1440 steps solved one by one (convergence checked at each step), all node
voltages read per step, then currents, losses (phase / neutral / earth), customer powers
and the xarray Dataset built in bulk. Both sides are warmed up once (imports, numba cache,
first solve) and timed as the best of ``--repeat`` runs.

Run: ``.venv/bin/python benchmarks/bench_powerflow.py``
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")

from lv3ph.powerflow import RunSpec, capture, open_feeder

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "IEEE EU LV (3-wire)": ROOT / "dss_models/ieee_eu_lv/Master.dss",
    "IEEE EU LV 4-wire twin": ROOT / "dss_models/ieee_eu_lv_4wire/Master.dss",
}


def native_seconds(path: Path, steps: int, monitors: bool = False) -> float:
    engine, _ = open_feeder(path, vmaxpu=1.5)
    if monitors:  # the model as shipped: OpenDSS samples its monitors and meters every step
        engine.command("batchedit monitor..* enabled=yes")
        engine.command("batchedit energymeter..* enabled=yes")
    t = time.perf_counter()
    engine.command(f"set mode=yearly stepsize=1m number={steps}")
    engine.dss.Solution.Solve()
    return time.perf_counter() - t


def lv3ph_seconds(path: Path, steps: int) -> tuple[float, float]:
    engine, model = open_feeder(path, vmaxpu=1.5)
    spec = RunSpec("yearly", 60.0, 1, steps)
    t = time.perf_counter()
    vt, measured = engine.run(spec.mode, spec.stepsize_s, spec.start, spec.steps, measure=[])
    t_solve = time.perf_counter() - t
    capture(model, spec, vt, measured)
    return time.perf_counter() - t, t_solve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1440)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(
        f"{'feeder':<26} {'OpenDSS (monitors on)':>22} {'OpenDSS yearly':>15} {'lv3ph solve loop':>17} "
        f"{'lv3ph + capture':>16} {'ratio':>6}"
    )
    for label, path in MODELS.items():
        native_seconds(path, 10)
        lv3ph_seconds(path, 10)
        native = min(native_seconds(path, args.steps) for _ in range(args.repeat))
        shipped = min(native_seconds(path, args.steps, monitors=True) for _ in range(args.repeat))
        runs = [lv3ph_seconds(path, args.steps) for _ in range(args.repeat)]
        total, loop = min(runs)
        print(
            f"{label:<26} {shipped:>20.3f} s {native:>13.3f} s {loop:>15.3f} s {total:>14.3f} s {total / native:>6.2f}"
        )
    print(
        f"({args.steps} one-minute steps; best of {args.repeat}; ratio = lv3ph + capture / OpenDSS yearly; target <= 1.5)"
    )


if __name__ == "__main__":
    main()
