"""Four-wire voltage and current sensitivities to customers' single-phase injections.

From the factorised network of :func:`lv3ph.allocation.exact.loss_network` (``Z_E``, the
columns of ``Y^-1`` at the customers' phase/neutral ports) and one solved operating point,
this module linearises the whole feeder around that point: how every node voltage (so every
customer's phase-to-neutral voltage, the neutral-to-earth voltage, PVUR and VUF) and every
line conductor current changes per kW a customer *injects* (unity power factor; drawn power
falls by the same kW).

Method. A customer's drawn current on a phase port ``(a, n)`` (phase node, neutral node, -1
= earth) is ``I = conj(S / v)`` with ``v = V_a - V_n`` its phase-to-neutral voltage. Its
injection into the network is ``-I`` at ``a`` and ``+I`` at ``n`` -- a single-phase injection
also moves the neutral point. The network itself is linear, ``dV = Z_E dJ_E``. With
``E`` the port incidence (+1 at ``a``, -1 at ``n``) and ``K = E^T Z_EE E`` the port-to-port
impedance (phase-to-neutral), the port voltages ``u = E^T dV`` of a perturbation satisfy

    u = K (j_pert - dI(u)),      dI(u) = C conj(u) + G u,

where every *other* customer answers the voltage change as its load model says: constant
power (OpenDSS model 1, and every customer inside its ``[vminpu, vmaxpu]`` band)
``dI = -(I / conj(v)) conj(dv)``; constant impedance (model 2, or outside the band)
``dI = (I / v) dv``. ``conj`` makes the system real-linear, so it is solved in real form
(2 P unknowns for P customer phase ports). Injecting 1 kW at port ``q`` is
``j_pert = 1000 / conj(v_q)`` A at ``q`` (split equally over the phases of a multi-phase
customer). Then ``dV = (Z_E E) (j_pert - dI)`` for every node.

Everything is per step; ``K`` and ``Z_E E`` are computed once per model
(:func:`port_network`). Sign convention: sensitivities are per kW *injected* (export up,
consumption down); a negative drawn-power change of ``x`` kW moves voltages by ``x * s``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from lv3ph.allocation.exact import LossNetwork
from lv3ph.model import ComplexArray, FeederModel, IntArray, series_rows

__all__ = [
    "PortNetwork",
    "StepSensitivity",
    "bus_phase_nodes",
    "magnitude_sensitivity",
    "port_network",
    "pvur_rows",
    "step_sensitivity",
    "vuf_sensitivity",
]


@dataclass(frozen=True)
class PortNetwork:
    """Per-model matrices of the linearisation (see the module docstring).

    Attributes:
        customers: customer names (model order).
        port_phase: phase node of each customer phase port (P,).
        port_neutral: neutral node of each port (-1 = earth).
        port_customer: customer position of each port.
        k: (P, P) phase-to-neutral port impedance ``E^T Z_EE E``, ohm.
        ze: (n_nodes, P) ``Z_E E``: node voltage per A injected at a port (phase in, neutral out), ohm.
        line_rows: positions (into ``model.elements``) and conductor (1-based) of each monitored
            line conductor row; ``yd``: (rows, P) its current per A injected at a port (A/A);
            ``rating_a``: its rating (A).
        vprim_line: (rows, n_nodes) sparse map from node voltages to the row's current, S.
    """

    customers: tuple[str, ...]
    port_phase: IntArray
    port_neutral: IntArray
    port_customer: IntArray
    k: ComplexArray
    ze: ComplexArray
    line_element: IntArray
    line_conductor: IntArray
    rating_a: NDArray[np.float64]
    yd: ComplexArray
    vprim_line: sp.csr_matrix
    vminpu: NDArray[np.float64]
    vmaxpu: NDArray[np.float64]
    kv: NDArray[np.float64]
    load_model: IntArray


def port_network(model: FeederModel, net: LossNetwork) -> PortNetwork:
    """Precompute the port impedances and the line-current map (once per model)."""
    where = np.full(model.n_nodes, -1)
    where[net.ext_nodes] = np.arange(net.ext_nodes.size)
    ph, ne, cu = [], [], []
    for i, c in enumerate(model.customers):
        for node in c.phase_nodes:
            ph.append(int(node))
            ne.append(int(c.neutral_node))
            cu.append(i)
    port_phase = np.array(ph, dtype=np.int64)
    port_neutral = np.array(ne, dtype=np.int64)
    p = port_phase.size
    e = np.zeros((net.ext_nodes.size, p))
    e[where[port_phase], np.arange(p)] = 1.0
    has_n = port_neutral >= 0
    e[where[port_neutral[has_n]], np.flatnonzero(has_n)] = -1.0
    ze = net.z_ext @ e
    k = ze[port_phase] - np.where(has_n[:, None], ze[np.maximum(port_neutral, 0)], 0.0)
    lines = np.array([i for i, el in enumerate(model.elements) if el.kind == "line"], dtype=np.int64)
    rows = series_rows(model, lines)
    vprim = (rows.yser @ rows.difference).tocsr()
    rating = np.array([model.elements[i].normamps for i in rows.element], dtype=np.float64)
    return PortNetwork(
        customers=tuple(c.name for c in model.customers),
        port_phase=port_phase,
        port_neutral=port_neutral,
        port_customer=np.array(cu, dtype=np.int64),
        k=k,
        ze=ze,
        line_element=rows.element.astype(np.int64),
        line_conductor=rows.conductor.astype(np.int64),
        rating_a=rating,
        yd=np.asarray(vprim @ ze),
        vprim_line=vprim,
        vminpu=np.array([c.vminpu for c in model.customers]),
        vmaxpu=np.array([c.vmaxpu for c in model.customers]),
        kv=np.array([c.kv for c in model.customers]),
        load_model=np.array([c.model for c in model.customers], dtype=np.int64),
    )


@dataclass(frozen=True)
class StepSensitivity:
    """Sensitivities of one step (per kW injected by each customer, unity power factor).

    ``w`` (P, customers): port injection currents (A) that result from 1 kW injected by each
    customer, after every customer's load model has answered; ``dv = ze @ w`` gives node
    voltages (V per kW) and ``yd @ w`` line currents (A per kW). ``du`` (P, customers): the
    phase-to-neutral voltage change at every customer port (V per kW).
    """

    w: ComplexArray
    du: ComplexArray

    def node_voltages(self, pn: PortNetwork, nodes: IntArray) -> ComplexArray:
        """``dV`` (len(nodes), customers) at ``nodes`` (earth = -1 gives 0), V per kW."""
        out = pn.ze[np.maximum(nodes, 0)] @ self.w
        return np.where((nodes >= 0)[:, None], out, 0.0)

    def line_currents(self, pn: PortNetwork, rows: IntArray | None = None) -> ComplexArray:
        """``dI`` (rows, customers) of the monitored line conductor rows, A per kW."""
        yd = pn.yd if rows is None else pn.yd[rows]
        return yd @ self.w


def step_sensitivity(pn: PortNetwork, v: ComplexArray, inj: ComplexArray) -> StepSensitivity:
    """Linearise one solved step.

    Args:
        pn: :func:`port_network` of the model.
        v: node voltages of the step (n_nodes,), V.
        inj: customer injections of the step (customers, ports), A, as
            ``pf.customer_injection`` (phase ports first).
    """
    vn = np.where(pn.port_neutral >= 0, v[np.maximum(pn.port_neutral, 0)], 0.0)
    vpn = v[pn.port_phase] - vn
    # drawn current of each port: minus the injection at its phase port
    _, first = np.unique(pn.port_customer, return_index=True)
    slot = np.arange(pn.port_customer.size) - first[pn.port_customer]
    i_drawn = -inj[pn.port_customer, slot]
    cust = pn.port_customer
    mag_pu = np.abs(vpn) / (pn.kv[cust] * 1000.0)
    in_band = (mag_pu >= pn.vminpu[cust]) & (mag_pu <= pn.vmaxpu[cust]) & (pn.load_model[cust] != 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(in_band, -i_drawn / np.conj(vpn), 0.0)
        g = np.where(in_band, 0.0, i_drawn / vpn)
    c = np.nan_to_num(c)
    g = np.nan_to_num(g)
    p = vpn.size
    a = np.eye(p) + pn.k * g[None, :]
    b = pn.k * c[None, :]
    big = np.block([[a.real + b.real, -a.imag + b.imag], [a.imag + b.imag, a.real - b.real]])
    n_cust = len(pn.customers)
    j_pert = np.zeros((p, n_cust), dtype=np.complex128)
    counts = np.bincount(cust, minlength=n_cust)
    j_pert[np.arange(p), cust] = 1000.0 / np.conj(vpn) / counts[cust]
    r = pn.k @ j_pert
    x = np.linalg.solve(big, np.concatenate([r.real, r.imag]))
    du = x[:p] + 1j * x[p:]
    w = j_pert - (c[:, None] * np.conj(du) + g[:, None] * du)
    return StepSensitivity(w=w, du=du)


def magnitude_sensitivity(x0: ComplexArray, dx: ComplexArray) -> NDArray[np.float64]:
    """``d|x|`` from complex ``dx`` at ``x0``: ``Re(conj(x0) dx) / |x0|`` (rows of dx match x0)."""
    mag = np.abs(x0)
    with np.errstate(divide="ignore", invalid="ignore"):
        unit = np.where(mag > 0, np.conj(x0) / mag, 0.0)
    return (unit[:, None] * dx).real


def bus_phase_nodes(model: FeederModel, buses: list[str]) -> tuple[IntArray, IntArray]:
    """Phase nodes ``(buses, 3)`` of terminals 1-3 and the neutral node (terminal 4, -1 =
    none) of each bus (-1 where a phase is absent)."""
    index = {(str(b), int(t)): i for i, (b, t) in enumerate(zip(model.node_bus, model.node_terminal, strict=True))}
    phases = np.array([[index.get((b, t), -1) for t in (1, 2, 3)] for b in buses], dtype=np.int64)
    neutral = np.array([index.get((b, 4), -1) for b in buses], dtype=np.int64)
    return phases, neutral


def pvur_rows(m0: NDArray[np.float64], dm: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Linear rows of the PVUR constraint at buses.

    ``PVUR <= L`` is exactly ``|m_i - mean| <= L mean`` for the three phase-to-neutral
    magnitudes ``m``; in terms of ``m`` each is linear. For ``m0`` (buses, 3) and ``dm``
    (buses, 3, cols) returns ``(dev0, ddev)``: the deviations ``m_i - mean`` and their
    sensitivities (the mean's sensitivity is ``dm.mean(axis=1)``).
    """
    return m0 - m0.mean(axis=1, keepdims=True), dm - dm.mean(axis=1, keepdims=True)


_A = np.exp(2j * np.pi / 3)


def vuf_sensitivity(v0: ComplexArray, dv: ComplexArray) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """VUF (%) of phase-to-neutral voltages ``v0`` (buses, 3) and its gradient for ``dv``
    (buses, 3, cols): ``VUF = |V2| / |V1|`` with ``dVUF = d|V2| / |V1| - |V2| d|V1| / |V1|^2``."""
    t1 = np.array([1, _A, _A**2]) / 3
    t2 = np.array([1, _A**2, _A]) / 3
    v1, v2 = v0 @ t1, v0 @ t2
    d1, d2 = np.einsum("p,bpc->bc", t1, dv), np.einsum("p,bpc->bc", t2, dv)
    m1, m2 = np.abs(v1), np.abs(v2)
    dm1 = (np.conj(v1)[:, None] * d1).real / m1[:, None]
    dm2 = (np.conj(v2)[:, None] * d2).real / np.maximum(m2, 1e-12)[:, None]
    return 100.0 * m2 / m1, 100.0 * (dm2 / m1[:, None] - (m2 / m1**2)[:, None] * dm1)
