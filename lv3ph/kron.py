"""Kron reduction of a four-wire feeder to the classic three-wire model (a named transformation).

:func:`kron_reduce` writes an OpenDSS model of a compiled four-wire feeder in which the
neutral is assumed to be at earth potential at every node, the standard three-wire
("Kron-reduced") model of a multi-earthed feeder:

* every Line's series impedance ``Z = inv(-Y12)`` (``Y12`` the off-diagonal block of its
  primitive admittance; equal to ``inv(Y11)`` when the line has no shunt capacitance) is
  reduced onto its phase conductors, ``Z_pp - Z_pn Z_nn^-1 Z_np``, and written in ohm as
  ``RMatrix``/``XMatrix`` with ``Length=1 Units=none``. The nodal shunt capacitance (if any)
  keeps its phase rows and columns (a conductor at earth potential carries no charge
  current), written as ``CMatrix`` in nF. Conductors that sit on neutral (traced role,
  :mod:`lv3ph.topology`) or earth nodes at both ends are eliminated; the line keeps its ratings, switch and
  enable flags, and nothing else of its original definition (line codes, geometry);
* every other element's connections to neutral-role nodes are moved to earth (``.0``): loads
  and PV systems are connected phase-to-earth, a wye transformer winding is solidly
  earthed, a source's neutral is earth;
* earth electrodes (elements connecting only neutral and earth nodes, e.g. the
  ``Reactor`` electrodes of PME) are dropped, with monitors and meters on them;
* everything else (load shapes, load and PV parameters, transformers' impedances,
  source, meters, monitors, bus coordinates) is unchanged: the model is dumped by
  OpenDSS's own ``save circuit`` and only the lines and bus connections are rewritten.

What the reduction assumes: with the neutral at earth potential at both ends of every
line, the neutral current of a line is ``-Z_nn^-1 Z_np I_p`` (only what the phase currents
induce); the rest of the return current flows in a lossless earth. The neutral's own
losses disappear and the neutral voltage rise of unbalanced feeders is lost. On a
feeder earthed at the transformer only this is *not* the published sequence model
(which keeps the neutral inside Z0): it is the model a three-wire study would build.

The written master starts with a ``!`` header naming the transformation and the source,
and ``kron_reduction.json`` next to it records what was done (PowerModelsDistribution's
habit: named transformations that leave a flag). Results computed on the reduced model
carry ``attrs["transformations"] = "kron_reduce"`` (see :mod:`lv3ph.allocation.audit`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lv3ph.dss import Engine
from lv3ph.errors import ModelError
from lv3ph.model import Element, FeederModel

#: Name of the transformation, stored in attrs of results computed on a reduced model.
TRANSFORMATION = "kron_reduce"
#: One line describing the transformation (attrs ``kron_reduce``).
DESCRIPTION = (
    "lines' series impedance Kron-reduced onto the phase conductors (Z_pp - Z_pn Z_nn^-1 Z_np, "
    "neutral at earth potential at every node); neutral terminals of loads, PV, storage, "
    "transformer windings and sources moved to earth (.0); earth electrodes dropped"
)
MANIFEST = "kron_reduction.json"

# Line properties that define the impedance or connection: replaced by the reduction.
_LINE_REPLACED = {
    "bus1",
    "bus2",
    "phases",
    "linecode",
    "length",
    "units",
    "rmatrix",
    "xmatrix",
    "cmatrix",
    "r1",
    "x1",
    "r0",
    "x0",
    "c1",
    "c0",
    "b1",
    "b0",
    "geometry",
    "spacing",
    "wires",
    "cncables",
    "tscables",
    "earthmodel",
    "rho",
    "like",
    "basefreq",
}
_BUS_KEYS = {"bus1", "bus2", "bus", "buses"}


def kron_matrix(z: np.ndarray, keep: np.ndarray | list[int], eliminate: np.ndarray | list[int]) -> np.ndarray:
    """``Z_kk - Z_ke Z_ee^-1 Z_ek``: the impedance seen by conductors ``keep`` when the
    conductors ``eliminate`` are at zero voltage drop (earthed at both ends)."""
    keep = np.asarray(keep, dtype=int)
    elim = np.asarray(eliminate, dtype=int)
    zkk = z[np.ix_(keep, keep)]
    if elim.size == 0:
        return zkk.copy()
    return zkk - z[np.ix_(keep, elim)] @ np.linalg.solve(z[np.ix_(elim, elim)], z[np.ix_(elim, keep)])


def line_impedance(e: Element) -> tuple[np.ndarray, np.ndarray]:
    """Series impedance (ohm) and total nodal shunt admittance (S) of a two-terminal line.

    From the primitive admittance ``[[Y11, Y12], [Y21, Y22]]`` of the pi model:
    ``Z = inv(-Y12)``, shunt ``2 (Y11 + Y12)`` (half at each end).
    """
    if e.n_terminals != 2:
        raise ModelError(f"{e.name} has {e.n_terminals} terminals; a line has 2")
    k = e.n_conductors
    y11, y12 = e.yprim[:k, :k], e.yprim[:k, k:]
    z = np.linalg.inv(-y12)
    return (z + z.T) / 2, 2 * (y11 + y12)


@dataclass
class KronReport:
    """What :func:`kron_reduce` did (also written to ``kron_reduction.json``)."""

    source: str
    transformation: str = TRANSFORMATION
    description: str = DESCRIPTION
    lines_reduced: int = 0
    conductors_eliminated: int = 0
    connections_earthed: int = 0
    dropped: list[str] = field(default_factory=list)


def _tokens(text: str) -> list[str]:
    """Split an OpenDSS command into words, keeping ``[...]``, ``(...)``, ``{...}`` and quotes whole."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        j, depth, quote = i, 0, ""
        while j < n:
            c = text[j]
            if quote:
                if c == quote:
                    quote = ""
            elif c in "\"'":
                quote = c
            elif c in "([{":
                depth += 1
            elif c in ")]}":
                depth -= 1
            elif c.isspace() and depth <= 0:
                break
            j += 1
        out.append(text[i:j])
        i = j
    return out


def _earth_neutrals(spec: str, neutrals: set[str]) -> tuple[str, int]:
    """``bus.1.4`` -> ``bus.1.0`` when node ``bus.4`` is in ``neutrals`` (lower-case node
    names of the neutral-role nodes): neutrals go to earth. Returns (spec, changed)."""
    name, *terms = spec.split(".")
    changed = 0
    out = []
    for t in terms:
        if t.strip().isdigit() and f"{name.strip().lower()}.{int(t)}" in neutrals:
            out.append("0")
            changed += 1
        else:
            out.append(t)
    return ".".join([name, *out]), changed


def _map_bus_value(value: str, neutrals: set[str]) -> tuple[str, int]:
    v = value.strip()
    if v[:1] in "[(\"'{":
        inner = v[1:-1]
        items = [x for x in inner.replace(",", " ").split() if x]
        mapped = [_earth_neutrals(x, neutrals) for x in items]
        return "[" + ", ".join(m for m, _ in mapped) + "]", sum(c for _, c in mapped)
    return _earth_neutrals(v, neutrals)


def _fmt_lower(m: np.ndarray) -> str:
    rows = [" ".join(f"{m[i, j]:.17g}" for j in range(i + 1)) for i in range(m.shape[0])]
    return "[" + " | ".join(rows) + "]"


def _is_neutral_or_earth(model: FeederModel, node: int) -> bool:
    return node < 0 or model.is_neutral(node)


def _reduced_line(model: FeederModel, e: Element, kept_props: list[str], frequency: float) -> tuple[str, int]:
    """The ``New Line`` command of the reduced line and the number of eliminated conductors."""
    k = e.n_conductors
    n1, n2 = e.nodes[:k], e.nodes[k:]
    elim = [j for j in range(k) if _is_neutral_or_earth(model, int(n1[j])) and _is_neutral_or_earth(model, int(n2[j]))]
    keep = [j for j in range(k) if j not in elim]
    z, ysh = line_impedance(e)
    zr = kron_matrix(z, keep, elim)
    c_nf = ysh.imag[np.ix_(keep, keep)] / (2 * np.pi * frequency) * 1e9
    c_nf = (c_nf + c_nf.T) / 2

    def spec(bus: str, nodes: np.ndarray) -> str:
        terms = [str(int(model.node_terminal[nodes[j]])) if nodes[j] >= 0 else "0" for j in keep]
        return ".".join([bus, *terms])

    name = e.name.split(".", 1)[1]
    words = [
        f'New "Line.{name}"',
        *kept_props,
        f"Bus1={spec(e.buses[0], n1)}",
        f"Bus2={spec(e.buses[1], n2)}",
        f"Phases={len(keep)}",
        f"RMatrix={_fmt_lower(zr.real)}",
        f"XMatrix={_fmt_lower(zr.imag)}",
        f"CMatrix={_fmt_lower(c_nf)}",
        "Length=1",
        "Units=none",
    ]
    return " ".join(words), len(elim)


def _dropped_elements(model: FeederModel) -> set[str]:
    """Earth electrodes and anything else touching only neutral and earth nodes."""
    out = {e.name for e in model.elements if e.kind == "earthing"}
    for e in model.elements:
        if all(_is_neutral_or_earth(model, int(n)) for n in e.nodes):
            out.add(e.name)
    for name, nodes in model.orphan_devices.items():
        if all(_is_neutral_or_earth(model, int(n)) for n in nodes):
            out.add(name)
    return out


def _transform_line(
    text: str,
    model: FeederModel,
    lines: dict[str, Element],
    dropped: set[str],
    frequency: float,
    report: KronReport,
    neutrals: set[str],
) -> str | None:
    """Transform one command of a ``save circuit`` dump; None drops it."""
    words = _tokens(text)
    if len(words) < 2 or words[0].lower() not in ("new", "edit"):
        return text
    obj = words[1].strip("\"'")
    if obj.lower().startswith("object="):
        obj = obj.split("=", 1)[1].strip("\"'")
    full = obj.lower()
    if full in dropped:
        report.dropped.append(full)
        return None
    props = words[2:]
    keyed = [(p.split("=", 1)[0].strip().lower(), p) if "=" in p else ("", p) for p in props]
    cls = full.split(".", 1)[0]
    if cls in ("monitor", "energymeter"):
        for key, p in keyed:
            if key == "element" and p.split("=", 1)[1].strip("\"'").lower() in dropped:
                report.dropped.append(full)
                return None
        return text
    if cls == "line" and full in lines and words[0].lower() == "new":
        kept = [p for key, p in keyed if key not in _LINE_REPLACED]
        line, eliminated = _reduced_line(model, lines[full], kept, frequency)
        report.lines_reduced += 1
        report.conductors_eliminated += eliminated
        return line
    out = words[:2]
    for key, p in keyed:
        if key in _BUS_KEYS:
            value, changed = _map_bus_value(p.split("=", 1)[1], neutrals)
            report.connections_earthed += changed
            out.append(f"{p.split('=', 1)[0]}={value}")
        else:
            out.append(p)
    return " ".join(out)


def kron_reduce(
    source: Engine | str | Path,
    out_dir: str | Path,
    *,
    model: FeederModel | None = None,
    vmaxpu: float | None = None,
    verify: bool = True,
) -> Path:
    """Write the Kron-reduced three-wire model of a four-wire feeder; return its master file.

    Args:
        source: a compiled :class:`~lv3ph.dss.Engine` (its current state is reduced,
            including electrodes or PV added after compiling) or a master file path.
        out_dir: folder to write (created; files of the same name are overwritten).
        model: the engine's extracted model (extracted if None).
        vmaxpu: as :meth:`Engine.compile`, only when ``source`` is a path.
        verify: compile the written model in a fresh engine and check that no neutral
            node is left.

    Returns:
        Path of ``Master.dss`` in ``out_dir``. The folder also holds
        ``kron_reduction.json`` (a :class:`KronReport`).

    Raises:
        ModelError: ``out_dir`` is the source model's folder, OpenDSS could not dump the
            circuit, or the written model does not compile or still has neutral nodes.
    """
    out = Path(out_dir).resolve()  # before compiling: OpenDSS changes the working directory
    if isinstance(source, Engine):
        engine = source
    else:
        engine = Engine()
        engine.compile(source, vmaxpu=vmaxpu)
    model = engine.model() if model is None else model
    if (out / "Master.dss").resolve() == Path(model.path).resolve() or out == Path(model.path).resolve().parent:
        raise ModelError(f"kron_reduce would write over the source model in {out}: choose another folder")
    frequency = engine.frequency_hz()
    lines = {e.name: e for e in model.elements if e.kind == "line" and e.name.startswith("line.")}
    dropped = _dropped_elements(model)
    neutrals = {n for i, n in enumerate(model.nodes) if model.is_neutral(i)}
    report = KronReport(source=model.path)
    tmp = Path(tempfile.mkdtemp(prefix="lv3ph_kron_"))
    try:
        dump = engine.save_circuit(tmp / "dump")
        if not (dump / "Master.dss").is_file():
            raise ModelError(f"OpenDSS did not dump {model.path} (save circuit wrote no Master.dss)")
        out.mkdir(parents=True, exist_ok=True)
        top = dump / "Master.dss"
        for f in [*sorted(p for p in dump.rglob("*") if p != top), top]:  # the master last: its header counts
            target = out / f.relative_to(dump)
            if f.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if f.suffix.lower() != ".dss":
                shutil.copyfile(f, target)
                continue
            kept = []
            for raw in f.read_text().splitlines():
                new = _transform_line(raw, model, lines, dropped, frequency, report, neutrals)
                if new is not None:
                    kept.append(new)
            if f == top:
                kept = [
                    f"! Kron-reduced three-wire model written by lv3ph.kron.kron_reduce from {model.path}.",
                    f"! Transformation {TRANSFORMATION}: {DESCRIPTION}.",
                    f"! {report.lines_reduced} lines reduced, {report.conductors_eliminated} neutral conductors "
                    f"eliminated, {len(set(report.dropped))} elements dropped. See {MANIFEST}.",
                    *kept,
                ]
            target.write_text("\n".join(kept) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report.dropped = sorted(set(report.dropped))
    (out / MANIFEST).write_text(json.dumps(report.__dict__, indent=2) + "\n")
    master = out / "Master.dss"
    if verify:
        check = Engine()
        check.compile(master)
        reduced = check.model()
        left = [n for i, n in enumerate(reduced.nodes) if reduced.is_neutral(i)]
        if left:
            raise ModelError(f"Kron-reduced model {master} still has neutral nodes: {', '.join(left[:5])}")
    return master


def read_report(master: str | Path) -> dict:
    """The ``kron_reduction.json`` next to a reduced master ({} if it is not a reduced model)."""
    p = Path(master).parent / MANIFEST
    return json.loads(p.read_text()) if p.is_file() else {}
