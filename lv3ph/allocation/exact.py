"""Exact loss allocation by superposition on the linear four-wire network.

Method (see ``../shared/design/loss_allocation.md``; Conejo et al. 2001 Z-bus allocation,
extended to explicit neutral and earth as in Nikolaidis et al. 2019):

1. Everything but the customers is linear: lines (4x4), earth electrodes, transformers,
   the source's Norton admittance. Its nodal matrix ``Y`` (:func:`lv3ph.model.network_y`)
   is factorised once; ``Z_E`` are the columns of ``Y^-1`` at the *extended ports* E:
   customers' phase/neutral nodes and the source nodes.
2. Each step's injections at E are ``J_E = (Y V)[E]`` -- exactly what OpenDSS's solution
   implies. Every customer ``k`` owns the part ``J_k`` at its ports (phases, and minus
   their sum at its neutral); the rest (source, solver residual) is the *no-load* party.
3. Customers are split into contracts by **active-current matching**: per phase the
   current in phase with the customer's own phase-to-neutral voltage is its active
   current ``a_k`` (drawing ``P_k``). A contract of ``kw`` carries ``kw / export_s`` of the
   seller's active injection and ``kw / import_b`` of the buyer's; what is left of each
   customer (reactive current, unmatched active current) is its ``grid:<customer>`` row.
4. A party with injection ``j`` has voltage contribution ``Z_E j`` and loss share
   ``Re((Z_E j)^H G V)`` per part, with ``G = sum_e P_e^T H_e P_e`` and ``H_e`` the
   Hermitian part of the element's primitive admittance, rows split by part: phase
   conductors, neutral conductors (traced neutral-role nodes), earth electrodes, transformers. Cross
   terms are split equally -- the Shapley value of the quadratic loss. The parts of all
   parties add up to ``V^H G V``, the losses OpenDSS computes.

Fast form: ``U_part = (Z_E^H G_part Z_E) J_E`` for all steps in one product; a party's
loss is then ``Re(j^H U)`` over its few ports (:func:`lv3ph.allocation.kernels.row_losses`).

Note on the part split: each element's rows are split with ``H``; per conductor this
equals ``r_k |I_k|^2`` for uncoupled conductors (the IEEE twin). With mutual coupling
(real four-core cables) the phase/neutral split differs from OpenDSS's ``PhaseLosses``
row convention by reactive cross terms that cancel in the element total.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, Unpack

import numpy as np
import pandas as pd
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import xarray as xr

from lv3ph.allocation.contracts import (
    Shares,
    assert_valid_contracts,
    contract_positions,
    contract_shares,
    read_contracts,
)
from lv3ph.allocation.kernels import branch_losses, row_losses
from lv3ph.dss import Engine
from lv3ph.model import ComplexArray, FeederModel, IntArray, is_series, network_y
from lv3ph.powerflow import RunSpec, capture, customer_ports, neutral_conductors, open_feeder, port_voltages, solve_raw

PARTS = ("phase", "neutral", "earth", "transformer")
NO_LOAD = "grid:no-load"


@dataclass(frozen=True)
class LossNetwork:
    """What the allocation precomputes once per model.

    Element losses are written as ``Re(x^H B x)`` over *loss rows* ``x = M V``: for a
    two-terminal series element (lines, most electrodes) one row per conductor with
    ``x`` its voltage drop ``V1 - V2`` and ``B`` the Hermitian part of its series
    admittance; for other elements (transformers, shunts) one row per terminal conductor
    with ``x`` the node voltage and ``B`` the Hermitian part of ``Yprim``. Taking the drop
    first keeps the faithful twin's near-zero neutral impedances (admittance ~1e9 S)
    from amplifying rounding.

    Attributes:
        ext_nodes: node index of each extended port (customer ports, then source nodes).
        z_ext: (n_nodes, m) columns of ``Y^-1`` at ``ext_nodes``, ohm.
        y_ext: (m, n_nodes) rows of ``Y`` at ``ext_nodes``, S (``J_E = y_ext @ V``).
        row_map: (loss rows, n_nodes) ``M``.
        row_b: (loss rows, loss rows) ``B``, S.
        mz: (loss rows, m) ``M Z_E``, ohm.
        a_parts: (parts, m, m) ``(M Z_E)^H B_part (M Z_E)``, ohm.
        row_part: part index of each loss row (into :data:`PARTS`).
        row_slot: ``element * max_conductors + conductor`` of each loss row.
        max_conductors: conductors per element slot.
    """

    ext_nodes: IntArray
    z_ext: ComplexArray
    y_ext: sp.csr_matrix
    row_map: sp.csr_matrix
    row_b: sp.csr_matrix
    mz: ComplexArray
    a_parts: ComplexArray
    row_part: IntArray
    row_slot: IntArray
    max_conductors: int


def _element_part(kind: str, neutral: np.ndarray) -> np.ndarray:
    """Part index per conductor of an element (see :data:`PARTS`)."""
    if kind == "earthing":
        return np.full(neutral.size, 2)
    if kind == "transformer":
        return np.full(neutral.size, 3)
    return np.where(neutral, 1, 0)


def loss_rows(model: FeederModel) -> tuple[sp.csr_matrix, sp.csr_matrix, IntArray, IntArray]:
    """``(M, B, part, slot)`` of the loss rows (see :class:`LossNetwork`)."""
    n = model.n_nodes
    max_cond = max(e.n_conductors for e in model.elements)
    neutral = neutral_conductors(model, max_cond)
    r_idx: list[np.ndarray] = []
    c_idx: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    blocks: list[np.ndarray] = []
    parts: list[np.ndarray] = []
    slots: list[np.ndarray] = []
    row = 0
    for i, e in enumerate(model.elements):
        k = e.n_conductors
        if is_series(e):
            ys = e.yprim[:k, :k]
            blocks.append((ys + ys.conj().T) / 2)
            sides: tuple[tuple[IntArray, float], ...] = ((e.nodes[:k], 1.0), (e.nodes[k:], -1.0))
            cond = np.arange(k)
        else:
            blocks.append((e.yprim + e.yprim.conj().T) / 2)
            sides = ((e.nodes, 1.0),)
            cond = np.tile(np.arange(k), e.n_terminals)
        for nodes, sign in sides:
            on = np.nonzero(nodes >= 0)[0]
            r_idx.append(row + on)
            c_idx.append(nodes[on])
            vals.append(np.full(on.size, sign, dtype=np.complex128))
        parts.append(_element_part(e.kind, neutral[i, cond]))
        slots.append(i * max_cond + cond)
        row += cond.size
    row_map = sp.csr_matrix((np.concatenate(vals), (np.concatenate(r_idx), np.concatenate(c_idx))), shape=(row, n))
    row_b = sp.block_diag(blocks, format="csr")
    return row_map, row_b, np.concatenate(parts), np.concatenate(slots)


def loss_network(model: FeederModel) -> LossNetwork:
    """Factorise the network and precompute the fast-form matrices (once per model)."""
    y = network_y(model).tocsc()
    ports = customer_ports(model)
    src = np.concatenate([s.nodes[s.nodes >= 0] for s in model.sources])
    port_nodes = ports.nodes[ports.nodes >= 0]
    ext = np.unique(np.concatenate([port_nodes, src]))
    n = model.n_nodes
    rhs = np.zeros((n, ext.size), dtype=np.complex128)
    rhs[ext, np.arange(ext.size)] = 1.0
    z_ext = spla.splu(y).solve(rhs)
    row_map, row_b, part, slot = loss_rows(model)
    mz = np.asarray(row_map @ z_ext)
    masked = [sp.diags((part == p).astype(float)) @ row_b for p in range(len(PARTS))]
    a_parts = np.stack([mz.conj().T @ (bp @ mz) for bp in masked])
    return LossNetwork(
        ext_nodes=ext,
        z_ext=z_ext,
        y_ext=y.tocsr()[ext],
        row_map=row_map,
        row_b=row_b,
        mz=mz,
        a_parts=a_parts,
        row_part=part,
        row_slot=slot,
        max_conductors=max(e.n_conductors for e in model.elements),
    )


def network_losses(net: LossNetwork, vt: ComplexArray) -> np.ndarray:
    """Losses per step and part, kW: ``Re(x^H B_part x)`` with ``x = M V``; (steps, parts)."""
    x = net.row_map @ vt
    per_row = (np.conj(x) * (net.row_b @ x)).real
    out = np.zeros((vt.shape[1], len(PARTS)))
    for p in range(len(PARTS)):
        out[:, p] = per_row[net.row_part == p].sum(axis=0)
    return out / 1000.0


def active_injection(inj: ComplexArray, v_ports: ComplexArray, n_phases: IntArray) -> tuple[ComplexArray, np.ndarray]:
    """Active part of each customer's injection and its drawn active power.

    Args:
        inj: (steps, customers, ports) injected current, A (phases, then neutral).
        v_ports: (steps, customers, ports) port voltages to earth, V (0 for earth ports).
        n_phases: phase ports per customer.

    Returns:
        ``(a, p_kw)``: ``a`` as ``inj`` -- per phase the component in phase with the
        customer's phase-to-neutral voltage, minus their sum at the neutral port -- and
        the drawn active power per (step, customer), kW (export negative).
    """
    steps, n_cust, n_ports = inj.shape
    a = np.zeros_like(inj)
    p_kw = np.zeros((steps, n_cust))
    for k in range(n_cust):
        ph = int(n_phases[k])
        vn = v_ports[:, k, ph][:, None] if ph < n_ports else 0.0
        vpn = v_ports[:, k, :ph] - vn
        drawn_w = (vpn * np.conj(-inj[:, k, :ph])).real
        with np.errstate(divide="ignore", invalid="ignore"):
            act = np.where(np.abs(vpn) > 0, -drawn_w * vpn / np.abs(vpn) ** 2, 0)
        a[:, k, :ph] = act
        if ph < n_ports:
            a[:, k, ph] = -act.sum(axis=1)
        p_kw[:, k] = drawn_w.sum(axis=1) / 1000.0
    return a, p_kw


@dataclass(frozen=True)
class PartyRows:
    """Parties as rows with sparse injections at extended ports (see kernels module)."""

    time: IntArray  # column of the voltage history
    ptr: IntArray
    pos: IntArray
    val: ComplexArray
    label: np.ndarray  # contract id, grid:<customer> or grid:no-load (object array)
    seller: np.ndarray
    buyer: np.ndarray
    kw: np.ndarray


def party_rows(
    net: LossNetwork,
    model: FeederModel,
    contracts: pd.DataFrame,
    shares: Shares,
    inj: ComplexArray,
    a: ComplexArray,
    j_ext: ComplexArray,
    times: IntArray,
) -> PartyRows:
    """Build contract rows, one ``grid:<customer>`` row per customer and step, and one
    ``grid:no-load`` row per step (source and solver residual), in that order."""
    ports = customer_ports(model)
    where = np.full(model.n_nodes, -1)
    where[net.ext_nodes] = np.arange(net.ext_nodes.size)
    port_pos = np.where(ports.nodes >= 0, where[np.maximum(ports.nodes, 0)], -1)  # (cust, ports)
    n_ports = port_pos.shape[1]
    steps, n_cust, _ = inj.shape
    ti, si, bi = contract_positions(contracts, ports.names, times)
    matched = np.zeros((steps, n_cust))
    np.add.at(matched, (ti, si), shares.seller_share)
    np.add.at(matched, (ti, bi), shares.buyer_share)
    # dense (row, slot) layout: contracts use seller ports then buyer ports; grid rows own ports
    c_pos = np.concatenate([port_pos[si], port_pos[bi]], axis=1)
    c_val = np.concatenate([shares.seller_share[:, None] * a[ti, si], shares.buyer_share[:, None] * a[ti, bi]], axis=1)
    g_time = np.repeat(np.arange(steps), n_cust)
    g_cust = np.tile(np.arange(n_cust), steps)
    g_pos = port_pos[g_cust]
    g_val = (inj - matched[:, :, None] * a).reshape(steps * n_cust, n_ports)
    cust = np.zeros((net.ext_nodes.size, steps), dtype=np.complex128)
    for k in range(n_cust):
        ok = port_pos[k] >= 0
        np.add.at(cust, port_pos[k][ok], inj[:, k, ok].T)
    j0 = (j_ext - cust).T  # (steps, m)
    pos_blocks = [c_pos, g_pos]
    val_blocks = [c_val, g_val]
    ptr_parts, pos_parts, val_parts = [], [], []
    for pos_b, val_b in zip(pos_blocks, val_blocks, strict=True):
        ok = pos_b >= 0
        ptr_parts.append(ok.sum(axis=1))
        pos_parts.append(pos_b[ok])
        val_parts.append(val_b[ok])
    ptr_parts.append(np.full(steps, net.ext_nodes.size))
    pos_parts.append(np.tile(np.arange(net.ext_nodes.size), steps))
    val_parts.append(j0.ravel())
    counts = np.concatenate(ptr_parts)
    grid = np.array([f"grid:{n}" for n in ports.names], dtype=object)
    empty = np.full(steps * n_cust + steps, "", dtype=object)
    return PartyRows(
        time=np.concatenate([ti, g_time, np.arange(steps)]).astype(np.int64),
        ptr=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        pos=np.concatenate(pos_parts).astype(np.int64),
        val=np.concatenate(val_parts).astype(np.complex128),
        label=np.concatenate(
            [contracts.contract.to_numpy(dtype=object), grid[g_cust], np.full(steps, NO_LOAD, dtype=object)]
        ),
        seller=np.concatenate([contracts.seller.to_numpy(dtype=object), empty]),
        buyer=np.concatenate([contracts.buyer.to_numpy(dtype=object), empty]),
        kw=np.concatenate([shares.kw, np.zeros(steps * n_cust + steps)]),
    )


def fast_u(net: LossNetwork, j_ext: ComplexArray) -> ComplexArray:
    """``U[part] = A_part J_E`` for all steps: (parts, m, steps)."""
    return np.einsum("pij,jt->pit", net.a_parts, j_ext, optimize=True)


def allocate_rows(net: LossNetwork, rows: PartyRows, j_ext: ComplexArray) -> np.ndarray:
    """Loss of every party row in every part, kW (rows, parts)."""
    return row_losses(fast_u(net, j_ext), rows.time, rows.ptr, rows.pos, rows.val) / 1000.0


def branch_detail(net: LossNetwork, rows: PartyRows, vt: ComplexArray, n_elements: int) -> tuple[list[str], np.ndarray]:
    """Per party label (contract id, grid:<customer>, grid:no-load), per element and
    conductor: loss summed over the run, kWh per hour of step (kW x steps).

    Returns ``(labels, detail)`` with ``detail`` shaped (labels, elements, conductors), kW
    summed over steps (multiply by the step in hours for kWh).
    """
    labels, group = np.unique(rows.label.astype(str), return_inverse=True)
    order = np.argsort(group, kind="stable").astype(np.int64)
    group_ptr = np.concatenate([[0], np.cumsum(np.bincount(group, minlength=labels.size))]).astype(np.int64)
    w = net.row_b @ (net.row_map @ vt)
    slots = n_elements * net.max_conductors
    mz_t = np.ascontiguousarray(net.mz.T)
    out = branch_losses(mz_t, w, net.row_slot, slots, group_ptr, order, rows.time, rows.ptr, rows.pos, rows.val)
    return list(labels), out.reshape(labels.size, n_elements, net.max_conductors) / 1000.0


def party_rows_for(
    net: LossNetwork, model: FeederModel, pf: xr.Dataset, vt: ComplexArray, contracts: pd.DataFrame, shares: Shares
) -> PartyRows:
    """:func:`party_rows` from a power-flow Dataset and its voltages."""
    ports = customer_ports(model)
    inj = pf.customer_injection.values
    a, _ = active_injection(inj, port_voltages(vt, ports.nodes), ports.n_phases)
    return party_rows(net, model, contracts, shares, inj, a, net.y_ext @ vt, pf.time.values)


def exact_allocation(
    model: FeederModel,
    pf: xr.Dataset,
    vt: ComplexArray,
    contracts: pd.DataFrame,
    shares: Shares,
    *,
    net: LossNetwork | None = None,
    detail: bool = False,
) -> xr.Dataset:
    """Allocate every step's losses to contracts, grid exchanges and the no-load term.

    Args:
        model: the feeder.
        pf: its power-flow Dataset (for ``customer_injection`` and time labels).
        vt: node voltages (n_nodes, steps), V, from the same run.
        contracts: validated contracts; ``shares`` from
            :func:`lv3ph.allocation.contracts.contract_shares`.
        net: precomputed :func:`loss_network` (computed if None).
        detail: also return per-branch, per-conductor losses per party label.

    Returns:
        Dataset over dim ``row`` (one per contract row, per (step, customer) grid
        exchange and per step no-load term) with ``loss_<part>_kw`` and
        ``loss_total_kw`` (kW, credits negative), coords ``time``, ``contract``,
        ``seller``, ``buyer``, ``kw``; plus ``network_loss_kw`` (time) = ``V^H G V`` per part.
    """
    net = loss_network(model) if net is None else net
    times = pf.time.values
    rows = party_rows_for(net, model, pf, vt, contracts, shares)
    losses = allocate_rows(net, rows, net.y_ext @ vt)
    network = network_losses(net, vt)
    ds = xr.Dataset(
        {f"loss_{p}_kw": ("row", losses[:, i], {"units": "kW"}) for i, p in enumerate(PARTS)}
        | {
            "loss_total_kw": ("row", losses.sum(axis=1), {"units": "kW", "long_name": "allocated loss (credit < 0)"}),
            "network_loss_kw": (("time", "part"), network, {"units": "kW", "long_name": "V^H G_part V"}),
        },
        coords={
            "row": np.arange(rows.time.size),
            "time": ("time", times),
            "part": list(PARTS),
            "row_time": ("row", times[rows.time]),
            "contract": ("row", rows.label),
            "seller": ("row", rows.seller),
            "buyer": ("row", rows.buyer),
            "kw": ("row", rows.kw, {"units": "kW"}),
        },
        attrs={"method": "exact", "scaled_contracts": shares.scaled},
    )
    if detail:
        labels, det = branch_detail(net, rows, vt, len(model.elements))
        ds["detail_loss_kw"] = xr.DataArray(
            det,
            dims=("party", "element", "conductor"),
            coords={
                "party": labels,
                "element": model.element_names(),
                "conductor": np.arange(1, net.max_conductors + 1),
            },
            attrs={"units": "kW", "long_name": "loss share summed over steps (x step hours = kWh)"},
        )
    return ds


def party_voltages(net: LossNetwork, rows: PartyRows, which: IntArray) -> ComplexArray:
    """Voltage contribution ``Z_E j`` of the party rows ``which``, V: (len(which), n_nodes)."""
    out = np.zeros((which.size, net.z_ext.shape[0]), dtype=np.complex128)
    for i, r in enumerate(which):
        sl = slice(rows.ptr[r], rows.ptr[r + 1])
        out[i] = net.z_ext[:, rows.pos[sl]] @ rows.val[sl]
    return out


@dataclass(frozen=True)
class Prepared:
    """A solved feeder with validated contracts and their shares, ready for any method."""

    engine: Engine
    model: FeederModel
    run: RunSpec
    pf: xr.Dataset
    vt: ComplexArray
    contracts: pd.DataFrame
    shares: Shares


class RunOptions(TypedDict, total=False):
    """How to solve the feeder for an allocation (keyword arguments of :func:`prepare`).

    ``mode``/``stepsize``/``start``/``steps`` as :class:`lv3ph.powerflow.RunSpec` (defaults
    yearly, 1m, 1, 1440); ``vmaxpu``, ``pme_ohm``, ``pme_customers`` as
    :func:`lv3ph.powerflow.open_feeder`; ``oversold`` as
    :func:`lv3ph.allocation.contracts.contract_shares`; ``progress``: a progress bar.
    """

    mode: str
    stepsize: str | float
    start: int
    steps: int
    vmaxpu: float | None
    pme_ohm: float | None
    pme_customers: list[str] | None
    oversold: str
    progress: bool


def prepare(model_path: str | Path, contracts: pd.DataFrame | str | Path, **options: Unpack[RunOptions]) -> Prepared:
    """Read and validate contracts, solve the feeder, and compute the contracts' shares.

    Validation comes before calculation: every structural problem of the contracts is
    reported (one :class:`~lv3ph.errors.ContractError`) before OpenDSS runs.
    """
    o = options
    table = contracts if isinstance(contracts, pd.DataFrame) else read_contracts(contracts)
    run = RunSpec.parse(o.get("mode", "yearly"), o.get("stepsize", "1m"), o.get("start", 1), o.get("steps", 1440))
    engine, model = open_feeder(
        model_path, vmaxpu=o.get("vmaxpu"), pme_ohm=o.get("pme_ohm"), pme_customers=o.get("pme_customers")
    )
    names = customer_ports(model).names
    assert_valid_contracts(table, names, range(run.start, run.start + run.steps))
    vt, measured = solve_raw(engine, model, run, progress=o.get("progress", True))
    pf = capture(model, run, vt, measured)
    shares = contract_shares(table, pf.customer_p_kw.values, names, pf.time.values, oversold=o.get("oversold", "error"))
    return Prepared(engine=engine, model=model, run=run, pf=pf, vt=vt, contracts=table, shares=shares)
