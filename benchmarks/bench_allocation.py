"""Exact loss allocation: 1440 one-minute steps x N contracts per step on the four-wire IEEE twin.

Prints, in one run:
* the power-flow time (solve loop + capture) the allocation explains;
* the allocation time (shares, party rows, fast form, per-row kernel), without and with the
  once-per-model precomputation (factorisation, transfer matrices);
* numba kernels vs their plain numpy references on the same inputs (per-row losses on the
  whole day; per-branch detail on a slice of steps, where the numpy reference is slow).

Run: ``.venv/bin/python benchmarks/bench_allocation.py [--contracts 200]``
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")

import numpy as np
import pandas as pd

from lv3ph.allocation.contracts import contract_shares
from lv3ph.allocation.exact import active_injection, fast_u, loss_network, party_rows
from lv3ph.allocation.kernels import branch_losses, branch_losses_reference, row_losses, row_losses_reference
from lv3ph.model import loadshape_command, pv_commands
from lv3ph.powerflow import RunSpec, capture, customer_ports, open_feeder, port_voltages, solve_raw

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "dss_models/ieee_eu_lv_4wire/Master.dss"


def contracts_every_step(pf, per_step: int, rng: np.random.Generator) -> pd.DataFrame:
    drawn = pf.customer_p_kw.values
    names = np.array(pf.customer.values)
    frames = []
    for ti, t in enumerate(pf.time.values):
        sellers, buyers = np.nonzero(drawn[ti] < -0.1)[0], np.nonzero(drawn[ti] > 0.05)[0]
        s, b = rng.choice(sellers, per_step), rng.choice(buyers, per_step)
        kw = 0.9 * np.minimum(-drawn[ti, s] / per_step, drawn[ti, b] / per_step)
        frames.append(
            pd.DataFrame(
                {
                    "contract": [f"{x}>{y}" for x, y in zip(names[s], names[b], strict=True)],
                    "time": t,
                    "seller": names[s],
                    "buyer": names[b],
                    "kw": kw,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contracts", type=int, default=200, help="contracts per step")
    parser.add_argument("--detail-steps", type=int, default=10, help="steps for the per-branch reference")
    args = parser.parse_args()
    engine, model = open_feeder(MODEL, vmaxpu=1.5, pme_ohm=20.0)
    sellers = [c.name for c in model.customers[::2]]  # 28 prosumers exporting all day
    engine.apply(
        [loadshape_command("flat", np.ones(1440), 60.0), *pv_commands(model, dict.fromkeys(sellers, 8.0), "flat")]
    )
    model = engine.model()
    spec = RunSpec("yearly", 60.0, 1, 1440)
    solve_raw(engine, model, RunSpec("yearly", 60.0, 1, 5), progress=False)  # warm-up
    engine.apply([])
    t0 = time.perf_counter()
    vt, measured = solve_raw(engine, model, spec, progress=False)
    pf = capture(model, spec, vt, measured)
    t_pf = time.perf_counter() - t0
    table = contracts_every_step(pf, args.contracts, np.random.default_rng(1))
    names = customer_ports(model).names
    t0 = time.perf_counter()
    net = loss_network(model)
    t_pre = time.perf_counter() - t0

    def allocate_once() -> np.ndarray:
        ports = customer_ports(model)
        shares = contract_shares(table, pf.customer_p_kw.values, names, pf.time.values)
        inj = pf.customer_injection.values
        a, _ = active_injection(inj, port_voltages(vt, ports.nodes), ports.n_phases)
        j_ext = net.y_ext @ vt
        rows = party_rows(net, model, table, shares, inj, a, j_ext, pf.time.values)
        u = fast_u(net, j_ext)
        return row_losses(u, rows.time, rows.ptr, rows.pos, rows.val), rows, u

    allocate_once()  # numba cache load
    t0 = time.perf_counter()
    losses, rows, u = allocate_once()
    t_alloc = time.perf_counter() - t0
    total = losses.sum() / 1000
    assert abs(total - float(pf.loss_total_kw.sum())) < 1e-6 * float(pf.loss_total_kw.sum())
    t0 = time.perf_counter()
    row_losses(u, rows.time, rows.ptr, rows.pos, rows.val)
    t_k = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = row_losses_reference(u, rows.time, rows.ptr, rows.pos, rows.val)
    t_ref = time.perf_counter() - t0
    assert np.allclose(ref, losses, rtol=1e-10, atol=1e-12 * np.abs(losses).max())
    # per-branch detail on the first steps' contracts
    few = np.nonzero(rows.time < args.detail_steps)[0]
    labels, group = np.unique(np.array(rows.label)[few], return_inverse=True)
    order = few[np.argsort(group, kind="stable")].astype(np.int64)
    gptr = np.concatenate([[0], np.cumsum(np.bincount(group, minlength=labels.size))]).astype(np.int64)
    w = net.row_b @ (net.row_map @ vt)
    slots = len(model.elements) * net.max_conductors
    args_d = (
        np.ascontiguousarray(net.mz.T),
        w,
        net.row_slot,
        slots,
        gptr,
        order,
        rows.time,
        rows.ptr,
        rows.pos,
        rows.val,
    )
    branch_losses(*args_d)
    t0 = time.perf_counter()
    det = branch_losses(*args_d)
    t_bk = time.perf_counter() - t0
    t0 = time.perf_counter()
    det_ref = branch_losses_reference(*args_d)
    t_bref = time.perf_counter() - t0
    assert np.allclose(det, det_ref, rtol=1e-10, atol=1e-12 * np.abs(det_ref).max())
    n_c = len(table)
    print(
        f"four-wire IEEE twin, PME 20 ohm, 1440 steps, {args.contracts} contracts/step ({n_c} contract rows, {rows.time.size} party rows)"
    )
    print(f"{'power flow (solve + capture)':<44} {t_pf:8.3f} s")
    print(
        f"{'allocation per run (shares..kernel)':<44} {t_alloc:8.3f} s   ratio to power flow {t_alloc / t_pf:5.2f} (target <= 0.2)"
    )
    print(
        f"{'  + once-per-model precompute':<44} {t_pre:8.3f} s   ratio incl. precompute {(t_alloc + t_pre) / t_pf:5.2f}"
    )
    print(f"{'row_losses: numba vs numpy reference':<44} {t_k:8.4f} s vs {t_ref:8.4f} s   speed-up {t_ref / t_k:6.1f}x")
    print(
        f"{f'branch detail ({few.size} party rows): numba vs numpy':<44} {t_bk:8.4f} s vs {t_bref:8.4f} s   speed-up {t_bref / t_bk:6.1f}x (target >= 20x)"
    )
    print(f"allocated {total * 60 / 60:.4f} kW-steps = power flow's {float(pf.loss_total_kw.sum()):.4f}")


if __name__ == "__main__":
    main()
