"""Long runs on the four-wire IEEE twin: peak RSS and time per capture level vs OpenDSS alone.

Every measurement is a separate process (peak RSS from ``os.wait4``'s rusage of that child):

* ``opendss``: raw ``opendssdirect`` -- compile, monitors and energy meters off (as lv3ph's
  Engine does), ``vmaxpu=1.5``, snapshot, then ``set mode=yearly stepsize=1m number=N; solve``.
* ``lv3ph <capture>``: :func:`lv3ph.stream.run_streamed` of the same N steps (1-day
  profiles repeated) into a zarr store, blocks of one day.

``solve s`` is, for OpenDSS, the ``set mode=yearly ...; solve`` alone; for lv3ph, the whole
``run_streamed`` call but for its own compile and extraction of the model (``Feeder.open``,
timed inside the call and subtracted): it includes checking the load shapes, creating the
store, the step loop, the capture, the EN 50160 values, writing the store, the weekly
statistics and what the run first uses (xarray's import of dask, loading the numba kernel
from its cache, the model's matrices). Module imports and the model compile are excluded
on both sides; ``wall s`` is the whole child process (Python start-up, imports, compile
included). The numba kernels are compiled into their cache by an untimed run first (as the
model compile, a JIT compile is not part of a run). ``ratio`` = lv3ph / OpenDSS for the same
N. Best of ``--repeat`` per row; the load average is printed before and after (the 2-core
machine may be shared: compare ratios, not seconds).

Run: ``.venv/bin/python benchmarks/bench_longrun.py [--days 1,7,30] [--captures stats,customers,full] [--repeat 2]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "dss_models" / "ieee_eu_lv_4wire" / "Master.dss"


def child_opendss(steps: int) -> dict[str, float]:
    import opendssdirect as dss

    cwd = os.getcwd()
    dss.Text.Command(f'compile "{MODEL}"')
    os.chdir(cwd)
    for cmd in (
        "batchedit monitor..* enabled=no",
        "batchedit energymeter..* enabled=no",
        "batchedit load..* vmaxpu=1.5",
    ):
        dss.Text.Command(cmd)
    dss.Text.Command("set mode=snap")
    dss.Solution.Solve()
    t = time.perf_counter()
    dss.Text.Command(f"set mode=yearly stepsize=1m number={steps}")
    dss.Solution.Solve()
    return {"solve_s": time.perf_counter() - t}


def child_lv3ph(steps: int, capture: str, out: str) -> dict[str, float]:
    from lv3ph.powerflow import RunSpec
    from lv3ph.stream import Feeder, run_streamed

    compile_s: list[float] = []

    class TimedFeeder(Feeder):
        def open(self):  # type: ignore[no-untyped-def]
            t = time.perf_counter()
            opened = super().open()
            compile_s.append(time.perf_counter() - t)
            return opened

    spec = RunSpec("yearly", 60.0, 1, steps, repeat_profiles=True)
    t = time.perf_counter()
    run_streamed(TimedFeeder(str(MODEL), vmaxpu=1.5), spec, out, capture_level=capture, progress=False)
    return {"solve_s": time.perf_counter() - t - sum(compile_s)}


def measure(args: list[str]) -> tuple[float, float, float]:
    """(solve s, wall s, peak RSS GB) of one child process."""
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", *args], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if status != 0:
        raise SystemExit(f"child {args} failed ({status})")
    return json.loads(out.strip().splitlines()[-1])["solve_s"], wall, usage.ru_maxrss / 1024**2


def _load() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", default="1,7,30")
    parser.add_argument("--captures", default="stats,customers,full")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--child", nargs="+", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, steps = args.child[0], int(args.child[1])
        res = child_opendss(steps) if kind == "opendss" else child_lv3ph(steps, kind, args.child[2])
        print(json.dumps(res))
        return
    tmp = Path(tempfile.mkdtemp(prefix="lv3ph_longrun_"))
    print(f"load average before: {_load()}")
    measure(["stats", "10", str(tmp / "numba_cache.zarr")])  # untimed: compiles the numba kernels into their cache
    shutil.rmtree(tmp / "numba_cache.zarr", ignore_errors=True)
    print(f"{'days':>4} {'steps':>7} {'run':<16} {'solve s':>9} {'wall s':>8} {'peak RSS GB':>12} {'ratio':>6}")
    try:
        for days in [int(d) for d in args.days.split(",")]:
            steps = days * 1440
            native = min(measure(["opendss", str(steps)]) for _ in range(args.repeat))
            print(
                f"{days:>4} {steps:>7} {'OpenDSS yearly':<16} {native[0]:>9.1f} {native[1]:>8.1f} {native[2]:>12.2f}",
                flush=True,
            )
            for capture in args.captures.split(","):
                runs = []
                for _ in range(args.repeat):
                    out = tmp / f"{capture}_{days}.zarr"
                    runs.append(measure([capture, str(steps), str(out)]))
                    shutil.rmtree(out, ignore_errors=True)
                best = min(runs)
                print(
                    f"{days:>4} {steps:>7} {'lv3ph ' + capture:<16} {best[0]:>9.1f} {best[1]:>8.1f} "
                    f"{max(r[2] for r in runs):>12.2f} {best[0] / native[0]:>6.2f}",
                    flush=True,
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average after: {_load()}")
    print(f"(best of {args.repeat}; peak RSS = the child's ru_maxrss; 1-minute steps, 1-day profiles repeated)")


if __name__ == "__main__":
    main()
