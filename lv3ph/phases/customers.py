"""Which customers can change phase, and their profiles (shared by the rebalancing and
switching modules of :mod:`lv3ph.phases`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from lv3ph.dss import Engine
from lv3ph.errors import ProfileError, StudyError, UnknownItemError
from lv3ph.model import Customer, FeederModel
from lv3ph.powerflow import RunSpec
from lv3ph.topology import Connection, phase_nodes_at, service_connections

Objective = Literal["pvur", "neutral"]
Stat = Literal["max", "rms"]


def _index(model: FeederModel, name: str, what: str) -> int:
    idx = model.customer_index()
    key = str(name).lower()
    if key not in idx:
        raise UnknownItemError(f"unknown customer {name!r} in {what}")
    return idx[key]


def _bus_phase_nodes(model: FeederModel, c: Customer) -> dict[int, int]:
    """Traced phase (1..3) -> node at ``c``'s bus, in the group of ``c``'s phase."""
    return phase_nodes_at(model, c.bus, int(model.node_group[c.phase_nodes[0]]))


def _movability(model: FeederModel, *, at_bus: bool = False) -> dict[str, Connection | str]:
    """Per customer: where its phase is selected (:func:`lv3ph.topology.service_connections`)
    or why it cannot move. ``at_bus``: the phase must be selectable at the customer's own bus
    (a phase selector switch needs the three phases there)."""
    out = service_connections(model)
    if at_bus:
        for c in model.customers:
            conn = out[c.name]
            if isinstance(conn, Connection) and conn.element:
                out[c.name] = (
                    f"sits on bus {c.bus}, which does not have all three phases "
                    f"(a phase selector switch needs them; its service cable {conn.element} starts at {conn.bus})"
                )
    return out


def movable_customers(model: FeederModel) -> list[str]:
    """Single-phase customers that can be re-phased: their bus has all three phases, or a
    service cable of their own leads to a bus that has them."""
    conn = _movability(model)
    return [c.name for c in model.customers if isinstance(conn[c.name], Connection)]


def as_built(model: FeederModel) -> dict[str, int]:
    """Traced feeder phase (1..3) of every single-phase customer as the model is built."""
    return {c.name: int(c.phases[0]) for c in model.customers if len(c.phases) == 1}


def _check_movable(model: FeederModel, names: Sequence[str] | None, what: str, *, at_bus: bool = False) -> list[int]:
    """Positions of ``names`` (default: all movable customers), validated (``at_bus``: see
    :func:`_movability`)."""
    conn = _movability(model, at_bus=at_bus)
    if names is None:
        return [i for i, c in enumerate(model.customers) if isinstance(conn[c.name], Connection)]
    if isinstance(names, str):
        raise StudyError(f"{what} must be a list of customer names, got the string {names!r}")
    out: list[int] = []
    for n in names:
        i = _index(model, n, what)
        why = conn[model.customers[i].name]
        if not isinstance(why, Connection):
            raise StudyError(f"customer {model.customers[i].name} in {what} {why}")
        if i not in out:
            out.append(i)
    return out


def choose_switches(
    model: FeederModel,
    *,
    share: float | None = None,
    customers: Sequence[str] | None = None,
    seed: int = 0,
) -> list[str]:
    """The customers fitted with a phase selector switch.

    Either an explicit list ``customers`` (validated: known, single-phase, three phases on
    the bus) or a reproducible random ``share`` (0..1) of the customers that could have
    one (single-phase, three phases on their bus), drawn with
    ``seed`` (``round(share x n)`` customers, in model order).
    """
    if (share is None) == (customers is None):
        raise StudyError("choose_switches: give exactly one of share= or customers=")
    if customers is not None:
        return [model.customers[i].name for i in _check_movable(model, customers, "the switch list", at_bus=True)]
    s = float(share)  # type: ignore[arg-type]
    if not (0.0 <= s <= 1.0):
        raise StudyError(f"switch share must be between 0 and 1, got {share}")
    pool = [model.customers[i].name for i in _check_movable(model, None, "the switch list", at_bus=True)]
    k = round(s * len(pool))
    pick = np.random.default_rng(seed).choice(len(pool), size=k, replace=False) if k else np.zeros(0, int)
    return [pool[i] for i in sorted(int(x) for x in pick)]


def customer_profiles(engine: Engine, model: FeederModel, run: RunSpec) -> tuple[np.ndarray, np.ndarray]:
    """Load set-points ``(kW, kvar)``, each (steps, customers) in ``model.customers`` order.

    From the loads' shapes (:meth:`lv3ph.dss.Engine.load_setpoints`). A switchable
    customer (:func:`make_switchable`) gets the sum of its three phase Loads, which keep
    its shape: outside :func:`run_switching` the as-built phase Load holds the customer's
    kW and the other two 0, so this is the customer's original profile.
    """
    names, kw, kvar = engine.load_setpoints(run.mode, run.stepsize_s, run.start, run.steps)
    pos = {n: i for i, n in enumerate(names)}
    out_kw = np.zeros((run.steps, len(model.customers)))
    out_kvar = np.zeros_like(out_kw)
    for i, c in enumerate(model.customers):
        parts = [d.split(".", 1)[1] for d in c.devices if d.startswith("load.")]
        missing = [p_ for p_ in parts if p_ not in pos]
        if missing or not parts:
            raise UnknownItemError(f"no Load {(missing or [c.name])[0]!r} for customer {c.name} in the engine")
        cols = [pos[p_] for p_ in parts]
        out_kw[:, i] = kw[:, cols].sum(axis=1)
        out_kvar[:, i] = kvar[:, cols].sum(axis=1)
    return out_kw, out_kvar


def _profiles(
    model: FeederModel, load_kw: Any, pv_kw: Any, load_kvar: Any, steps: int | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Net drawn (P, Q) per (step, customer), validated."""
    n = len(model.customers)

    def arr(x: Any, what: str) -> np.ndarray:
        a = np.asarray(x, dtype=float)
        if a.ndim != 2 or a.shape[1] != n or (steps is not None and a.shape[0] != steps):
            want = f"({steps if steps is not None else 'steps'}, {n})"
            raise ProfileError(f"{what} must have shape {want} (steps, customers in model order), got {a.shape}")
        bad = np.argwhere(~np.isfinite(a))
        if bad.size:
            t, c = bad[0]
            raise ProfileError(f"{what} is not finite at step {t} for customer {model.customers[c].name}")
        return a

    p = arr(load_kw, "load_kw")
    if pv_kw is not None:
        pv = arr(pv_kw, "pv_kw")
        if pv.shape != p.shape:
            raise ProfileError(f"pv_kw has shape {pv.shape}, load_kw {p.shape}")
        p = p - pv
    q = None
    if load_kvar is not None:
        q = arr(load_kvar, "load_kvar")
        if q.shape != p.shape:
            raise ProfileError(f"load_kvar has shape {q.shape}, load_kw {p.shape}")
    if p.shape[0] == 0:
        raise ProfileError("load_kw has no steps")
    return p, q
