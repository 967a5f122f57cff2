"""Fast device access of an :class:`~lv3ph.dss.Engine`: set-points, sizes and load shapes
through OpenDSS's API (no text edits, so the factorised system matrix is kept), and reads of
Loads' and PVSystems' settings. Part of :mod:`lv3ph.dss`, the only package that talks to
OpenDSS; :class:`Devices` is a base of :class:`~lv3ph.dss.Engine`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from opendssdirect.OpenDSSDirect import OpenDSSDirect

from lv3ph.errors import ProfileError, UnknownItemError
from lv3ph.model import KVA_PER_KWP, ComplexArray

#: OpenDSS classes of customer devices (PV, batteries, generators).
DEVICE_CLASSES = ("pvsystem", "storage", "generator")


class Devices:
    """Device set-points and settings of the engine's OpenDSS context ``dss``."""

    dss: OpenDSSDirect

    def _pv_indices(self, names: Sequence[str]) -> list[int]:
        """API indices of PVSystems ``names`` (:class:`~lv3ph.errors.UnknownItemError` if one is missing)."""
        return _indices(self.dss.PVsystems, names, "PVSystem")

    def pv_powers_kw(self, names: Sequence[str]) -> Callable[[], ComplexArray]:
        """A fast reader of PVSystems' output at the last solve: ``P + jQ`` per PVSystem, kW
        and kvar, generator convention (delivered positive)."""
        pv = self.dss.PVsystems
        idx = self._pv_indices(names)

        def read() -> ComplexArray:
            out = np.empty(len(idx), dtype=np.complex128)
            for j, i in enumerate(idx):
                pv.Idx(i)
                out[j] = complex(pv.kW(), pv.kvar())
            return out

        return read

    def load_base(self, name: str) -> tuple[float, float, float]:
        """A Load's base ``(kW, kvar, PF)`` (before load shapes)."""
        loads = self.dss.Loads
        loads.Name(name)
        return float(loads.kW()), float(loads.kvar()), float(loads.PF())

    def set_load_base(self, name: str, kw: float, *, kvar: float | None = None, pf: float | None = None) -> None:
        """Set a Load's base kW and then its kvar or PF through the fast API."""
        loads = self.dss.Loads
        loads.Name(name)
        loads.kW(float(kw))
        if pf is not None:
            loads.PF(float(pf))
        if kvar is not None and abs(float(loads.kvar()) - kvar) > 1e-9 * max(1.0, abs(kvar)):
            loads.kvar(float(kvar))

    def load_connection(self, name: str) -> tuple[int, float, float]:
        """``(first terminal number of bus1, kW, kvar)`` of a Load, enabled or not."""
        d = self.dss
        d.Loads.Name(name)
        if d.Loads.Name().lower() != name.lower():
            raise UnknownItemError(f"no Load {name!r} in the model")
        bus = d.CktElement.BusNames()[0].split(".")
        return (int(bus[1]) if len(bus) > 1 else 1), float(d.Loads.kW()), float(d.Loads.kvar())

    def load_band(self, name: str) -> tuple[float, float, float]:
        """A Load's ``(kV, vminpu, vmaxpu)``: outside ``vminpu``-``vmaxpu`` of its kV OpenDSS
        turns its constant power into a constant impedance."""
        loads = self.dss.Loads
        loads.Name(name)
        return float(loads.kV()), float(loads.Vminpu()), float(loads.Vmaxpu())

    def disabled_devices(self, buses: set[str]) -> list[str]:
        """Disabled PV/storage/generator elements on ``buses`` (full names, lower case)."""
        d = self.dss
        out = []
        for cls in DEVICE_CLASSES:
            d.Circuit.SetActiveClass(cls)
            for n in d.ActiveClass.AllNames():
                d.Circuit.SetActiveElement(f"{cls}.{n}")
                if not d.CktElement.Enabled() and d.CktElement.BusNames()[0].split(".")[0].lower() in buses:
                    out.append(f"{cls}.{n.lower()}")
        return out

    def pq_setter(self, names: Sequence[str]) -> Callable[[int, float, float], None]:
        """A fast per-step setter of Loads' kW and kvar by position in ``names``."""
        loads = self.dss.Loads
        idx = _indices(loads, names, "Load")

        def set_pq(i: int, kw: float, kvar: float) -> None:
            loads.Idx(idx[i])
            loads.kW(kw)
            loads.kvar(kvar)

        return set_pq

    def enabled_counts(self, classes: Sequence[str]) -> dict[str, int]:
        """How many enabled elements of each OpenDSS class (lower-case names) the circuit has."""
        d = self.dss
        out = {}
        for cls in classes:
            d.Circuit.SetActiveClass(cls)
            n = 0
            for name in d.ActiveClass.AllNames():
                d.Circuit.SetActiveElement(f"{cls}.{name}")
                n += int(bool(d.CktElement.Enabled()))
            out[cls] = n
        return out

    def setter(self, cls: str, names: Sequence[str]) -> Callable[[np.ndarray], None]:
        """A fast per-step setter of ``kW`` for Loads or Generators ``names`` (no text edits).

        The returned function takes one kW value per name.
        """
        api = {"load": self.dss.Loads, "generator": self.dss.Generators}[cls]
        idx = []
        for n in names:
            api.Name(n)
            idx.append(int(api.Idx()))

        def set_kw(kw: np.ndarray) -> None:
            for i, p in zip(idx, kw, strict=True):
                api.Idx(i)
                api.kW(float(p))

        return set_kw

    def loadshape_setter(self, names: Sequence[str]) -> Callable[[int, np.ndarray, np.ndarray | None], None]:
        """A setter of load shapes' multipliers by position in ``names`` through the API:
        ``(i, pmult, qmult)`` replaces shape ``i``'s P multipliers (and Q multipliers unless
        None), one value per point; the next solve uses them, the system matrix is kept."""
        shapes = self.dss.LoadShape
        idx = _indices(shapes, names, "LoadShape")

        def set_mult(i: int, pmult: np.ndarray, qmult: np.ndarray | None) -> None:
            shapes.Idx(idx[i])
            shapes.PMult(np.ascontiguousarray(pmult, dtype=np.float64))
            if qmult is not None:
                shapes.QMult(np.ascontiguousarray(qmult, dtype=np.float64))

        return set_mult

    def pv_size_setter(self, names: Sequence[str], *, var_limits: bool = False) -> Callable[[int, float], None]:
        """A fast setter of one PVSystem's size by position in ``names``: ``Pmpp`` = kWp and
        ``kVARated`` = 1.1 x kWp (API only: the system matrix is kept).

        ``var_limits``: also set ``kvarMax`` and ``kvarMaxAbs`` to the new kVA (an inverter
        control's reference reactive power, ``RefReactivePower=VARMAX``). OpenDSS has no API
        for them, so this is a text edit: use it per candidate, not per step.
        """
        pv = self.dss.PVsystems
        idx = self._pv_indices(names)
        text = self.dss.Text.Command
        lowered = [n.lower() for n in names]

        def set_one(i: int, size: float) -> None:
            pv.Idx(idx[i])
            pv.Pmpp(float(size))
            pv.kVARated(KVA_PER_KWP * float(size))
            if var_limits:
                kva = KVA_PER_KWP * float(size)
                text(f"PVSystem.{lowered[i]}.kvarmax={kva:.9g} kvarmaxabs={kva:.9g}")

        return set_one

    def pv_setter(self, names: Sequence[str], *, var_limits: bool = False) -> Callable[[np.ndarray], None]:
        """A setter of PVSystems' size: ``Pmpp`` = kWp and ``kVARated`` = 1.1 x kWp
        (``var_limits``: see :meth:`pv_size_setter`); only changed sizes are sent."""
        set_one = self.pv_size_setter(names, var_limits=var_limits)
        last = np.full(len(names), np.nan)

        def set_kwp(kwp: np.ndarray) -> None:
            for i in np.nonzero(~(np.asarray(kwp, dtype=float) == last))[0].tolist():
                set_one(i, float(kwp[i]))
                last[i] = float(kwp[i])

        return set_kwp

    def load_setpoints(
        self, mode: str, stepsize_s: float, start: int, steps: int
    ) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Every Load's set-point per step from its load shape: ``(names, kW, kvar)``.

        ``kW = kW_base x mult(t)`` at ``t = k x stepsize`` (``mult`` is the actual kW when the
        shape has ``useactual=yes``); kvar follows the load's power factor. Shapes are
        evaluated on their own fixed interval, wrapping around as OpenDSS does; a step that
        falls between two points takes the linear interpolation.
        """
        d = self.dss
        names, kws, kvars = [], [], []
        t_h = np.arange(start, start + steps) * stepsize_s / 3600.0
        if d.Loads.Count() == 0:
            return [], np.zeros((steps, 0)), np.zeros((steps, 0))
        d.Loads.First()
        while True:
            name = d.Loads.Name().lower()
            base_kw, base_kvar = float(d.Loads.kW()), float(d.Loads.kvar())
            shape = {"yearly": d.Loads.Yearly() or d.Loads.Daily(), "daily": d.Loads.Daily()}.get(mode, "")
            mult = np.ones(steps)
            if shape:
                d.LoadShape.Name(shape)
                pm = np.asarray(d.LoadShape.PMult(), dtype=float)
                h = float(d.LoadShape.HrInterval())
                if h <= 0:
                    raise ProfileError(f"load shape {shape} (used by load.{name}) has no fixed interval")
                span = pm.size * h
                grid = h * np.arange(1, pm.size + 1)
                mult = np.interp(
                    np.mod(t_h - 1e-9, span) + 1e-9, np.concatenate([[0.0], grid]), np.concatenate([[pm[-1]], pm])
                )
                if d.LoadShape.UseActual():
                    base_kw, base_kvar = 1.0, base_kvar / base_kw if base_kw else 0.0
            names.append(name)
            kws.append(base_kw * mult)
            kvars.append(base_kvar * mult)
            if not d.Loads.Next():
                break
        return names, np.stack(kws, axis=1), np.stack(kvars, axis=1)


def _indices(api: Any, names: Sequence[str], kind: str) -> list[int]:
    """API indices of the ``kind`` elements ``names`` of collection ``api`` (e.g. ``dss.Loads``)."""
    idx = []
    for n in names:
        api.Name(n)
        if api.Name().lower() != n.lower():
            raise UnknownItemError(f"no {kind} {n!r} in the model")
        idx.append(int(api.Idx()))
    return idx
