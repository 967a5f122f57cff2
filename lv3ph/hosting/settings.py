"""Settings of a hosting-capacity run, validated before any calculation."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import ArrayLike, NDArray

from lv3ph.errors import ProfileError, StudyError
from lv3ph.hosting.criteria import AGGREGATION_S, BASES, PRE_EXISTING, PRE_EXISTING_TOL, limit_of
from lv3ph.powerflow import RunSpec
from lv3ph.unbalance import CHECKS, Limits

DEVICES: Final[tuple[str, ...]] = ("pvsystem", "generator")
SEARCHES: Final[tuple[str, ...]] = ("bisect", "scan")
#: Inverter controls of the PV (OpenDSS ``InvControl``): Q(U), volt-watt, both.
CONTROLS: Final[tuple[str, ...]] = ("qu", "vw", "qu+vw")
#: Q(U) characteristic (voltage pu of 230 V, reactive power pu of the inverter's kVA,
#: positive = supplied). EN 50549-1 (4.7.2.3.3) leaves the points to the DSO and asks for
#: the capability of cos phi 0.90 at rated power: with kVA = 1.1 x kWp, 0.44 pu of kVA is
#: Q = 0.484 x kWp = tan(acos 0.9) x kWp. The points are those of the example
#: characteristic many national settings use (full Q below 0.92 and above 1.08 pu, no Q in
#: 0.96-1.04 pu); we could not check them against the text of the standard here.
QU_CURVE: Final[tuple[tuple[float, float], ...]] = (
    (0.5, 0.44),
    (0.92, 0.44),
    (0.96, 0.0),
    (1.04, 0.0),
    (1.08, -0.44),
    (1.5, -0.44),
)
#: Volt-watt curtailment (voltage pu, active power limit pu of kWp): full output up to
#: 1.07 pu (246 V), none at 1.10 pu (253 V, the upper limit of the band).
VW_CURVE: Final[tuple[tuple[float, float], ...]] = ((0.5, 1.0), (1.07, 1.0), (1.10, 0.0), (1.5, 0.0))


@dataclass(frozen=True)
class Job:
    """Everything a worker needs to run placements (picklable)."""

    model_path: str
    vmaxpu: float | None
    pme_ohm: float | None
    commands: tuple[str, ...]
    run: RunSpec
    limits: Limits
    checks: tuple[str, ...]
    profile: NDArray[np.float64]
    kwp_range: tuple[float, float]
    step_kw: float
    screening: bool
    screen_steps: int
    device: str
    pre_existing: str
    basis: str
    tolerance: tuple[tuple[str, float], ...]
    search: str
    seed: int
    customers: tuple[str, ...] | None
    token: str
    switching: dict[str, Any] | None = None
    controls: str | None = None


def validate(
    placements: int,
    seed: int,
    kwp_range: tuple[float, float],
    step_kw: float,
    workers: int,
    screen_steps: int,
    device: str,
    search: str,
    pre_existing: str,
    run: RunSpec,
    basis: str = "step",
    tolerance: Mapping[str, float] | None = None,
    controls: str | None = None,
) -> None:
    """Every problem with the settings at once, as one :class:`~lv3ph.errors.StudyError`."""

    def is_int(x: object) -> bool:
        return isinstance(x, int | np.integer) and not isinstance(x, bool)

    errors = []
    if not is_int(placements) or placements < 1:
        errors.append(f"placements must be an integer >= 1, got {placements!r}")
    if not is_int(seed):
        errors.append(f"seed must be an integer, got {seed!r}")
    try:
        lo, hi = (float(x) for x in kwp_range)
        if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 < lo <= hi):
            raise ValueError
    except (TypeError, ValueError):
        errors.append(f"kwp_range must be (low, high) kWp with 0 < low <= high, got {kwp_range!r}")
    if (
        isinstance(step_kw, bool)
        or not isinstance(step_kw, int | float)
        or not (math.isfinite(step_kw) and step_kw > 0)
    ):
        errors.append(f"step_kw must be a number of kW > 0, got {step_kw!r}")
    if not is_int(workers) or workers < 1:
        errors.append(f"workers must be an integer >= 1, got {workers!r}")
    if not is_int(screen_steps) or screen_steps < 1:
        errors.append(f"screen_steps must be an integer >= 1, got {screen_steps!r}")
    for name, value, known in (
        ("device", device, DEVICES),
        ("search", search, SEARCHES),
        ("pre_existing", pre_existing, PRE_EXISTING),
        ("basis", basis, BASES),
    ):
        if value not in known:
            errors.append(f"unknown {name} {value!r} (known: {', '.join(known)})")
    if controls is not None and controls not in CONTROLS:
        errors.append(f"unknown controls {controls!r} (known: {', '.join(CONTROLS)})")
    elif controls is not None and device != "pvsystem":
        errors.append("inverter controls need device='pvsystem' (OpenDSS InvControl controls PVSystems)")
    for check, tol in dict(tolerance or {}).items():
        if check not in PRE_EXISTING_TOL:
            errors.append(f"tolerance: unknown limit {check!r} (known: {', '.join(PRE_EXISTING_TOL)})")
        elif isinstance(tol, bool) or not isinstance(tol, int | float) or not (math.isfinite(tol) and tol >= 0):
            errors.append(f"tolerance.{check} must be a number >= 0, got {tol!r}")
    if not isinstance(run, RunSpec):
        errors.append(f"run must be a RunSpec, got {type(run).__name__}")
    elif run.mode not in ("daily", "yearly"):
        errors.append(f"run.mode must be daily or yearly (PV follows a profile over steps), got {run.mode!r}")
    elif run.steps < 1 or run.start < 1:
        errors.append(f"run needs start >= 1 and steps >= 1, got start={run.start}, steps={run.steps}")
    elif basis == "en50160" and run.stepsize_s > AGGREGATION_S:
        errors.append(
            f"basis='en50160' judges {AGGREGATION_S:g}-s values: it needs steps of at most {AGGREGATION_S:g} s, "
            f"got {run.stepsize_s:g} s (use basis='step')"
        )
    if errors:
        raise StudyError("hosting_capacity: " + "; ".join(errors))


def chosen_checks(limits: Limits, checks: Sequence[str] | None) -> tuple[str, ...]:
    enabled = tuple(c for c in CHECKS if limit_of(limits, c) is not None)
    if checks is None:
        chosen = enabled
    else:
        if isinstance(checks, str):
            checks = [checks]
        unknown = [c for c in checks if c not in CHECKS]
        if unknown:
            raise StudyError(f"unknown limit(s) {', '.join(map(repr, unknown))} (known: {', '.join(CHECKS)})")
        disabled = [c for c in checks if c not in enabled]
        if disabled:
            raise StudyError(f"limit(s) {', '.join(disabled)} are disabled in limits (None): give them a value")
        chosen = tuple(c for c in CHECKS if c in checks)
    if not chosen:
        raise StudyError("hosting_capacity: every limit is disabled; enable at least one")
    return chosen


def pv_profile_of(
    run: RunSpec, pv_profile: ArrayLike | None, pv_settings: Mapping[str, Any] | None
) -> NDArray[np.float64]:
    if pv_profile is not None and pv_settings is not None:
        raise StudyError("give pv_profile or pv_settings, not both")
    if pv_profile is None:
        from lv3ph.prosumers import (
            DEFAULT_ALTITUDE_M,
            DEFAULT_LATITUDE,
            DEFAULT_LONGITUDE,
            DEFAULT_TZ,
            pv_profile_kw_per_kwp,
        )

        kw: dict[str, Any] = {
            "latitude": DEFAULT_LATITUDE,
            "longitude": DEFAULT_LONGITUDE,
            "tz": DEFAULT_TZ,
            "altitude": DEFAULT_ALTITUDE_M,
            "date": "2024-06-21",
        }
        kw.update(pv_settings or {})
        for key in ("stepsize_s", "start", "steps"):
            if key in kw:
                raise StudyError(f"pv_settings.{key} comes from run, do not give it")
        try:
            full = pv_profile_kw_per_kwp(stepsize_s=run.stepsize_s, start=1, steps=run.start + run.steps - 1, **kw)
        except TypeError as exc:
            raise StudyError(f"pv_settings: {exc}") from None
        return np.ascontiguousarray(full[run.start - 1 :], dtype=np.float64)
    prof = np.asarray(pv_profile, dtype=np.float64)
    if prof.shape != (run.steps,):
        raise ProfileError(f"pv_profile must have one value per step of the run ({run.steps}), got shape {prof.shape}")
    if not np.isfinite(prof).all() or (prof < 0).any():
        raise ProfileError("pv_profile must be finite and >= 0 (kW per kWp)")
    if not (prof > 0).any():
        raise ProfileError("pv_profile is 0 at every step: nothing to host")
    return np.ascontiguousarray(prof)
