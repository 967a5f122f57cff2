"""Clearing time per step of each market design vs the power-flow time of the same steps.

Runs every design of ``studies/eu_lv_market_designs.toml`` (four-wire IEEE feeder, PV at
60 %, price-responsive batteries, EVs, shiftable demand) over ``--steps`` 1-minute steps
from ``--start`` (default: the noon hour) and reports, per design, best of ``--repeat``:
the clearing time (prices, flexible-device LPs, matching, screening / OPF; everything but
OpenDSS) per step, the reference power flow the linearised designs need, and the final
OpenDSS power flow of the same steps. The machine is shared: read ratios, not absolutes.

Run: ``.venv/bin/python benchmarks/bench_market.py [--steps 60] [--repeat 3]``
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from lv3ph.powerflow import RunSpec
from lv3ph.study import run_scenario
from lv3ph.studyfile import load_study, scenarios

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=ROOT / "studies/eu_lv_market_designs.toml")
    parser.add_argument("--start", type=int, default=691)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    spec = load_study(args.study)
    spec = replace(spec, run=RunSpec(mode="yearly", stepsize_s=60.0, start=args.start, steps=args.steps))
    grid = scenarios(spec)
    run_scenario(spec, grid[0])  # warm-up: imports, numba, pvlib
    print(f"{spec.name}: {args.steps} steps from step {args.start}, best of {args.repeat}, ms per step")
    print(f"{'design':<28} {'clearing':>9} {'reference pf':>13} {'power flow':>11} {'clearing / pf':>14}")
    for sc in grid:
        best: dict[str, float] = {}
        for _ in range(args.repeat):
            t = run_scenario(spec, sc).timings_s
            best = {k: min(v, best.get(k, v)) for k, v in t.items()}
        ms = {k: 1000.0 * v / args.steps for k, v in best.items()}
        clear = ms.get("clearing", 0.0)
        ratio = clear / ms["powerflow"]
        print(
            f"{sc.market:<28} {clear:9.2f} {ms.get('reference_solve', 0.0):13.2f} {ms['powerflow']:11.2f} {ratio:14.2f}"
        )


if __name__ == "__main__":
    main()
