"""Command line: ``lv3ph info|powerflow ...``.

Exit codes: 0 success, 2 bad input (one line naming the problem), 1 internal failure.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from lv3ph.errors import Lv3phError
from lv3ph.io import write_csv, write_dataset
from lv3ph.powerflow import RunSpec, open_feeder, solve
from lv3ph.unbalance import Limits, unbalance, violation_summary, violations


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path, help="OpenDSS master file")
    p.add_argument("--vmaxpu", type=float, default=None, help="batchedit load..* vmaxpu=X after compiling (1.5 for the IEEE reference)")
    p.add_argument("--pme", type=float, default=None, metavar="OHM", help="earth every customer's neutral through OHM (four-wire models)")
    p.add_argument("--pme-customers", default=None, metavar="A,B", help="only these customers get an electrode")


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", default="yearly", help="OpenDSS mode: snap, daily or yearly (default yearly)")
    p.add_argument("--stepsize", default="1m", help="step size, e.g. 1m, 15m, 1h, 30s (default 1m)")
    p.add_argument("--start", type=int, default=1, help="first step; step k is solved at time k x stepsize (default 1)")
    p.add_argument("--steps", type=int, default=1440, help="number of steps (default 1440)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _open(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    customers = args.pme_customers.split(",") if args.pme_customers else None
    return open_feeder(args.model, vmaxpu=args.vmaxpu, pme_ohm=args.pme, pme_customers=customers)


def cmd_info(args: argparse.Namespace) -> int:
    """Print what the model contains."""
    _, model = _open(args)
    kinds = pd.Series([e.kind for e in model.elements]).value_counts()
    per_phase = pd.Series([",".join(map(str, c.phases)) for c in model.customers]).value_counts().sort_index()
    print(f"model      {model.path}")
    print(f"wiring     {model.wiring}")
    print(f"buses      {len(model.buses)}   nodes {model.n_nodes}")
    print("elements   " + ", ".join(f"{k} {n}" for k, n in kinds.items()))
    print(f"customers  {len(model.customers)} (by phase: " + ", ".join(f"{k}: {n}" for k, n in per_phase.items()) + ")")
    devices = sum(len(c.devices) - 1 for c in model.customers)
    print(f"devices    {devices} PV/storage/generators at customers, {len(model.orphan_devices)} elsewhere")
    earth = [e for e in model.elements if e.kind == "earthing"]
    print(f"earthing   {len(earth)} electrodes" + (": " + ", ".join(e.name for e in earth[:8]) + (" ..." if len(earth) > 8 else "") if earth else ""))
    for e in model.elements:
        if e.kind == "transformer":
            print(f"transformer {e.name} {e.kva:g} kVA, buses {' -> '.join(e.buses)}")
    return 0


def _summary(pf: xr.Dataset, unb: xr.Dataset, viol: pd.DataFrame, vne_threshold: float) -> list[str]:
    hours = float(pf.attrs["stepsize_s"]) / 3600.0
    energy = {k: float(pf[f"loss_{k}_kw"].sum()) * hours for k in ("phase", "neutral", "earth")}
    total = float(pf.loss_total_kw.sum()) * hours
    lines = [
        f"steps      {pf.sizes['time']} ({pf.attrs['mode']}, {pf.attrs['stepsize_s']:g} s, from step {pf.attrs['start']})",
        f"wiring     {pf.attrs['wiring']}",
        f"losses     {total:.4f} kWh: phase {energy['phase']:.4f}, neutral {energy['neutral']:.4f}, earth {energy['earth']:.4f}"
        f"   (peak {float(pf.loss_total_kw.max()):.4f} kW at step {int(pf.time.values[int(np.argmax(pf.loss_total_kw.values))])})",
    ]
    for var, label in (("pvur_pct", "PVUR"), ("vuf_pct", "VUF"), ("vne_v", "V n-e")):
        da = unb[var]
        if bool(da.notnull().any()):
            pos = np.unravel_index(int(np.nanargmax(da.values)), da.shape)
            unit = "V" if var == "vne_v" else "%"
            lines.append(f"worst {label:<5} {float(da.values[pos]):.3f} {unit} at bus {unb.bus.values[pos[1]]}, step {int(unb.time.values[pos[0]])}")
    dep = pf.customer_pq_departure_pct
    n_dep = int((np.abs(dep) > 1.0).any(dim="time").sum())
    lines.append(f"PQ loads   {n_dep} customers drew >1 % off their set-point (OpenDSS constant-Z outside vminpu/vmaxpu)")
    n_vne = int((unb.vne_v > vne_threshold).any(dim="time").sum())
    lines.append(f"V n-e      {n_vne} buses above {vne_threshold:g} V")
    if viol.empty:
        lines.append("violations none")
    else:
        counts = viol.groupby("check").size()
        lines.append("violations " + ", ".join(f"{k}: {v} step-items" for k, v in counts.items()))
    return lines


def cmd_powerflow(args: argparse.Namespace) -> int:
    """Run a time-series power flow and write the Dataset (and CSV tables)."""
    spec = RunSpec.parse(args.mode, args.stepsize, args.start, args.steps)
    engine, model = _open(args)
    pf = solve(engine, model, spec, progress=not args.no_progress)
    unb = unbalance(pf)
    limits = Limits()
    viol = violations(pf, unb, limits)
    vne_threshold = args.vne_threshold
    write_dataset(xr.merge([pf, unb], compat="override"), args.out)
    written = [str(args.out)]
    if args.csv:
        written += write_tables(pf, unb, viol, Path(args.csv))
    for line in _summary(pf, unb, viol, vne_threshold):
        print(line)
    print("wrote      " + ", ".join(written))
    return 0


def write_tables(pf: xr.Dataset, unb: xr.Dataset, viol: pd.DataFrame, folder: Path) -> list[str]:
    """voltages.csv, unbalance.csv, losses.csv and violations.csv into ``folder``."""
    v = pf.voltage.stack(row=("time", "bus", "terminal")).dropna("row")
    volt = pd.DataFrame(
        {
            "time": v.time.values,
            "bus": v.bus.values,
            "terminal": v.terminal.values,
            "vmag_v": np.abs(v.values),
            "vang_deg": np.degrees(np.angle(v.values)),
        }
    )
    unb_df = unb[["pvur_pct", "lvur_pct", "vuf_pct", "v0uf_pct", "vne_v"]].to_dataframe().reset_index()
    loss = pf[["loss_phase_kw", "loss_neutral_kw", "loss_earth_kw", "loss_kw"]].to_dataframe().reset_index()
    loss = loss[["time", "element", "loss_phase_kw", "loss_neutral_kw", "loss_earth_kw", "loss_kw"]]
    loss.columns = ["time", "element", "phase_kw", "neutral_kw", "earth_kw", "total_kw"]
    out = []
    for name, df in (("voltages.csv", volt), ("unbalance.csv", unb_df), ("losses.csv", loss), ("violations.csv", viol)):
        out.append(str(write_csv(df, folder / name)))
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lv3ph", description="Three-phase four-wire LV feeder engine on OpenDSS.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="what a model contains", description="Buses, lines, customers per phase, neutral, earthing, transformer.")
    _model_args(p)
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("powerflow", help="time-series power flow to netCDF/CSV", description="Solve with OpenDSS's own time modes and capture voltages, currents, losses and unbalance.")
    _model_args(p)
    _run_args(p)
    p.add_argument("--out", type=Path, default=Path("results.nc"), help="netCDF output (default results.nc)")
    p.add_argument("--csv", type=Path, default=None, metavar="DIR", help="also write voltages.csv, unbalance.csv, losses.csv, violations.csv")
    p.add_argument("--vne-threshold", type=float, default=10.0, metavar="V", help="neutral-to-earth voltage to report (default 10 V)")
    p.set_defaults(func=cmd_powerflow)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lv3ph`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except Lv3phError as exc:
        print(f"lv3ph: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
