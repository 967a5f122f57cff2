"""The feeder as plain arrays: nodes, elements with primitive admittances, customers.

Nothing here talks to OpenDSS; :mod:`lv3ph.dss` fills these structures from a compiled
circuit. Everything downstream (power flow capture, unbalance, allocation) works on them.

Conventions
-----------
* A *node* is ``bus.terminal`` as OpenDSS numbers it (``YNodeOrder``), lower case.
  Terminal numbers carry no meaning: every node's *role* (phase a, b, c, neutral or
  isolated, and the source or transformer it belongs to) is traced from the sources
  by :mod:`lv3ph.topology` (``FeederModel.node_role`` / ``node_group``). Terminal 0 is
  earth (remote reference, 0 V), which is not a node.
* Node index ``-1`` in any index array means earth.
* A *customer* is a Load element (name lower case, without the ``load.`` prefix). PV
  systems, storage and generators on the same bus and node(s) belong to it. Its
  phases and neutral are the roles of the nodes its conductors sit on.
* Currents and powers of customers use the load convention: drawn power positive, a
  PV export is negative.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

ComplexArray = NDArray[np.complex128]
IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]

#: Element kinds that carry losses.
ELEMENT_KINDS = ("line", "transformer", "earthing", "other")


@dataclass(frozen=True)
class Element:
    """A linear OpenDSS element (power-delivery element or voltage source).

    Attributes:
        name: full OpenDSS name, lower case (``line.line1``).
        kind: ``line``, ``transformer``, ``earthing`` (a shunt to earth at a neutral, e.g. an
            earth electrode Reactor), ``other`` (capacitors, series reactors ...) or ``source``.
        nodes: node index per (terminal, conductor) row, terminal-major; ``-1`` = earth.
        n_terminals: number of terminals.
        n_conductors: conductors per terminal.
        yprim: primitive admittance (siemens), rows ordered as ``nodes``.
        normamps: thermal rating in A (NaN if not given).
        kva: transformer rating in kVA (first winding; NaN for other elements).
        buses: bus name of each terminal.
        closed: per row, whether the conductor is closed (``open line.sw`` opens it);
            empty = all closed.
        conns: winding connections of a transformer, ``wye`` or ``delta`` per winding.
    """

    name: str
    kind: str
    nodes: IntArray
    n_terminals: int
    n_conductors: int
    yprim: ComplexArray
    normamps: float = float("nan")
    kva: float = float("nan")
    buses: tuple[str, ...] = ()
    closed: NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=bool))
    conns: tuple[str, ...] = ()

    @property
    def cls(self) -> str:
        """OpenDSS class, lower case (``line``, ``reactor``, ``transformer`` ...)."""
        return self.name.split(".", 1)[0]

    def is_closed(self, row: int) -> bool:
        """Whether the conductor of ``row`` (terminal-major) is closed."""
        return bool(self.closed[row]) if self.closed.size else True

    def conductor_nodes(self, terminal: int) -> IntArray:
        """Node indices of the conductors of ``terminal`` (1-based)."""
        k = self.n_conductors
        return self.nodes[(terminal - 1) * k : terminal * k]


@dataclass(frozen=True)
class Customer:
    """One customer: a Load element plus the devices on its bus and phases.

    Attributes:
        name: Load name, lower case (``load1``).
        bus: bus name.
        phases: traced feeder phases (1..3 = a..c) the customer is connected to, in
            phase order (not terminal numbers: a load on ``c7.1.2`` behind a service
            cable from ``t5.2.4`` is on phase 2 = b).
        phase_nodes: node index of each phase, in the order of ``phases``.
        neutral_node: node index of the customer's neutral (traced role), ``-1`` when
            it is earth (Kron-reduced model, load connected phase-to-earth or
            line-to-line).
        devices: full names of the elements that make up the customer (``load.load1``,
            ``pvsystem.pv1`` ...).
        kv: rated voltage of the load (kV, line-to-neutral for single-phase loads).
        vminpu, vmaxpu: the load's constant-power band; OpenDSS switches a constant-PQ
            load to constant impedance outside it.
        model: OpenDSS load model number (1 = constant PQ).
    """

    name: str
    bus: str
    phases: tuple[int, ...]
    phase_nodes: IntArray
    neutral_node: int
    devices: tuple[str, ...]
    kv: float
    vminpu: float
    vmaxpu: float
    model: int

    @property
    def phase_letters(self) -> str:
        """Traced phases as letters: ``a``, ``bc``, ``abc``."""
        return "".join("abc"[p - 1] for p in self.phases)


@dataclass(frozen=True)
class FeederModel:
    """A compiled feeder as plain arrays.

    Attributes:
        path: model file it was compiled from.
        nodes: node names ``bus.terminal`` in OpenDSS Y order.
        node_bus: bus name per node.
        node_terminal: terminal number per node (OpenDSS's label, no meaning).
        node_role: traced role per node: 1, 2, 3 = phase a, b, c; 0 = neutral; -1 =
            isolated (no series path from a source) (:mod:`lv3ph.topology`).
        node_group: per node, position in ``groups`` of the Vsource or transformer it
            was traced from; -1 if isolated.
        groups: full names of the Vsources and transformers that start a group.
        buses: bus names in OpenDSS order.
        bus_kv_base: line-to-neutral voltage base per bus in kV (0 where not set).
        elements: power-delivery elements (lines, transformers, earthing, other).
        sources: voltage sources (their Norton admittance is part of the network).
        customers: customers (Loads) with their devices.
        orphan_devices: power-conversion elements that belong to no customer, with the
            node indices of their terminals.
    """

    path: str
    nodes: tuple[str, ...]
    node_bus: NDArray[np.str_]
    node_terminal: IntArray
    buses: tuple[str, ...]
    bus_kv_base: FloatArray
    elements: tuple[Element, ...]
    sources: tuple[Element, ...]
    customers: tuple[Customer, ...]
    orphan_devices: dict[str, IntArray] = field(default_factory=dict)
    node_role: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    node_group: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    groups: tuple[str, ...] = ()

    @property
    def n_nodes(self) -> int:
        return len(self.nodes)

    @property
    def explicit_neutral(self) -> bool:
        """True when the model has neutral conductors as nodes (four-wire), by traced role."""
        return bool(np.any(self.node_role == 0))

    def is_neutral(self, node: int) -> bool:
        """True for a node whose traced role is a neutral (False for earth, -1)."""
        return node >= 0 and int(self.node_role[node]) == 0

    def earthed_nodes(self) -> set[int]:
        """Neutral nodes with an earth electrode (an ``earthing`` element) on them."""
        return {int(x) for e in self.elements if e.kind == "earthing" for x in e.nodes if x >= 0}

    @property
    def wiring(self) -> str:
        """``four-wire (explicit neutral)`` or ``three-wire (Kron-reduced)``."""
        return "four-wire (explicit neutral)" if self.explicit_neutral else "three-wire (Kron-reduced)"

    def customer_index(self) -> dict[str, int]:
        """Customer name (lower case) -> position."""
        return {c.name: i for i, c in enumerate(self.customers)}

    def element_names(self) -> list[str]:
        return [e.name for e in self.elements]

    def kinds(self) -> NDArray[np.str_]:
        return np.array([e.kind for e in self.elements])


@dataclass(frozen=True)
class BranchRows:
    """Sparse maps from node voltages to every element row's current and loss.

    One *row* is one (element, terminal, conductor). With ``V`` the node voltages
    (n_nodes, or n_nodes x steps):

    * ``current = yv @ V``  -- row currents into the element (A),
    * ``voltage = incidence @ V`` -- row voltages (V; 0 for earth),
    * the row's power into the element is ``voltage * conj(current)`` (VA).

    ``element`` gives each row's element position (in ``model.elements``), ``terminal``
    and ``conductor`` its terminal and conductor (1-based).
    """

    yv: sp.csr_matrix
    incidence: sp.csr_matrix
    element: IntArray
    terminal: IntArray
    conductor: IntArray


@dataclass(frozen=True)
class SeriesRows:
    """Two-terminal series elements (no shunt part: ``I2 = -I1``), one row per conductor.

    ``dv = difference @ V`` is the conductor's voltage drop V1 - V2 (V), ``yser @ dv`` its
    current into terminal 1 (A), and ``Re(dv * conj(i))`` its loss (W). This needs a
    quarter of the work of the general :class:`BranchRows` for lines.
    """

    yser: sp.csr_matrix
    difference: sp.csr_matrix
    element: IntArray
    conductor: IntArray


def is_series(e: Element, rtol: float = 1e-12) -> bool:
    """True for a two-terminal element whose Yprim is ``[[Y, -Y], [-Y, Y]]``."""
    if e.n_terminals != 2:
        return False
    k = e.n_conductors
    y11, y12, y21, y22 = e.yprim[:k, :k], e.yprim[:k, k:], e.yprim[k:, :k], e.yprim[k:, k:]
    scale = max(float(np.abs(y11).max()), 1e-300)
    return all(float(np.abs(m).max()) <= rtol * scale for m in (y11 + y12, y21 + y22, y11 - y22))


def branch_rows(model: FeederModel, positions: IntArray | None = None) -> BranchRows:
    """Build :class:`BranchRows` for the elements at ``positions`` (default: all)."""
    pos = np.arange(len(model.elements)) if positions is None else positions
    elems = [model.elements[i] for i in pos]
    if not elems:
        empty = sp.csr_matrix((0, model.n_nodes), dtype=np.complex128)
        none = np.zeros(0, dtype=np.int64)
        return BranchRows(yv=empty, incidence=empty.real, element=none, terminal=none, conductor=none)
    nodes = np.concatenate([e.nodes for e in elems])
    n_rows = nodes.size
    on = nodes >= 0
    incidence = sp.csr_matrix(
        (np.ones(int(on.sum()), dtype=np.complex128), (np.nonzero(on)[0], nodes[on])), shape=(n_rows, model.n_nodes)
    )
    yv = (sp.block_diag([e.yprim for e in elems], format="csr") @ incidence).tocsr()
    element = np.concatenate([np.full(e.nodes.size, i) for i, e in zip(pos, elems, strict=True)])
    terminal = np.concatenate([np.repeat(np.arange(1, e.n_terminals + 1), e.n_conductors) for e in elems])
    conductor = np.concatenate([np.tile(np.arange(1, e.n_conductors + 1), e.n_terminals) for e in elems])
    return BranchRows(yv=yv, incidence=incidence, element=element, terminal=terminal, conductor=conductor)


def series_rows(model: FeederModel, positions: IntArray) -> SeriesRows:
    """Build :class:`SeriesRows` for the series elements at ``positions``."""
    elems = [model.elements[i] for i in positions]
    blocks, r, c, v = [], [], [], []
    row = 0
    for e in elems:
        k = e.n_conductors
        blocks.append(e.yprim[:k, :k])
        for side, sign in ((e.nodes[:k], 1.0), (e.nodes[k:], -1.0)):
            on = np.nonzero(side >= 0)[0]
            r.append(row + on)
            c.append(side[on])
            v.append(np.full(on.size, sign))
        row += k
    difference = sp.csr_matrix(
        (
            np.concatenate(v).astype(np.complex128) if v else np.zeros(0, np.complex128),
            (np.concatenate(r) if r else np.zeros(0, int), np.concatenate(c) if c else np.zeros(0, int)),
        ),
        shape=(row, model.n_nodes),
    )
    yser = sp.block_diag(blocks, format="csr") if blocks else sp.csr_matrix((0, 0), dtype=np.complex128)
    element = np.concatenate(
        [np.full(e.n_conductors, i) for i, e in zip(positions, elems, strict=True)] or [np.zeros(0, int)]
    )
    conductor = np.concatenate([np.arange(1, e.n_conductors + 1) for e in elems] or [np.zeros(0, int)])
    return SeriesRows(yser=sp.csr_matrix(yser), difference=difference, element=element, conductor=conductor)


def assemble_y(model: FeederModel, elements: tuple[Element, ...]) -> sp.csc_matrix:
    """Nodal admittance matrix (S) of ``elements``, earth eliminated (n_nodes x n_nodes)."""
    n = model.n_nodes
    rows: list[IntArray] = []
    cols: list[IntArray] = []
    vals: list[ComplexArray] = []
    for e in _touching(elements):
        on = np.nonzero(e.nodes >= 0)[0]
        r, c = np.meshgrid(e.nodes[on], e.nodes[on], indexing="ij")
        rows.append(r.ravel())
        cols.append(c.ravel())
        vals.append(e.yprim[np.ix_(on, on)].ravel())
    return sp.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))


def _touching(elements: tuple[Element, ...]) -> list[Element]:
    """Elements that touch at least one node (an element fully on earth adds nothing)."""
    return [e for e in elements if np.any(e.nodes >= 0)]


def network_y(model: FeederModel) -> sp.csc_matrix:
    """The network admittance matrix without customer devices: PD elements + sources.

    ``network_y(model) @ V`` is the current injected into the network at each node by
    everything that is not part of it: the sources' Norton currents and the customers'
    (and orphan devices') currents (A).
    """
    return assemble_y(model, model.elements + model.sources)


_T = TypeVar("_T")
_MEMO: dict[int, tuple[weakref.ref[Any], dict[str, Any]]] = {}


def memo(model: FeederModel, key: str, build: Callable[[], _T]) -> _T:
    """``build()`` once per model object (matrices that every block of a long run reuses).

    The model is immutable; the entry goes when the model is garbage-collected.
    """
    key_id = id(model)
    entry = _MEMO.get(key_id)
    if entry is None or entry[0]() is not model:
        entry = (weakref.ref(model, lambda _r: _MEMO.pop(key_id, None)), {})
        _MEMO[key_id] = entry
    cache = entry[1]
    if key not in cache:
        cache[key] = build()
    return cache[key]


def earth_electrode_command(name: str, bus: str, terminal: int, r_ohm: float) -> str:
    """OpenDSS command for an earth electrode: a Reactor from ``bus.terminal`` to earth, R in ohm."""
    return f"New Reactor.{name} phases=1 bus1={bus}.{terminal} bus2={bus}.0 R={r_ohm:.12g} X=0"


def pme_commands(model: FeederModel, r_ohm: float, customers: list[str] | None = None) -> list[str]:
    """Commands that earth the neutral of ``customers`` (default: all) through ``r_ohm`` each.

    One electrode per distinct neutral node (customers on one bus share it), named
    ``pme_<customer>``; where the model already has a Reactor of that name (a model that
    is earthed already) the new electrode gets the first free ``pme_<customer>_<n>`` and
    sits in parallel with the existing one. Raises
    :class:`~lv3ph.errors.ModelError` for a three-wire model or a customer without a
    neutral node, :class:`~lv3ph.errors.UnknownItemError` for an unknown customer.
    """
    from lv3ph.errors import ModelError, UnknownItemError

    if not (r_ohm > 0 and np.isfinite(r_ohm)):
        raise ModelError(f"earth electrode resistance must be a positive number of ohm, got {r_ohm}")
    if not model.explicit_neutral:
        raise ModelError(f"{model.path} is {model.wiring}: earth electrodes need an explicit neutral conductor")
    index = model.customer_index()
    chosen = list(index) if customers is None else [c.lower() for c in customers]
    nodes: dict[int, str] = {}
    for name in chosen:
        if name not in index:
            raise UnknownItemError(f"unknown customer {name!r} for earthing")
        c = model.customers[index[name]]
        if not model.is_neutral(c.neutral_node):
            raise ModelError(f"customer {name} has no neutral node to earth (connected to earth directly)")
        nodes.setdefault(c.neutral_node, name)
    taken = {e.name for e in model.elements if e.name.startswith("reactor.")}
    commands = []
    for n, name in nodes.items():
        label, k = f"pme_{name}", 1
        while f"reactor.{label}" in taken:
            label, k = f"pme_{name}_{k}", k + 1
        taken.add(f"reactor.{label}")
        commands.append(earth_electrode_command(label, str(model.node_bus[n]), int(model.node_terminal[n]), r_ohm))
    return commands


def node_spec(model: FeederModel, bus: str, nodes: list[int]) -> str:
    """OpenDSS ``bus.t1.t2...`` connection of ``nodes`` (``-1`` = earth, ``.0``)."""
    return bus + "".join(f".{int(model.node_terminal[n]) if n >= 0 else 0}" for n in nodes)


def _device_bus(model: FeederModel, customer: Customer) -> str:
    """``bus.<phase node>.<neutral node>`` connection (OpenDSS terminal numbers) of a
    single-phase device beside ``customer``, on the customer's traced phase and neutral."""
    from lv3ph.errors import ModelError

    if len(customer.phases) != 1:
        raise ModelError(f"customer {customer.name} is not single-phase: PV/battery devices need one phase")
    return node_spec(model, customer.bus, [int(customer.phase_nodes[0]), customer.neutral_node])


def loadshape_command(name: str, values: np.ndarray, stepsize_s: float) -> str:
    """OpenDSS command defining a load shape with one point per step (point k at k x step)."""
    mult = " ".join(f"{x:.6g}" for x in values)
    return f"New Loadshape.{name} npts={values.size} sinterval={stepsize_s:g} mult=[{mult}]"


#: Inverter rating of a PV system per kWp of modules, kVA/kWp.
KVA_PER_KWP = 1.1
#: Voltage band (pu) of a PVSystem (:func:`pvsystem_command`) in which its output is constant power.
PV_VMINPU, PV_VMAXPU = 0.5, 1.5


def pv_commands(model: FeederModel, kwp: dict[str, float], shape: str, kv: float = 0.23) -> list[str]:
    """PVSystems of ``kwp[customer]`` kWp beside each customer, following load shape ``shape``.

    The output is ``kwp x shape(t)`` kW (irradiance 1 kW/m2 scaled by the shape, no
    temperature or efficiency curves: the shape is already AC kW per kWp), unity power
    factor, inverter rated 1.1 x kWp, no cut-in/cut-out, constant power over 0.5-1.5 pu.
    """
    index = model.customer_index()
    return [
        pvsystem_command(f"pv_{name}", _device_bus(model, model.customers[index[name]]), size, shape, kv)
        for name, size in kwp.items()
    ]


def pvsystem_command(name: str, bus1: str, kwp: float, shape: str, kv: float = 0.23) -> str:
    """One single-phase PVSystem ``name`` of ``kwp`` kWp on ``bus1`` (``bus.phase.neutral``),
    as :func:`pv_commands` describes it."""
    return (
        f"New PVSystem.{name} phases=1 bus1={bus1} kv={kv:g} kva={KVA_PER_KWP * kwp:.6g} "
        f"pmpp={kwp:.6g} irradiance=1 %cutin=0 %cutout=0 yearly={shape} daily={shape} "
        f"vminpu={PV_VMINPU:g} vmaxpu={PV_VMAXPU:g}"
    )


def node_bus1(model: FeederModel, phase_node: int, neutral_node: int) -> str:
    """``bus.t1.t2`` between two nodes of one bus (``neutral_node`` -1: earth, ``.0``),
    from the nodes' own terminal numbers."""
    t2 = int(model.node_terminal[neutral_node]) if neutral_node >= 0 else 0
    return f"{model.node_bus[phase_node]}.{int(model.node_terminal[phase_node])}.{t2}"


def pv_generator_commands(model: FeederModel, customers: list[str]) -> list[str]:
    """One unity-power-factor constant-PQ Generator ``pv_<customer>`` per customer; its kW
    (PV output) is set every step through the fast API."""
    index = model.customer_index()
    return [
        f"New Generator.pv_{name} phases=1 bus1={_device_bus(model, model.customers[index[name]])} "
        f"kv={model.customers[index[name]].kv:g} kw=0 pf=1 model=1 vminpu=0.5 vmaxpu=1.5"
        for name in customers
    ]


def battery_commands(model: FeederModel, customers: list[str], kv: float = 0.23) -> list[str]:
    """One Generator ``bat_<customer>`` per battery: its kW (discharge positive, charge
    negative) is set every step through the fast API; unity power factor."""
    index = model.customer_index()
    return [
        f"New Generator.bat_{name} phases=1 bus1={_device_bus(model, model.customers[index[name]])} kv={kv:g} "
        "kw=0 pf=1 model=1 vminpu=0.5 vmaxpu=1.5"
        for name in customers
    ]
