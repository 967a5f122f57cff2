"""Time-series power flow: OpenDSS solves, lv3ph captures everything as an xarray Dataset.

OpenDSS solves each step (:meth:`lv3ph.dss.Engine.run`) and hands back the complex node
voltages only. Currents, losses and customer injections are derived here in bulk from
those voltages and the elements' primitive admittances (a few sparse matrix products over
all steps), which is exact for the linear network and keeps the capture cheap.

Dataset layout (dims and main variables):

* ``voltage`` (time, bus, terminal): node-to-earth voltage, V (complex; NaN where the
  bus has no such terminal). Coordinate ``terminal_role`` (bus, terminal): the traced
  role of each node (1, 2, 3 = phase a, b, c; 0 = neutral; -1 = isolated or absent),
  :mod:`lv3ph.topology`; terminal numbers themselves mean nothing.
* ``current`` (time, element, conductor): current into each power-delivery element at
  its terminal 1, A (complex). ``element_kind`` says line / transformer / earthing / other.
* ``loss_phase_kw``, ``loss_neutral_kw``, ``loss_earth_kw``, ``loss_kw`` (time, element):
  element losses, kW. Per conductor a loss is ``Re(sum over terminals V I*)`` (the
  convention of OpenDSS's ``PhaseLosses``); conductors on neutral-role nodes go to the
  neutral part, earthing elements to the earth part, transformers wholly to the phase
  part (their per-conductor split mixes windings and means nothing physical).
* ``loss_total_kw``, ``source_p_kw``, ``source_q_kvar`` (time).
* ``customer_injection`` (time, customer, port): current the customer injects into the
  network at each of its ports (phases, then neutral), A; ``customer_port_node`` names
  the node of each port. ``customer_voltage`` (time, customer, port): each phase port's
  voltage against the customer's neutral port (earth when it has none), V (complex;
  NaN on the neutral port). ``customer_phases``: traced phases as digits (``2`` = b).
  ``customer_p_kw`` / ``customer_q_kvar``: drawn power (load convention: consumption
  positive, export negative).
* ``customer_pq_departure_pct`` (time, customer): how far a constant-PQ load's drawn
  power departs from its set-point because OpenDSS switched it to constant impedance
  outside ``vminpu``/``vmaxpu``.
* ``winding_s_kva`` (time, element): apparent power of a transformer's most loaded
  winding, kVA.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from lv3ph import __version__
from lv3ph.dss import Engine, parse_stepsize
from lv3ph.errors import ModelError
from lv3ph.kernels import series_flows
from lv3ph.model import (
    ComplexArray,
    FeederModel,
    IntArray,
    assemble_y,
    branch_rows,
    is_series,
    memo,
    network_y,
    pme_commands,
    series_rows,
)


@dataclass(frozen=True)
class RunSpec:
    """What to solve: OpenDSS mode, step size (s), first step and number of steps;
    ``repeat_profiles`` lets load shapes shorter than the run repeat (OpenDSS cycles them)."""

    mode: str = "yearly"
    stepsize_s: float = 60.0
    start: int = 1
    steps: int = 1440
    repeat_profiles: bool = False

    @classmethod
    def parse(
        cls, mode: str, stepsize: str | float, start: int, steps: int, *, repeat_profiles: bool = False
    ) -> RunSpec:
        return cls(
            mode=mode,
            stepsize_s=parse_stepsize(stepsize),
            start=int(start),
            steps=int(steps),
            repeat_profiles=bool(repeat_profiles),
        )


@dataclass(frozen=True)
class CustomerPorts:
    """Where each customer (and orphan device) connects: node per port, -1 = none/earth.

    ``nodes`` (n_customers, n_ports): phase nodes first, then the neutral node.
    ``n_phases`` (n_customers,): how many of the ports are phases.
    ``measured`` maps a customer position to the element names whose currents are read
    at every step because the customer shares a phase node with another customer.
    """

    names: tuple[str, ...]
    kinds: tuple[str, ...]
    nodes: IntArray
    n_phases: IntArray
    measured: dict[int, tuple[str, ...]]


def customer_ports(model: FeederModel) -> CustomerPorts:
    """Lay out the ports of all customers and orphan devices."""
    names = [c.name for c in model.customers] + list(model.orphan_devices)
    kinds = ["load"] * len(model.customers) + ["device"] * len(model.orphan_devices)
    port_lists: list[list[int]] = []
    n_phases = []
    for c in model.customers:
        port_lists.append([int(x) for x in c.phase_nodes] + [c.neutral_node])
        n_phases.append(len(c.phase_nodes))
    for nodes in model.orphan_devices.values():
        ph = [int(x) for x in nodes if x >= 0 and model.node_role[x] >= 1]
        ne = [int(x) for x in nodes if model.is_neutral(int(x))]
        port_lists.append(ph + ne[:1] + ([] if ne else [-1]))
        n_phases.append(len(ph))
    width = max((len(p) for p in port_lists), default=1)
    nodes_arr = np.full((len(port_lists), width), -1, dtype=np.int64)
    for i, p in enumerate(port_lists):
        nodes_arr[i, : len(p)] = p
    # customers sharing a phase node: all but the first are measured element by element
    owner: dict[int, int] = {}
    measured: dict[int, tuple[str, ...]] = {}
    for i, c in enumerate(model.customers):
        for node in c.phase_nodes:
            if int(node) in owner:
                measured[i] = c.devices
            else:
                owner[int(node)] = i
    return CustomerPorts(
        names=tuple(names),
        kinds=tuple(kinds),
        nodes=nodes_arr,
        n_phases=np.array(n_phases, dtype=np.int64),
        measured=measured,
    )


def measured_devices(ports: CustomerPorts) -> list[str]:
    """The elements whose currents a run must read at every step (see :class:`CustomerPorts`)."""
    return [d for i in sorted(ports.measured) for d in ports.measured[i]]


def customer_injections(
    model: FeederModel, ports: CustomerPorts, vt: ComplexArray, measured: dict[str, ComplexArray]
) -> ComplexArray:
    """Current each customer injects at each port (A), shape (steps, customers, ports).

    ``vt`` is the node voltage history node-major, (n_nodes, steps), V.
    The network (lines, transformers, earthing, sources) is linear, so ``J = Y_net V``
    is the current the non-network devices inject at every node. A phase node belongs to
    one customer unless customers share it; then the others' currents were measured per
    step (``measured``) and are subtracted. A customer's neutral port carries minus the
    sum of its phase currents (its devices have no other path).
    """
    steps = vt.shape[1]
    used = np.unique(ports.nodes[:, : ports.nodes.shape[1]][ports.nodes >= 0])
    where = np.full(model.n_nodes, -1)
    where[used] = np.arange(used.size)
    residual = (
        memo(model, "network_y_csr", lambda: network_y(model).tocsr())[used] @ vt
    ).T  # injection at used nodes, (steps, used)
    inj = np.zeros((steps, len(ports.names), ports.nodes.shape[1]), dtype=np.complex128)
    for i, devices in ports.measured.items():
        missing = [d for d in devices if d not in measured]
        if missing:
            raise ModelError(
                f"customer {ports.names[i]} shares a phase node with another customer: its devices "
                f"({', '.join(missing)}) must be measured at every step (use powerflow.solve_raw)"
            )
        n_ph = int(ports.n_phases[i])
        # a device's terminal-1 currents flow into the device: drawn current, phase ports first
        drawn = sum(measured[d][:, :n_ph] for d in devices)
        inj[:, i, :n_ph] = -drawn
        residual[:, where[ports.nodes[i, :n_ph]]] += drawn
    for i in range(len(ports.names)):
        if i not in ports.measured:
            n_ph = int(ports.n_phases[i])
            inj[:, i, :n_ph] = residual[:, where[ports.nodes[i, :n_ph]]]
    n_idx = np.arange(len(ports.names))
    has_neutral_port = ports.n_phases < ports.nodes.shape[1]
    for i in n_idx[has_neutral_port]:
        n_ph = int(ports.n_phases[i])
        inj[:, i, n_ph] = np.where(ports.nodes[i, n_ph] >= 0, -inj[:, i, :n_ph].sum(axis=1), 0)
    return inj


def customer_voltages(v_ports: ComplexArray, n_phases: IntArray) -> ComplexArray:
    """Phase-port voltages against each customer's neutral port (earth if none), V;
    NaN on the neutral port. ``v_ports`` (steps, customers, ports) from :func:`port_voltages`."""
    width = v_ports.shape[2]
    has_n = n_phases < width
    ref = np.where(has_n[None, :], v_ports[:, np.arange(n_phases.size), np.minimum(n_phases, width - 1)], 0)
    out = v_ports - ref[:, :, None]
    return np.where(np.arange(width)[None, None, :] < n_phases[None, :, None], out, np.nan + 0j)


def port_voltages(vt: ComplexArray, nodes: IntArray) -> ComplexArray:
    """Node voltages at ports (steps, customers, ports) from ``vt`` (n_nodes, steps); earth is 0 V."""
    v = np.moveaxis(vt[np.maximum(nodes, 0)], 2, 0)
    return np.where(nodes >= 0, v, 0)


def capture(
    model: FeederModel, spec: RunSpec, vt: ComplexArray, measured: dict[str, ComplexArray] | None = None
) -> xr.Dataset:
    """Build the result Dataset from the solved node voltages ``vt`` (n_nodes, steps), V.

    See the module docstring for the layout.
    """
    steps = vt.shape[1]
    time = np.arange(spec.start, spec.start + steps)
    # ---- voltages on (bus, terminal)
    terminals = np.unique(model.node_terminal)
    bus_pos = {b: i for i, b in enumerate(model.buses)}
    b_idx = np.array([bus_pos[b] for b in model.node_bus])
    t_idx = np.searchsorted(terminals, model.node_terminal)
    vgrid = np.full((steps, len(model.buses), terminals.size), np.nan + 1j * np.nan)
    vgrid[:, b_idx, t_idx] = vt.T
    role_grid = np.full((len(model.buses), terminals.size), -1, dtype=np.int64)
    role_grid[b_idx, t_idx] = model.node_role
    flows = element_flows(model, vt)
    n_el = len(model.elements)
    max_cond = flows.p_cond.shape[1]
    conductors = np.arange(1, max_cond + 1)
    current = np.moveaxis(flows.current, 2, 0)
    loss_total, loss_phase, loss_neutral, loss_earth = loss_parts(model, flows)
    winding = np.full((steps, n_el), np.nan)
    winding[:, flows.transformers] = flows.winding_s_kva.T
    # ---- sources and customers (only the node rows that are needed)
    s_src = source_power_kva(model, vt)
    ports = customer_ports(model)
    inj = customer_injections(model, ports, vt, measured or {})
    v_ports = port_voltages(vt, ports.nodes)
    s_cust = -(v_ports * np.conj(inj)).sum(axis=2) / 1000.0
    v_cust = customer_voltages(v_ports, ports.n_phases)
    departure = pq_departure_pct(model, vt)
    ds = xr.Dataset(
        data_vars={
            "voltage": (("time", "bus", "terminal"), vgrid, {"units": "V", "long_name": "node-to-earth voltage"}),
            "current": (
                ("time", "element", "conductor"),
                current,
                {"units": "A", "long_name": "current into terminal 1"},
            ),
            "loss_kw": (("time", "element"), loss_total, {"units": "kW"}),
            "loss_phase_kw": (("time", "element"), loss_phase, {"units": "kW"}),
            "loss_neutral_kw": (("time", "element"), loss_neutral, {"units": "kW"}),
            "loss_earth_kw": (("time", "element"), loss_earth, {"units": "kW"}),
            "loss_total_kw": (("time",), loss_total.sum(axis=1), {"units": "kW"}),
            "source_p_kw": (("time",), s_src.real, {"units": "kW", "long_name": "power into the network from sources"}),
            "source_q_kvar": (("time",), s_src.imag, {"units": "kvar"}),
            "winding_s_kva": (("time", "element"), winding, {"units": "kVA"}),
            "customer_injection": (
                ("time", "customer", "port"),
                inj,
                {"units": "A", "long_name": "current injected into the network"},
            ),
            "customer_voltage": (
                ("time", "customer", "port"),
                v_cust,
                {"units": "V", "long_name": "phase port voltage against the customer's neutral (earth if none)"},
            ),
            "customer_p_kw": (
                ("time", "customer"),
                s_cust.real,
                {"units": "kW", "long_name": "drawn active power (export negative)"},
            ),
            "customer_q_kvar": (("time", "customer"), s_cust.imag, {"units": "kvar"}),
            "customer_pq_departure_pct": (("time", "customer"), departure, {"units": "%"}),
        },
        coords={
            **_time_coords(spec, time),
            "bus": list(model.buses),
            "terminal": terminals,
            "terminal_role": (("bus", "terminal"), role_grid, {"long_name": "traced role: 1-3 phase a-c, 0 neutral"}),
            **_element_coords(model),
            "conductor": conductors,
            **_customer_coords(model, ports),
        },
        attrs=run_attrs(model, spec, steps),
    )
    return ds


def run_attrs(model: FeederModel, spec: RunSpec, steps: int) -> dict[str, str | float | int]:
    """Attributes of a result Dataset: model, wiring, run, version, sign convention."""
    return {
        "model": model.path,
        "wiring": model.wiring,
        "mode": spec.mode,
        "stepsize_s": spec.stepsize_s,
        "start": spec.start,
        "steps": steps,
        "lv3ph_version": __version__,
        "sign_convention": "customer power: drawn positive (load convention); injection currents: into the network",
    }


def _time_coords(spec: RunSpec, time: IntArray) -> dict[str, tuple[str, np.ndarray, dict[str, str | float]]]:
    return {
        "time": ("time", time, {"long_name": "step index", "stepsize_s": spec.stepsize_s}),
        "time_s": ("time", time * spec.stepsize_s, {"units": "s"}),
    }


def _element_coords(model: FeederModel) -> dict[str, object]:
    return {
        "element": model.element_names(),
        "element_kind": ("element", model.kinds()),
        "element_normamps": ("element", np.array([e.normamps for e in model.elements]), {"units": "A"}),
        "element_kva": ("element", np.array([e.kva for e in model.elements]), {"units": "kVA"}),
    }


def _customer_coords(model: FeederModel, ports: CustomerPorts) -> dict[str, object]:
    port_names = np.where(ports.nodes >= 0, np.array(model.nodes + ("earth",))[ports.nodes], "")
    return {
        "customer": list(ports.names),
        "customer_kind": ("customer", list(ports.kinds)),
        "customer_bus": ("customer", [_bus_of(model, p) for p in ports.nodes]),
        "customer_phases": (
            "customer",
            [_phases_of(model, p, n) for p, n in zip(ports.nodes, ports.n_phases, strict=True)],
        ),
        "port": np.arange(1, ports.nodes.shape[1] + 1),
        "customer_port_node": (("customer", "port"), port_names),
    }


#: Element losses by part, kW, each (steps, elements): ``(total, phase, neutral, earth)``.
LossParts = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def loss_parts(model: FeederModel, flows: ElementFlows) -> LossParts:
    """Element losses by part, kW, each (steps, elements): ``(total, phase, neutral, earth)``.

    Conductors on neutral nodes go to the neutral part, earthing elements wholly to the
    earth part, transformers wholly to the phase part (see the module docstring).
    """
    p_cond = flows.p_cond
    neutral_cond = memo(model, "neutral_conductors", lambda: neutral_conductors(model, p_cond.shape[1]))
    kinds = model.kinds()
    loss_total = p_cond.sum(axis=1).T
    loss_neutral = np.einsum("ec,ect->te", neutral_cond.astype(float), p_cond)
    loss_earth = np.where((kinds == "earthing")[None], loss_total, 0)
    loss_neutral = np.where(np.isin(kinds, ["earthing", "transformer"])[None], 0, loss_neutral)
    loss_phase = loss_total - loss_neutral - loss_earth
    return loss_total, loss_phase, loss_neutral, loss_earth


def source_power_kva(model: FeederModel, vt: ComplexArray) -> ComplexArray:
    """Complex power into the network from the sources per step, kW + j kvar."""
    src_nodes = np.unique(np.concatenate([s.nodes[s.nodes >= 0] for s in model.sources]))
    y_src = memo(model, "y_src", lambda: assemble_y(model, model.elements).tocsr()[src_nodes])
    j_src = y_src @ vt  # current the PD network draws
    return np.asarray((vt[src_nodes] * np.conj(j_src)).sum(axis=0) / 1000.0)


def head_line(model: FeederModel) -> int:
    """Position of the line that leaves the transformer's LV bus (or the first line)."""
    tx = [e for e in model.elements if e.kind == "transformer"]
    lines = [i for i, e in enumerate(model.elements) if e.kind == "line"]
    if not lines:
        raise ModelError(f"{model.path} has no lines")
    if tx:
        lv = tx[0].buses[-1]
        for i in lines:
            if model.elements[i].buses[0] == lv:
                return i
    return lines[0]


def feeder_totals(
    model: FeederModel, spec: RunSpec, vt: ComplexArray, currents: IntArray | None = None
) -> tuple[ElementFlows, LossParts, xr.Dataset]:
    """Element flows (terminal-1 currents of the elements at ``currents`` only, default
    none: see :func:`element_flows`), losses by part (:func:`loss_parts`) and the feeder's
    per-step totals (:func:`totals_dataset`)."""
    flows = element_flows(model, vt, np.zeros(0, dtype=np.int64) if currents is None else currents)
    parts = loss_parts(model, flows)
    return flows, parts, totals_dataset(spec, vt.shape[1], parts, source_power_kva(model, vt))


def totals_dataset(spec: RunSpec, steps: int, parts: LossParts, s_src: ComplexArray) -> xr.Dataset:
    """The feeder's per-step totals as a Dataset over ``time``: ``loss_total_kw`` and its parts
    ``loss_phase_total_kw``, ``loss_neutral_total_kw``, ``loss_earth_total_kw`` (summed over
    all elements of :func:`loss_parts`' ``parts``), ``source_p_kw``, ``source_q_kvar`` (from
    ``s_src`` of :func:`source_power_kva`, kW + j kvar)."""
    total, phase, neutral, earth = parts
    time = np.arange(spec.start, spec.start + steps)
    return xr.Dataset(
        {
            "loss_total_kw": ("time", total.sum(axis=1), {"units": "kW"}),
            "loss_phase_total_kw": ("time", phase.sum(axis=1), {"units": "kW"}),
            "loss_neutral_total_kw": ("time", neutral.sum(axis=1), {"units": "kW"}),
            "loss_earth_total_kw": ("time", earth.sum(axis=1), {"units": "kW"}),
            "source_p_kw": ("time", s_src.real, {"units": "kW", "long_name": "power into the network from sources"}),
            "source_q_kvar": ("time", s_src.imag, {"units": "kvar"}),
        },
        coords=_time_coords(spec, time),
    )


def capture_totals(spec: RunSpec, ds: xr.Dataset) -> xr.Dataset:
    """:func:`totals_dataset` of a :func:`capture` Dataset (same numbers as :func:`feeder_totals`)."""
    parts = tuple(np.asarray(ds[k].values) for k in ("loss_kw", "loss_phase_kw", "loss_neutral_kw", "loss_earth_kw"))
    s_src = ds.source_p_kw.values + 1j * ds.source_q_kvar.values
    return totals_dataset(spec, ds.sizes["time"], parts, s_src)  # type: ignore[arg-type]


def capture_customers(
    model: FeederModel, spec: RunSpec, vt: ComplexArray, measured: dict[str, ComplexArray] | None = None
) -> xr.Dataset:
    """The ``customers`` capture: what a DSO needs at the supply terminals and the head.

    Per step: ``customer_voltage`` (time, customer, port; phase against the customer's
    neutral, V, complex, as :func:`capture`) and
    ``customer_injection`` (A) at every customer port, ``customer_p_kw`` /
    ``customer_q_kvar`` (drawn), ``head_voltage`` / ``head_current`` (time, conductor) at
    terminal 1 of the line leaving the transformer, the losses by part per element
    (``loss_kw``, ``loss_phase_kw``, ``loss_neutral_kw``, ``loss_earth_kw``, kW) and the
    feeder totals of :func:`feeder_totals`. Same values as :func:`capture` (same arithmetic).
    """
    head = head_line(model)
    flows, (total, phase, neutral, earth), totals = feeder_totals(model, spec, vt, np.array([head]))
    ports = customer_ports(model)
    inj = customer_injections(model, ports, vt, measured or {})
    v_ports = port_voltages(vt, ports.nodes)
    s_cust = -(v_ports * np.conj(inj)).sum(axis=2) / 1000.0
    el = model.elements[head]
    n_cond = el.n_conductors
    dims_e = ("time", "element")
    ds = totals.assign(
        {
            "customer_voltage": (
                ("time", "customer", "port"),
                customer_voltages(v_ports, ports.n_phases),
                {"units": "V", "long_name": "phase port voltage against the customer's neutral (earth if none)"},
            ),
            "customer_injection": (
                ("time", "customer", "port"),
                inj,
                {"units": "A", "long_name": "current injected into the network"},
            ),
            "customer_p_kw": (
                ("time", "customer"),
                s_cust.real,
                {"units": "kW", "long_name": "drawn active power (export negative)"},
            ),
            "customer_q_kvar": (("time", "customer"), s_cust.imag, {"units": "kvar"}),
            "head_voltage": (
                ("time", "conductor"),
                vt[el.nodes[:n_cond]].T,
                {"units": "V", "long_name": f"node-to-earth voltage at terminal 1 of {el.name}"},
            ),
            "head_current": (
                ("time", "conductor"),
                flows.current[0, :n_cond].T,
                {"units": "A", "long_name": f"current into terminal 1 of {el.name}", "element": el.name},
            ),
            "loss_kw": (dims_e, total, {"units": "kW"}),
            "loss_phase_kw": (dims_e, phase, {"units": "kW"}),
            "loss_neutral_kw": (dims_e, neutral, {"units": "kW"}),
            "loss_earth_kw": (dims_e, earth, {"units": "kW"}),
        }
    )
    return ds.assign_coords(
        {**_element_coords(model), "conductor": np.arange(1, n_cond + 1), **_customer_coords(model, ports)}
    ).assign_attrs(run_attrs(model, spec, vt.shape[1]))


@dataclass(frozen=True)
class ElementFlows:
    """Per element conductor: terminal-1 current (A) and loss (kW), node-major.

    ``current`` (len(current_elements), max_conductors, steps): the currents of the
    elements at positions ``current_elements`` (all of them unless
    :func:`element_flows` was asked for fewer), NaN where an element has fewer
    conductors; ``p_cond`` (n_elements, max_conductors, steps) loss per conductor summed
    over terminals, kW; ``winding_s_kva`` (n_transformers, steps) apparent power of each
    transformer's most loaded winding, at positions ``transformers``.
    """

    current: ComplexArray
    current_elements: IntArray
    p_cond: np.ndarray
    transformers: IntArray
    winding_s_kva: np.ndarray


def _empty_flows(
    model: FeederModel, steps: int, currents: IntArray | None
) -> tuple[ComplexArray, IntArray, np.ndarray, np.ndarray]:
    """Output arrays ``(current, current_elements, p_cond, series)``; ``currents`` None = all elements."""
    n_el = len(model.elements)
    rows = np.arange(n_el, dtype=np.int64) if currents is None else np.asarray(currents, dtype=np.int64)
    max_cond = max(e.n_conductors for e in model.elements)
    current = np.full((rows.size, max_cond, steps), np.nan + 1j * np.nan)
    p_cond = np.zeros((n_el, max_cond, steps))
    series = memo(model, "series", lambda: np.array([is_series(e) for e in model.elements], dtype=bool))
    return current, rows, p_cond, series


def _current_rows(n_elements: int, current_elements: IntArray) -> IntArray:
    """Row in ``ElementFlows.current`` of every element position, -1 = not captured."""
    rows = np.full(n_elements, -1, dtype=np.int64)
    rows[current_elements] = np.arange(current_elements.size)
    return rows


def _general_flows(
    model: FeederModel,
    vt: ComplexArray,
    series: np.ndarray,
    current: ComplexArray,
    current_elements: IntArray,
    p_cond: np.ndarray,
) -> ElementFlows:
    """Fill ``current``/``p_cond`` for the non-series elements (transformers, shunts)."""
    steps = vt.shape[1]
    gr = memo(model, "general_rows", lambda: branch_rows(model, np.nonzero(~series)[0]))
    i_rows = gr.yv @ vt
    s_rows = (gr.incidence @ vt) * np.conj(i_rows)
    row = _current_rows(len(model.elements), current_elements)[gr.element]
    first = (gr.terminal == 1) & (row >= 0)
    current[row[first], gr.conductor[first] - 1] = i_rows[first]
    np.add.at(p_cond, (gr.element, gr.conductor - 1), s_rows.real / 1000.0)
    transformers = np.array([i for i, e in enumerate(model.elements) if e.kind == "transformer"], dtype=np.int64)
    winding = np.zeros((transformers.size, steps))
    for j, e in enumerate(transformers):
        mine = gr.element == e
        for t in np.unique(gr.terminal[mine]):
            s_t = np.abs(s_rows[mine & (gr.terminal == t)].sum(axis=0)) / 1000.0
            winding[j] = np.maximum(winding[j], s_t)
    return ElementFlows(
        current=current,
        current_elements=current_elements,
        p_cond=p_cond,
        transformers=transformers,
        winding_s_kva=winding,
    )


def element_flows_reference(model: FeederModel, vt: ComplexArray) -> ElementFlows:
    """Currents and losses of every PD element from node voltages ``vt`` (n_nodes, steps).

    Plain scipy reference of :func:`element_flows`: ``dv = D V``, ``I = Y_series dv``,
    ``p = Re(dv I*)`` for series elements, row products for the rest.
    """
    current, rows, p_cond, series = _empty_flows(model, vt.shape[1], None)
    sr = series_rows(model, np.nonzero(series)[0])
    dv = sr.difference @ vt
    i_ser = sr.yser @ dv
    current[sr.element, sr.conductor - 1] = i_ser
    p_cond[sr.element, sr.conductor - 1] = (dv * np.conj(i_ser)).real / 1000.0
    return _general_flows(model, vt, series, current, rows, p_cond)


def element_flows(model: FeederModel, vt: ComplexArray, currents: IntArray | None = None) -> ElementFlows:
    """As :func:`element_flows_reference`, series elements through a fused numba kernel
    (no full-size temporaries: on a 1440-step run they cost more than the arithmetic).

    ``currents``: positions of the elements whose terminal-1 currents are wanted (default
    all; the losses are always computed for every element). Asking for none saves a
    (n_elements, max_conductors, steps) complex array.
    """
    current, rows, p_cond, series = _empty_flows(model, vt.shape[1], currents)
    node1, node2, offsets, yser, pos = memo(model, "series_kernel", lambda: _series_kernel_args(model, series))
    series_flows(vt, node1, node2, offsets, yser, pos, _current_rows(len(model.elements), rows)[pos], current, p_cond)
    return _general_flows(model, vt, series, current, rows, p_cond)


def _series_kernel_args(
    model: FeederModel, series: np.ndarray
) -> tuple[IntArray, IntArray, IntArray, ComplexArray, IntArray]:
    """Flattened node pairs, offsets and series admittances of the series elements for the kernel."""
    pos = np.nonzero(series)[0]
    elems = [model.elements[i] for i in pos]
    ks = np.array([e.n_conductors for e in elems], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(ks)]).astype(np.int64)
    node1 = np.concatenate([e.nodes[: e.n_conductors] for e in elems] or [np.zeros(0, np.int64)])
    node2 = np.concatenate([e.nodes[e.n_conductors :] for e in elems] or [np.zeros(0, np.int64)])
    yser = np.concatenate(
        [e.yprim[: e.n_conductors, : e.n_conductors].ravel() for e in elems] or [np.zeros(0, complex)]
    )
    return node1, node2, offsets, yser, pos.astype(np.int64)


def neutral_conductors(model: FeederModel, max_cond: int) -> np.ndarray:
    """(n_elements, max_conductors) True where a conductor sits on a neutral-role node."""
    out = np.zeros((len(model.elements), max_cond), dtype=bool)
    for i, e in enumerate(model.elements):
        rows = e.nodes.reshape(e.n_terminals, e.n_conductors)
        on_neutral = (rows >= 0) & (model.node_role[np.maximum(rows, 0)] == 0)
        out[i, : e.n_conductors] = on_neutral.any(axis=0)
    return out


def _bus_of(model: FeederModel, nodes: IntArray) -> str:
    on = nodes[nodes >= 0]
    return str(model.node_bus[on[0]]) if on.size else ""


def _phases_of(model: FeederModel, nodes: IntArray, n_phases: int) -> str:
    """Traced phases of a customer's phase ports as digits (``12`` = a and b)."""
    ph = nodes[:n_phases]
    return "".join(str(int(model.node_role[x])) for x in ph if x >= 0)


def pq_departure_pct(model: FeederModel, vt: ComplexArray) -> np.ndarray:
    """Departure of each constant-PQ load's drawn power from its set-point, %, (steps, customers + orphans).

    OpenDSS keeps a model-1 load at its set-point only while every phase voltage lies in
    ``[vminpu, vmaxpu]`` of its rating; outside it the load becomes a constant impedance
    sized at the band edge, so it draws ``(V / V_edge)^2`` times its set-point. Other
    load models and orphan devices get 0 (their voltage dependence is what the user
    chose).
    """
    volts = vt.T
    out = np.zeros((volts.shape[0], len(model.customers) + len(model.orphan_devices)))
    for i, c in enumerate(model.customers):
        if c.model != 1 or c.kv <= 0:
            continue
        vph = volts[:, c.phase_nodes]
        vn = volts[:, c.neutral_node][:, None] if c.neutral_node >= 0 else 0
        if len(c.phases) == 2 and c.neutral_node < 0:  # phase-to-phase connection
            vmag = np.abs(vph[:, :1] - vph[:, 1:])
            vbase = c.kv * 1000.0
        else:
            vmag = np.abs(vph - vn)
            vbase = c.kv * 1000.0 / (np.sqrt(3.0) if len(c.phases) > 1 else 1.0)
        pu = vmag / vbase
        ratio = np.where(pu > c.vmaxpu, (pu / c.vmaxpu) ** 2, np.where(pu < c.vminpu, (pu / c.vminpu) ** 2, 1.0))
        out[:, i] = 100.0 * (ratio.mean(axis=1) - 1.0)
    return out


def solve_raw(
    engine: Engine,
    model: FeederModel,
    spec: RunSpec,
    *,
    progress: bool = True,
    before_step: Callable[[int], None] | None = None,
) -> tuple[ComplexArray, dict[str, ComplexArray]]:
    """Run ``spec`` on a compiled engine: node voltages (n_nodes, steps) and measured currents."""
    measure = measured_devices(customer_ports(model))
    with tqdm(total=spec.steps, desc="power flow", unit="step", delay=2.0, disable=not progress, leave=False) as bar:
        return engine.run(
            spec.mode,
            spec.stepsize_s,
            spec.start,
            spec.steps,
            measure=measure,
            before_step=before_step,
            on_step=lambda _k: bar.update(),
            repeat_profiles=spec.repeat_profiles,
        )


def solve(
    engine: Engine,
    model: FeederModel,
    spec: RunSpec,
    *,
    progress: bool = True,
    before_step: Callable[[int], None] | None = None,
) -> xr.Dataset:
    """Run ``spec`` on a compiled engine and capture the result Dataset."""
    vt, measured = solve_raw(engine, model, spec, progress=progress, before_step=before_step)
    return capture(model, spec, vt, measured)


def open_feeder(
    model_path: str | Path,
    *,
    vmaxpu: float | None = None,
    commands: tuple[str, ...] = (),
    pme_ohm: float | None = None,
    pme_customers: list[str] | None = None,
    drop_isolated: bool = False,
) -> tuple[Engine, FeederModel]:
    """Compile a model, optionally add PME earth electrodes, and extract it.

    Args:
        model_path: OpenDSS master file.
        vmaxpu: optional ``batchedit load..* vmaxpu=`` (1.5 reproduces the IEEE reference).
        commands: OpenDSS commands run after compiling.
        pme_ohm: earth electrode resistance (ohm) at customers' neutrals; None = no PME.
        pme_customers: customers that get an electrode (default all).
        drop_isolated: drop customers on isolated nodes with a warning naming them
            (default: a :class:`~lv3ph.errors.ModelError` naming them).
    """
    engine = Engine()
    engine.compile(model_path, vmaxpu=vmaxpu, commands=commands, drop_isolated=drop_isolated)
    model = engine.model()
    if pme_ohm is not None:
        engine.apply(pme_commands(model, pme_ohm, pme_customers))
        model = engine.model()
    return engine, model


def run_powerflow(
    model_path: str | Path,
    *,
    mode: str = "yearly",
    stepsize: str | float = "1m",
    start: int = 1,
    steps: int = 1440,
    vmaxpu: float | None = None,
    commands: tuple[str, ...] = (),
    pme_ohm: float | None = None,
    pme_customers: list[str] | None = None,
    progress: bool = True,
) -> xr.Dataset:
    """Compile ``model_path`` and run a time-series power flow (see :func:`capture`).

    Args:
        model_path, vmaxpu, commands, pme_ohm, pme_customers: as :func:`open_feeder`.
        mode: ``snap``, ``daily`` or ``yearly`` (OpenDSS's time modes).
        stepsize: e.g. ``1m``; seconds if a number.
        start: first step (step k is solved at time k x stepsize).
        steps: number of steps.
        progress: show a progress bar on runs longer than two seconds.
    """
    spec = RunSpec.parse(mode, stepsize, start, steps)
    engine, model = open_feeder(
        model_path, vmaxpu=vmaxpu, commands=commands, pme_ohm=pme_ohm, pme_customers=pme_customers
    )
    return solve(engine, model, spec, progress=progress)
