"""Command line: ``lv3ph info|powerflow ...``.

Exit codes: 0 success, 2 bad input (one line naming the problem), 1 internal failure (one
line; ``LV3PH_TRACEBACK=1`` shows the traceback instead).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from lv3ph.en50160 import EN50160_COLUMNS, en50160_table
from lv3ph.errors import IsolatedCustomerWarning, Lv3phError, OutputError
from lv3ph.io import check_output, incomplete_path, is_store, open_result, write_csv, write_dataset
from lv3ph.powerflow import RunSpec, open_feeder
from lv3ph.stream import CAPTURES, Feeder, resume, run_streamed, write_captured
from lv3ph.topology import ISOLATED, customers_table, earthing_table, role_label
from lv3ph.unbalance import Limits, violations


def _model_args(p: argparse.ArgumentParser, *, optional: bool = False) -> None:
    if optional:
        p.add_argument("model", type=Path, nargs="?", default=None, help="OpenDSS master file (not with --resume)")
    else:
        p.add_argument("model", type=Path, help="OpenDSS master file")
    p.add_argument(
        "--vmaxpu",
        type=float,
        default=None,
        help="batchedit load..* vmaxpu=X after compiling (1.5 for the IEEE reference)",
    )
    p.add_argument(
        "--pme",
        type=float,
        default=None,
        metavar="OHM",
        help="earth every customer's neutral through OHM (four-wire models)",
    )
    p.add_argument("--pme-customers", default=None, metavar="A,B", help="only these customers get an electrode")


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", default="yearly", help="OpenDSS mode: snap, daily or yearly (default yearly)")
    p.add_argument("--stepsize", default="1m", help="step size, e.g. 1m, 15m, 1h, 30s (default 1m)")
    p.add_argument("--start", type=int, default=1, help="first step; step k is solved at time k x stepsize (default 1)")
    p.add_argument("--steps", type=int, default=1440, help="number of steps (default 1440)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _drop_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--drop-isolated",
        action="store_true",
        help="drop customers on isolated nodes (no series path from a source) with a warning, instead of an error",
    )


def _open(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    customers = args.pme_customers.split(",") if args.pme_customers else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", IsolatedCustomerWarning)
        opened = open_feeder(
            args.model,
            vmaxpu=args.vmaxpu,
            pme_ohm=args.pme,
            pme_customers=customers,
            drop_isolated=args.drop_isolated,
        )
    for w in caught:
        print(f"lv3ph: warning: {w.message}", file=sys.stderr)
    return opened


def cmd_info(args: argparse.Namespace) -> int:
    """Print what the model contains (and with ``--csv DIR`` write customers.csv, earthing.csv)."""
    if args.csv:
        check_output(args.csv, folder=True)
    engine, model = _open(args)
    kinds = pd.Series([e.kind for e in model.elements]).value_counts()
    per_phase = pd.Series([c.phase_letters for c in model.customers]).value_counts().sort_index()
    print(f"model      {model.path}")
    print(f"wiring     {model.wiring}")
    print(f"buses      {len(model.buses)}   nodes {model.n_nodes}")
    print("elements   " + ", ".join(f"{k} {n}" for k, n in kinds.items()))
    print(f"customers  {len(model.customers)} (by phase: " + ", ".join(f"{k}: {n}" for k, n in per_phase.items()) + ")")
    devices = sum(len(c.devices) - 1 for c in model.customers)
    print(f"devices    {devices} PV/storage/generators at customers, {len(model.orphan_devices)} elsewhere")
    earth = [e for e in model.elements if e.kind == "earthing"]
    print(
        f"earthing   {len(earth)} electrodes"
        + (": " + ", ".join(e.name for e in earth[:8]) + (" ..." if len(earth) > 8 else "") if earth else "")
    )
    for e in model.elements:
        if e.kind == "transformer":
            print(f"transformer {e.name} {e.kva:g} kVA, buses {' -> '.join(e.buses)}")
    isolated = int(np.count_nonzero(model.node_role == ISOLATED))
    print(f"nodes      traced from {', '.join(model.groups) or 'no source'}; {isolated} isolated")
    if args.csv:
        kw = {c.name: engine.load_base(c.devices[0].split(".", 1)[1])[0] for c in model.customers}
        written = [
            write_csv(customers_table(model, kw), args.csv / "customers.csv"),
            write_csv(earthing_table(model), args.csv / "earthing.csv"),
        ]
        print("wrote      " + ", ".join(map(str, written)))
    return 0


def _summary(ds: xr.Dataset, viol: pd.DataFrame | None, vne_threshold: float) -> list[str]:
    """Summary lines of a finished run (read lazily from its store)."""
    a = ds.attrs
    hours = float(a["stepsize_s"]) / 3600.0
    sums = ds[["loss_total_kw", "loss_phase_total_kw", "loss_neutral_total_kw", "loss_earth_total_kw"]].sum().compute()
    loss = ds.loss_total_kw.values
    peak = int(np.argmax(loss))
    times = ds.time.values
    lines = [
        f"steps      {ds.sizes['time']} ({a['mode']}, {float(a['stepsize_s']):g} s, from step {a['start']}), "
        f"capture {a['capture']}, blocks of {a['block_steps']} steps"
        + (", load shapes repeated" if int(a.get("repeat_profiles", 0)) else ""),
        f"wiring     {a['wiring']}",
        f"losses     {float(sums.loss_total_kw) * hours:.4f} kWh: phase {float(sums.loss_phase_total_kw) * hours:.4f}, "
        f"neutral {float(sums.loss_neutral_total_kw) * hours:.4f}, earth {float(sums.loss_earth_total_kw) * hours:.4f}"
        f"   (peak {float(loss[peak]):.4f} kW at step {int(times[peak])})",
    ]
    for var, label, low in (
        ("customer_v_min_v", "lowest customer V", True),
        ("customer_v_max_v", "highest customer V", False),
        ("customer_vuf_max_pct", "worst customer VUF", False),
        ("customer_pvur_max_pct", "worst customer PVUR", False),
    ):
        x = ds[var].values
        if np.isfinite(x).any():
            k = int(np.nanargmin(x) if low else np.nanargmax(x))
            unit = "V" if var.endswith("_v") else "%"
            lines.append(f"{label:<20} {float(x[k]):.3f} {unit} at step {int(times[k])} (per step)")
    if "compliant" in ds:
        weeks = ds[["compliant", "v10_min_v", "v10_max_v", "vuf_p95_pct", "v_within_band_pct"]].load()
        ok = weeks.compliant.all("week")
        lines.append(
            f"EN 50160   {int(ok.sum())} of {ok.size} customers compliant in all {weeks.sizes['week']} week(s) "
            f"(10-min V {float(weeks.v10_min_v.min()):.1f}..{float(weeks.v10_max_v.max()):.1f} V, "
            f"worst share in band {float(weeks.v_within_band_pct.min()):.1f} %, worst VUF p95 {float(weeks.vuf_p95_pct.max()):.3f} %)"
        )
    else:
        lines.append("EN 50160   not computed: the aggregation interval is not a multiple of the step size")
    if a["capture"] == "full" and viol is not None:
        lines += _full_lines(ds, viol, vne_threshold)
    return lines


def _full_lines(ds: xr.Dataset, viol: pd.DataFrame, vne_threshold: float) -> list[str]:
    """The per-bus lines only a full capture can give."""
    lines = []
    for var, label in (("pvur_pct", "PVUR"), ("vuf_pct", "VUF"), ("vne_v", "V n-e")):
        da = ds[var]
        mx = da.max("time").compute()
        if bool(mx.notnull().any()):
            b = int(np.nanargmax(mx.values))
            series = da.isel(bus=b).values
            k = int(np.nanargmax(series))
            unit = "V" if var == "vne_v" else "%"
            lines.append(
                f"worst {label:<5} {float(series[k]):.3f} {unit} at bus {ds.bus.values[b]}, step {int(ds.time.values[k])}"
            )
    n_dep = int((np.abs(ds.customer_pq_departure_pct) > 1.0).any(dim="time").sum())
    lines.append(
        f"PQ loads   {n_dep} customers drew >1 % off their set-point (OpenDSS constant-Z outside vminpu/vmaxpu)"
    )
    n_vne = int((ds.vne_v > vne_threshold).any(dim="time").sum())
    lines.append(f"V n-e      {n_vne} buses above {vne_threshold:g} V")
    if viol.empty:
        lines.append("violations none")
    else:
        counts = viol.groupby("check").size()
        lines.append("violations " + ", ".join(f"{k}: {v} step-items" for k, v in counts.items()))
    return lines


def _block_violations(ds: xr.Dataset, limits: Limits) -> pd.DataFrame:
    """Per-step violations of a full capture, read block by block (bounded memory)."""
    step = int(ds.attrs["block_steps"])
    frames = []
    unb_vars = ["pvur_pct", "lvur_pct", "vuf_pct", "v0uf_pct", "vne_v", "vmin_pn_v", "vmax_pn_v"]
    for i in range(0, ds.sizes["time"], step):
        part = ds[["current", "winding_s_kva", *unb_vars]].assign_coords(customer_bus=ds.customer_bus)
        part = part.isel(time=slice(i, i + step)).load()
        frames.append(violations(part, part[unb_vars], limits))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def cmd_powerflow(args: argparse.Namespace) -> int:
    """Run a time-series power flow into a store (and CSV tables)."""
    out = Path(args.out)
    netcdf = out.suffix == ".nc"
    store_out = out.with_name(out.name + ".zarr") if netcdf else out
    if netcdf:
        check_output(out)
    if store_out.exists() and not is_store(store_out):
        raise OutputError(
            f"cannot write {store_out}: it is a {'folder' if store_out.is_dir() else 'file'}, not a result store"
        )
    check_output(store_out, folder=True)
    if args.csv:
        check_output(args.csv, folder=True)
    progress = not args.no_progress
    if args.resume:
        if not incomplete_path(store_out).is_dir():
            raise Lv3phError(f"--resume: no unfinished run at {incomplete_path(store_out)}")
        path = resume(store_out, progress=progress)
    else:
        if args.model is None:
            raise Lv3phError("powerflow needs a MODEL (or --resume)")
        spec = RunSpec.parse(args.mode, args.stepsize, args.start, args.steps, repeat_profiles=args.repeat_profiles)
        if args.workers > 1:
            path = _split_run(args, spec, store_out)
        else:
            feeder = Feeder(
                str(args.model),
                vmaxpu=args.vmaxpu,
                pme_ohm=args.pme,
                pme_customers=tuple(args.pme_customers.split(",")) if args.pme_customers else None,
                drop_isolated=args.drop_isolated,
            )
            path = run_streamed(
                feeder, spec, store_out, capture_level=args.capture, block_steps=args.block_steps, progress=progress
            )
    ds = open_result(path)
    viol = _block_violations(ds, Limits()) if ds.attrs["capture"] == "full" else None
    written = [str(out)]
    if args.csv:
        folder = Path(args.csv)
        if viol is not None:
            written += write_tables(ds.load(), viol, folder)
        if "compliant" in ds:
            table = en50160_table(ds[EN50160_COLUMNS[2:]].load())
            written.append(str(write_csv(table, folder / "en50160.csv")))
    for line in _summary(ds, viol, args.vne_threshold):
        print(line)
    if netcdf:
        write_dataset(ds, out)
        shutil.rmtree(path)
    print("wrote      " + ", ".join(written))
    return 0


def _split_run(args: argparse.Namespace, spec: RunSpec, store_out: Path) -> Path:
    """``--workers N``: the window solved in N blocks in parallel (:mod:`lv3ph.splitrun`), in
    memory, then written as a store at the chosen capture level."""
    from lv3ph.splitrun import solve_split_raw

    engine, model = _open(args)
    vt, measured = solve_split_raw(
        engine,
        model,
        spec,
        workers=args.workers,
        vmaxpu=args.vmaxpu,
        pme_ohm=args.pme,
        pme_customers=args.pme_customers.split(",") if args.pme_customers else None,
        drop_isolated=args.drop_isolated,
        scheduler=args.scheduler,
        progress=not args.no_progress,
    )
    return write_captured(
        model, spec, vt, measured, store_out, capture_level=args.capture, block_steps=args.block_steps
    )


def write_tables(pf: xr.Dataset, viol: pd.DataFrame, folder: Path) -> list[str]:
    """voltages.csv (with each node's traced ``role``: a, b, c, neutral), unbalance.csv,
    losses.csv and violations.csv of a full capture into ``folder``."""
    v = pf.voltage.stack(row=("time", "bus", "terminal")).dropna("row")
    volt = pd.DataFrame(
        {
            "time": v.time.values,
            "bus": v.bus.values,
            "terminal": v.terminal.values,
            "role": [role_label(int(r)) for r in v.terminal_role.values],
            "vmag_v": np.abs(v.values),
            "vang_deg": np.degrees(np.angle(v.values)),
        }
    )
    unb_df = pf[["pvur_pct", "lvur_pct", "vuf_pct", "v0uf_pct", "vne_v"]].to_dataframe().reset_index()
    loss = pf[["loss_phase_kw", "loss_neutral_kw", "loss_earth_kw", "loss_kw"]].to_dataframe().reset_index()
    loss = loss[["time", "element", "loss_phase_kw", "loss_neutral_kw", "loss_earth_kw", "loss_kw"]]
    loss.columns = ["time", "element", "phase_kw", "neutral_kw", "earth_kw", "total_kw"]
    out = []
    for name, df in (("voltages.csv", volt), ("unbalance.csv", unb_df), ("losses.csv", loss), ("violations.csv", viol)):
        out.append(str(write_csv(df, folder / name)))
    return out


ALLOCATION_COLUMNS = [
    "time",
    "contract",
    "seller",
    "buyer",
    "kw",
    "loss_phase_kw",
    "loss_neutral_kw",
    "loss_earth_kw",
    "loss_transformer_kw",
    "loss_total_kw",
]


def allocation_frame(al: xr.Dataset) -> pd.DataFrame:
    """The allocation CSV table: one row per (time, contract) and per (time, grid:<customer>)."""
    df = pd.DataFrame({c: al[c].values for c in ALLOCATION_COLUMNS if c != "time"})
    df.insert(0, "time", al.row_time.values)
    return df[ALLOCATION_COLUMNS]


def cmd_allocate(args: argparse.Namespace) -> int:
    """Allocate every step's losses to P2P contracts and compare methods."""
    from lv3ph.allocation.audit import METHODS, allocate_method, compare, largest_differences
    from lv3ph.allocation.exact import branch_detail, loss_network, party_rows_for, prepare

    others = [] if args.compare.strip().lower() in ("", "none") else [m.strip() for m in args.compare.split(",")]
    methods = list(dict.fromkeys([args.method.strip(), *(m for m in others if m)]))
    for m in methods:
        if m not in METHODS:
            raise Lv3phError(f"unknown method {m!r}: use one of {', '.join(METHODS)}")
    if len(methods) > 1 and "exact" not in methods:
        methods.append("exact")  # the reference of the comparison
    check_output(args.out)
    if args.nc:
        check_output(args.nc)
    p = prepare(
        args.model,
        args.contracts,
        mode=args.mode,
        stepsize=args.stepsize,
        start=args.start,
        steps=args.steps,
        vmaxpu=args.vmaxpu,
        pme_ohm=args.pme,
        pme_customers=args.pme_customers.split(",") if args.pme_customers else None,
        oversold=args.oversold,
        progress=not args.no_progress,
    )
    engine, model, spec, pf, vt, table, shares = p.engine, p.model, p.run, p.pf, p.vt, p.contracts, p.shares
    net = loss_network(model)
    results: dict[str, xr.Dataset] = {}
    for m in sorted(methods, key=lambda m: m != "exact"):  # exact first: phase-only reuses it
        results[m] = allocate_method(
            m,
            engine=engine,
            model=model,
            pf=pf,
            vt=vt,
            contracts=table,
            shares=shares,
            net=net,
            run=spec,
            exact=results.get("exact"),
        )
    results = {m: results[m] for m in methods}
    diff = compare(results) if len(results) > 1 else None
    write_csv(allocation_frame(results[methods[0]]), args.out)
    written = [str(args.out)]
    if args.nc:
        rows = party_rows_for(net, model, pf, vt, table, shares)
        labels, detail = branch_detail(net, rows, vt, len(model.elements))
        det = xr.Dataset(
            {
                "loss_kw_steps": (
                    ("party", "element", "conductor"),
                    detail,
                    {"units": "kW x steps", "long_name": "loss share summed over the run"},
                )
            },
            coords={"party": labels, "element": model.element_names(), "conductor": np.arange(1, detail.shape[2] + 1)},
            attrs={"method": "exact", "stepsize_s": spec.stepsize_s},
        )
        write_dataset(
            xr.merge([det, pf[["current", "loss_phase_kw", "loss_neutral_kw", "loss_earth_kw", "loss_kw"]]]), args.nc
        )
        written.append(str(args.nc))
    hours = spec.stepsize_s / 3600.0
    opendss_kwh = float(pf.loss_total_kw.sum()) * hours
    print(
        f"contracts  {len(table)} rows, {table.contract.nunique()} ids; {shares.scaled} scaled (--oversold {args.oversold})"
    )
    print(f"OpenDSS    {opendss_kwh:.6f} kWh of losses (all PD elements incl. earth electrodes)")
    for m, ds in results.items():
        is_c = ~pd.Series(ds.contract.values).str.startswith("grid:").to_numpy()
        print(
            f"{m:<11}{float(ds.loss_total_kw.sum()) * hours:.6f} kWh allocated; contracts {float(ds.loss_total_kw.values[is_c].sum()) * hours:.6f} kWh"
        )
    if diff is not None:
        print("largest differences from exact (contract rows, kW):")
        print(largest_differences(diff, args.top).to_string(index=False))
    print("wrote      " + ", ".join(written))
    return 0


def cmd_hosting(args: argparse.Namespace) -> int:
    """Monte Carlo PV hosting capacity per phase arrangement."""
    from lv3ph.hosting import arrangement_setup, hosting_capacity
    from lv3ph.report import plot_hosting
    from lv3ph.unbalance import Limits

    run = RunSpec.parse(args.mode, args.stepsize, args.start, args.steps)
    check_output(args.out, folder=True)
    limits = Limits() if args.no_pvur is False else Limits(pvur_pct=None)
    base = [f"Edit Vsource.source pu={args.source_pu}"] if args.source_pu else []
    results = {}
    for arrangement in args.arrangement.split(","):
        edits, switching = arrangement_setup(args.model, arrangement, run=run, vmaxpu=args.vmaxpu, commands=base)
        results[arrangement] = hosting_capacity(
            args.model,
            run=run,
            limits=limits,
            placements=args.placements,
            seed=args.seed,
            kwp_range=(args.kwp_min, args.kwp_max),
            vmaxpu=args.vmaxpu,
            pme_ohm=args.pme,
            commands=base + edits,
            switching=switching,
            serial=args.serial,
            workers=args.workers,
            progress=not args.no_progress,
            label=arrangement,
        )
    out = Path(args.out)
    for arrangement, res in results.items():
        write_csv(res.placements, out / f"hosting_{arrangement}.csv")
        write_csv(res.steps, out / f"kept_steps_{arrangement}.csv")
        s = res.summary
        binding = ", ".join(f"{k} {v}" for k, v in res.binding_counts().items())
        print(
            f"{arrangement:<18} kWp min {s['min_kw']:.1f}  p5 {s['p5_kw']:.1f}  median {s['median_kw']:.1f}  "
            f"p95 {s['p95_kw']:.1f}  max {s['max_kw']:.1f}   bound by: {binding}"
        )
    plot = plot_hosting(results, out / "hosting.png")
    print(f"wrote      {out}/hosting_*.csv, {plot}")
    return 0


def cmd_fleet(args: argparse.Namespace) -> int:
    """Run one job on every feeder of a folder tree or CSV list."""
    from lv3ph.fleet import FleetJob, run_fleet

    job = FleetJob(
        job=args.job,
        mode=args.mode,
        stepsize=args.stepsize,
        start=args.start,
        steps=args.steps,
        vmaxpu=args.vmaxpu,
        pme_ohm=args.pme,
        placements=args.placements,
        seed=args.seed,
        kwp_range=(args.kwp_min, args.kwp_max),
        pv_share=args.pv_share,
        save=args.save,
    )
    res = run_fleet(
        args.source,
        job,
        args.out,
        serial=args.serial,
        workers=args.workers,
        scheduler=args.scheduler,
        resume=args.resume,
        retries=args.retries,
        rank=args.rank,
        progress=not args.no_progress,
    )
    done = len(res.table)
    print(
        f"feeders    {done + len(res.errors)}: {done} finished ({len(res.skipped)} already done, skipped), "
        f"{len(res.errors)} could not run"
    )
    for r in res.errors.itertuples():
        print(f"error      {r.feeder}: {r.error}")
    print("wrote      " + ", ".join(res.written))
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    """Run a study file and write its report."""
    from lv3ph.study import run_hosting_study, run_study
    from lv3ph.studyfile import load_study

    spec = load_study(args.study)
    if args.out is not None:
        spec = replace(spec, out=args.out.resolve())
    if spec.hosting is not None:
        table, report = run_hosting_study(
            spec, serial=args.serial, scheduler=args.scheduler, workers=args.workers, progress=not args.no_progress
        )
        print(table.round(2).to_string(index=False))
        print(f"report     {report}")
        return 0
    _spec, results, report = run_study(
        args.study,
        serial=args.serial,
        scheduler=args.scheduler,
        workers=args.workers,
        progress=not args.no_progress,
        out=args.out,
    )
    summary = pd.DataFrame([r.summary for r in results])
    cols = [
        "scenario",
        "traded_kwh",
        "loss_kwh",
        "loss_neutral_kwh",
        "loss_earth_kwh",
        "pvur_max_pct",
        "vuf_max_pct",
        "violation_minutes",
    ]
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(summary[cols].round(3).to_string(index=False))
    print(f"report     {report}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Draw a study's report again from its result folder (nothing is solved)."""
    from lv3ph.hosting import HostingResult
    from lv3ph.report import write_hosting_report, write_report
    from lv3ph.results import read_hosting, read_metadata, read_results

    out = args.out if args.out is not None else args.results
    if read_metadata(args.results)["kind"] == "hosting":
        spec, placements, summary = read_hosting(args.results)
        empty = pd.DataFrame()
        results = {a: HostingResult(df, empty, empty, empty, label=a) for a, df in placements.items()}
        report = write_hosting_report(spec, results, summary, out)
    else:
        spec, scenario_results, summary = read_results(args.results)
        report = write_report(spec, scenario_results, summary, out)
    print(f"report     {report}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the main study shipped with lv3ph (studies/eu_lv_p2p.toml)."""
    args.study = Path(__file__).resolve().parents[1] / "studies" / "eu_lv_p2p.toml"
    if not args.study.is_file():
        raise Lv3phError(f"main study not found at {args.study} (run from a source checkout)")
    return cmd_study(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lv3ph", description="Three-phase four-wire LV feeder engine on OpenDSS.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "info",
        help="what a model contains",
        description="Buses, lines, customers per phase, neutral, earthing, transformer.",
    )
    _model_args(p)
    _drop_arg(p)
    p.add_argument("--csv", type=Path, default=None, metavar="DIR", help="write customers.csv and earthing.csv")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser(
        "powerflow",
        help="time-series power flow to netCDF/CSV",
        description="Solve with OpenDSS's own time modes and capture voltages, currents, losses and unbalance.",
    )
    _model_args(p, optional=True)
    _drop_arg(p)
    _run_args(p)
    p.add_argument(
        "--out",
        type=Path,
        default=Path("results.zarr"),
        help="result store (zarr folder; default results.zarr); a name ending in .nc is converted to netCDF at the end",
    )
    p.add_argument(
        "--capture",
        default="full",
        metavar="|".join(CAPTURES),
        help="full: every bus, element and customer per step; customers: customer points, head and losses per "
        "element; stats: totals per step and EN 50160 statistics only (default full)",
    )
    p.add_argument(
        "--block-steps",
        type=int,
        default=None,
        metavar="N",
        help="steps solved and written per block (memory is bounded by the block; default one day)",
    )
    p.add_argument(
        "--repeat-profiles", action="store_true", help="cycle load shapes shorter than the run instead of failing"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="finish the unfinished run of --out (left by a killed run) with its own settings",
    )
    p.add_argument(
        "--csv",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write en50160.csv and, with --capture full, voltages.csv, unbalance.csv, losses.csv, violations.csv",
    )
    p.add_argument(
        "--vne-threshold",
        type=float,
        default=10.0,
        metavar="V",
        help="neutral-to-earth voltage to report (default 10 V)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="split the window into this many contiguous blocks solved in parallel (default 1: serial); "
        "refused for models with stateful controls (InvControl, storage, regulators ...)",
    )
    p.add_argument("--scheduler", default=None, metavar="ADDRESS", help="Dask scheduler for --workers (default: local)")
    p.set_defaults(func=cmd_powerflow)
    p = sub.add_parser(
        "allocate",
        help="allocate losses to P2P contracts",
        description="Split every step's losses (phase, neutral, earth, transformer) across P2P contracts and grid exchanges.",
    )
    _model_args(p)
    _run_args(p)
    p.add_argument("--contracts", type=Path, required=True, help="CSV with columns contract,time,seller,buyer,kw")
    p.add_argument(
        "--method",
        default="exact",
        help="method for the CSV: exact, kron, phase-only, pro-rata, lsf, ptdf (default exact)",
    )
    p.add_argument(
        "--compare",
        default="phase-only,pro-rata",
        help="methods to compare with exact (comma list, or none; exact is added as the reference; "
        "default phase-only,pro-rata)",
    )
    p.add_argument(
        "--oversold",
        default="error",
        choices=["error", "scale"],
        help="contracts above a seller's export / buyer's import: error (default) or scale them down",
    )
    p.add_argument("--out", type=Path, default=Path("allocation.csv"), help="allocation CSV (default allocation.csv)")
    p.add_argument("--nc", type=Path, default=None, help="netCDF with the per-branch, per-conductor detail")
    p.add_argument("--top", type=int, default=10, help="how many of the largest differences to print")
    p.set_defaults(func=cmd_allocate)
    p = sub.add_parser(
        "hosting",
        help="stochastic PV hosting capacity",
        description="Monte Carlo PV placements, penetration raised until the first violation of any enabled limit "
        "(voltage band, thermal, VUF, PVUR, neutral-to-earth); time-step screening with a final full-window check.",
    )
    _model_args(p)
    _run_args(p)
    p.add_argument("--placements", type=int, default=100, help="random placements (default 100)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--kwp-min", type=float, default=3.0, help="smallest PV per customer, kWp")
    p.add_argument("--kwp-max", type=float, default=8.0, help="largest PV per customer, kWp")
    p.add_argument("--arrangement", default="as-built", help="comma list: as-built, static-rebalanced, dynamic")
    p.add_argument("--source-pu", type=float, default=None, help="set the source voltage (pu) before the study")
    p.add_argument("--no-pvur", action="store_true", help="do not check PVUR")
    p.add_argument("--serial", action="store_true", help="no Dask")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("out/hosting"), help="output folder (CSV, PNG)")
    p.set_defaults(func=cmd_hosting)
    p = sub.add_parser(
        "fleet",
        help="one job on every feeder of a folder tree or CSV list (Dask)",
        description="Find every OpenDSS master under FOLDER (a file with 'New Circuit' that no other file "
        "redirects) or read a CSV list (model[,feeder][,vmaxpu,pme_ohm,mode,stepsize,start,steps]), run one job "
        "per feeder and write fleet.parquet, fleet.csv, fleet_errors.csv and fleet.html to --out.",
    )
    p.add_argument("source", type=Path, help="fleet folder or CSV list of models")
    p.add_argument("--job", default="snapshot", choices=["info", "snapshot", "window", "hosting", "audit"])
    p.add_argument("--vmaxpu", type=float, default=None, help="batchedit load..* vmaxpu=X after compiling")
    p.add_argument("--pme", type=float, default=None, metavar="OHM", help="earth every customer's neutral")
    _run_args(p)
    p.add_argument("--placements", type=int, default=10, help="hosting: placements per feeder (default 10)")
    p.add_argument("--seed", type=int, default=1, help="hosting and audit: seed (default 1)")
    p.add_argument("--kwp-min", type=float, default=3.0, help="hosting: smallest PV per customer, kWp")
    p.add_argument("--kwp-max", type=float, default=8.0, help="hosting: largest PV per customer, kWp")
    p.add_argument("--pv-share", type=float, default=0.4, help="audit: share of single-phase customers with PV")
    p.add_argument("--rank", default=None, metavar="KPI", help="KPI column the HTML summary ranks feeders by")
    p.add_argument("--save", action="store_true", help="snapshot/window: also store each feeder's netCDF")
    p.add_argument("--resume", action="store_true", help="skip feeders already finished with the same settings")
    p.add_argument("--retries", type=int, default=2, help="Dask retries of a failed job (default 2)")
    p.add_argument("--serial", action="store_true", help="no Dask")
    p.add_argument("--workers", type=int, default=2, help="local Dask workers (default 2)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS", help="existing Dask scheduler; model files travel")
    p.add_argument("--out", default="out/fleet", help="output folder or fsspec URL (default out/fleet)")
    p.set_defaults(func=cmd_fleet)
    for name, helptext in (("study", "run a study file (TOML)"), ("demo", "run the main study on the bundled feeder")):
        p = sub.add_parser(name, help=helptext, description=helptext)
        if name == "study":
            p.add_argument("study", type=Path, help="study file (studies/*.toml)")
        p.add_argument("--serial", action="store_true", help="run scenarios one after the other (no Dask)")
        p.add_argument("--scheduler", default=None, metavar="ADDRESS", help="use an existing Dask scheduler")
        p.add_argument("--workers", type=int, default=2, help="local Dask workers (default 2)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        p.add_argument(
            "--out",
            type=Path,
            default=None,
            metavar="DIR",
            help="output folder (default: the study file's [study].out)",
        )
        p.set_defaults(func=cmd_study if name == "study" else cmd_demo)
    p = sub.add_parser(
        "report",
        help="draw a study's report again from its results",
        description="Re-render report.html and the figures from a result folder of lv3ph study (no power flow is solved).",
    )
    p.add_argument("results", type=Path, help="result folder written by lv3ph study (holds study.json)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help="write the report here (default: RESULT_DIR)")
    p.set_defaults(func=cmd_report)
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
    except Exception as exc:  # a bug, not bad input: one line too, the traceback on request
        if os.environ.get("LV3PH_TRACEBACK"):
            raise
        text = " ".join(str(exc).split())
        print(f"lv3ph: internal error: {type(exc).__name__}: {text} (LV3PH_TRACEBACK=1 shows where)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
