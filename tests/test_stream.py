"""Streaming capture: store = in-memory capture bit for bit, lazy reading, kill and resume."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

from lv3ph.cli import main
from lv3ph.dss import Engine
from lv3ph.errors import Lv3phError, ProfileError
from lv3ph.io import incomplete_path, open_result
from lv3ph.powerflow import RunSpec, capture_customers, open_feeder, solve
from lv3ph.stream import Feeder, block_ranges, run_streamed
from lv3ph.unbalance import unbalance
from tests.conftest import IEEE_4W_PME, ROOT

SHORT_PROFILE = ROOT / "tests" / "bad_inputs" / "powerflow_short_profile" / "model.dss"


def _in_memory(path: Path, start: int, steps: int) -> xr.Dataset:
    """Today's capture: one solve() of the steps, merged with the per-bus unbalance."""
    engine, model = open_feeder(path, vmaxpu=1.5)
    pf = solve(engine, model, RunSpec("yearly", 60.0, start, steps), progress=False)
    return xr.merge([pf, unbalance(pf)], compat="override")


def _assert_same(ref: xr.Dataset, got: xr.Dataset) -> None:
    assert set(ref.data_vars) <= set(got.data_vars)
    for name in ref.variables:
        a, b = ref[name].values, got[name].values
        assert a.shape == b.shape, name
        if a.dtype.kind in "fc":
            assert np.array_equal(a, b, equal_nan=True), name  # bit for bit (NaN where absent)
        else:
            assert (a == b).all(), name


def _stream(out: Path, capture: str, steps: int = 40) -> Path:
    """The IEEE PME twin streamed from step 561 in blocks of 20 steps."""
    return run_streamed(
        Feeder(str(IEEE_4W_PME), vmaxpu=1.5),
        RunSpec("yearly", 60.0, 561, steps),
        out,
        capture_level=capture,
        block_steps=20,
        progress=False,
    )


@pytest.fixture(scope="module")
def streamed_full(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stream") / "full.zarr"
    return _stream(out, "full")


def test_blocks_on_a_fixed_grid() -> None:
    assert block_ranges(561, 40, 20) == [(561, 20), (581, 20)]
    assert block_ranges(5, 30, 10) == [(5, 6), (11, 10), (21, 10), (31, 4)]


def test_streamed_full_equals_in_memory_capture_bit_for_bit(streamed_full: Path) -> None:
    ds = open_result(streamed_full)
    # every block is one OpenDSS time-mode call, so each equals today's capture of its steps
    for start in (561, 581):
        _assert_same(_in_memory(IEEE_4W_PME, start, 20), ds.sel(time=slice(start, start + 19)).load())


def test_open_result_is_lazy(streamed_full: Path) -> None:
    ds = open_result(streamed_full)
    assert ds.voltage.chunks is not None and ds.voltage.dtype == np.complex128
    assert ds.voltage.chunks[0] == (20, 20)  # one chunk per block
    assert int(ds.attrs["lv3ph_complete"]) == 1 and ds.attrs["capture"] == "full"


def test_customers_capture_equals_full(streamed_full: Path, tmp_path: Path) -> None:
    path = _stream(tmp_path / "cust.zarr", "customers")
    full, cust = open_result(streamed_full).load(), open_result(path).load()
    assert "voltage" not in cust and "current" not in cust
    for name in ("customer_injection", "customer_p_kw", "loss_phase_kw", "loss_neutral_kw", "loss_earth_kw"):
        assert np.array_equal(full[name].values, cust[name].values), name
    head = cust.head_current.attrs["element"]
    assert np.array_equal(cust.head_current.values, full.current.sel(element=head).values[:, :4])
    assert np.array_equal(cust.customer_voltage.values, full.customer_voltage.values, equal_nan=True)
    # a customer's phase voltage: its phase node against its neutral node in the full capture
    (bus, term), (_, neutral) = (str(n).rsplit(".", 1) for n in cust.customer_port_node.values[0, :2])
    v = full.voltage.sel(bus=bus)
    assert np.array_equal(
        cust.customer_voltage.values[:, 0, 0], (v.sel(terminal=int(term)) - v.sel(terminal=int(neutral))).values
    )
    stats = _stream(tmp_path / "stats.zarr", "stats")
    st = open_result(stats).load()
    assert "customer_injection" not in st
    for name in ("loss_total_kw", "loss_neutral_total_kw", "source_p_kw", "v10_v", "vuf_p95_pct", "compliant"):
        assert np.array_equal(st[name].values, full[name].values, equal_nan=True), name


def test_repeat_profiles_cycles_short_shapes(tmp_path: Path) -> None:
    spec = RunSpec.parse("yearly", "1h", 1, 5)
    with pytest.raises(ProfileError, match="covers 3 h but the run ends at 5 h"):
        run_streamed(Feeder(str(SHORT_PROFILE)), spec, tmp_path / "r.zarr", capture_level="stats", progress=False)
    assert not any(tmp_path.iterdir())  # validation before anything is written
    spec = RunSpec.parse("yearly", "1h", 1, 6, repeat_profiles=True)
    ds = open_result(run_streamed(Feeder(str(SHORT_PROFILE)), spec, tmp_path / "r.zarr", progress=False)).load()
    p = ds.customer_p_kw.sel(customer="c2").values  # shape [1 0.5 1] x 6 kW, cycled
    assert p == pytest.approx([6, 3, 6, 6, 3, 6], rel=2e-3)
    assert p[3:] == pytest.approx(p[:3], rel=1e-4)  # same set-points; OpenDSS converges to 1e-4 pu
    assert ds.attrs["repeat_profiles"] == 1


def _progress(store: Path) -> int:
    try:
        return int(json.loads((store / "lv3ph_progress.json").read_text())["time"])
    except (OSError, ValueError, KeyError):
        return 0


def test_killed_run_resumes_to_identical_numbers(tmp_path: Path) -> None:
    out = tmp_path / "run.zarr"
    args = [str(IEEE_4W_PME), "--vmaxpu", "1.5", "--start", "401", "--steps", "200", "--block-steps", "20"]
    cmd = [sys.executable, "-m", "lv3ph.cli", "powerflow", *args, "--capture", "customers", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = incomplete_path(out)
    deadline = time.monotonic() + 300
    while _progress(store) < 40 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = _progress(store)
    assert 40 <= done < 200, "the run finished before it could be killed"
    assert not out.exists()  # nothing that looks complete
    with pytest.raises(Lv3phError, match="not finished"):
        open_result(out)
    assert int(open_result(out, allow_incomplete=True).attrs["lv3ph_complete"]) == 0
    assert main(["powerflow", "--resume", "--out", str(out), "--no-progress"]) == 0
    assert out.is_dir() and not store.exists()
    ref = tmp_path / "ref.zarr"
    assert main(["powerflow", *args, "--capture", "customers", "--out", str(ref), "--no-progress"]) == 0
    a, b = open_result(ref).load(), open_result(out).load()
    assert a.sizes["time"] == b.sizes["time"] == 200
    _assert_same(a, b)
    assert main(["powerflow", "--resume", "--out", str(out)]) == 2  # nothing left to resume


def test_at_most_two_blocks_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker captures block k while OpenDSS solves block k + 1: when a solve starts, at
    most the one block before it is still alive, and the store equals the in-memory capture."""
    alive: list[int] = []
    at_start: list[int] = []
    run = Engine.run

    def tracked(self: Engine, *args: Any, **kwargs: Any) -> Any:
        gc.collect()
        at_start.append(len(alive))
        vt, measured = run(self, *args, **kwargs)
        alive.append(id(vt))
        weakref.finalize(vt, alive.remove, id(vt))
        return vt, measured

    monkeypatch.setattr(Engine, "run", tracked)
    path = _stream(tmp_path / "r.zarr", "customers", 80)
    assert len(at_start) == 4 and max(at_start) <= 1
    monkeypatch.undo()
    ref, got = _customers_in_memory(561, 80), open_result(path).load()
    for name in ("customer_injection", "loss_phase_kw", "head_current"):
        assert np.array_equal(ref[name].values, got[name].values), name


def _customers_in_memory(start: int, steps: int) -> xr.Dataset:
    """The customers capture of each 20-step block solved on its own, concatenated."""
    engine, model = open_feeder(IEEE_4W_PME, vmaxpu=1.5)
    parts = []
    for k0 in range(start, start + steps, 20):
        vt, measured = engine.run("yearly", 60.0, k0, 20)
        parts.append(capture_customers(model, RunSpec("yearly", 60.0, k0, 20), vt, measured))
    return xr.concat(parts, dim="time", data_vars="minimal", coords="minimal", compat="override")
