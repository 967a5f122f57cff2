"""Audit comparisons: the loss allocations of common P2P studies next to the exact method.

Every method returns a Dataset with the layout of
:func:`lv3ph.allocation.exact.exact_allocation`: the same rows in the same order (contract
rows as given, then one ``grid:<customer>`` row per step and customer, then one
``grid:no-load`` row per step), coords ``row_time``, ``contract``, ``seller``, ``buyer``,
``kw``, and ``loss_{phase,neutral,earth,transformer,total}_kw`` (kW, credits negative). A
method that cannot split a row's loss by conductor puts it all in ``loss_total_kw`` and
NaN in the parts (``attrs["parts"]`` says which parts are meaningful). Every result also
has ``step_loss_kw`` (time): what its rows add up to at each step, and ``feeder_loss_kw``
(time): the four-wire feeder's loss from the OpenDSS solution (sum of all power-delivery
elements, earth electrodes included). ``attrs["method"]`` names the method.

Notation: step t, contract c = (seller s, buyer b, P_c kW), customer k drawing P_k (kW,
export negative), L_t the feeder's loss at step t. A customer's *net contract* position
is ``N_k = sum of P_c it buys - sum of P_c it sells`` and its grid residual
``r_k = P_k - N_k`` (drawn convention).

``exact``
    Superposition on the four-wire network with active-current matching, cross terms
    split equally (:mod:`lv3ph.allocation.exact`). Reference for the others.

``kron``
    The same exact method on the Kron-reduced three-wire model written by
    :func:`lv3ph.kron.kron_reduce` (neutral at earth potential at every node, loads
    phase-to-earth, electrodes dropped), solved by OpenDSS for the same steps; contract
    shares are recomputed from the reduced model's measured powers. Rows add up to the
    *reduced model's* loss (``step_loss_kw``), not to the four-wire loss: the difference
    is the loss the three-wire model does not see (mostly the neutral's). Parts: phase and
    transformer (neutral and earth are 0: the model has neither). Drawbacks: drops the
    neutral's own loss and moves the remaining loss between contracts; the return current
    of a phase-to-neutral trade flows in a lossless earth, so cross-phase and
    same-phase trades look alike. ``attrs["transformations"] = "kron_reduce"``.

``phase-only``
    Neutral and earth ignored: row loss = ``a_t (L^phase_r + L^transformer_r)`` with the
    exact method's phase-conductor and transformer parts of the row and
    ``a_t = L_t / sum_r (L^phase_r + L^transformer_r)`` (one factor per step). What most
    P2P studies do. Parts: phase and transformer, both scaled by ``a_t``. Drawbacks: the
    neutral and earth losses (12-38 % of LV line losses) are spread in proportion to the
    phase losses, but they fall unevenly: cross-phase trades and trades that load the
    neutral are under-charged. On a coupled cable (mutual R) the exact "phase" part
    already contains the phase rows' mutual terms with the neutral (exact's convention).

``pro-rata``
    ``loss_c = L_t P_c / W_t``, ``loss_grid:k = L_t |r_k| / W_t``, no-load row 0, with
    ``W_t = sum_c P_c + sum_k |r_k|``. Exact in sum, blind to place and phase: a
    neighbour trade pays as much as a trade across the feeder.

``lsf``
    Loss sensitivity factors ``LSF_k = dL/dP_k`` (drawn power, kW/kW) from OpenDSS: the
    customer's Load kW is perturbed by ``+-delta`` (fast API ``Loads.kW``; the load's kvar
    is held, a trade moves active power only; the base kW step is ``delta / m`` with ``m``
    the load-shape multiplier at that step, so the drawn power moves by about ``delta``),
    the same step is re-solved at its own time and operating point, and
    ``LSF = (L+ - L-) / (P+ - P-)`` with the measured loss (all PD elements, from the node
    voltages) and measured customer power (central difference); the load is restored.
    Only customers and steps that appear in contracts are perturbed (2 solves each).
    A trade moves ``+P_c`` onto the buyer's draw and ``-P_c`` onto the seller's (it
    injects), so its marginal loss is ``(LSF_b - LSF_s) P_c`` (the note's
    ``(LSF_s - LSF_b) P_c`` with LSFs on injections). The loss is close to quadratic in
    the injections, so by Euler's theorem the raw charges of all parties add up to about
    twice the loss: **every raw charge is halved** (factor 1/2, not scaled):
    ``loss_c = (LSF_b - LSF_s) P_c / 2``, ``loss_grid:k = LSF_k r_k / 2`` for customers
    with an LSF (0 for the others), and the ``grid:no-load`` row takes
    ``L_t - sum of the other rows`` so each step adds up to the loss. Parts: NaN.
    Drawbacks: a marginal, linearised price; the no-load row absorbs the Q-driven part
    of the loss, the halving error and every customer without contracts; needs 2 power
    flows per contracted customer and step. A customer that is not a Load (an orphan
    device) or whose load draws nothing at that step (multiplier 0) gets no LSF
    (counted in ``attrs["lsf_missing"]``, treated as 0).

``ptdf``
    Flow-distance (MW-mile) on the radial tree rooted at the source. A party injecting
    ``x`` kW at bus k on phases Phi_k sends ``x / |Phi_k|`` up the path from k to the
    root on each of its phases (the PTDF of a radial feeder is 1 on the path and 0
    elsewhere, with the source as slack). A trade's flow is the seller's upward flow
    minus the buyer's: on a same-phase trade the common part of the two paths cancels
    (flow only between the two customers); a cross-phase trade runs up the seller's path
    on its phase and down the buyer's on the other, "via the transformer", with no
    cancellation. Weight ``w_r = sum over line conductors (l, phi) of |f_r,l,phi| R_l,phi
    |I_l,phi,t|`` (``R`` the phase conductor's own resistance, ohm; ``|I|`` the branch's
    total current at that step from OpenDSS, A); grid rows use ``|r_k|`` from the root;
    no-load 0; ``loss_r = L_t w_r / sum w``. Parts: NaN. Drawbacks: a linear
    approximation of a quadratic quantity; no credits for counter-flows (absolute
    values); the neutral, earth and transformer are not on any path (their loss is spread
    by the scaling), so it is unreliable for cross-phase trades, whose real cost is on
    the neutral. Radial feeders only.

``compare(results)`` tabulates every row's exact value, each method's value and error
(kW and % of exact) and a total row; :func:`largest_differences` picks the biggest.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Unpack

import numpy as np
import pandas as pd
import xarray as xr

from lv3ph.allocation.contracts import Shares, contract_shares
from lv3ph.allocation.exact import (
    NO_LOAD,
    PARTS,
    LossNetwork,
    RunOptions,
    exact_allocation,
    loss_network,
    network_losses,
    prepare,
)
from lv3ph.dss import Engine
from lv3ph.errors import ConvergenceError, ModelError, StudyError
from lv3ph.kron import DESCRIPTION as KRON_DESCRIPTION
from lv3ph.kron import TRANSFORMATION as KRON_TRANSFORMATION
from lv3ph.kron import kron_reduce, line_impedance
from lv3ph.model import ComplexArray, FeederModel
from lv3ph.powerflow import RunSpec, capture, customer_ports, open_feeder, solve_raw

METHODS = ("exact", "kron", "phase-only", "pro-rata", "lsf", "ptdf")
#: Default perturbation of a customer's drawn power for the ``lsf`` method, kW.
LSF_DELTA_KW = 0.01
#: OpenDSS convergence tolerance (pu) used for the ``lsf`` perturbation solves.
LSF_TOLERANCE = 1e-10

ROW_KIND = ("contract", "grid", "no-load")


# ---------------------------------------------------------------------------------- rows
@dataclass(frozen=True)
class Rows:
    """The rows of an allocation (same order as the exact method's).

    ``step`` is the position of each row's step in the run; ``kind`` indexes
    :data:`ROW_KIND`; ``customer`` is the customer position of a grid row (-1 otherwise);
    ``seller_idx``/``buyer_idx`` the customers of a contract row (-1 otherwise).
    """

    step: np.ndarray
    row_time: np.ndarray
    label: np.ndarray
    seller: np.ndarray
    buyer: np.ndarray
    kw: np.ndarray
    kind: np.ndarray
    customer: np.ndarray
    seller_idx: np.ndarray
    buyer_idx: np.ndarray

    @property
    def size(self) -> int:
        return int(self.step.size)


def contract_index(
    contracts: pd.DataFrame, customers: list[str] | tuple[str, ...], times: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Positions of each contract's step, seller and buyer (validated contracts)."""
    cust = pd.Index([c.lower() for c in customers])
    steps = pd.Index([int(t) for t in times])
    return (
        steps.get_indexer(pd.Index(contracts.time.astype("int64"))).astype(np.int64),
        cust.get_indexer(pd.Index(contracts.seller.str.lower())).astype(np.int64),
        cust.get_indexer(pd.Index(contracts.buyer.str.lower())).astype(np.int64),
    )


def allocation_rows(
    contracts: pd.DataFrame, shares: Shares, customers: list[str] | tuple[str, ...], times: np.ndarray
) -> Rows:
    """Rows as :func:`lv3ph.allocation.exact.party_rows` lays them out."""
    ti, si, bi = contract_index(contracts, customers, times)
    n_c, n_k, n_t = len(contracts), len(customers), len(times)
    g_step = np.repeat(np.arange(n_t), n_k)
    g_cust = np.tile(np.arange(n_k), n_t)
    step = np.concatenate([ti, g_step, np.arange(n_t)]).astype(np.int64)
    empty = np.full(n_t * n_k + n_t, "", dtype=object)
    grid = np.array([f"grid:{n}" for n in customers], dtype=object)
    none = np.full(n_t * n_k + n_t, -1, dtype=np.int64)
    return Rows(
        step=step,
        row_time=np.asarray(times)[step],
        label=np.concatenate(
            [contracts.contract.astype(str).to_numpy(dtype=object), grid[g_cust], np.full(n_t, NO_LOAD, dtype=object)]
        ),
        seller=np.concatenate([contracts.seller.astype(str).to_numpy(dtype=object), empty]),
        buyer=np.concatenate([contracts.buyer.astype(str).to_numpy(dtype=object), empty]),
        kw=np.concatenate([shares.kw, np.zeros(n_t * n_k + n_t)]),
        kind=np.concatenate([np.zeros(n_c, int), np.ones(n_t * n_k, int), np.full(n_t, 2)]),
        customer=np.concatenate([np.full(n_c, -1), g_cust, np.full(n_t, -1)]).astype(np.int64),
        seller_idx=np.concatenate([si, none]),
        buyer_idx=np.concatenate([bi, none]),
    )


def net_contracts_kw(rows: Rows, n_steps: int, n_customers: int) -> np.ndarray:
    """``N[t, k]``: kW customer k buys minus kW it sells in contracts at step t."""
    c = rows.kind == 0
    out = np.zeros((n_steps, n_customers))
    np.add.at(out, (rows.step[c], rows.buyer_idx[c]), rows.kw[c])
    np.add.at(out, (rows.step[c], rows.seller_idx[c]), -rows.kw[c])
    return out


def _dataset(
    rows: Rows,
    times: np.ndarray,
    total: np.ndarray,
    feeder: np.ndarray,
    method: str,
    parts: dict[str, np.ndarray] | None = None,
    attrs: dict | None = None,
) -> xr.Dataset:
    """A result Dataset with the exact method's layout; parts NaN unless given."""
    parts = parts or {}
    nan = np.full(rows.size, np.nan)
    step_total = np.bincount(rows.step, weights=total, minlength=len(times))
    data = {f"loss_{p}_kw": ("row", parts.get(p, nan), {"units": "kW"}) for p in PARTS}
    data["loss_total_kw"] = ("row", total, {"units": "kW", "long_name": "allocated loss (credit < 0)"})
    data["step_loss_kw"] = ("time", step_total, {"units": "kW", "long_name": "sum of the rows per step"})
    data["feeder_loss_kw"] = ("time", feeder, {"units": "kW", "long_name": "four-wire feeder loss (OpenDSS solution)"})
    return xr.Dataset(
        data,
        coords={
            "row": np.arange(rows.size),
            "time": ("time", np.asarray(times)),
            "row_time": ("row", rows.row_time),
            "contract": ("row", rows.label),
            "seller": ("row", rows.seller),
            "buyer": ("row", rows.buyer),
            "kw": ("row", rows.kw, {"units": "kW"}),
        },
        attrs={"method": method, "parts": ",".join(p for p in PARTS if p in parts) or "none", **(attrs or {})},
    )


def _scale_to_total(weights: np.ndarray, rows: Rows, total: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale ``weights`` per step so each step's rows add up to ``total[t]``.

    Returns ``(scaled, factor)``. A step whose weights add up to 0 puts its whole loss
    on its no-load row (factor NaN).
    """
    n_t = total.size
    s = np.bincount(rows.step, weights=weights, minlength=n_t)
    ok = np.abs(s) > 1e-12 * np.maximum(np.abs(total), 1e-300)
    factor = np.where(ok, total / np.where(ok, s, 1.0), np.nan)
    out = np.where(ok[rows.step], weights * np.nan_to_num(factor)[rows.step], 0.0)
    noload = rows.kind == 2
    out[noload] += np.where(ok, 0.0, total)[rows.step[noload]]
    return out, factor


# ---------------------------------------------------------------------------------- inputs
@dataclass
class _Inputs:
    engine: Engine
    model: FeederModel
    pf: xr.Dataset
    vt: ComplexArray
    contracts: pd.DataFrame
    shares: Shares
    run: RunSpec
    net: LossNetwork | None
    rows: Rows

    @property
    def times(self) -> np.ndarray:
        return self.pf.time.values

    @property
    def total(self) -> np.ndarray:
        return self.pf.loss_total_kw.values

    @property
    def customers(self) -> tuple[str, ...]:
        return tuple(str(c) for c in self.pf.customer.values)

    def loss_net(self) -> LossNetwork:
        if self.net is None:
            self.net = loss_network(self.model)
        return self.net


def _with_totals(ds: xr.Dataset, rows: Rows, times: np.ndarray, feeder: np.ndarray) -> xr.Dataset:
    ds = ds.copy()
    ds["step_loss_kw"] = (
        "time",
        np.bincount(rows.step, weights=ds.loss_total_kw.values, minlength=len(times)),
        {"units": "kW"},
    )
    ds["feeder_loss_kw"] = ("time", feeder, {"units": "kW", "long_name": "four-wire feeder loss (OpenDSS solution)"})
    ds.attrs.setdefault("parts", ",".join(PARTS))
    return ds


# ---------------------------------------------------------------------------------- methods
def exact_method(inp: _Inputs) -> xr.Dataset:
    """The exact method with the audit extras (``step_loss_kw``, ``feeder_loss_kw``)."""
    ds = exact_allocation(inp.model, inp.pf, inp.vt, inp.contracts, inp.shares, net=inp.loss_net())
    return _with_totals(ds, inp.rows, inp.times, inp.total)


def phase_only(exact: xr.Dataset, rows: Rows, total: np.ndarray) -> xr.Dataset:
    """``phase-only`` from an exact result: phase + transformer parts scaled per step to the loss."""
    if exact.sizes.get("row") != rows.size or not np.array_equal(exact.row_time.values, rows.row_time):
        raise ValueError("phase-only: the exact result given does not have the rows of these inputs")
    phase = exact.loss_phase_kw.values
    trans = exact.loss_transformer_kw.values
    base = phase + trans
    scaled, factor = _scale_to_total(base, rows, total)
    f = np.nan_to_num(factor)[rows.step]
    parts = {"phase": phase * f, "neutral": np.zeros(rows.size), "earth": np.zeros(rows.size), "transformer": trans * f}
    noload = rows.kind == 2
    parts["phase"][noload] += (scaled - base * f)[noload]  # a step with nothing to scale
    ds = _dataset(rows, exact.time.values, scaled, total, "phase-only", parts)
    ds["scale_factor"] = ("time", factor, {"long_name": "loss / (phase + transformer parts)"})
    return ds


def pro_rata(rows: Rows, drawn_kw: np.ndarray, total: np.ndarray, times: np.ndarray) -> xr.Dataset:
    """``pro-rata``: each step's loss in proportion to contract kW and grid residual |r_k|."""
    n_t, n_k = drawn_kw.shape
    residual = drawn_kw - net_contracts_kw(rows, n_t, n_k)
    w = np.zeros(rows.size)
    c, g = rows.kind == 0, rows.kind == 1
    w[c] = rows.kw[c]
    w[g] = np.abs(residual[rows.step[g], rows.customer[g]])
    scaled, _ = _scale_to_total(w, rows, total)
    ds = _dataset(rows, times, scaled, total, "pro-rata")
    ds["weight_kw"] = ("row", w, {"units": "kW", "long_name": "traded or residual power"})
    return ds


# ---- lsf
def _drawn_kw(engine: Engine, devices: tuple[str, ...]) -> float:
    """Active power the devices draw at the last solve (kW; export negative)."""
    return float(sum(engine.element_powers_kva(d).real.sum() for d in devices))


def loss_sensitivities(
    engine: Engine,
    model: FeederModel,
    net: LossNetwork,
    run: RunSpec,
    times: np.ndarray,
    wanted: np.ndarray,
    *,
    delta_kw: float = LSF_DELTA_KW,
    tolerance: float = LSF_TOLERANCE,
    before_step: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, int]:
    """``dL/dP_k`` (kW/kW, drawn power) by central differences on OpenDSS.

    Args:
        engine: the compiled four-wire feeder (its loads are restored afterwards).
        model, net: its model and :func:`loss_network` (the loss is ``V^H G V``, all PD
            elements including earth electrodes).
        run: the run's mode and step size; ``times`` the step numbers of the rows of
            ``wanted`` (steps, customers): which LSFs to compute.
        delta_kw: change of the customer's drawn power, kW (each side).
        tolerance: OpenDSS convergence tolerance during the perturbation solves (pu).
        before_step: the run's per-step callback (device set-points), called before
            every re-solve of step k.

    Returns:
        ``(lsf, solves)``: (steps, customers) with NaN where not wanted or not defined,
        and the number of OpenDSS solves (per step: the step, 2 per customer, and a
        final re-solve that leaves the engine at the unperturbed solution).
    """
    ports = customer_ports(model)
    loads = {c.name: c for c in model.customers}
    lsf = np.full(wanted.shape, np.nan)
    solves = 0
    engine.set_mode(run.mode, run.stepsize_s)

    def solve(k: int) -> None:
        try:
            engine.solve_step(run.mode, run.stepsize_s, k, before_step)
        except ConvergenceError as exc:
            raise ConvergenceError(f"re-solving for the loss sensitivities: {exc}") from None

    def loss_kw() -> float:
        return float(network_losses(net, engine.node_voltages()[:, None]).sum())

    with engine.tolerance(tolerance):
        for i in np.nonzero(wanted.any(axis=1))[0]:
            k = int(times[i])
            solve(k)
            solves += 1
            for j in np.nonzero(wanted[i])[0]:
                name = ports.names[j]
                if name not in loads:
                    continue
                devices = loads[name].devices
                b0, q0, pf0 = engine.load_base(name)
                p_load = _drawn_kw(engine, (f"load.{name}",))
                m = p_load / b0 if b0 != 0 else 0.0
                if not np.isfinite(m) or abs(m) < 1e-9:
                    continue
                step_kw = delta_kw / m
                points = []
                try:
                    for sign in (1.0, -1.0):
                        engine.set_load_base(name, b0 + sign * step_kw, kvar=q0)
                        solve(k)
                        solves += 1
                        points.append((loss_kw(), _drawn_kw(engine, devices)))
                finally:
                    engine.set_load_base(name, b0, pf=pf0, kvar=q0)
                dp = points[0][1] - points[1][1]
                if abs(dp) > 1e-6 * abs(delta_kw):
                    lsf[i, j] = (points[0][0] - points[1][0]) / dp
            solve(k)  # leave the engine at the unperturbed solution
            solves += 1
    return lsf, solves


def lsf_method(
    inp: _Inputs,
    *,
    delta_kw: float = LSF_DELTA_KW,
    tolerance: float = LSF_TOLERANCE,
    before_step: Callable[[int], None] | None = None,
) -> xr.Dataset:
    """``lsf``: halved marginal-loss charges, the no-load row balancing each step."""
    rows = inp.rows
    n_t, n_k = len(inp.times), len(inp.customers)
    c = rows.kind == 0
    wanted = np.zeros((n_t, n_k), dtype=bool)
    wanted[rows.step[c], rows.seller_idx[c]] = True
    wanted[rows.step[c], rows.buyer_idx[c]] = True
    lsf, solves = loss_sensitivities(
        inp.engine,
        inp.model,
        inp.loss_net(),
        inp.run,
        inp.times,
        wanted,
        delta_kw=delta_kw,
        tolerance=tolerance,
        before_step=before_step,
    )
    missing = int((wanted & ~np.isfinite(lsf)).sum())
    if missing:
        warnings.warn(
            f"lsf: {missing} (step, customer) sensitivities undefined (not a Load, or drawing nothing); taken as 0",
            stacklevel=2,
        )
    lsf0 = np.nan_to_num(lsf)
    residual = inp.pf.customer_p_kw.values - net_contracts_kw(rows, n_t, n_k)
    out = np.zeros(rows.size)
    out[c] = 0.5 * (lsf0[rows.step[c], rows.buyer_idx[c]] - lsf0[rows.step[c], rows.seller_idx[c]]) * rows.kw[c]
    g = rows.kind == 1
    out[g] = 0.5 * lsf0[rows.step[g], rows.customer[g]] * residual[rows.step[g], rows.customer[g]]
    nl = rows.kind == 2
    rest = inp.total - np.bincount(rows.step, weights=out, minlength=n_t)
    out[nl] = rest[rows.step[nl]]
    ds = _dataset(
        rows,
        inp.times,
        out,
        inp.total,
        "lsf",
        attrs={
            "lsf_delta_kw": delta_kw,
            "lsf_solves": solves,
            "lsf_missing": missing,
            "lsf_rule": "charges (LSF_b - LSF_s) P_c and LSF_k r_k halved; no-load row = loss - other rows",
        },
    )
    ds["lsf"] = (
        ("time", "customer"),
        lsf,
        {"units": "kW/kW", "long_name": "dL/dP_k (drawn power); NaN = not computed"},
    )
    ds = ds.assign_coords(customer=list(inp.customers))
    return ds


# ---- ptdf
@dataclass(frozen=True)
class RadialTree:
    """The feeder as a tree of buses rooted at the source.

    ``parent[bus]`` is ``(parent bus, element position)`` of the element that feeds it;
    ``order`` lists the buses root first.
    """

    root: str
    parent: dict[str, tuple[str, int]]
    order: tuple[str, ...]

    def path(self, bus: str) -> list[int]:
        """Element positions from ``bus`` up to the root (nearest first)."""
        out = []
        while bus in self.parent:
            bus, e = self.parent[bus]
            out.append(e)
        return out


def radial_tree(model: FeederModel) -> RadialTree:
    """Breadth-first tree over the series elements (lines, transformers, ...) from the
    source bus. Raises :class:`ModelError` on a loop (the ``ptdf`` method needs a radial
    feeder) and ignores shunts (earth electrodes) and elements that carry no phase (a
    neutral written as a line of its own)."""
    if not model.sources:
        raise ModelError(f"{model.path} has no source")
    adj: dict[str, list[tuple[str, int]]] = {}
    for i, el in enumerate(model.elements):
        buses = list(dict.fromkeys(el.buses))
        on = el.nodes[el.nodes >= 0]
        if len(buses) < 2 or el.kind == "earthing" or not np.any(model.node_role[on] >= 1):
            continue  # a shunt, or a neutral run as its own line beside the phases
        for b in buses[1:]:
            adj.setdefault(buses[0], []).append((b, i))
            adj.setdefault(b, []).append((buses[0], i))
    root = model.sources[0].buses[0]
    parent: dict[str, tuple[str, int]] = {}
    order = [root]
    seen = {root}
    head = 0
    while head < len(order):
        bus = order[head]
        head += 1
        for nb, e in adj.get(bus, []):
            if bus in parent and parent[bus][1] == e:
                continue
            if nb in seen:
                raise ModelError(f"{model.path} is not radial: {model.elements[e].name} closes a loop at bus {nb}")
            seen.add(nb)
            parent[nb] = (bus, e)
            order.append(nb)
    return RadialTree(root=root, parent=parent, order=tuple(order))


def conductor_resistance(model: FeederModel) -> tuple[np.ndarray, np.ndarray]:
    """(elements, 3) own resistance of each line's phase conductor a, b, c (ohm; 0 where
    the element has no such phase, and for transformers and shunts); and its conductor
    position as (elements, 3) int (-1 = none)."""
    r = np.zeros((len(model.elements), 3))
    cond = np.full((len(model.elements), 3), -1)
    for i, e in enumerate(model.elements):
        if e.kind not in ("line", "other") or e.n_terminals != 2:
            continue
        z, _ = line_impedance(e)
        for j, node in enumerate(e.nodes[: e.n_conductors]):
            t = int(model.node_role[node]) if node >= 0 else 0  # traced phase 1..3
            if 1 <= t <= 3:
                r[i, t - 1] = z[j, j].real
                cond[i, t - 1] = j
    return r, cond


def party_flows(tree: RadialTree, model: FeederModel, bus: str, phases: tuple[int, ...]) -> np.ndarray:
    """Upward flow (elements, 3) per kW injected at ``bus``, shared over ``phases``."""
    f = np.zeros((len(model.elements), 3))
    if not phases:
        return f
    path = tree.path(bus)
    for p in phases:
        f[path, p - 1] += 1.0 / len(phases)
    return f


def trade_flows(
    tree: RadialTree,
    model: FeederModel,
    seller: tuple[str, tuple[int, ...]],
    buyer: tuple[str, tuple[int, ...]],
    kw: float,
) -> np.ndarray:
    """Branch-phase flows (elements, 3) of a trade of ``kw`` from ``seller`` (bus, phases)
    to ``buyer``, positive towards the source."""
    return kw * (party_flows(tree, model, *seller) - party_flows(tree, model, *buyer))


def ptdf_method(inp: _Inputs) -> xr.Dataset:
    """``ptdf``: flow-distance weights |f| R |I| on the radial tree, scaled to the loss."""
    model, rows = inp.model, inp.rows
    tree = radial_tree(model)
    r, cond = conductor_resistance(model)
    current = np.abs(np.nan_to_num(inp.pf.current.values))  # (time, element, conductor)
    n_t, n_el = current.shape[0], r.shape[0]
    amps = np.zeros((n_t, n_el, 3))
    for p in range(3):
        on = cond[:, p] >= 0
        amps[:, on, p] = current[:, np.nonzero(on)[0], cond[on, p]]
    weight = r[None] * amps  # ohm x A, (time, element, phase)
    buses = [str(b) for b in inp.pf.customer_bus.values]
    phases = [tuple(int(x) for x in str(p) if x in "123") for p in inp.pf.customer_phases.values]
    unit = np.stack([party_flows(tree, model, b, ph) for b, ph in zip(buses, phases, strict=True)])  # (cust, el, 3)
    w = np.zeros(rows.size)
    c = np.nonzero(rows.kind == 0)[0]
    for chunk in np.array_split(c, max(1, c.size // 256)):
        if chunk.size == 0:
            continue
        f = rows.kw[chunk, None, None] * (unit[rows.seller_idx[chunk]] - unit[rows.buyer_idx[chunk]])
        w[chunk] = np.einsum("cep,cep->c", np.abs(f), weight[rows.step[chunk]])
    g = rows.kind == 1
    n_k = len(buses)
    residual = inp.pf.customer_p_kw.values - net_contracts_kw(rows, n_t, n_k)
    per_kw = np.einsum("kep,tep->tk", unit, weight)  # weight of 1 kW from the root to each customer
    w[g] = np.abs(residual[rows.step[g], rows.customer[g]]) * per_kw[rows.step[g], rows.customer[g]]
    scaled, _ = _scale_to_total(w, rows, inp.total)
    ds = _dataset(rows, inp.times, scaled, inp.total, "ptdf", attrs={"ptdf_root": tree.root})
    ds["weight"] = ("row", w, {"units": "kW ohm A", "long_name": "sum |flow| R |I| over line phase conductors"})
    return ds


# ---- kron
def kron_method(
    inp: _Inputs,
    *,
    out_dir: str | Path | None = None,
    oversold: str = "scale",
    progress: bool = False,
    reduced_before_step: Callable[[Engine], Callable[[int], None]] | None = None,
) -> xr.Dataset:
    """``kron``: exact allocation on the Kron-reduced model, rows in the exact order."""
    tmp = None
    if out_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="lv3ph_kron_model_")
        out_dir = tmp.name
    try:
        master = kron_reduce(inp.engine, out_dir, model=inp.model, verify=False)
        engine, model = open_feeder(master)
        if model.explicit_neutral:
            raise ModelError(f"the Kron-reduced model {master} still has neutral nodes")
        before = reduced_before_step(engine) if reduced_before_step is not None else None
        vt, measured = solve_raw(engine, model, inp.run, progress=progress, before_step=before)
    finally:
        if tmp is not None:
            tmp.cleanup()
    pf = capture(model, inp.run, vt, measured)
    names = [str(c) for c in pf.customer.values]
    shares = contract_shares(inp.contracts, pf.customer_p_kw.values, names, pf.time.values, oversold=oversold)
    ds = exact_allocation(model, pf, vt, inp.contracts, shares)
    # rows in the four-wire order: contracts by position, grid and no-load rows by (step, label)
    rows = inp.rows
    n_c = int((rows.kind == 0).sum())
    key = pd.MultiIndex.from_arrays([ds.row_time.values[n_c:], ds.contract.values[n_c:].astype(str)])
    want = pd.MultiIndex.from_arrays([rows.row_time[n_c:], rows.label[n_c:].astype(str)])
    pos = key.get_indexer(want)
    if (pos < 0).any():
        missing = want[np.nonzero(pos < 0)[0][0]]
        raise ModelError(f"the Kron-reduced model has no row {missing[1]} at step {missing[0]}")
    order = np.concatenate([np.arange(n_c), n_c + pos])
    parts = {p: ds[f"loss_{p}_kw"].values[order] for p in PARTS}
    out = _dataset(
        rows,
        inp.times,
        ds.loss_total_kw.values[order],
        inp.total,
        "kron",
        parts,
        attrs={
            "transformations": KRON_TRANSFORMATION,
            KRON_TRANSFORMATION: KRON_DESCRIPTION,
            "kron_model": str(master) if tmp is None else "",
            "total_basis": "rows add up to the Kron-reduced model's own loss (step_loss_kw), not the four-wire loss",
            "scaled_contracts": shares.scaled,
        },
    )
    out["kron_kw"] = (
        "row",
        np.concatenate([shares.kw, np.zeros(rows.size - n_c)]),
        {"units": "kW", "long_name": "contract kW on the reduced model"},
    )
    out["kron_loss_kw"] = (
        "time",
        pf.loss_total_kw.values,
        {"units": "kW", "long_name": "Kron-reduced model loss (OpenDSS solution)"},
    )
    return out


# ---------------------------------------------------------------------------------- dispatch
def allocate_method(
    method: str,
    *,
    engine: Engine,
    model: FeederModel,
    pf: xr.Dataset,
    vt: ComplexArray,
    contracts: pd.DataFrame,
    shares: Shares,
    run: RunSpec,
    net: LossNetwork | None = None,
    exact: xr.Dataset | None = None,
    oversold: str = "scale",
    lsf_delta_kw: float = LSF_DELTA_KW,
    before_step: Callable[[int], None] | None = None,
    kron_dir: str | Path | None = None,
    reduced_before_step: Callable[[Engine], Callable[[int], None]] | None = None,
    progress: bool = False,
) -> xr.Dataset:
    """Allocate the solved run's losses to ``contracts`` with ``method`` (see :data:`METHODS`).

    Args:
        method: ``exact``, ``kron``, ``phase-only``, ``pro-rata``, ``lsf`` or ``ptdf``.
        engine, model: the compiled four-wire feeder (``lsf`` re-solves it, ``kron``
            dumps and reduces it).
        pf, vt: the run's power-flow Dataset and node voltages (n_nodes, steps).
        contracts, shares: validated contracts and their shares (from ``pf``).
        run: the run's mode, step size and steps.
        net: :func:`~lv3ph.allocation.exact.loss_network` of ``model`` (computed if None).
        exact: the exact result for the same inputs (``phase-only`` computes it if None).
        oversold: contract policy on the Kron-reduced model's measured powers.
        lsf_delta_kw: ``lsf`` perturbation of the drawn power, kW.
        before_step: the run's per-step callback (``lsf`` calls it before each re-solve).
        kron_dir: keep the Kron-reduced model there (default: a temporary folder).
        reduced_before_step: given the reduced model's engine, returns its per-step
            callback (devices set per step, e.g. batteries) for ``kron``.
        progress: progress bar of the ``kron`` power flow.

    Returns:
        A Dataset with the exact method's rows and layout (module docstring).

    Raises:
        StudyError: unknown method (the message lists the known ones).
    """
    if method not in METHODS:
        raise StudyError(f"unknown allocation method {method!r}: use one of {', '.join(METHODS)}")
    names = [str(c) for c in pf.customer.values]
    rows = allocation_rows(contracts, shares, names, pf.time.values)
    inp = _Inputs(
        engine=engine, model=model, pf=pf, vt=vt, contracts=contracts, shares=shares, run=run, net=net, rows=rows
    )
    if method == "exact":
        return exact_method(inp)
    if method == "phase-only":
        ex = exact if exact is not None else exact_method(inp)
        return phase_only(ex, rows, inp.total)
    if method == "pro-rata":
        return pro_rata(rows, pf.customer_p_kw.values, inp.total, inp.times)
    if method == "lsf":
        return lsf_method(inp, delta_kw=lsf_delta_kw, before_step=before_step)
    if method == "ptdf":
        return ptdf_method(inp)
    return kron_method(
        inp, out_dir=kron_dir, oversold=oversold, progress=progress, reduced_before_step=reduced_before_step
    )


def audit(
    model_path: str | Path,
    contracts: pd.DataFrame | str | Path,
    methods: tuple[str, ...] | list[str] = METHODS,
    *,
    kron_dir: str | Path | None = None,
    lsf_delta_kw: float = LSF_DELTA_KW,
    **options: Unpack[RunOptions],
) -> tuple[dict[str, xr.Dataset], xr.Dataset]:
    """Solve a feeder once and allocate its losses with every method in ``methods``.

    ``options`` as :func:`lv3ph.allocation.allocate`. Returns ``(results, powerflow)`` with
    ``results[method]`` as :func:`allocate_method`; feed ``results`` to :func:`compare`.
    """
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise StudyError(f"unknown allocation method {bad[0]!r}: use one of {', '.join(METHODS)}")
    p = prepare(model_path, contracts, **options)
    oversold, progress = options.get("oversold", "error"), options.get("progress", True)
    engine, model, run, pf, vt, table, shares = p.engine, p.model, p.run, p.pf, p.vt, p.contracts, p.shares
    net = loss_network(model)

    def one(m: str, exact: xr.Dataset | None) -> xr.Dataset:
        return allocate_method(
            m,
            engine=engine,
            model=model,
            pf=pf,
            vt=vt,
            contracts=table,
            shares=shares,
            run=run,
            net=net,
            exact=exact,
            oversold=oversold,
            lsf_delta_kw=lsf_delta_kw,
            kron_dir=kron_dir,
            progress=progress,
        )

    results: dict[str, xr.Dataset] = {}
    if "exact" in methods or "phase-only" in methods:
        results["exact"] = one("exact", None)
    for m in methods:
        if m != "exact":
            results[m] = one(m, results.get("exact"))
    return {m: results[m] for m in methods}, pf


# ---------------------------------------------------------------------------------- comparison
def compare(results: dict[str, xr.Dataset], reference: str = "exact") -> pd.DataFrame:
    """Row-by-row comparison of allocation results against ``reference``.

    Columns: ``row_time``, ``contract``, ``seller``, ``buyer``, ``kw``, ``kind``
    (contract / grid / no-load / total), the reference's ``loss_total_kw`` under its
    method name, and per other method ``<m>``, ``<m>_err_kw`` (method - reference, kW)
    and ``<m>_err_pct`` (% of ``|reference|``; NaN where the reference is 0). The last row
    (kind ``total``) sums every column over all rows and steps (kW x steps).

    ``attrs``: ``totals_kw`` (method -> sum of its rows), ``opendss_total_kw`` (the
    four-wire feeder's loss summed over steps, from ``feeder_loss_kw`` or the
    reference's rows), ``step_hours`` is not known here (multiply by it for kWh).

    Raises:
        ValueError: ``reference`` missing, or a result whose rows differ from it.
    """
    if reference not in results:
        raise ValueError(f"compare needs the reference method {reference!r} among {', '.join(results)}")
    ref = results[reference]
    label = ref.contract.values.astype(str)
    seller = ref.seller.values.astype(str)
    kind = np.where(seller != "", "contract", np.where(label == NO_LOAD, "no-load", "grid"))
    df = pd.DataFrame(
        {
            "row_time": ref.row_time.values,
            "contract": label,
            "seller": seller,
            "buyer": ref.buyer.values.astype(str),
            "kw": ref.kw.values,
            "kind": kind,
            reference: ref.loss_total_kw.values,
        }
    )
    exact_v = ref.loss_total_kw.values
    for m, ds in results.items():
        if m == reference:
            continue
        if ds.sizes.get("row") != ref.sizes.get("row") or not (
            np.array_equal(ds.row_time.values, ref.row_time.values)
            and np.array_equal(ds.contract.values.astype(str), label)
        ):
            raise ValueError(f"result {m!r} does not have the rows of {reference!r} (same inputs, same order needed)")
        v = ds.loss_total_kw.values
        df[m] = v
        df[f"{m}_err_kw"] = v - exact_v
        with np.errstate(divide="ignore", invalid="ignore"):
            df[f"{m}_err_pct"] = np.where(exact_v != 0, 100.0 * (v - exact_v) / np.abs(exact_v), np.nan)
    totals = {m: float(ds.loss_total_kw.sum()) for m, ds in results.items()}
    total_row: dict[str, object] = {
        "row_time": -1,
        "contract": "TOTAL",
        "seller": "",
        "buyer": "",
        "kw": float(df.kw.sum()),
        "kind": "total",
    }
    for m in results:
        total_row[m] = totals[m]
        if m != reference:
            total_row[f"{m}_err_kw"] = totals[m] - totals[reference]
            total_row[f"{m}_err_pct"] = (
                100.0 * (totals[m] - totals[reference]) / abs(totals[reference]) if totals[reference] else np.nan
            )
    df = pd.concat([df, pd.DataFrame([total_row])], ignore_index=True)
    feeder = ref.get("feeder_loss_kw")
    df.attrs["totals_kw"] = totals
    df.attrs["opendss_total_kw"] = float(feeder.sum()) if feeder is not None else totals[reference]
    df.attrs["reference"] = reference
    return df


def largest_differences(table: pd.DataFrame, n: int = 10, kind: str = "contract") -> pd.DataFrame:
    """The ``n`` rows of kind ``kind`` with the largest ``|method - reference|`` over all
    methods of a :func:`compare` table, long form: one line per (row, method), with the
    reference's value (``reference_kw``), the method's (``value_kw``) and the error."""
    ref = table.attrs.get("reference", "exact")
    methods = [c[: -len("_err_kw")] for c in table.columns if c.endswith("_err_kw")]
    sub = table[table.kind == kind]
    long = (
        pd.concat(
            [
                pd.DataFrame(
                    {
                        "row": sub.index,
                        "row_time": sub.row_time,
                        "contract": sub.contract,
                        "seller": sub.seller,
                        "buyer": sub.buyer,
                        "kw": sub.kw,
                        "method": m,
                        "reference_kw": sub[ref],
                        "value_kw": sub[m],
                        "err_kw": sub[f"{m}_err_kw"],
                        "err_pct": sub[f"{m}_err_pct"],
                    }
                )
                for m in methods
            ],
            ignore_index=True,
        )
        if methods
        else pd.DataFrame()
    )
    if long.empty:
        return long
    return long.reindex(long.err_kw.abs().sort_values(ascending=False).index).head(n).reset_index(drop=True)
