"""The OpenDSS engine of :mod:`lv3ph.dss`: compile a model, extract it, solve its time modes.

:class:`Engine` (its fast device set-points are in :mod:`lv3ph.dss.devices`) owns one
OpenDSS context and returns the complex node voltages of every step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import opendssdirect
from dss._cffi_api_util import CffiApiUtil
from opendssdirect.OpenDSSDirect import OpenDSSDirect

from lv3ph.dss.devices import DEVICE_CLASSES, Devices
from lv3ph.errors import ConvergenceError, IsolatedCustomerWarning, ModelError, ProfileError, UnknownItemError
from lv3ph.model import ComplexArray, Customer, Element, FeederModel
from lv3ph.modelfiles import model_files
from lv3ph.topology import ISOLATED, NEUTRAL, is_earthing, trace_roles

MODES = ("snap", "daily", "yearly")
#: Steps whose node voltages :meth:`Engine.run` stages before copying them into its result.
_STAGE_STEPS = 64


def parse_stepsize(text: str | float) -> float:
    """Step size in seconds from OpenDSS-style text: ``1m``, ``15m``, ``1h``, ``30s``, ``60``.

    A bare number is seconds (as OpenDSS's ``stepsize``).
    """
    if isinstance(text, int | float):
        value, unit = float(text), "s"
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", str(text).lower())
        if not m:
            raise ModelError(f"stepsize {text!r} is not a duration like 1m, 15m, 1h or 30s")
        value, unit = float(m.group(1)), m.group(2) or "s"
    seconds = value * {"s": 1.0, "m": 60.0, "h": 3600.0}[unit]
    if seconds <= 0:
        raise ModelError(f"stepsize {text!r} must be positive")
    return seconds


def _message(exc: BaseException) -> str:
    """OpenDSS's error text on one line."""
    text = str(exc.args[-1] if exc.args else exc)
    return " ".join(text.split())


def _new_context() -> OpenDSSDirect:
    """A fresh OpenDSS context that returns numpy (complex) arrays."""
    api = opendssdirect.dss._api_util
    lib = api.lib_unpatched
    ctx = api.ffi.gc(lib.ctx_New(), lib.ctx_Dispose)
    engine = OpenDSSDirect(CffiApiUtil(api.ffi, lib, ctx), prefer_lists=False)
    engine.Basic.AdvancedTypes(True)
    engine.Basic.AllowForms(False)
    return engine


#: Var change (pu) under which InvControl's iterations count as settled (:meth:`Engine.add_inverter_control`).
VAR_TOLERANCE = 1e-4


class Engine(Devices):
    """One OpenDSS instance holding one compiled model."""

    def __init__(self) -> None:
        self.dss = _new_context()
        self.path: Path | None = None
        self._controls = False
        #: drop (with a warning) customers no series path reaches, instead of refusing the model
        self.drop_isolated = False

    # ------------------------------------------------------------------ commands
    def command(self, text: str) -> str:
        """Run one OpenDSS command; an OpenDSS error becomes :class:`ModelError`."""
        try:
            out = self.dss.Text.Command(text)
        except opendssdirect.DSSException as exc:
            raise ModelError(f"OpenDSS rejected {text!r}{self._of()}: {_message(exc)}") from None
        return str(out or "")

    def _of(self) -> str:
        """`` of model PATH`` for messages, once a model is compiled."""
        return f" of model {self.path}" if self.path is not None else ""

    def compile(
        self,
        path: str | Path,
        *,
        vmaxpu: float | None = None,
        commands: Sequence[str] = (),
        drop_isolated: bool = False,
    ) -> None:
        """Compile a model file, then run ``commands`` (e.g. earthing electrodes).

        The model's monitors and energy meters are disabled (lv3ph does not read them).

        Args:
            path: the OpenDSS master file.
            vmaxpu: if given, ``batchedit load..* vmaxpu=<vmaxpu>`` (the IEEE EU LV
                reference needs 1.5: its loads are rated 230 V but sit at 240-252 V).
            commands: further OpenDSS commands run after compiling.
            drop_isolated: :meth:`model` drops customers on isolated nodes with an
                :class:`~lv3ph.errors.IsolatedCustomerWarning` naming them (default: a
                :class:`~lv3ph.errors.ModelError` naming them).
        """
        p = Path(path)
        self.drop_isolated = drop_isolated
        if not p.is_file():
            raise ModelError(f"model file not found: {p}")
        self._controls = False
        model_files(p)  # a Redirect cycle crashes OpenDSS; a missing file is named with its line
        self.path = None
        self.command("clear")
        cwd = os.getcwd()  # OpenDSS moves the process into the model's folder on compile
        try:
            self.dss.Text.Command(f'compile "{p.resolve()}"')
        except opendssdirect.DSSException as exc:
            raise ModelError(f"OpenDSS could not compile {p}: {_message(exc)}") from None
        finally:
            os.chdir(cwd)
        try:
            has_circuit = bool(self.dss.Circuit.Name())
        except opendssdirect.DSSException:
            has_circuit = False
        if not has_circuit:
            raise ModelError(f"{p} defines no circuit")
        self.path = p
        # monitors and energy meters only record; lv3ph reads everything from node voltages,
        # and sampling them costs ~40 % of a step on the IEEE feeder (1810 monitors)
        self.command("batchedit monitor..* enabled=no")
        self.command("batchedit energymeter..* enabled=no")
        if vmaxpu is not None:
            self.command(f"batchedit load..* vmaxpu={vmaxpu}")
        for c in commands:
            self.command(c)
        self.command("set mode=snap")
        self._solve_checked("the initial snapshot")
        self._check_energised()

    def _check_energised(self) -> None:
        """Raise :class:`ModelError` when the solved circuit has no voltage anywhere (OpenDSS
        "converges" to 0 V when its sources run at another frequency than the solution)."""
        d = self.dss
        if d.Circuit.NumNodes() and np.abs(np.asarray(d.Circuit.YNodeVArray())).max() > 0:
            return
        hz = float(d.Solution.Frequency())
        off = []
        for name in d.Vsources.AllNames():
            d.Vsources.Name(name)
            if float(d.Vsources.Frequency()) != hz:
                off.append(f"vsource.{name.lower()} is at {float(d.Vsources.Frequency()):g} Hz")
        why = (
            f": {', '.join(off)} but the solution runs at {hz:g} Hz (is 'set defaultbasefreq' after 'New Circuit'?)"
            if off
            else ": no source drives it"
        )
        raise ModelError(f"OpenDSS solved {self.path} to 0 V at every node{why}")

    def apply(self, commands: Sequence[str]) -> None:
        """Run model edits (e.g. earth electrodes) on the compiled circuit and re-solve it."""
        for c in commands:
            self.command(c)
        self.command("set mode=snap")
        self._solve_checked("the snapshot after model edits")

    def _solve_checked(self, what: str) -> None:
        try:
            self.dss.Solution.Solve()
        except opendssdirect.DSSException as exc:
            raise ConvergenceError(f"OpenDSS failed at {what}{self._of()}: {_message(exc)}") from None
        if not self.dss.Solution.Converged():
            raise ConvergenceError(
                f"OpenDSS did not converge at {what}{self._of()} "
                f"({self.dss.Solution.Iterations()} iterations, max {self.dss.Solution.MaxIterations()})"
            )
        self._check_controls(what)

    def _check_controls(self, what: str) -> None:
        """With inverter controls (:meth:`add_inverter_control`): the control iterations of
        the last solve must have settled before OpenDSS's cap (``maxcontroliter``)."""
        if not self._controls:
            return
        sol = self.dss.Solution
        if sol.ControlIterations() >= sol.MaxControlIterations():
            raise ConvergenceError(
                f"inverter controls did not settle at {what} ({sol.ControlIterations()} control iterations)"
            )

    def add_inverter_control(
        self,
        name: str,
        pv_systems: Sequence[str],
        *,
        volt_var: Sequence[tuple[float, float]] | None = None,
        volt_watt: Sequence[tuple[float, float]] | None = None,
        max_control_iterations: int = 200,
    ) -> None:
        """One OpenDSS ``InvControl`` ``name`` over ``pv_systems`` (PVSystem names).

        ``volt_var``: Q(U) points (voltage pu of the PVSystem's rated kV, reactive power pu
        of its ``kvarMax`` = kVA rating; positive = supplied), mode ``VOLTVAR``,
        ``voltage_curvex_ref=rated``, ``RefReactivePower=VARMAX``. ``volt_watt``: P(U)
        points (voltage pu, active power limit pu of ``Pmpp``), mode ``VOLTWATT``
        (``VoltwattYAxis=PMPPPU``). Both: ``CombiMode=VV_VW``. Every later solve checks that
        the control iterations settled (:class:`~lv3ph.errors.ConvergenceError` otherwise).

        The control iterations stop when the var change is below :data:`VAR_TOLERANCE` pu
        (OpenDSS's default 0.025 pu leaves the result depending on where the iterations
        started, i.e. on what was solved before: 0.04 kvar on a 4.4 kVA inverter); with no
        hysteresis and no averaging window the converged state is then a function of the
        step alone, so steps can be solved in any order.
        """
        if not pv_systems or (volt_var is None and volt_watt is None):
            raise ModelError("add_inverter_control: give PVSystems and a volt-var and/or a volt-watt curve")
        cmds = []

        def curve(cname: str, points: Sequence[tuple[float, float]]) -> str:
            xs = " ".join(f"{x:g}" for x, _ in points)
            ys = " ".join(f"{y:g}" for _, y in points)
            return f"New XYcurve.{cname} npts={len(points)} xarray=[{xs}] yarray=[{ys}]"

        ders = " ".join(f"PVSystem.{n}" for n in pv_systems)
        opts = [f"DERList=[{ders}]", "voltage_curvex_ref=rated", f"VarChangeTolerance={VAR_TOLERANCE:g}"]
        if volt_var is not None:
            cmds.append(curve(f"{name}_vv", volt_var))
            opts += [f"vvc_curve1={name}_vv", "RefReactivePower=VARMAX"]
        if volt_watt is not None:
            cmds.append(curve(f"{name}_vw", volt_watt))
            opts += [f"voltwatt_curve={name}_vw", "VoltwattYAxis=PMPPPU"]
        if volt_var is not None and volt_watt is not None:
            opts.append("CombiMode=VV_VW")
        else:
            opts.append("mode=" + ("VOLTVAR" if volt_var is not None else "VOLTWATT"))
        cmds.append(f"New InvControl.{name} " + " ".join(opts))
        cmds.append(f"set maxcontroliter={int(max_control_iterations)}")
        self.apply(cmds)
        self._controls = True

    # ------------------------------------------------------------------ extraction
    def _active(self, name: str) -> None:
        if self.dss.Circuit.SetActiveElement(name) < 0:
            raise UnknownItemError(f"no element {name!r} in the model")

    def _element(self, name: str, kind: str) -> Element:
        ce = self.dss.CktElement
        self._active(name)
        nodes = np.asarray(ce.NodeRef(), dtype=np.int64) - 1
        yprim = np.asarray(ce.YPrim(), dtype=np.complex128).reshape(nodes.size, nodes.size)
        buses = tuple(b.split(".")[0].lower() for b in ce.BusNames())
        n_t, n_c = int(ce.NumTerminals()), int(ce.NumConductors())
        closed = np.array([not ce.IsOpen(t, c) for t in range(1, n_t + 1) for c in range(1, n_c + 1)], dtype=bool)
        kva = float("nan")
        conns: tuple[str, ...] = ()
        if name.split(".", 1)[0].lower() == "transformer":
            tr = self.dss.Transformers
            tr.Name(name.split(".", 1)[1])
            tr.Wdg(1)
            kva = float(tr.kVA())
            wdgs = []
            for w in range(1, int(tr.NumWindings()) + 1):
                tr.Wdg(w)
                wdgs.append("delta" if tr.IsDelta() else "wye")
            conns = tuple(wdgs)
        normamps = float(ce.NormalAmps()) if kind != "source" else float("nan")
        return Element(
            name=name.lower(),
            kind=kind,
            nodes=nodes,
            n_terminals=n_t,
            n_conductors=n_c,
            yprim=yprim,
            normamps=normamps if normamps > 0 else float("nan"),
            kva=kva,
            buses=buses,
            closed=closed,
            conns=conns,
        )

    def pd_element_names(self) -> list[str]:
        """Every power-delivery element: OpenDSS's ``PDElements`` list plus its Fault
        elements, which that list leaves out although they are in the system matrix (a
        Fault from a neutral to earth is an earth electrode)."""
        d = self.dss
        d.Circuit.SetActiveClass("fault")
        return list(d.PDElements.AllNames()) + [f"Fault.{n}" for n in d.ActiveClass.AllNames()]

    def model(self) -> FeederModel:
        """Extract the compiled circuit as a :class:`FeederModel`."""
        d = self.dss
        if self.path is None:
            raise ModelError("no model compiled")
        if d.PDElements.Count() == 0:
            raise ModelError(f"{self.path} has no lines, cables or transformers: nothing to solve")
        nodes = tuple(n.lower() for n in d.Circuit.YNodeOrder())
        node_bus = np.array([n.rsplit(".", 1)[0] for n in nodes])
        node_terminal = np.array([int(n.rsplit(".", 1)[1]) for n in nodes], dtype=np.int64)
        raw = []
        for name in self.pd_element_names():
            self._active(name)
            if d.CktElement.Enabled():
                raw.append(self._element(name, "other"))
        sources = tuple(self._element(f"vsource.{n}", "source") for n in d.Vsources.AllNames())
        roles = trace_roles(nodes, raw, sources)
        elements = [_classified(e, roles.role) for e in raw]
        customers, orphans = self._customers(roles.role, nodes)
        buses = tuple(b.lower() for b in d.Circuit.AllBusNames())
        kv = np.zeros(len(buses))
        for i, b in enumerate(buses):
            d.Circuit.SetActiveBus(b)
            kv[i] = d.Bus.kVBase()
        return FeederModel(
            path=str(self.path),
            nodes=nodes,
            node_bus=node_bus,
            node_terminal=node_terminal,
            buses=buses,
            bus_kv_base=kv,
            elements=tuple(elements),
            sources=sources,
            customers=customers,
            orphan_devices=orphans,
            node_role=roles.role,
            node_group=roles.group,
            groups=roles.groups,
        )

    def _customers(
        self, role: np.ndarray, node_names: tuple[str, ...]
    ) -> tuple[tuple[Customer, ...], dict[str, np.ndarray]]:
        """Customers by the traced roles of their Load's nodes (phases sorted a, b, c; the
        first neutral-role node is the neutral, else earth)."""
        d = self.dss
        customers: list[Customer] = []
        if d.Loads.Count() == 0:
            return (), self._orphans(set())
        stranded: list[str] = []
        d.Loads.First()
        while True:
            name = d.Loads.Name().lower()
            ce = d.CktElement
            if ce.Enabled():
                refs = np.asarray(ce.NodeRef(), dtype=np.int64) - 1
                on = [int(x) for x in dict.fromkeys(refs.tolist()) if x >= 0]
                ph_nodes = sorted((x for x in on if 1 <= role[x] <= 3), key=lambda x: int(role[x]))
                neutral = [x for x in on if role[x] == NEUTRAL]
                bus = ce.BusNames()[0].split(".")[0].lower()
                if not ph_nodes or any(role[x] == ISOLATED for x in on):
                    where = ", ".join(node_names[x] for x in on if role[x] == ISOLATED) or "no phase conductor"
                    stranded.append(f"load.{name} (bus {bus}: {where})")
                else:
                    customers.append(
                        Customer(
                            name=name,
                            bus=bus,
                            phases=tuple(int(role[x]) for x in ph_nodes),
                            phase_nodes=np.array(ph_nodes, dtype=np.int64),
                            neutral_node=neutral[0] if neutral else -1,
                            devices=(f"load.{name}",),
                            kv=float(d.Loads.kV()),
                            vminpu=float(d.Loads.Vminpu()),
                            vmaxpu=float(d.Loads.Vmaxpu()),
                            model=int(d.Loads.Model()),
                        )
                    )
            if not d.Loads.Next():
                break
        if stranded:
            what = f"{len(stranded)} customer(s) on no traced phase (isolated nodes: no series path from a source)"
            if not self.drop_isolated:
                raise ModelError(f"{self.path}: {what}: {'; '.join(stranded)} (drop them with --drop-isolated)")
            warnings.warn(f"{self.path}: dropped {what}: {'; '.join(stranded)}", IsolatedCustomerWarning, stacklevel=3)
        owned: set[str] = set()
        result = []
        devices = self._devices()
        for c in customers:
            mine = [
                n
                for n, (bus, nodes) in devices.items()
                if n not in owned and bus == c.bus and set(nodes[nodes >= 0]) <= set(c.phase_nodes) | {c.neutral_node}
            ]
            owned.update(mine)
            result.append(Customer(**{**c.__dict__, "devices": c.devices + tuple(mine)}))
        return tuple(result), self._orphans(owned)

    def _devices(self) -> dict[str, tuple[str, np.ndarray]]:
        """Non-load power-conversion devices: name -> (bus, node indices)."""
        d = self.dss
        out: dict[str, tuple[str, np.ndarray]] = {}
        for cls in DEVICE_CLASSES:
            d.Circuit.SetActiveClass(cls)
            for n in d.ActiveClass.AllNames():
                full = f"{cls}.{n.lower()}"
                self._active(full)
                if d.CktElement.Enabled():
                    refs = np.asarray(d.CktElement.NodeRef(), dtype=np.int64) - 1
                    out[full] = (d.CktElement.BusNames()[0].split(".")[0].lower(), refs)
        return out

    def _orphans(self, owned: set[str]) -> dict[str, np.ndarray]:
        return {n: nodes for n, (_, nodes) in self._devices().items() if n not in owned}

    # ------------------------------------------------------------------ time series
    def check_profiles(self, mode: str, stepsize_s: float, start: int, steps: int, *, repeat: bool = False) -> None:
        """Raise :class:`ProfileError` if a load shape used by the run has NaN values or
        does not cover the run (yearly mode: ``(start + steps - 1) * stepsize`` must not
        pass the end of the shape, where OpenDSS would silently wrap around).

        ``repeat=True`` allows shapes shorter than the run: OpenDSS then cycles them (a
        1440-point 1-minute shape repeats every day)."""
        if mode == "snap":
            return
        d = self.dss
        used: dict[str, str] = {}
        for cls, getter in (("load", "Loads"), ("pvsystem", "PVsystems")):
            api = getattr(d, getter)
            if api.Count() == 0:
                continue
            api.First()
            while True:
                shape = (
                    (api.daily() if cls == "pvsystem" else api.Daily())
                    if mode == "daily"
                    else (api.yearly() if cls == "pvsystem" else api.Yearly())
                )
                if not shape and mode == "yearly":
                    shape = api.daily() if cls == "pvsystem" else api.Daily()
                if shape:
                    used.setdefault(shape.lower(), f"{cls}.{api.Name()}")
                if not api.Next():
                    break
        end_h = (start + steps - 1) * stepsize_s / 3600.0
        for shape, user in sorted(used.items()):
            d.LoadShape.Name(shape)
            mult = np.asarray(d.LoadShape.PMult(), dtype=float)
            npts = int(d.LoadShape.Npts())
            if mult.size != npts:
                raise ProfileError(f"load shape {shape} (used by {user}) has {mult.size} values, npts={npts}")
            bad = np.nonzero(~np.isfinite(mult))[0]
            if bad.size:
                raise ProfileError(f"load shape {shape} (used by {user}) has NaN at point {bad[0] + 1}")
            interval_h = float(d.LoadShape.HrInterval())
            if not repeat and mode == "yearly" and interval_h > 0 and end_h > npts * interval_h + 1e-9:
                raise ProfileError(
                    f"load shape {shape} (used by {user}) covers {npts * interval_h:g} h "
                    f"but the run ends at {end_h:g} h (repeat_profiles / --repeat-profiles cycles it)"
                )

    def run(
        self,
        mode: str,
        stepsize_s: float,
        start: int,
        steps: int,
        *,
        before_step: Callable[[int], None] | None = None,
        measure: Sequence[str] = (),
        on_step: Callable[[int], None] | None = None,
        repeat_profiles: bool = False,
    ) -> tuple[ComplexArray, dict[str, ComplexArray]]:
        """Solve ``steps`` steps of OpenDSS's own time mode and return node voltages.

        Step ``k`` (``start <= k < start + steps``) is solved at time ``k * stepsize_s``
        (OpenDSS advances the clock before each solve), so ``start=566, steps=1`` at
        60 s is minute 566 of the day.

        Every call starts OpenDSS's iteration afresh (setting the mode resets the solution),
        so a run solved in several calls gives, call by call, the same numbers bit for bit
        whatever was solved before in this engine or in another one (resuming and splitting
        runs rely on it). Within a call each step starts from the previous step's solution.

        Args:
            mode: ``snap`` (one solve at base values, ``steps`` must be 1), ``daily`` or ``yearly``.
            stepsize_s: step size in seconds.
            start: first step index (>= 1).
            steps: number of steps.
            before_step: called with the step index before each solve (set device kW
                through the fast API here; never text edits).
            measure: elements whose terminal currents are read at every step (the
                rare customers that share a node with another one).
            on_step: called with the step index after each solve (progress).
            repeat_profiles: allow load shapes shorter than the run (OpenDSS cycles them).

        Returns:
            ``(V, I)``: complex node voltages in V, node-major, shape
            (n_nodes, steps), rows in ``YNodeOrder``; and per measured element its terminal-1 currents in A,
            shape (steps, conductors).

        Raises:
            ConvergenceError: naming the step that did not converge.
        """
        d = self.dss
        if mode not in MODES:
            raise ModelError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
        if steps < 1 or start < (0 if mode == "snap" else 1):
            raise ModelError(f"start={start}, steps={steps}: need start >= 1 and steps >= 1")
        if mode == "snap" and steps != 1:
            raise ModelError("mode snap solves one step: use --steps 1")
        self.check_profiles(mode, stepsize_s, start, steps, repeat=repeat_profiles)
        n = int(d.Circuit.NumNodes())
        volts = np.empty((n, steps), dtype=np.complex128)
        measured = {}
        for name in measure:
            self._active(name)
            measured[name] = np.empty((steps, int(d.CktElement.NumConductors())), dtype=np.complex128)
        self.set_mode(mode, stepsize_s)
        self.set_clock(mode, stepsize_s, start)
        solve, converged, read_v = d.Solution.Solve, d.Solution.Converged, d.Circuit.YNodeVArray
        # each step's voltages go into a step-major staging block, copied into ``volts`` a block
        # at a time (IEEE twin, 3627 nodes: 27 us per step instead of 44 us for a column per step)
        stage = np.empty((min(steps, _STAGE_STEPS), n), dtype=np.complex128)
        for i in range(steps):
            k = start + i
            if before_step is not None:
                before_step(k)
            try:
                solve()
            except opendssdirect.DSSException as exc:
                raise ConvergenceError(f"OpenDSS failed at step {k}{self._of()}: {_message(exc)}") from None
            if not converged():
                raise ConvergenceError(f"OpenDSS did not converge at step {k} (time {k * stepsize_s:g} s){self._of()}")
            self._check_controls(f"step {k}")
            j = i % stage.shape[0]
            stage[j] = read_v()
            if j == stage.shape[0] - 1 or i == steps - 1:
                volts[:, i - j : i + 1] = stage[: j + 1].T
            for name, arr in measured.items():
                d.Circuit.SetActiveElement(name)
                arr[i] = np.asarray(d.CktElement.Currents()).ravel(order="F")[: arr.shape[1]]
            if on_step is not None:
                on_step(k)
        return volts, measured

    def set_mode(self, mode: str, stepsize_s: float) -> None:
        """Put OpenDSS in ``mode`` solving one step of ``stepsize_s`` seconds per solve."""
        if mode == "snap":
            self.command("set mode=snap")
        else:
            self.command(f"set mode={mode} number=1 stepsize={stepsize_s:g}s")

    def set_clock(self, mode: str, stepsize_s: float, k: int) -> None:
        """Set the clock so that the next solve is step ``k`` (time modes advance first)."""
        if mode == "snap":
            return
        t0 = (k - 1) * stepsize_s
        self.dss.Solution.Hour(int(t0 // 3600))
        self.dss.Solution.Seconds(t0 - 3600 * (t0 // 3600))

    def solve_step(
        self, mode: str, stepsize_s: float, k: int, before_step: Callable[[int], None] | None = None
    ) -> None:
        """Re-solve step ``k`` (mode already set with :meth:`set_mode`); checks convergence."""
        self.set_clock(mode, stepsize_s, k)
        if before_step is not None:
            before_step(k)
        self._solve_checked(f"step {k}")

    @contextlib.contextmanager
    def tolerance(self, tolerance: float, min_iterations: int = 100) -> Iterator[None]:
        """Solve with a tighter convergence tolerance (pu) inside the block, then restore."""
        sol = self.dss.Solution
        old_tol, old_maxit = sol.Convergence(), sol.MaxIterations()
        sol.Convergence(tolerance)
        sol.MaxIterations(max(int(old_maxit), min_iterations))
        try:
            yield
        finally:
            sol.Convergence(old_tol)
            sol.MaxIterations(old_maxit)

    def rebuild_matrix(self) -> None:
        """Rebuild the system matrix now, in snap mode: every Load's admittance from its base
        kW/kvar (load shapes at 1), by one solve without control actions (its solution is not
        used: every run starts by setting its mode). The following time-mode solves keep this
        matrix until the next text edit; API edits (kW, kvar, sizes, load shapes) do not touch it."""
        self.command("set mode=snap")
        try:
            self.dss.Solution.SolveNoControl()
        except opendssdirect.DSSException as exc:
            raise ConvergenceError(f"OpenDSS failed at the matrix rebuild{self._of()}: {_message(exc)}") from None

    def frequency_hz(self) -> float:
        """The circuit's base frequency, Hz."""
        return float(self.dss.Solution.Frequency())

    def save_circuit(self, folder: Path) -> Path:
        """Dump the compiled circuit (its present state) as OpenDSS text into ``folder``."""
        self.command(f'save circuit dir="{folder}"')
        return folder

    # ------------------------------------------------------------------ fast device edits
    def line_lengths_km(self) -> dict[str, float]:
        """Length of every Line in km (``line.<name>`` lower case)."""
        per_km = {0: 1.0, 1: 1.609344, 2: 0.3048, 3: 1.0, 4: 1e-3, 5: 0.3048e-3, 6: 0.0254e-3, 7: 1e-5, 8: 1e-6}
        lines = self.dss.Lines
        out: dict[str, float] = {}
        if lines.Count() == 0:
            return out
        lines.First()
        while True:
            out[f"line.{lines.Name().lower()}"] = float(lines.Length()) * per_km.get(int(lines.Units()), 1.0)
            if not lines.Next():
                break
        return out

    def bus_coordinates(self) -> dict[str, tuple[float, float]]:
        """Coordinates of every bus that has them (OpenDSS ``BusCoords``/``LatLongCoords``),
        lower-case bus name -> (x, y) in the model's own units; buses without are left out."""
        d = self.dss
        out: dict[str, tuple[float, float]] = {}
        for name in d.Circuit.AllBusNames():
            d.Circuit.SetActiveBus(name)
            if d.Bus.Coorddefined():
                out[name.lower()] = (float(d.Bus.X()), float(d.Bus.Y()))
        return out

    # ------------------------------------------------------------------ OpenDSS's own numbers (references)
    def element_losses_w(self) -> dict[str, complex]:
        """OpenDSS's own losses (W + j var) of every enabled PD element, at the last solve."""
        out = {}
        for name in self.pd_element_names():
            self._active(name)
            if self.dss.CktElement.Enabled():
                out[name.lower()] = complex(self.dss.CktElement.Losses())
        return out

    def element_phase_losses_kw(self, name: str) -> np.ndarray:
        """OpenDSS's per-conductor losses (kW + j kvar) of one element, last solve."""
        self._active(name)
        return np.asarray(self.dss.CktElement.PhaseLosses(), dtype=np.complex128)

    def element_currents(self, name: str) -> np.ndarray:
        """OpenDSS's terminal currents (A) of one element, terminal-major, last solve."""
        self._active(name)
        return np.asarray(self.dss.CktElement.Currents()).ravel(order="F")

    def element_powers_kva(self, name: str) -> np.ndarray:
        """OpenDSS's terminal powers (kW + j kvar into the element) of one element, last solve."""
        self._active(name)
        return np.asarray(self.dss.CktElement.Powers()).ravel(order="F")

    def node_voltages(self) -> ComplexArray:
        """Complex node voltages (V) of the last solve, in ``YNodeOrder``."""
        return np.asarray(self.dss.Circuit.YNodeVArray(), dtype=np.complex128)


def _classified(e: Element, role: np.ndarray) -> Element:
    """``e`` with its kind from its class and the traced roles: ``earthing`` for an earth
    electrode (:func:`lv3ph.topology.is_earthing`), else ``transformer``, ``line`` or ``other``."""
    if is_earthing(e, role):
        return dataclasses.replace(e, kind="earthing", normamps=float("nan"))
    return dataclasses.replace(e, kind=e.cls if e.cls in ("transformer", "line") else "other")
