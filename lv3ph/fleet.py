"""Fleet scale: one job per feeder of a DSO, on Dask, one row of KPIs per feeder.

Which files are feeders
-----------------------
``lv3ph fleet FOLDER`` walks the folder tree (hidden folders skipped). A *master* is an
OpenDSS text file (``.dss`` or ``.txt``) that

* defines a circuit (a ``New Circuit.<name>`` line, comments ignored; read up to its first
  1 MB), and
* is not referenced (Redirect/Compile) by another such file of the tree
  (:func:`lv3ph.modelfiles.model_files`), so a master that redirects a second circuit file
  counts once.

Each master is one feeder, keyed by its folder relative to the fleet folder (posix,
``network_1/Feeder_1``); a folder with several masters (``Master.dss``, ``Master_PME.dss``)
keys each as ``folder/<file stem>``, and a master in the fleet folder itself by its stem.

``lv3ph fleet LIST.csv`` reads the feeders from a CSV instead: column ``model`` (path of
the master, relative to the CSV's folder), optional ``feeder`` (key; default as above,
relative to the models' common folder) and optional per-feeder settings overriding the
command line: ``vmaxpu``, ``pme_ohm``, ``mode``, ``stepsize``, ``start``, ``steps`` (an empty
cell keeps the fleet's value).

Jobs (:data:`JOBS`)
-------------------
* ``info``: wiring, buses, nodes, lines, transformers, customers and customers per phase
  (``customers_a``/``_b``/``_c`` single-phase, ``customers_multiphase``), earth electrodes
  (elements of kind ``earthing``), PV/storage/generators.
* ``snapshot`` (default: OpenDSS ``snap``, one step) and ``window`` (the time options): the
  ``info`` columns plus losses by part (mean over the steps, kW; ``loss_kwh`` over a window),
  neutral and earth share of the losses, worst PVUR/VUF/neutral-to-earth voltage, lowest and
  highest phase-to-neutral voltage at customer buses, ``violations`` (step-items of
  :func:`lv3ph.unbalance.violations`) and ``violation_steps``. ``--save`` also writes each
  feeder's power-flow Dataset to the store.
* ``hosting``: :func:`lv3ph.hosting.hosting_capacity` over the window, ``placements`` seeded
  placements (default 10): min/p5/median/p95/max kWp, censored placements, the most frequent
  binding limit; placements table in the store.
* ``audit``: the loss-allocation audit of the README on every feeder: seeded PV on
  ``pv_share`` of the single-phase customers, a seeded bilateral market with random partners
  (so the contracts are feasible: traded power is what sellers export and buyers import), one
  run over the window, allocation with :data:`AUDIT_METHODS`; per method the contracts'
  charge and the misallocation against exact (:func:`misallocation_pct`: all contracts,
  same-phase and cross-phase); allocation table in the store.

Where results go (``--out``: a local folder or any fsspec URL)
---------------------------------------------------------------
Each worker writes into the store, atomically (temporary name, then renamed):
``feeders/<feeder>/`` with its large outputs and ``done.json`` (its KPI row and a signature
of the job's settings) last. The client then writes ``fleet.parquet`` and ``fleet.csv`` (one
row per feeder, built from the ``done.json`` markers, so a feeder that ran twice -- a retry
after a lost worker -- is still one row), ``fleet_errors.csv`` (``feeder,error``: the one-line
error of each feeder that could not run) and ``fleet.html`` (feeders ranked by one KPI).
``resume=True`` skips feeders whose marker has the same signature; without it old markers of
the listed feeders are removed first.

Clusters
--------
On a local cluster (default, ``workers`` processes) and serially the workers read the model
files in place. With ``scheduler`` (workers started by ``dask worker`` anywhere, no shared
file system assumed) each feeder's files travel with its job (:mod:`lv3ph.modelpack`) and
are unpacked into a temporary folder on the worker. A job whose worker dies is re-run
elsewhere by Dask; a job that raises for a reason outside the feeder (the store is
unreachable) is retried ``retries`` times. Every job runs with BLAS single-threaded.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from hashlib import sha256
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd
import xarray as xr

from lv3ph.errors import Lv3phError, StudyError
from lv3ph.model import FeederModel
from lv3ph.modelpack import ModelPack, local_master, pack_model
from lv3ph.parallel import run_jobs, single_threaded
from lv3ph.powerflow import RunSpec, open_feeder, solve
from lv3ph.unbalance import Limits, unbalance, violations

JOBS: Final[tuple[str, ...]] = ("info", "snapshot", "window", "hosting", "audit")
AUDIT_METHODS: Final[tuple[str, ...]] = ("exact", "kron", "phase-only", "pro-rata")
#: Per-feeder settings a fleet list may give (columns of the CSV).
FEEDER_SETTINGS: Final[tuple[str, ...]] = ("vmaxpu", "pme_ohm", "mode", "stepsize", "start", "steps")
#: KPI the HTML summary ranks by, per job (largest first; ``hosting_*`` smallest first).
RANK_DEFAULT: Final[dict[str, str]] = {
    "info": "customers",
    "snapshot": "vuf_max_pct",
    "window": "neutral_loss_share_pct",
    "hosting": "hosting_median_kw",
    "audit": "phase_only_error_pct",
}
_CIRCUIT = re.compile(r"^\s*new\s+(object\s*=\s*)?circuit\.", re.IGNORECASE)
_SCAN_BYTES: Final[int] = 1 << 20


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class FleetJob:
    """What to run on every feeder (picklable; per-feeder settings override the fields of
    :data:`FEEDER_SETTINGS`).

    ``mode``/``stepsize``/``start``/``steps``: the window of ``window``, ``hosting`` and
    ``audit`` (``snapshot`` always solves one ``snap`` step). ``vmaxpu``, ``pme_ohm``: as
    :func:`lv3ph.powerflow.open_feeder`. ``placements``, ``seed``, ``kwp_range``: hosting
    capacity. ``pv_share``, ``pv_kwp``: PV of the audit (share of single-phase customers, kWp
    range). ``save``: write each feeder's power-flow Dataset (``snapshot``/``window``).
    """

    job: str = "snapshot"
    mode: str = "yearly"
    stepsize: str | float = "1m"
    start: int = 1
    steps: int = 1440
    vmaxpu: float | None = None
    pme_ohm: float | None = None
    limits: Limits = field(default_factory=Limits)
    placements: int = 10
    seed: int = 1
    kwp_range: tuple[float, float] = (3.0, 8.0)
    pv_share: float = 0.4
    pv_kwp: tuple[float, float] = (3.0, 6.0)
    save: bool = False

    def run(self) -> RunSpec:
        """The run of one feeder (``snap``, one step, for the snapshot job)."""
        if self.job == "snapshot":
            return RunSpec.parse("snap", self.stepsize, 1, 1)
        return RunSpec.parse(self.mode, self.stepsize, self.start, self.steps)


@dataclass(frozen=True)
class Feeder:
    """One feeder of the fleet: its key, master file and per-feeder settings."""

    feeder: str
    master: Path
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Task:
    """A feeder's job as sent to a worker (picklable)."""

    feeder: str
    master: str  # relative to the fleet folder, for the table
    source: str | ModelPack
    job: FleetJob
    store: str
    signature: str


@dataclass
class FleetResult:
    """The fleet's table (one row per feeder that ran), errors (``feeder,error``), the
    feeders skipped by ``resume`` and the files written."""

    table: pd.DataFrame
    errors: pd.DataFrame
    skipped: list[str]
    written: list[str]


# ----------------------------------------------------------------------------- finding feeders
def defines_circuit(path: Path) -> bool:
    """True if the OpenDSS file has a ``New Circuit.`` line (comments ignored) in its first MB."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read(_SCAN_BYTES)
    return any(_CIRCUIT.match(line.split("!")[0].split("//")[0]) for line in text.splitlines())


def find_masters(folder: str | Path) -> list[Path]:
    """Every master in the folder tree (module docstring), sorted."""
    from lv3ph.modelfiles import model_files

    root = Path(folder)
    candidates = sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in (".dss", ".txt")
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and defines_circuit(p)
    )
    referenced: set[Path] = set()
    for c in candidates:
        try:
            referenced |= {Path(f).resolve() for f in model_files(c)} - {c.resolve()}
        except (OSError, Lv3phError):  # its own problem; it is still a feeder and fails on its own
            continue
    return [c for c in candidates if c.resolve() not in referenced]


def feeder_keys(root: Path, masters: Sequence[Path]) -> list[str]:
    """Keys of ``masters``: folder relative to ``root``, ``folder/<stem>`` where a folder holds
    several masters, the stem for a master in ``root`` itself."""
    folders = Counter(m.parent.resolve() for m in masters)
    keys = []
    for m in masters:
        rel = Path(os.path.relpath(m.parent.resolve(), root.resolve())).as_posix()
        if rel == ".":
            keys.append(m.stem)
        else:
            keys.append(f"{rel}/{m.stem}" if folders[m.parent.resolve()] > 1 else rel)
    return keys


def _setting(name: str, text: str) -> Any:
    if name in ("start", "steps"):
        return int(text)
    if name in ("vmaxpu", "pme_ohm"):
        value = float(text)
        if not math.isfinite(value) or value <= 0:
            raise ValueError
        return value
    return text


def read_fleet_list(path: str | Path) -> list[Feeder]:
    """Feeders from a CSV list (module docstring); every problem reported at once.

    Raises:
        StudyError: unreadable CSV, no ``model`` column, unknown column, bad setting value,
            duplicate or unsafe feeder key.
    """
    p = Path(path)
    try:
        df = pd.read_csv(p, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise StudyError(f"fleet list {p}: cannot read it as CSV ({' '.join(str(exc).split())})") from None
    problems = []
    if "model" not in df.columns:
        problems.append("no 'model' column")
    unknown = [c for c in df.columns if c not in ("model", "feeder", *FEEDER_SETTINGS)]
    if unknown:
        problems.append(f"unknown column(s) {', '.join(unknown)} (known: model, feeder, {', '.join(FEEDER_SETTINGS)})")
    if problems:
        raise StudyError(f"fleet list {p}: " + "; ".join(problems))
    masters = [(p.parent / m.strip()).resolve() for m in df["model"]]
    settings: list[dict[str, Any]] = []
    for i, row in df.iterrows():
        s = {}
        for name in FEEDER_SETTINGS:
            text = str(row.get(name, "")).strip()
            if text:
                try:
                    s[name] = _setting(name, text)
                except ValueError:
                    problems.append(f"row {int(str(i)) + 2}: bad {name} {text!r}")
        settings.append(s)
    if masters:
        root = Path(os.path.commonpath([m.parent for m in masters]))
        keys = feeder_keys(root, masters)
    else:
        keys = []
    if "feeder" in df.columns:
        keys = [k.strip() or auto for k, auto in zip(df["feeder"], keys, strict=True)]
    for k, n in Counter(keys).items():
        if n > 1:
            problems.append(f"feeder {k!r} appears {n} times")
    for k in keys:
        if k.startswith("/") or ".." in Path(k).parts:
            problems.append(f"feeder key {k!r} must be a relative path without '..'")
    if problems:
        raise StudyError(f"fleet list {p}: " + "; ".join(problems))
    return [Feeder(k, m, s) for k, m, s in zip(keys, masters, settings, strict=True)]


def fleet_feeders(source: str | Path) -> list[Feeder]:
    """The feeders of a fleet folder or CSV list.

    Raises:
        StudyError: the source does not exist, or the folder holds no master.
    """
    p = Path(source)
    if p.is_file():
        return read_fleet_list(p)
    if not p.is_dir():
        raise StudyError(f"fleet source {p} is neither a folder nor a CSV list")
    masters = find_masters(p)
    if not masters:
        raise StudyError(f"fleet folder {p} holds no OpenDSS master (a file with 'New Circuit')")
    return [Feeder(k, m) for k, m in zip(feeder_keys(p, masters), masters, strict=True)]


# ----------------------------------------------------------------------------- KPIs
def info_kpis(model: FeederModel) -> dict[str, Any]:
    """What the feeder contains (``info`` columns)."""
    kinds = Counter(e.kind for e in model.elements)
    phases = [c.phase_letters for c in model.customers]
    single = Counter(p for p in phases if len(p) == 1)
    return {
        "wiring": "four-wire" if model.explicit_neutral else "three-wire",
        "buses": len(model.buses),
        "nodes": model.n_nodes,
        "lines": kinds["line"],
        "transformers": kinds["transformer"],
        "customers": len(model.customers),
        "customers_a": single["a"],
        "customers_b": single["b"],
        "customers_c": single["c"],
        "customers_multiphase": sum(len(p) > 1 for p in phases),
        "earth_electrodes": kinds["earthing"],
        "devices": sum(len(c.devices) - 1 for c in model.customers) + len(model.orphan_devices),
    }


def _nanmax(da: xr.DataArray) -> float:
    v = da.values
    return float(np.nanmax(v)) if v.size and np.isfinite(v).any() else float("nan")


def powerflow_kpis(pf: xr.Dataset, unb: xr.Dataset, viol: pd.DataFrame) -> dict[str, Any]:
    """Losses, unbalance and violations of a run (``snapshot``/``window`` columns).

    Loss columns are means over the steps (kW); ``loss_kwh`` is the energy of a time-mode run.
    Shares are of the total loss (all PD elements, earth electrodes included), %.
    """
    total = pf.loss_total_kw
    parts = {k: pf[f"loss_{k}_kw"].sum("element") for k in ("phase", "neutral", "earth")}
    energy = float(total.sum())
    lv = np.unique(pf.customer_bus.values[pf.customer_bus.values != ""])
    vmin = unb.vmin_pn_v.sel(bus=lv) if lv.size else unb.vmin_pn_v
    vmax = unb.vmax_pn_v.sel(bus=lv) if lv.size else unb.vmax_pn_v
    row: dict[str, Any] = {
        "steps": int(pf.sizes["time"]),
        "loss_kw": float(total.mean()),
        "loss_peak_kw": float(total.max()),
        "loss_phase_kw": float(parts["phase"].mean()),
        "loss_neutral_kw": float(parts["neutral"].mean()),
        "loss_earth_kw": float(parts["earth"].mean()),
        "neutral_loss_share_pct": 100.0 * float(parts["neutral"].sum()) / energy if energy else float("nan"),
        "earth_loss_share_pct": 100.0 * float(parts["earth"].sum()) / energy if energy else float("nan"),
        "source_p_kw": float(pf.source_p_kw.mean()),
        "pvur_max_pct": _nanmax(unb.pvur_pct),
        "vuf_max_pct": _nanmax(unb.vuf_pct),
        "vne_max_v": _nanmax(unb.vne_v),
        "vmin_v": -_nanmax(-vmin),
        "vmax_v": _nanmax(vmax),
        "violations": len(viol),
        "violation_steps": int(viol.time.nunique()) if len(viol) else 0,
    }
    if pf.attrs.get("mode") != "snap":
        row["loss_kwh"] = energy * float(pf.attrs["stepsize_s"]) / 3600.0
    return row


def misallocation_pct(
    allocation: pd.DataFrame, phase_of: Mapping[str, str], method: str, reference: str = "exact"
) -> tuple[float, float, float]:
    """Misallocation of ``method`` against ``reference`` over the contracts of an allocation
    table (:func:`lv3ph.study.allocation_table`: one row per contract id, ``<method>_kwh``):
    ``sum |method - reference| / sum |reference|``, %, over all contracts, the same-phase and
    the cross-phase ones (``phase_of``: customer -> phase label). NaN where a group is empty."""
    c = allocation[~allocation.contract.str.startswith("grid:")]
    cross = (c.seller.map(phase_of) != c.buyer.map(phase_of)).to_numpy()

    def wmae(mask: np.ndarray) -> float:
        d = c[mask]
        den = float(d[f"{reference}_kwh"].abs().sum())
        return 100.0 * float((d[f"{method}_kwh"] - d[f"{reference}_kwh"]).abs().sum()) / den if den else float("nan")

    return wmae(np.ones(len(c), dtype=bool)), wmae(~cross), wmae(cross)


# ----------------------------------------------------------------------------- one feeder (worker side)
Outputs = dict[str, Callable[[Path], object]]


def _powerflow_job(path: Path, job: FleetJob, model: FeederModel, engine: Any) -> tuple[dict[str, Any], Outputs]:
    pf = solve(engine, model, job.run(), progress=False)
    unb = unbalance(pf)
    row = powerflow_kpis(pf, unb, violations(pf, unb, job.limits))
    outputs: Outputs = {}
    if job.save:
        from lv3ph.io import write_dataset

        merged = xr.merge([pf, unb], compat="override")
        outputs["powerflow.nc"] = lambda tmp: write_dataset(merged, tmp)
    return row, outputs


def _hosting_job(path: Path, job: FleetJob, model: FeederModel, engine: Any) -> tuple[dict[str, Any], Outputs]:
    from lv3ph.hosting import hosting_capacity

    res = hosting_capacity(
        path,
        run=job.run(),
        limits=job.limits,
        placements=job.placements,
        seed=job.seed,
        kwp_range=job.kwp_range,
        vmaxpu=job.vmaxpu,
        pme_ohm=job.pme_ohm,
        serial=True,
        progress=False,
    )
    s = res.summary
    counts = res.binding_counts()
    row = {
        "placements": s["placements"],
        **{f"hosting_{k}": s[k] for k in ("min_kw", "p5_kw", "median_kw", "p95_kw", "max_kw")},
        "hosting_censored": s["censored"],
        "hosting_binding": str(counts.index[0]) if len(counts) else "",
    }
    table = res.placements
    return row, {"hosting.csv": lambda tmp: table.to_csv(tmp, index=False, float_format="%.10g")}


def _audit_job(path: Path, job: FleetJob, model: FeederModel, engine: Any) -> tuple[dict[str, Any], Outputs]:
    from lv3ph.market import Tariffs
    from lv3ph.prosumers import Battery
    from lv3ph.results import PvSpec, StudySpec
    from lv3ph.study import run_scenario
    from lv3ph.studyfile import scenarios

    spec = StudySpec(
        name="audit",
        path=path,
        model=path,
        out=path.parent,
        run=job.run(),
        limits=job.limits,
        pv=PvSpec(kwp=job.pv_kwp),
        battery=Battery(kwh=5.0, kw=2.5),
        tariffs=Tariffs(),
        methods=AUDIT_METHODS,
        pv_share=(job.pv_share,),
        market=("bilateral:random",),
        battery_strategy=("off",),
        pme_ohm=(job.pme_ohm or 0.0,),
        vmaxpu=job.vmaxpu,
        seed=job.seed,
    )
    res = run_scenario(spec, scenarios(spec)[0])
    s = res.summary
    phase_of = {c.name: c.phase_letters for c in model.customers}
    contracts = res.allocation[~res.allocation.contract.str.startswith("grid:")]
    cross = contracts.seller.map(phase_of) != contracts.buyer.map(phase_of)
    loss = float(s["loss_kwh"])
    row: dict[str, Any] = {
        "pv_kwh": s["pv_kwh"],
        "traded_kwh": s["traded_kwh"],
        "contracts": len(contracts),
        "contracts_cross_phase": int(cross.sum()),
        "loss_kwh": loss,
        "neutral_loss_share_pct": 100.0 * float(s["loss_neutral_kwh"]) / loss if loss else float("nan"),
        "earth_loss_share_pct": 100.0 * float(s["loss_earth_kwh"]) / loss if loss else float("nan"),
    }
    for m in AUDIT_METHODS:
        row[f"contract_loss_{m.replace('-', '_')}_kwh"] = s[f"contract_loss_{m}_kwh"]
    for m in AUDIT_METHODS[1:]:
        name = m.replace("-", "_")
        every, same, crossing = misallocation_pct(res.allocation, phase_of, m)
        row[f"{name}_error_pct"] = every
        row[f"{name}_error_same_phase_pct"] = same
        row[f"{name}_error_cross_phase_pct"] = crossing
    table = res.allocation
    return row, {"allocation.csv": lambda tmp: table.to_csv(tmp, index=False, float_format="%.10g")}


def _info_job(path: Path, job: FleetJob, model: FeederModel, engine: Any) -> tuple[dict[str, Any], Outputs]:
    return {}, {}


_JOB_FUNCS: Final[dict[str, Callable[[Path, FleetJob, FeederModel, Any], tuple[dict[str, Any], Outputs]]]] = {
    "info": _info_job,
    "snapshot": _powerflow_job,
    "window": _powerflow_job,
    "hosting": _hosting_job,
    "audit": _audit_job,
}


def one_line(exc: BaseException) -> str:
    """An exception as one line: lv3ph's own message, else ``Type: message``."""
    text = " ".join(str(exc).split())
    return text if isinstance(exc, Lv3phError) else f"{type(exc).__name__}: {text}"


def run_feeder(task: _Task) -> dict[str, Any]:
    """Worker: run ``task.job`` on one feeder, write its outputs and its done marker.

    A failure of the feeder itself (bad model, no convergence, anything its job raises)
    comes back as ``{"feeder", "error"}``; a failure to write the store raises (Dask retries).
    """
    t0 = time.perf_counter()
    try:
        with single_threaded(), local_master(task.source) as path:
            engine, model = open_feeder(path, vmaxpu=task.job.vmaxpu, pme_ohm=task.job.pme_ohm)
            row, outputs = _JOB_FUNCS[task.job.job](path, task.job, model, engine)
            row = {"feeder": task.feeder, "master": task.master, **info_kpis(model), **row}
            store = _Store(task.store)
            for name, writer in outputs.items():
                store.put_file(f"feeders/{task.feeder}/{name}", writer)
            opened = str(path)
    except OSError:
        raise
    except Exception as exc:  # the feeder could not run: its one-line error, the fleet goes on
        return {"feeder": task.feeder, "error": one_line(exc)}
    row["seconds"] = time.perf_counter() - t0
    marker = {"signature": task.signature, "row": row, "opened": opened, "pid": os.getpid()}
    store.put_bytes(_marker(task.feeder), json.dumps(marker).encode())
    return row


# ----------------------------------------------------------------------------- the store
def _marker(feeder: str) -> str:
    return f"feeders/{feeder}/done.json"


class _Store:
    """A folder or fsspec URL; every file written under a temporary name, then moved."""

    def __init__(self, url: str) -> None:
        import fsspec

        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url)

    def path(self, rel: str) -> str:
        return f"{str(self.root).rstrip('/')}/{rel}"

    def _moved(self, rel: str, write: Callable[[str], None]) -> str:
        final = self.path(rel)
        parent = final.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/.{final.rsplit('/', 1)[1]}.{uuid.uuid4().hex}.tmp"
        try:
            write(tmp)
            self.fs.mv(tmp, final)
        finally:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)
        return final

    def put_bytes(self, rel: str, data: bytes) -> str:
        def write(tmp: str) -> None:
            with self.fs.open(tmp, "wb") as f:
                f.write(data)

        return self._moved(rel, write)

    def put_file(self, rel: str, writer: Callable[[Path], object]) -> str:
        """Write with ``writer(local_path)`` (a local temporary file), then upload and move."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="lv3ph-out-") as tmp:
            local = Path(tmp) / "part"
            writer(local)
            return self._moved(rel, lambda remote: self.fs.put_file(str(local), remote))

    def read_marker(self, feeder: str) -> dict[str, Any] | None:
        path = self.path(_marker(feeder))
        if not self.fs.exists(path):
            return None
        with self.fs.open(path, "rb") as f:
            marker: dict[str, Any] = json.loads(f.read())
        return marker

    def remove_marker(self, feeder: str) -> None:
        path = self.path(_marker(feeder))
        if self.fs.exists(path):
            self.fs.rm(path)


# ----------------------------------------------------------------------------- the fleet (client side)
def signature(feeder: Feeder, job: FleetJob) -> str:
    """Hash of everything that decides a feeder's row: its master, settings and the job."""
    text = json.dumps(
        {"master": str(feeder.master), "settings": feeder.settings, "job": asdict(job)}, sort_keys=True, default=str
    )
    return sha256(text.encode()).hexdigest()[:16]


def _feeder_job(job: FleetJob, feeder: Feeder) -> FleetJob:
    return replace(job, **feeder.settings) if feeder.settings else job


def _validate(job: FleetJob, rank: str) -> None:
    problems = []
    if job.job not in JOBS:
        problems.append(f"unknown job {job.job!r} (known: {', '.join(JOBS)})")
    if job.job in ("hosting", "audit", "window") and job.mode not in ("daily", "yearly", "snap"):
        problems.append(f"unknown mode {job.mode!r}: use snap, daily or yearly")
    if job.job == "hosting" and (job.placements < 1):
        problems.append(f"placements must be >= 1, got {job.placements}")
    if not 0.0 <= job.pv_share <= 1.0:
        problems.append(f"pv_share must be in [0, 1], got {job.pv_share}")
    if job.job in RANK_DEFAULT and rank not in kpi_columns(job.job):
        problems.append(f"unknown KPI {rank!r} to rank by for job {job.job} (known: {', '.join(kpi_columns(job.job))})")
    if problems:
        raise StudyError("fleet: " + "; ".join(problems))


def kpi_columns(job: str) -> list[str]:
    """The numeric KPI columns a job's table has (what ``rank`` may name)."""
    info = [
        "buses",
        "nodes",
        "lines",
        "transformers",
        "customers",
        "customers_a",
        "customers_b",
        "customers_c",
        "customers_multiphase",
        "earth_electrodes",
        "devices",
    ]
    pf = [
        "steps",
        "loss_kw",
        "loss_peak_kw",
        "loss_phase_kw",
        "loss_neutral_kw",
        "loss_earth_kw",
        "neutral_loss_share_pct",
        "earth_loss_share_pct",
        "source_p_kw",
        "pvur_max_pct",
        "vuf_max_pct",
        "vne_max_v",
        "vmin_v",
        "vmax_v",
        "violations",
        "violation_steps",
        "loss_kwh",
    ]
    hosting = [f"hosting_{k}" for k in ("min_kw", "p5_kw", "median_kw", "p95_kw", "max_kw", "censored")]
    names = [m.replace("-", "_") for m in AUDIT_METHODS]
    audit = [
        "pv_kwh",
        "traded_kwh",
        "contracts",
        "contracts_cross_phase",
        "loss_kwh",
        "neutral_loss_share_pct",
        "earth_loss_share_pct",
        *[f"contract_loss_{m}_kwh" for m in names],
        *[f"{m}_error{part}_pct" for m in names[1:] for part in ("", "_same_phase", "_cross_phase")],
    ]
    extra = {"info": [], "snapshot": pf, "window": pf, "hosting": hosting, "audit": audit}[job]
    return info + extra + ["seconds"]


def run_fleet(
    source: str | Path,
    job: FleetJob,
    out: str | Path,
    *,
    serial: bool = False,
    workers: int = 2,
    scheduler: str | None = None,
    resume: bool = False,
    retries: int = 2,
    rank: str | None = None,
    progress: bool = True,
) -> FleetResult:
    """Run ``job`` on every feeder of ``source`` (folder or CSV list) and write the fleet tables.

    See the module docstring for what is found, run and written. Feeders that fail are in
    ``errors`` (and ``fleet_errors.csv``); the others finish.

    Raises:
        StudyError: bad source, settings or rank KPI (before anything runs or is written).
    """
    rank = rank or RANK_DEFAULT.get(job.job, "")
    _validate(job, rank)
    feeders = fleet_feeders(source)
    root = Path(source) if Path(source).is_dir() else Path(source).parent
    store = _Store(str(out))
    sigs = {f.feeder: signature(f, job) for f in feeders}
    skipped = []
    if resume:
        for f in feeders:
            marker = store.read_marker(f.feeder)
            if marker is not None and marker.get("signature") == sigs[f.feeder]:
                skipped.append(f.feeder)
    else:
        for f in feeders:
            store.remove_marker(f.feeder)
    errors: dict[str, str] = {}
    tasks = []
    for f in feeders:
        if f.feeder in skipped:
            continue
        try:
            src: str | ModelPack = pack_model(f.master) if scheduler else str(f.master)
        except (OSError, Lv3phError) as exc:
            errors[f.feeder] = one_line(exc)
            continue
        tasks.append(
            _Task(
                feeder=f.feeder,
                master=Path(os.path.relpath(f.master, root.resolve())).as_posix(),
                source=src,
                job=_feeder_job(job, f),
                store=str(out),
                signature=sigs[f.feeder],
            )
        )
    token = uuid.uuid4().hex[:8]
    results = run_jobs(
        run_feeder,
        [(t,) for t in tasks],
        serial=serial,
        workers=workers,
        scheduler=scheduler,
        desc="feeders",
        progress=progress,
        keys=[f"fleet-{token}-{t.feeder}" for t in tasks],
        retries=retries,
        on_error=lambda i, exc: {"feeder": tasks[i].feeder, "error": f"worker failed: {one_line(exc)}"},
    )
    for r in results:
        if "error" in r:
            errors[r["feeder"]] = r["error"]
    rows = []
    for f in feeders:
        if f.feeder in errors:
            continue
        marker = store.read_marker(f.feeder)
        if marker is None:
            errors[f.feeder] = "finished without a done marker in the store"
            continue
        rows.append(marker["row"])
    table = pd.DataFrame(rows)
    err = pd.DataFrame(
        [{"feeder": f.feeder, "error": errors[f.feeder]} for f in feeders if f.feeder in errors],
        columns=["feeder", "error"],
    )
    written = [
        store.put_file("fleet.parquet", lambda tmp: table.to_parquet(tmp, index=False)),
        store.put_file("fleet.csv", lambda tmp: table.to_csv(tmp, index=False, float_format="%.10g")),
        store.put_file("fleet_errors.csv", lambda tmp: err.to_csv(tmp, index=False)),
    ]
    page = fleet_html(table, err, rank=rank, title=f"lv3ph fleet: {job.job} on {len(feeders)} feeders")
    written.append(store.put_bytes("fleet.html", page.encode()))
    return FleetResult(table=table, errors=err, skipped=skipped, written=written)


# ----------------------------------------------------------------------------- summary page
def fleet_html(table: pd.DataFrame, errors: pd.DataFrame, *, rank: str, title: str, top: int = 50) -> str:
    """A small self-contained HTML page: feeders ranked by ``rank`` (largest first; smallest
    first for ``hosting_*``), a few KPIs beside it, and the feeders that could not run."""
    ascending = rank.startswith("hosting_")
    cols = ["feeder", rank] + [
        c
        for c in (
            "customers",
            "loss_kw",
            "neutral_loss_share_pct",
            "pvur_max_pct",
            "vuf_max_pct",
            "vne_max_v",
            "violations",
            "hosting_median_kw",
            "phase_only_error_pct",
        )
        if c in table.columns and c != rank
    ]
    body = "<p>no feeder finished</p>"
    if len(table) and rank in table.columns:
        ranked = table.sort_values(rank, ascending=ascending, na_position="last").head(top)[cols]
        ranked.insert(0, "rank", np.arange(1, len(ranked) + 1))
        body = ranked.to_html(index=False, float_format=lambda x: f"{x:.3f}", na_rep="-", border=0)
    errs = "".join(
        f"<li><b>{html.escape(str(r.feeder))}</b>: {html.escape(str(r.error))}</li>" for r in errors.itertuples()
    )
    order = "smallest" if ascending else "largest"
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;margin:2em}}"
        "table{border-collapse:collapse}td,th{padding:3px 8px;text-align:right;border-bottom:1px solid #ddd}"
        "td:nth-child(2),th:nth-child(2){text-align:left}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{len(table)} feeders ranked by <code>{html.escape(rank)}</code> "
        f"({order} first); full table in fleet.csv / fleet.parquet.</p>{body}"
        + (f"<h2>{len(errors)} feeders could not run</h2><ul>{errs}</ul>" if len(errors) else "")
        + "</body></html>"
    )
