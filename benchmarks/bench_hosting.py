"""Monte Carlo PV hosting capacity on the four-wire IEEE twin: timing and distributions.

``timing``: the shipped study's three arrangements (``studies/eu_lv_hosting.toml``:
as-built, static-rebalanced, dynamic PV-blind; 1440 one-minute steps, source at the
published 1.05 pu, base-relative EN 50160 criteria) on a Dask ``LocalCluster``
(``--workers`` processes) and serially (``--serial-placements`` of them), per placement.
``compare``: hosting-capacity distributions of as-built / static / dynamic, PV-blind and
PV-aware, with and without Q(U), on the same criteria.

Run: ``.venv/bin/python benchmarks/bench_hosting.py [timing|compare] [--placements 100]``

Measured numbers: README.md, section "Hosting capacity a DSO can use".
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")

from lv3ph.hosting import HostingResult, arrangement_setup, hosting_capacity
from lv3ph.powerflow import RunSpec
from lv3ph.report import plot_hosting
from lv3ph.unbalance import Limits

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "dss_models/ieee_eu_lv_4wire/Master.dss"
RUN = RunSpec("yearly", 60.0, 1, 1440)
SOURCE = ("Edit Vsource.source pu=1.05",)
SWITCHING = {"share": 1.0, "interval_s": 900.0, "max_ops_per_day": 4, "objective": "neutral", "seed": 0}
CRITERIA = {"pre_existing": "item", "basis": "en50160"}


def run(
    label: str, arrangement: str, *, aware: bool, controls: str | None, placements: int, serial: bool, workers: int
) -> tuple[HostingResult, float, float]:
    edits, switching = arrangement_setup(
        MODEL, arrangement, run=RUN, vmaxpu=1.5, commands=SOURCE, switching=SWITCHING, pv_aware=aware
    )
    c0, t0 = time.process_time(), time.perf_counter()
    res = hosting_capacity(
        MODEL,
        run=RUN,
        limits=Limits(),
        placements=placements,
        seed=2024,
        vmaxpu=1.5,
        commands=SOURCE + tuple(edits),
        switching=switching,
        controls=controls,
        serial=serial,
        workers=workers,
        progress=False,
        label=label,
        **CRITERIA,  # type: ignore[arg-type]
    )
    return res, time.perf_counter() - t0, time.process_time() - c0


def describe(res: HostingResult, wall: float, how: str) -> None:
    s, p = res.summary, res.placements
    print(
        f"| {res.label} | {how} | {s['placements']} | {wall:.0f} s | {p.seconds.mean():.2f} s "
        f"| {p.cpu_seconds.mean():.2f} s | {s['min_kw']:.1f} / {s['p5_kw']:.1f} / {s['median_kw']:.1f} / {s['p95_kw']:.1f} / {s['max_kw']:.1f} "
        f"| {', '.join(f'{k} {v}' for k, v in res.binding_counts().items())} "
        f"| {p.curtailed_kwh.sum():.2f} kWh | {p.n_kept_steps.mean():.0f} | {p.full_checks.mean():.2f} |",
        flush=True,
    )


HEADER = (
    "| run | how | placements | wall | per placement (wall) | per placement (CPU) "
    "| hosting kWp min / p5 / median / p95 / max | bound by | curtailed | kept steps | whole-window checks |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["timing", "compare"])
    parser.add_argument("--placements", type=int, default=100)
    parser.add_argument("--serial-placements", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--serial", action="store_true", help="compare: run in this process (no Dask)")
    parser.add_argument("--only", nargs="*", default=None, help="compare: only these run labels")
    parser.add_argument("--plot", type=Path, default=ROOT / "out" / "bench_hosting.png")
    args = parser.parse_args()
    print(f"model {MODEL.relative_to(ROOT)}, source 1.05 pu, {RUN.steps} x {RUN.stepsize_s:g} s, seed 2024, {CRITERIA}")
    print(HEADER)
    results = []
    if args.what == "timing":
        total = 0.0
        serial: list[HostingResult] = []
        for arrangement in ("as-built", "static-rebalanced", "dynamic"):
            res, wall, _ = run(
                arrangement,
                arrangement,
                aware=False,
                controls=None,
                placements=args.placements,
                serial=False,
                workers=args.workers,
            )
            total += wall
            describe(res, wall, f"Dask {args.workers} workers")
            results.append(res)
            if args.serial_placements:
                ser, wall_s, _ = run(
                    arrangement,
                    arrangement,
                    aware=False,
                    controls=None,
                    placements=args.serial_placements,
                    serial=True,
                    workers=1,
                )
                cols = [c for c in ser.placements.columns if c not in ("seconds", "cpu_seconds")]
                same = ser.placements[cols].equals(res.placements[cols].iloc[: args.serial_placements])
                serial.append(ser)
                describe(ser, wall_s, f"serial (equals Dask rows: {same})")
        print(f"\nthree arrangements on Dask: {total:.0f} s")
        for how, rows in (("Dask", results), ("serial", serial)):
            if len(rows) == 3:  # as-built, static, dynamic
                a, d = rows[0].placements, rows[2].placements
                print(
                    f"dynamic / as-built per placement ({how}): wall {d.seconds.mean() / a.seconds.mean():.2f}x, "
                    f"CPU {d.cpu_seconds.mean() / a.cpu_seconds.mean():.2f}x"
                )
    else:
        for arrangement, aware in (
            ("as-built", False),
            ("static-rebalanced", False),
            ("static-rebalanced", True),
            ("dynamic", False),
            ("dynamic", True),
        ):
            for controls in (None, "qu"):
                label = arrangement + ("-pv-aware" if aware else "") + (f"+{controls}" if controls else "")
                if args.only is not None and label not in args.only:
                    continue
                res, wall, _ = run(
                    label,
                    arrangement,
                    aware=aware,
                    controls=controls,
                    placements=args.placements,
                    serial=args.serial,
                    workers=args.workers,
                )
                describe(res, wall, "serial" if args.serial else f"Dask {args.workers} workers")
                results.append(res)
    plot_hosting(results, args.plot)
    print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
