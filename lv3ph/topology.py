"""Conductor roles by tracing: which node is phase a, b, c or a neutral, and of which source.

lv3ph never reads a role from a terminal number. :func:`trace_roles` follows the
network from the sources conductor by conductor, over the plain element data of
:class:`lv3ph.model.Element` (nodes, which conductors are closed, winding
connections):

* **Sources.** Conductor ``k`` of a Vsource's terminal 1 is phase ``k`` (a, b, c); the
  nodes of its terminal 2 (``bus2``, earth by default) are its neutral.
* **Series elements pass roles.** Lines (cables, switches) and two-terminal Reactors
  join conductor ``k`` of terminal 1 to conductor ``k`` of terminal 2, so both nodes get
  the same role (a service cable ``bus1=t5.2.4 bus2=c7.1.2`` makes ``c7.1`` phase b and
  ``c7.2`` the neutral). A conductor opened in OpenDSS (``open line.sw``) or a disabled
  element joins nothing. A Reactor terminal whose conductors meet in one node (a star
  point, ``bus2=x.4.4.4``) is a shunt, not a path; a Line's conductors always join (a
  six-wire cable ending on ``b2.1.2.3.4.4.4`` bonds its three neutral cores at ``b2``, a
  three-phase switch written ``bus2=x2.2`` joins OpenDSS's default nodes ``x2.2.2.3``).
* **Transformers by winding connection.** Once one winding is reached, every other
  winding's conductor ``k`` is phase ``k`` (for a single- or two-phase transformer: the
  phase of the reached winding's conductor ``k``), and a wye winding's star point
  (conductor ``phases + 1``) is that transformer's neutral. Delta windings have no
  neutral. A single-phase wye winding whose phase end is earthed and whose star point
  is not (``bus=x.0.2``, the reversed half of a split-phase secondary) carries the phase
  on its star-point node.
* **Neutrals alongside phases.** A conductor no source reaches but that runs in a series
  element beside a traced phase (the fourth core of a cable whose star point is only
  bonded through an earthing Reactor, as in the ENWL feeders) is a neutral of that
  phase's source; so is one run in a series element of its own between two buses that
  both carry phases of one source (a neutral written as a separate single-phase line).
* Every other node is **isolated** (an open switch's far side, a TT customer's own earth
  terminal).

Each traced node also belongs to a *group*: the Vsource or transformer whose winding it
was traced from (the two LV networks of two transformers are two groups). A node
reached with two different roles (a phase bonded to another phase or to a neutral) is a
:class:`~lv3ph.errors.ModelError` naming the node.

Earth electrodes are derived from the roles (:func:`is_earthing`): any non-series
element with one terminal wholly on earth whose other nodes are all neutrals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import pandas as pd

from lv3ph.errors import ModelError
from lv3ph.model import Element, FeederModel, IntArray

#: Node roles: 1, 2, 3 = phases a, b, c.
NEUTRAL: Final[int] = 0
ISOLATED: Final[int] = -1
PHASE_LETTERS: Final[str] = "abc"


def role_label(role: int) -> str:
    """``a``, ``b``, ``c``, ``neutral`` or ``isolated``."""
    if 1 <= role <= 3:
        return PHASE_LETTERS[role - 1]
    return "neutral" if role == NEUTRAL else "isolated"


def phase_letters(phases: Sequence[int]) -> str:
    """Traced phase numbers (1..3) as letters in phase order: ``(2, 1)`` -> ``ab``."""
    return "".join(PHASE_LETTERS[p - 1] for p in sorted(phases))


@dataclass(frozen=True)
class Roles:
    """Traced roles: per node ``role`` (1..3 phase, :data:`NEUTRAL`, :data:`ISOLATED`) and
    ``group`` (position in ``groups``, the Vsource/transformer it was traced from; -1 if
    isolated)."""

    role: IntArray
    group: IntArray
    groups: tuple[str, ...]


class _Components:
    """Union-find over nodes."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, a: int) -> int:
        p = self.parent
        while p[a] != a:
            p[a] = p[p[a]]
            a = p[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _passes(e: Element) -> bool:
    """Series elements that join conductor k of terminal 1 to conductor k of terminal 2."""
    return e.n_terminals == 2 and e.cls in ("line", "reactor")


def _series_pairs(e: Element) -> list[tuple[int, int, int]]:
    """(node at terminal 1, node at terminal 2, conductor) of each closed series conductor of ``e``."""
    k = e.n_conductors
    nodes = e.nodes.tolist()
    t1, t2 = nodes[:k], nodes[k:]
    closed = e.closed.tolist() if e.closed.size else [True] * (2 * k)
    out = []
    for j in range(k):
        a, b = t1[j], t2[j]
        if a < 0 or b < 0 or not (closed[j] and closed[k + j]):
            continue
        if e.cls != "line" and (t1.count(a) > 1 or t2.count(b) > 1):
            continue  # a reactor's star point: this terminal is a shunt connection, not a path
        out.append((a, b, j))
    return out


def trace_roles(node_names: Sequence[str], elements: Sequence[Element], sources: Sequence[Element]) -> Roles:
    """Give every node a role by tracing from ``sources`` (module docstring).

    Raises:
        ModelError: a node reached with two different roles, naming the node and both roles.
    """
    n = len(node_names)
    comp = _Components(n)
    series = [e for e in elements if _passes(e)]
    for e in series:
        for a, b, _ in _series_pairs(e):
            comp.union(a, b)
    groups: list[str] = []
    role_of: dict[int, tuple[int, int]] = {}  # component root -> (role, group)

    def assign(node: int, role: int, group: int, via: str) -> None:
        c = comp.find(node)
        old = role_of.get(c)
        if old is None:
            role_of[c] = (role, group)
        elif old[0] != role:
            raise ModelError(
                f"node {node_names[node]} is traced both as {role_label(old[0])} (from {groups[old[1]]}) "
                f"and as {role_label(role)} (from {via}): a phase is bonded to another phase or to a neutral"
            )

    for s in sources:
        groups.append(s.name)
        g = len(groups) - 1
        k = s.n_conductors
        for j, node in enumerate(s.nodes[:k]):
            if node >= 0:
                assign(int(node), j + 1 if j < 3 else NEUTRAL, g, s.name)
        for node in s.nodes[k:]:
            if node >= 0:
                assign(int(node), NEUTRAL, g, s.name)
    transformers = [e for e in elements if e.cls == "transformer"]
    done: set[int] = set()
    changed = True
    while changed:  # a transformer fed by another transformer is reached in a later round
        changed = False
        for ti, t in enumerate(transformers):
            if ti in done:
                continue
            k = t.n_conductors
            nph = max(k - 1, 1)
            windings = [t.nodes[w * k : (w + 1) * k] for w in range(t.n_terminals)]
            fed = None
            for w, wn in enumerate(windings):
                roles = [role_of.get(comp.find(int(x)), (ISOLATED, -1))[0] if x >= 0 else ISOLATED for x in wn[:nph]]
                if any(1 <= r <= 3 for r in roles):
                    fed = (w, roles)
                    break
            if fed is None:
                continue
            done.add(ti)
            changed = True
            groups.append(t.name)
            g = len(groups) - 1
            up, up_roles = fed
            for w, wn in enumerate(windings):
                if w == up:
                    continue
                for j in range(nph):
                    if wn[j] >= 0:
                        ph = j + 1 if nph == 3 or not (1 <= up_roles[j] <= 3) else up_roles[j]
                        assign(int(wn[j]), ph, g, t.name)
                conn = t.conns[w] if w < len(t.conns) else "wye"
                if conn == "wye" and k > nph and wn[nph] >= 0:
                    reversed_half = nph == 1 and wn[0] < 0
                    ph = up_roles[0] if reversed_half and 1 <= up_roles[0] <= 3 else 1
                    assign(int(wn[nph]), ph if reversed_half else NEUTRAL, g, t.name)
    # conductors beside a traced phase in a series element are its neutrals
    for e in series:
        k = e.n_conductors
        for side in (e.nodes[:k], e.nodes[k:]):
            on = [int(x) for x in side if x >= 0]
            phase_groups = [role_of[c][1] for c in (comp.find(x) for x in on) if c in role_of and role_of[c][0] >= 1]
            if not phase_groups:
                continue
            for x in on:
                if comp.find(x) not in role_of:
                    role_of[comp.find(x)] = (NEUTRAL, phase_groups[0])
    # a conductor run on its own between two buses that carry phases of one group (a
    # neutral written as a separate single-phase line) is a neutral of that group too
    bus_groups: dict[str, set[int]] = {}
    for i, name in enumerate(node_names):
        hit = role_of.get(comp.find(i))
        if hit is not None and hit[0] >= 1:
            bus_groups.setdefault(name.rsplit(".", 1)[0], set()).add(hit[1])
    for e in series:
        if e.buses[0] == e.buses[1]:
            continue
        shared = bus_groups.get(e.buses[0], set()) & bus_groups.get(e.buses[1], set())
        for a, _, _ in _series_pairs(e) if shared else ():
            if comp.find(a) not in role_of:
                role_of[comp.find(a)] = (NEUTRAL, min(shared))
    role = np.full(n, ISOLATED, dtype=np.int64)
    group = np.full(n, -1, dtype=np.int64)
    for i in range(n):
        hit = role_of.get(comp.find(i))
        if hit is not None:
            role[i], group[i] = hit
    return Roles(role=role, group=group, groups=tuple(groups))


def is_earthing(e: Element, role: IntArray) -> bool:
    """True for an earth electrode: a non-series element (or a terminal not joined by a
    series path) with one terminal wholly on earth and every other node a neutral."""
    if _passes(e) and _series_pairs(e):
        return False
    terminals = e.nodes.reshape(-1, e.n_conductors)
    on_earth = [bool(np.all(t < 0)) for t in terminals]
    if not any(on_earth):
        return False
    others = np.concatenate([t for t, z in zip(terminals, on_earth, strict=True) if not z] or [np.empty(0, np.int64)])
    others = others[others >= 0]
    return bool(others.size) and bool(np.all(role[others] == NEUTRAL))


# ----------------------------------------------------------------------------- where a phase is chosen


def phase_nodes_at(model: FeederModel, bus: str, group: int) -> dict[int, int]:
    """Traced phase (1..3) -> node at ``bus`` of ``group`` (first node of each phase)."""
    out: dict[int, int] = {}
    for n in np.nonzero(model.node_bus == bus)[0]:
        r = int(model.node_role[n])
        if 1 <= r <= 3 and int(model.node_group[n]) == group:
            out.setdefault(r, int(n))
    return out


@dataclass(frozen=True)
class Connection:
    """Where a single-phase customer's feeder phase is selected.

    ``element`` is the service cable (full name) whose feeder-side terminal ``terminal``
    (1 or 2) sits on ``bus``, the first bus towards the source with all three phases;
    ``""`` when the customer's own bus has them (then its devices' terminals are moved).
    ``nodes`` are the nodes of that terminal in conductor order and ``phase_node`` the
    one carrying the customer's phase.
    """

    element: str
    terminal: int
    bus: str
    nodes: tuple[int, ...]
    phase_node: int


def _line_ends(model: FeederModel) -> dict[int, list[tuple[int, int, int]]]:
    """node -> (element position, terminal 0/1, conductor) of every closed series conductor end."""
    out: dict[int, list[tuple[int, int, int]]] = {}
    for i, e in enumerate(model.elements):
        if not _passes(e):
            continue
        for a, b, j in _series_pairs(e):
            out.setdefault(a, []).append((i, 0, j))
            out.setdefault(b, []).append((i, 1, j))
    return out


def service_connections(model: FeederModel) -> dict[str, Connection | str]:
    """Per customer (name): its :class:`Connection`, or why its phase cannot be moved.

    A single-phase customer is movable when its bus has all three phases of its group, or
    when its phase reaches such a bus through a chain of series elements (the service
    cable, possibly in several sections) that serves no other customer or device.
    """
    ends = _line_ends(model)
    owners: dict[int, list[str]] = {}
    for c in model.customers:
        for x in c.phase_nodes:
            owners.setdefault(int(x), []).append(c.name)
    for dev, nodes in model.orphan_devices.items():
        for x in nodes:
            if x >= 0 and model.node_role[x] >= 1:
                owners.setdefault(int(x), []).append(dev)
    out: dict[str, Connection | str] = {}
    for c in model.customers:
        if len(c.phases) != 1:
            out[c.name] = f"is connected to {len(c.phases)} phases (only single-phase customers can change phase)"
            continue
        node = int(c.phase_nodes[0])
        group = int(model.node_group[node])
        if len(phase_nodes_at(model, c.bus, group)) == 3:
            here = np.nonzero(model.node_bus == c.bus)[0]
            out[c.name] = Connection("", 0, c.bus, tuple(int(x) for x in here), node)
            continue
        seen = {c.bus}
        found: Connection | str = f"sits on bus {c.bus}, which does not have all three phases, and no service cable"
        shared = [o for o in owners.get(node, []) if o != c.name]
        if shared:
            out[c.name] = f"shares its service cable with {shared[0]} (at bus {c.bus})"
            continue
        for _ in range(len(model.buses)):
            steps = [
                (i, t, j)
                for i, t, j in ends.get(node, [])
                if model.elements[i].buses[1 - t] not in seen
                and model.elements[i].buses[1 - t] != model.elements[i].buses[t]
            ]
            if len(steps) != 1:
                found = (
                    f"sits on bus {c.bus}, which does not have all three phases, and its phase does not lead "
                    f"through one service cable to a bus that has them"
                )
                break
            i, t, j = steps[0]
            e = model.elements[i]
            k = e.n_conductors
            far = e.nodes[(1 - t) * k : (2 - t) * k]
            node = int(far[j])
            bus = e.buses[1 - t]
            if len(phase_nodes_at(model, bus, group)) == 3:
                found = Connection(e.name, 2 - t, bus, tuple(int(x) for x in far), node)
                break
            shared = [o for o in owners.get(node, []) if o != c.name]
            if shared:
                found = f"shares its service cable with {shared[0]} (at bus {bus})"
                break
            seen.add(bus)
        out[c.name] = found
    return out


# ----------------------------------------------------------------------------- tables


def customers_table(model: FeederModel, kw: dict[str, float] | None = None) -> pd.DataFrame:
    """One row per customer: ``customer, bus, phases`` (traced, letters ``a`` ... ``abc``),
    ``phase_nodes`` (node names, space separated), ``neutral_node`` (``""`` = earth),
    ``earthed`` (an earth electrode on its neutral node) and ``kw`` (base kW, NaN if not
    given)."""
    earthed = model.earthed_nodes()
    kw = kw or {}
    return pd.DataFrame(
        {
            "customer": [c.name for c in model.customers],
            "bus": [c.bus for c in model.customers],
            "phases": [c.phase_letters for c in model.customers],
            "phase_nodes": [" ".join(model.nodes[int(x)] for x in c.phase_nodes) for c in model.customers],
            "neutral_node": [model.nodes[c.neutral_node] if c.neutral_node >= 0 else "" for c in model.customers],
            "earthed": [c.neutral_node in earthed for c in model.customers],
            "kw": [float(kw.get(c.name, np.nan)) for c in model.customers],
        }
    )


def earthing_table(model: FeederModel) -> pd.DataFrame:
    """One row per (earth electrode, neutral node): ``element, bus, node, r_ohm`` (the
    electrode's resistance to earth, ``Re(1 / Y_nn)`` of its primitive admittance, ohm)."""
    rows = []
    for e in model.elements:
        if e.kind != "earthing":
            continue
        for j, x in enumerate(e.nodes):
            if x >= 0:
                y = e.yprim[j, j]
                rows.append((e.name, str(model.node_bus[x]), model.nodes[x], float((1.0 / y).real) if y else np.inf))
    return pd.DataFrame(rows, columns=["element", "bus", "node", "r_ohm"])


def phase_labels(model: FeederModel) -> list[str]:
    """Per customer, the network it is on and its traced phases (``transformer.tx:a``): two
    customers are on the same phase exactly when their labels are equal (same-phase-first
    matching)."""
    return [f"{model.groups[int(model.node_group[c.phase_nodes[0]])]}:{c.phase_letters}" for c in model.customers]
