"""Fleet runs: one row per feeder equal to single-feeder `lv3ph powerflow` runs, errors, a real
Dask cluster (files travel, a worker killed mid-run), --resume; split long runs == serial."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import opendssdirect as dss
import pandas as pd
import pytest

from lv3ph.cli import main
from lv3ph.fleet import FleetJob, fleet_feeders, misallocation_pct, run_fleet
from lv3ph.io import read_dataset
from tests.conftest import HAND, IEEE_4W_PME, MODELS, SHARED, write_feeder

ENWL = SHARED / "enwl_4wire" / "network_1"
BROKEN = "clear\nnew circuit.broken basekv=0.4\nnew line.l1 bus1=sourcebus bus2=b2 linecode=nosuchcode\nsolve\n"
BUNDLED = {
    "dss_models/ieee_eu_lv": 0,  # feeder key -> earth electrodes
    "dss_models/ieee_eu_lv_4wire/Master": 1,
    "dss_models/ieee_eu_lv_4wire/Master_PME": 56,
    "dss_models/ieee_eu_lv_4wire/Master_physical": 1,
}
ENWL_FEEDERS = {"enwl/network_1/Feeder_1": 1.028, "enwl/network_1/Feeder_2": 0.312}  # snapshot loss, kW (data README)


@pytest.fixture(scope="module")
def fleet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bundled feeders, the ENWL network-1 feeders (if ../shared is there) and one broken model."""
    root = tmp_path_factory.mktemp("fleet") / "dso"
    shutil.copytree(MODELS, root / "dss_models", ignore=shutil.ignore_patterns("*.md"))
    if ENWL.is_dir():
        shutil.copytree(ENWL, root / "enwl" / "network_1")
    write_feeder(root / "broken", BROKEN)
    return root


def _expected_keys() -> set[str]:
    return set(BUNDLED) | (set(ENWL_FEEDERS) if ENWL.is_dir() else set())


def _loads_per_phase(master: Path) -> dict[str, int]:
    """Single-phase loads per phase, read from OpenDSS directly (bus1 ``bus.<phase>...``)."""
    cwd = os.getcwd()
    try:
        dss.Text.Command(f'compile "{master}"')
    finally:
        os.chdir(cwd)
    out = {"a": 0, "b": 0, "c": 0}
    for name in dss.Loads.AllNames():
        dss.Circuit.SetActiveElement(f"load.{name}")
        if dss.CktElement.NumPhases() == 1:
            out["abc"[int(dss.CktElement.BusNames()[0].split(".")[1]) - 1]] += 1
    return out


def _without_timing(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=["seconds"]).sort_values("feeder").reset_index(drop=True)


@pytest.fixture(scope="module")
def serial_fleet(fleet_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("serial_out")
    res = run_fleet(fleet_dir, FleetJob(job="snapshot"), out, serial=True, progress=False)
    return out, res.table


def test_fleet_finds_masters(fleet_dir: Path) -> None:
    feeders = fleet_feeders(fleet_dir)
    assert {f.feeder for f in feeders} == _expected_keys() | {"broken"}
    # LoadShapes.txt, Lines.txt ... define no circuit; Earthing_PME.dss is redirected, not a master
    assert all(f.master.suffix == ".dss" and "Master" in f.master.name for f in feeders)


def test_fleet_rows_equal_single_feeder_powerflow(
    fleet_dir: Path, serial_fleet: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    out, table = serial_fleet
    errors = pd.read_csv(out / "fleet_errors.csv")
    assert list(errors.feeder) == ["broken"] and "nosuchcode" in errors.error[0]
    assert len(errors.error[0].splitlines()) == 1
    assert set(table.feeder) == _expected_keys()
    pd.testing.assert_frame_equal(pd.read_parquet(out / "fleet.parquet"), table)
    assert "<table" in (out / "fleet.html").read_text()
    for row in table.itertuples():
        master = fleet_dir / row.master
        nc, csv = tmp_path / f"{row.Index}.nc", tmp_path / f"csv{row.Index}"
        assert (
            main(
                [
                    "powerflow",
                    str(master),
                    "--mode",
                    "snap",
                    "--steps",
                    "1",
                    "--out",
                    str(nc),
                    "--csv",
                    str(csv),
                    "--no-progress",
                ]
            )
            == 0
        )
        ds = read_dataset(nc)
        total = float(ds.loss_total_kw.sum())
        assert row.loss_kw == pytest.approx(total, rel=1e-12)
        assert row.neutral_loss_share_pct == pytest.approx(100 * float(ds.loss_neutral_kw.sum()) / total, rel=1e-9)
        assert row.earth_loss_share_pct == pytest.approx(100 * float(ds.loss_earth_kw.sum()) / total, abs=1e-9)
        assert row.pvur_max_pct == pytest.approx(float(np.nanmax(ds.pvur_pct.values)), rel=1e-12)
        assert row.vuf_max_pct == pytest.approx(float(np.nanmax(ds.vuf_pct.values)), rel=1e-12)
        assert row.vne_max_v == pytest.approx(float(np.nanmax(ds.vne_v.values)), rel=1e-12, abs=1e-12)
        assert row.violations == len(pd.read_csv(csv / "violations.csv"))
        assert row.buses == ds.sizes["bus"]
        per_phase = _loads_per_phase(master)
        assert (row.customers_a, row.customers_b, row.customers_c) == (per_phase["a"], per_phase["b"], per_phase["c"])
    by_key = table.set_index("feeder")
    for key, electrodes in BUNDLED.items():
        assert by_key.loc[key, "earth_electrodes"] == electrodes
        assert (by_key.loc[key, "customers_a"], by_key.loc[key, "customers_b"], by_key.loc[key, "customers_c"]) == (
            21,
            19,
            15,
        )
    if ENWL.is_dir():  # OpenDSS's own snapshot losses in ../shared/data/README.md
        for key, loss in ENWL_FEEDERS.items():
            assert by_key.loc[key, "loss_kw"] == pytest.approx(loss, abs=5e-4)
            assert by_key.loc[key, "earth_electrodes"] == 1


def _start(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_fleet_on_dask_cluster_files_travel_worker_killed_resume(
    fleet_dir: Path, serial_fleet: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    from dask.distributed import Client

    dask_cli = str(Path(sys.executable).parent / "dask")
    elsewhere = tmp_path / "workers_home"  # the workers' cwd and HOME: not where the models are
    elsewhere.mkdir()
    env = {**os.environ, "HOME": str(elsewhere)}
    sched_file = tmp_path / "scheduler.json"
    procs = [
        _start(
            [
                dask_cli,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(sched_file),
            ],
            elsewhere,
            env,
        )
    ]
    try:
        for _ in range(300):
            if sched_file.is_file() and sched_file.stat().st_size:
                break
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        workers = {}
        for name in ("w1", "w2"):
            workers[name] = _start(
                [
                    dask_cli,
                    "worker",
                    address,
                    "--nthreads",
                    "1",
                    "--no-nanny",
                    "--no-dashboard",
                    "--name",
                    name,
                    "--local-directory",
                    str(elsewhere / name),
                ],
                elsewhere,
                env,
            )
        procs += list(workers.values())
        source = tmp_path / "src"
        shutil.copytree(fleet_dir, source)
        out = tmp_path / "cluster_out"
        with Client(address) as client:
            client.wait_for_workers(2, timeout=60)
            done: dict[str, object] = {}
            thread = threading.Thread(
                target=lambda: done.update(
                    res=run_fleet(source, FleetJob(job="snapshot"), out, scheduler=address, progress=False)
                )
            )
            thread.start()
            killed = None
            moved = False
            while thread.is_alive():
                if not moved and any(out.glob("**/done.json")):  # every model was packed before submission
                    source.rename(tmp_path / "src_gone")
                    moved = True
                busy = {a: keys for a, keys in client.processing().items() if keys}
                if moved and killed is None and busy:
                    addr, keys = next(iter(busy.items()))
                    name = client.scheduler_info()["workers"][addr]["name"]
                    killed = (name, workers[name].pid, next(iter(keys)))
                    os.kill(workers[name].pid, signal.SIGKILL)
                time.sleep(0.02)
            thread.join()
        res = done["res"]
        assert moved and killed is not None
        serial_table = serial_fleet[1]
        pd.testing.assert_frame_equal(_without_timing(res.table), _without_timing(serial_table))  # type: ignore[attr-defined]
        assert list(res.errors.feeder) == ["broken"]  # type: ignore[attr-defined]
        markers = {
            p.parent.relative_to(out / "feeders").as_posix(): json.loads(p.read_text())
            for p in out.glob("feeders/**/done.json")
        }
        assert set(markers) == _expected_keys()
        for m in markers.values():  # opened an unpacked copy in a temporary folder, never the source
            assert "lv3ph-model-" in m["opened"] and str(tmp_path / "src") not in m["opened"]
        survivor = {p.pid for n, p in workers.items() if n != killed[0]}
        key = str(killed[2]).split("-", 2)[2]  # the feeder the killed worker was solving: redone by the other
        assert markers[key]["pid"] in survivor
    finally:
        for p in reversed(procs):  # workers first, then the scheduler
            if p.poll() is None:
                p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    # --resume: nothing finished runs again; a feeder whose marker is gone runs alone
    (tmp_path / "src_gone").rename(source)
    stamp = {k: (out / "feeders" / k / "done.json").stat().st_mtime_ns for k in markers}
    gone = "dss_models/ieee_eu_lv"
    (out / "feeders" / gone / "done.json").unlink()
    again = run_fleet(source, FleetJob(job="snapshot"), out, serial=True, resume=True, progress=False)
    assert sorted(again.skipped) == sorted(_expected_keys() - {gone})
    for k in _expected_keys() - {gone}:
        assert (out / "feeders" / k / "done.json").stat().st_mtime_ns == stamp[k]
    pd.testing.assert_frame_equal(_without_timing(again.table), _without_timing(serial_fleet[1]))
    assert list(again.errors.feeder) == ["broken"]


def test_fleet_list_with_settings_and_missing_model(tmp_path: Path) -> None:
    """A CSV list: per-feeder settings override the fleet's; a missing model is an error row."""
    write_feeder(tmp_path / "a", HAND)
    listing = tmp_path / "fleet.csv"
    listing.write_text("model,feeder,pme_ohm\na/Master.dss,plain,\na/Master.dss,pme,20\nnope/Master.dss,,\n")
    res = run_fleet(listing, FleetJob(job="snapshot"), tmp_path / "out", serial=True, progress=False)
    by = res.table.set_index("feeder")
    assert by.loc["plain", "earth_electrodes"] == 1 and by.loc["pme", "earth_electrodes"] == 3  # + one per customer
    assert list(res.errors.feeder) == ["nope"] and "not found" in res.errors.error[0]
    # any fsspec URL is a store: here fsspec's in-memory file system
    import io

    import fsspec

    again = run_fleet(listing, FleetJob(job="snapshot"), "memory://fleet_test", serial=True, progress=False)
    mem = fsspec.filesystem("memory")
    stored = pd.read_csv(io.BytesIO(mem.cat("/fleet_test/fleet.csv")))
    assert list(stored.feeder) == ["plain", "pme"] and mem.exists("/fleet_test/feeders/pme/done.json")
    np.testing.assert_allclose(stored.loss_kw, res.table.loss_kw, rtol=1e-9)  # CSV keeps 10 digits
    pd.testing.assert_frame_equal(again.table.drop(columns="seconds"), res.table.drop(columns="seconds"))


def test_misallocation_hand_calculation() -> None:
    table = pd.DataFrame(
        {
            "contract": ["s1>b1", "s2>b2", "grid:s1"],
            "seller": ["s1", "s2", ""],
            "buyer": ["b1", "b2", ""],
            "exact_kwh": [1.0, 2.0, 5.0],
            "pro-rata_kwh": [1.5, 1.0, 0.0],
        }
    )
    every, same, cross = misallocation_pct(table, {"s1": "a", "b1": "a", "s2": "a", "b2": "b"}, "pro-rata")
    assert every == pytest.approx(100 * (0.5 + 1.0) / 3.0)
    assert same == pytest.approx(50.0) and cross == pytest.approx(50.0)


@pytest.mark.skipif(not ENWL.is_dir(), reason="../shared/data/enwl_4wire not available")
def test_fleet_audit_and_hosting_jobs(tmp_path: Path) -> None:
    """Audit rows add up to OpenDSS's losses (exact and pro-rata); hosting as a direct call."""
    from lv3ph.hosting import hosting_capacity
    from lv3ph.powerflow import RunSpec
    from lv3ph.unbalance import Limits

    listing = tmp_path / "fleet.csv"
    listing.write_text(f"model,feeder\n{ENWL / 'Feeder_2' / 'Master.dss'},f2\n")
    window = {"mode": "yearly", "stepsize": "1m", "start": 700, "steps": 20}
    audit = run_fleet(listing, FleetJob(job="audit", **window), tmp_path / "a", serial=True, progress=False)  # type: ignore[arg-type]
    row = audit.table.iloc[0]
    alloc = pd.read_csv(tmp_path / "a" / "feeders" / "f2" / "allocation.csv")
    assert alloc.exact_kwh.sum() == pytest.approx(row.loss_kwh, rel=1e-6)
    assert alloc["pro-rata_kwh"].sum() == pytest.approx(row.loss_kwh, rel=1e-9)
    assert row.contracts > 0 and row.contract_loss_exact_kwh > 0 and 0 < row.phase_only_error_pct < 100
    host = run_fleet(
        listing,
        FleetJob(job="hosting", placements=2, **window),
        tmp_path / "h",
        serial=True,
        progress=False,  # type: ignore[arg-type]
    )
    direct = hosting_capacity(
        ENWL / "Feeder_2" / "Master.dss",
        run=RunSpec.parse("yearly", "1m", 700, 20),
        limits=Limits(),
        placements=2,
        seed=1,
        kwp_range=(3.0, 8.0),
        serial=True,
        progress=False,
    )
    assert host.table.iloc[0].hosting_median_kw == pytest.approx(direct.summary["median_kw"], rel=1e-12)


def test_split_run_equals_serial(tmp_path: Path) -> None:
    """CLI --workers 2 on a cluster (model files travel, the worker compiles), then a run whose
    worker engine solved another window before (cached engine): both equal the serial run."""
    from dask.distributed import LocalCluster

    from lv3ph.powerflow import RunSpec, open_feeder
    from lv3ph.splitrun import solve_split

    args = [str(IEEE_4W_PME), "--vmaxpu", "1.5", "--start", "500", "--steps", "100", "--no-progress"]
    assert main(["powerflow", *args, "--out", str(tmp_path / "serial.nc")]) == 0
    a = read_dataset(tmp_path / "serial.nc")
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        assert main(["powerflow", *args, "--workers", "2", "--scheduler", address, "--out", str(tmp_path / "split.nc")]) == 0  # fmt: skip
        engine, model = open_feeder(IEEE_4W_PME, vmaxpu=1.5)
        solve_split(engine, model, RunSpec("yearly", 60.0, 900, 100), workers=2, vmaxpu=1.5, scheduler=address, progress=False)  # fmt: skip
        engine, model = open_feeder(IEEE_4W_PME, vmaxpu=1.5)  # the worker's engine was left at step 999
        warm = solve_split(engine, model, RunSpec("yearly", 60.0, 500, 100), workers=2, vmaxpu=1.5, scheduler=address, progress=False)  # fmt: skip
    split = read_dataset(tmp_path / "split.nc")
    for b in (split, warm):
        np.testing.assert_array_equal(a.time.values, b.time.values)
        v = np.nan_to_num(a.voltage.values)
        assert np.abs(np.nan_to_num(b.voltage.values) - v).max() <= 1e-12 * np.abs(v).max()
        for var in ("loss_total_kw", "loss_neutral_kw", "loss_earth_kw", "customer_p_kw"):
            x, y = a[var].values, b[var].values
            assert np.nanmax(np.abs(x - y)) <= 1e-9 * np.nanmax(np.abs(x)), var
    assert np.nanmax(np.abs(a.pvur_pct.values - split.pvur_pct.values)) <= 1e-9
