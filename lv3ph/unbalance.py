"""Voltage-unbalance metrics and limit checks for three-phase four-wire LV feeders.

Pure functions on numpy arrays and on the power-flow result Dataset; nothing here
talks to OpenDSS.

Array level (last axis = phases a, b, c; any leading shape; NaN propagates):

* :func:`sequence_components` -- symmetrical components (V0, V1, V2), same unit as input.
* :func:`pvur_pct` -- phase voltage unbalance rate (IEEE definition), %.
* :func:`lvur_pct` -- line voltage unbalance rate (NEMA definition), %.
* :func:`vuf_pct` -- negative-sequence voltage unbalance factor |V2|/|V1| (IEC / EN 50160), %.
* :func:`v0uf_pct` -- zero-sequence voltage unbalance factor |V0|/|V1|, %.

Dataset level:

* :func:`unbalance` -- per (time, bus) metrics from ``pf["voltage"]``.
* :class:`Limits` -- limit values (EN 50160 defaults), ``None`` disables a check.
* :func:`violations` -- one row per (time, item, check) violation.
* :func:`violation_summary` -- one row per (check, item).

Definitions (P. Pillay, M. Manyage, "Definitions of voltage unbalance",
IEEE Power Engineering Review, 2001):

* PVUR = max_i | |V_i| - mean_j |V_j| | / mean_j |V_j| * 100, over the three
  phase-to-neutral magnitudes (IEEE Std 112 / 141 "phase voltage unbalance rate").
* LVUR = the same formula on the three line-to-line magnitudes |Vab|, |Vbc|, |Vca|
  (NEMA MG1 "line voltage unbalance rate").
* VUF = |V2| / |V1| * 100 (IEC 61000-4-30, EN 50160 "true" definition).

Division by zero follows IEEE float rules: 0/0 gives NaN (e.g. a de-energised bus),
x/0 with x > 0 gives +inf (e.g. a reversed phase sequence has |V1| = 0).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Final, Literal

import numpy as np
import pandas as pd
import xarray as xr
from numpy.typing import ArrayLike, NDArray

from lv3ph.errors import Lv3phError, StudyError, UnknownItemError

__all__ = [
    "CHECKS",
    "Limits",
    "lvur_pct",
    "pvur_pct",
    "sequence_components",
    "unbalance",
    "v0uf_pct",
    "violation_summary",
    "violations",
    "vuf_pct",
]

#: Names of the checks :func:`violations` can report, in the order they are evaluated.
CHECKS: Final[tuple[str, ...]] = (
    "voltage_low",
    "voltage_high",
    "vuf",
    "pvur",
    "vne",
    "line_thermal",
    "transformer_thermal",
)

#: The rotation operator a = exp(j 2 pi / 3).
A_OP: Final[complex] = complex(-0.5, math.sqrt(3.0) / 2.0)

# Rows: V0, V1, V2 as combinations of (Va, Vb, Vc).
_SEQ_MATRIX: Final[NDArray[np.complex128]] = (
    np.array(
        [
            [1.0, 1.0, 1.0],
            [1.0, A_OP, A_OP**2],
            [1.0, A_OP**2, A_OP],
        ],
        dtype=np.complex128,
    )
    / 3.0
)

_NAN_C: Final[complex] = complex(math.nan, math.nan)

_VIOLATION_COLUMNS: Final[list[str]] = [
    "time",
    "check",
    "item",
    "value",
    "limit",
    "unit",
]


# ----------------------------------------------------------------------------- arrays


def _three_phase(v: ArrayLike, what: str) -> NDArray[np.complex128]:
    """Return ``v`` as a complex128 array whose last axis has length 3, or raise."""
    arr = np.asarray(v)
    if arr.ndim == 0 or arr.shape[-1] != 3:
        raise Lv3phError(f"{what}: last axis must hold the three phases a, b, c; got shape {arr.shape}")
    return arr.astype(np.complex128, copy=False)


def _ratio_pct(num: NDArray[np.float64], den: NDArray[np.float64]) -> NDArray[np.float64]:
    """``num / den * 100`` with IEEE semantics (0/0 -> NaN, x/0 -> inf), no warnings."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(num / den * 100.0, dtype=np.float64)


# The helpers below take the three phases as separate arrays: element-wise ufuncs on
# them are several times faster than numpy reductions over a last axis of length 3.


def _max_dev_rate_pct(ma: NDArray[np.float64], mb: NDArray[np.float64], mc: NDArray[np.float64]) -> NDArray[np.float64]:
    """Max |m_i - mean(m)| over three magnitudes, in % of the mean (NaN propagates)."""
    mean = (ma + mb + mc) / 3.0
    dev = np.maximum(np.maximum(np.abs(ma - mean), np.abs(mb - mean)), np.abs(mc - mean))
    return _ratio_pct(dev, mean)


def _lvur3(va: NDArray[np.complex128], vb: NDArray[np.complex128], vc: NDArray[np.complex128]) -> NDArray[np.float64]:
    """LVUR in % of three phase phasor arrays."""
    return _max_dev_rate_pct(np.abs(va - vb), np.abs(vb - vc), np.abs(vc - va))


def _seq_mag3(
    va: NDArray[np.complex128], vb: NDArray[np.complex128], vc: NDArray[np.complex128]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """``(|V0|, |V1|, |V2|)`` of three phase phasor arrays."""
    a, a2 = A_OP, A_OP * A_OP
    v0 = np.abs(va + vb + vc) / 3.0
    v1 = np.abs(va + a * vb + a2 * vc) / 3.0
    v2 = np.abs(va + a2 * vb + a * vc) / 3.0
    return v0, v1, v2


def sequence_components(v: ArrayLike) -> NDArray[np.complex128]:
    """Symmetrical components of a three-phase phasor set.

    Parameters
    ----------
    v:
        Complex phasors, shape ``(..., 3)``, last axis = phases a, b, c (any unit,
        typically V).

    Returns
    -------
    numpy.ndarray
        Complex array of shape ``(..., 3)`` holding ``(V0, V1, V2)`` in the unit of
        ``v``, with ``a = exp(j 2 pi / 3)``::

            V0 = (Va +     Vb +     Vc) / 3
            V1 = (Va + a   Vb + a^2 Vc) / 3
            V2 = (Va + a^2 Vb + a   Vc) / 3

        A NaN in any phase makes all three components NaN.
    """
    arr = _three_phase(v, "sequence_components")
    out: NDArray[np.complex128] = arr @ _SEQ_MATRIX.T
    return out


def pvur_pct(v_pn: ArrayLike) -> NDArray[np.float64]:
    """Phase voltage unbalance rate (IEEE), in %.

    ``PVUR = max_i | |V_i| - mean | / mean * 100`` where ``mean`` is the average of the
    three phase-to-neutral magnitudes ``|Va|, |Vb|, |Vc|``.

    Parameters
    ----------
    v_pn:
        Phase-to-neutral voltages, shape ``(..., 3)``: complex phasors or real
        magnitudes, in V (any unit; the result is a ratio).

    Returns
    -------
    numpy.ndarray
        PVUR in %, shape ``(...)``; NaN if any phase is NaN.
    """
    arr = np.asarray(v_pn)
    if arr.ndim == 0 or arr.shape[-1] != 3:
        raise Lv3phError(f"pvur_pct: last axis must hold the three phases a, b, c; got shape {arr.shape}")
    mag = np.abs(arr).astype(np.float64, copy=False)
    return _max_dev_rate_pct(mag[..., 0], mag[..., 1], mag[..., 2])


def lvur_pct(v_pn: ArrayLike) -> NDArray[np.float64]:
    """Line voltage unbalance rate (NEMA), in %.

    ``LVUR = max | |V_ll| - mean | / mean * 100`` over the three line-to-line
    magnitudes ``|Vab|, |Vbc|, |Vca|`` with ``Vab = Va - Vb`` etc.

    Parameters
    ----------
    v_pn:
        Complex phase voltages, shape ``(..., 3)``, in V. Any common reference works
        (phase-to-neutral or phase-to-earth): it cancels in the differences.

    Returns
    -------
    numpy.ndarray
        LVUR in %, shape ``(...)``; NaN if any phase is NaN.
    """
    arr = _three_phase(v_pn, "lvur_pct")
    return _lvur3(arr[..., 0], arr[..., 1], arr[..., 2])


def vuf_pct(v_pn: ArrayLike) -> NDArray[np.float64]:
    """Negative-sequence voltage unbalance factor ``|V2| / |V1| * 100``, in %.

    This is the EN 50160 / IEC 61000-4-30 unbalance. Computed from phase-to-neutral
    phasors it equals the value computed from line-to-line phasors: the line-to-line
    transform multiplies V1 by ``(1 - a^2)`` and V2 by ``(1 - a)``, both of magnitude
    sqrt(3), and removes V0.

    Parameters
    ----------
    v_pn:
        Complex phase-to-neutral voltages, shape ``(..., 3)``, in V.

    Returns
    -------
    numpy.ndarray
        VUF in %, shape ``(...)``; NaN if any phase is NaN.
    """
    arr = _three_phase(v_pn, "vuf_pct")
    _, v1, v2 = _seq_mag3(arr[..., 0], arr[..., 1], arr[..., 2])
    return _ratio_pct(v2, v1)


def v0uf_pct(v_pn: ArrayLike) -> NDArray[np.float64]:
    """Zero-sequence voltage unbalance factor ``|V0| / |V1| * 100``, in %.

    V0 exists only in phase-to-neutral (or phase-to-earth) voltages; line-to-line
    voltages carry no zero sequence, so this factor cannot be computed from them. The
    value depends on the reference: from phase-to-neutral voltages it measures the
    unbalance seen by single-phase customers.

    Parameters
    ----------
    v_pn:
        Complex phase-to-neutral voltages, shape ``(..., 3)``, in V.

    Returns
    -------
    numpy.ndarray
        V0UF in %, shape ``(...)``; NaN if any phase is NaN.
    """
    arr = _three_phase(v_pn, "v0uf_pct")
    v0, v1, _ = _seq_mag3(arr[..., 0], arr[..., 1], arr[..., 2])
    return _ratio_pct(v0, v1)


# ----------------------------------------------------------------------------- Dataset


def _require(pf: xr.Dataset, name: str, why: str) -> xr.DataArray:
    """Return ``pf[name]`` (variable or coordinate) or raise naming what is missing."""
    if name not in pf.variables:
        raise Lv3phError(f"power-flow dataset has no {name!r}, needed for {why}")
    return pf[name]


def _roles(pf: xr.Dataset, volt: xr.DataArray) -> NDArray[np.int64] | None:
    """(bus, terminal) traced roles aligned with ``volt``, None without ``terminal_role``."""
    if "terminal_role" not in pf.variables:
        return None
    return np.asarray(pf["terminal_role"].transpose("bus", "terminal").values, dtype=np.int64)


def role_planes(
    raw: NDArray[np.complex128], terminals: NDArray[Any], roles: NDArray[np.int64] | None
) -> tuple[NDArray[np.complex128], NDArray[np.complex128], NDArray[np.complex128], NDArray[np.complex128] | None]:
    """(time, bus) node-to-earth voltages of phases a, b, c (NaN where absent) and of the
    neutral (None if no bus has one) from ``raw`` (time, bus, terminal).

    ``roles`` (bus, terminal): traced roles (1-3 phase, 0 neutral, -1 none); None = terminal
    numbering 1-3 phases, 4 neutral.
    """
    if roles is None:
        roles = np.where(np.isin(terminals, [1, 2, 3]), terminals, np.where(terminals == 4, 0, -1))
        roles = np.broadcast_to(roles[None, :], raw.shape[1:])
    buses = np.arange(raw.shape[1])

    def plane(role: int) -> NDArray[np.complex128] | None:
        hit = roles == role
        if not hit.any():
            return None
        first = np.argmax(hit, axis=1)  # first terminal with that role per bus
        out = raw[:, buses, first]
        return np.where(hit.any(axis=1)[None, :], out, _NAN_C)

    nan_plane = np.full(raw.shape[:2], _NAN_C, dtype=np.complex128)
    va, vb, vc = (p if (p := plane(r)) is not None else nan_plane for r in (1, 2, 3))
    return va, vb, vc, plane(0)


def phase_neutral_voltage(pf: xr.Dataset) -> xr.DataArray:
    """Phase-to-neutral voltages (time, bus, phase), V complex, ``phase`` = 1, 2, 3 (a, b, c),
    as :func:`unbalance` takes them (traced roles; NaN where a bus lacks the phase)."""
    volt = _require(pf, "voltage", "phase-to-neutral voltages").transpose("time", "bus", "terminal")
    raw = np.asarray(volt.values).astype(np.complex128)
    va, vb, vc, neutral = role_planes(raw, np.asarray(volt["terminal"].values), _roles(pf, volt))
    shift = np.where(np.isnan(neutral), 0.0, neutral) if neutral is not None else 0.0
    data = np.stack([va - shift, vb - shift, vc - shift], axis=-1)
    return xr.DataArray(
        data,
        dims=("time", "bus", "phase"),
        coords={"time": volt["time"], "bus": volt["bus"], "phase": [1, 2, 3]},
        attrs={"units": "V", "long_name": "phase-to-neutral voltage"},
    )


def unbalance(pf: xr.Dataset) -> xr.Dataset:
    """Unbalance metrics per time step and bus.

    Phase-to-neutral voltage of phase ``p`` at a bus is ``V_p - V_n`` with ``V_p`` the
    node whose traced role is phase ``p`` and ``V_n`` the bus's first neutral-role node
    (coordinate ``terminal_role`` of :func:`lv3ph.powerflow.capture`), when present and
    not NaN at that bus and step, else ``V_p`` (the neutral is the earth). Without a
    ``terminal_role`` coordinate, terminals 1-3 are the phases and 4 the neutral.

    Parameters
    ----------
    pf:
        Power-flow result with ``voltage`` (dims ``time``, ``bus``, ``terminal``;
        complex, V, node-to-earth; NaN for missing nodes) and coords ``time``, ``bus``.

    Returns
    -------
    xarray.Dataset
        Dims ``(time, bus)``, float64 variables:

        * ``pvur_pct``, ``lvur_pct``, ``vuf_pct``, ``v0uf_pct`` -- %, NaN unless all
          three phases are present;
        * ``vne_v`` -- |neutral-to-earth voltage| in V; 0 where the bus has no explicit
          neutral; NaN where the bus has no phase;
        * ``vmin_pn_v``, ``vmax_pn_v`` -- min / max phase-to-neutral magnitude over the
          present phases, V; NaN where the bus has no phase.
    """
    volt = _require(pf, "voltage", "unbalance metrics")
    missing = {"time", "bus", "terminal"} - set(volt.dims)
    if missing or volt.ndim != 3:
        raise Lv3phError(f"pf['voltage'] must have dims (time, bus, terminal); got {tuple(volt.dims)}")
    volt = volt.transpose("time", "bus", "terminal")
    raw = np.asarray(volt.values)
    if raw.dtype != np.complex128:
        raw = raw.astype(np.complex128)
    terminals = np.asarray(volt["terminal"].values)

    va, vb, vc, neutral = role_planes(raw, terminals, _roles(pf, volt))
    if neutral is None:
        has_neutral = np.zeros(raw.shape[:2], dtype=bool)
    else:
        has_neutral = ~np.isnan(neutral)
        shift = np.where(has_neutral, neutral, 0.0)
        va, vb, vc = va - shift, vb - shift, vc - shift
    ma, mb, mc = np.abs(va), np.abs(vb), np.abs(vc)
    # fmin/fmax ignore NaN (absent phases); NaN only where all three are absent
    vmin = np.fmin(np.fmin(ma, mb), mc)
    vmax = np.fmax(np.fmax(ma, mb), mc)
    any_phase = ~np.isnan(vmin)
    vne_if_phase = np.abs(neutral) if neutral is not None else np.nan
    vne = np.where(any_phase, np.where(has_neutral, vne_if_phase, 0.0), np.nan)

    pvur = _max_dev_rate_pct(ma, mb, mc)
    lvur = _lvur3(va, vb, vc)
    v0, v1, v2 = _seq_mag3(va, vb, vc)
    vuf = _ratio_pct(v2, v1)
    v0uf = _ratio_pct(v0, v1)

    dims = ("time", "bus")
    coords = {name: c for name, c in volt.coords.items() if "terminal" not in c.dims}

    def var(data: NDArray[np.float64], units: str, long_name: str, desc: str) -> xr.Variable:
        return xr.Variable(
            dims,
            np.asarray(data, dtype=np.float64),
            attrs={"units": units, "long_name": long_name, "description": desc},
        )

    return xr.Dataset(
        {
            "pvur_pct": var(
                pvur,
                "%",
                "phase voltage unbalance rate",
                "max |V_pn,i| deviation from the mean of the 3 phase-to-neutral magnitudes, "
                "% of that mean (IEEE); NaN unless 3 phases",
            ),
            "lvur_pct": var(
                lvur,
                "%",
                "line voltage unbalance rate",
                "max |V_ll| deviation from the mean of |Vab|,|Vbc|,|Vca|, % of that mean (NEMA); NaN unless 3 phases",
            ),
            "vuf_pct": var(
                vuf,
                "%",
                "negative-sequence voltage unbalance factor",
                "|V2|/|V1|*100 (EN 50160); NaN unless 3 phases",
            ),
            "v0uf_pct": var(
                v0uf,
                "%",
                "zero-sequence voltage unbalance factor",
                "|V0|/|V1|*100 of phase-to-neutral voltages; NaN unless 3 phases",
            ),
            "vne_v": var(
                vne,
                "V",
                "neutral-to-earth voltage magnitude",
                "|V_neutral|; 0 if the bus has no explicit neutral; NaN if no phase",
            ),
            "vmin_pn_v": var(
                vmin,
                "V",
                "minimum phase-to-neutral voltage magnitude",
                "min over present phases of |V_phase - V_neutral|; NaN if no phase",
            ),
            "vmax_pn_v": var(
                vmax,
                "V",
                "maximum phase-to-neutral voltage magnitude",
                "max over present phases of |V_phase - V_neutral|; NaN if no phase",
            ),
        },
        coords=coords,
        attrs={"title": "lv3ph voltage unbalance metrics"},
    )


# ----------------------------------------------------------------------------- limits

_OPTIONAL_LIMITS: Final[tuple[str, ...]] = (
    "v_band_pct",
    "vuf_pct",
    "pvur_pct",
    "vne_v",
    "line_loading_pct",
    "transformer_loading_pct",
)


def _check_number(key: str, value: object, *, optional: bool) -> float | None:
    """Validate one limit value; return it as float (or None) or raise StudyError."""
    if value is None:
        if optional:
            return None
        raise StudyError(f"limits.{key} must be a number, got None")
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool | np.bool_)
    what = "a finite number > 0" if not optional else "a finite number >= 0 or null"
    if not ok:
        raise StudyError(f"limits.{key} must be {what}, got {value!r}")
    x = float(value)  # type: ignore[arg-type]
    if not math.isfinite(x) or x < 0.0 or (not optional and x == 0.0):
        raise StudyError(f"limits.{key} must be {what}, got {value!r}")
    return x


@dataclass(frozen=True, slots=True)
class Limits:
    """Limit values of :func:`violations`; ``None`` disables a check.

    Attributes
    ----------
    v_nominal_v:
        Nominal phase-to-neutral voltage, V (EN 50160 LV: 230 V).
    v_band_pct:
        Allowed deviation from ``v_nominal_v``, % (EN 50160: +/-10 %, i.e. 207-253 V).
        Checks ``voltage_low`` (``vmin_pn_v < v_nominal_v * (1 - band)``) and
        ``voltage_high`` (``vmax_pn_v > v_nominal_v * (1 + band)``).
    vuf_pct:
        Limit on |V2|/|V1|, % (EN 50160: 2 %).
    pvur_pct:
        Limit on the phase voltage unbalance rate, %. Default 2 %: no standard sets a
        PVUR limit at the supply terminal; 2 % mirrors the EN 50160 VUF figure, as is
        usual in LV hosting-capacity studies. For a dip on one phase only, PVUR is
        about twice VUF, so this check is the stricter of the two.
    vne_v:
        Limit on |neutral-to-earth voltage|, V. Default 10 V: EN 50160 sets none; the
        conventional touch-voltage limit of IEC 60364-4-41 is 50 V a.c. (25 V in
        special locations), and a persistent neutral shift of more than a few volts
        already signals a heavily loaded or broken neutral; 10 V keeps a wide margin.
    line_loading_pct:
        Limit on ``max_conductor |I| / element_normamps * 100`` of ``line`` elements
        with a rating (phase and neutral conductors at terminal 1), %.
    transformer_loading_pct:
        Limit on ``winding_s_kva / element_kva * 100`` of ``transformer`` elements, %.
    where:
        ``"customers"`` (default): voltage and unbalance checks at the customer buses
        only (EN 50160 applies at the supply terminals); ``"all"``: at every bus.
    basis:
        ``"step"`` (default): voltage band, VUF and PVUR are judged at every step;
        ``"en50160"``: they are judged on 10-minute values per week by EN 50160's rules
        (:mod:`lv3ph.en50160`), and :meth:`per_step` leaves them out of the per-step checks.

    A limit is violated when the value is strictly beyond it. NaN values never violate.
    """

    v_nominal_v: float = 230.0
    v_band_pct: float | None = 10.0
    vuf_pct: float | None = 2.0
    pvur_pct: float | None = 2.0
    vne_v: float | None = 10.0
    line_loading_pct: float | None = 100.0
    transformer_loading_pct: float | None = 100.0
    where: Literal["customers", "all"] = "customers"
    basis: Literal["step", "en50160"] = "step"

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "v_nominal_v",
            _check_number("v_nominal_v", self.v_nominal_v, optional=False),
        )
        for key in _OPTIONAL_LIMITS:
            object.__setattr__(self, key, _check_number(key, getattr(self, key), optional=True))
        if self.v_band_pct is not None and self.v_band_pct >= 100.0:
            raise StudyError(f"limits.v_band_pct must be < 100, got {self.v_band_pct!r}")
        if self.where not in ("customers", "all"):
            raise StudyError(f"limits.where must be 'customers' or 'all', got {self.where!r}")
        if self.basis not in ("step", "en50160"):
            raise StudyError(f"limits.basis must be 'step' or 'en50160', got {self.basis!r}")

    def per_step(self) -> Limits:
        """The limits checked at every step: all of them on basis ``step``; on basis
        ``en50160`` the voltage band, VUF and PVUR are left to the EN 50160 statistics."""
        if self.basis == "step":
            return self
        return replace(self, v_band_pct=None, vuf_pct=None, pvur_pct=None)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Limits:
        """Build from a mapping (e.g. the ``limits`` table of a study file).

        Missing keys take their defaults; ``None`` disables a limit. Raises
        :class:`~lv3ph.errors.StudyError` naming an unknown key, or a bad value
        (negative, NaN, infinite, non-numeric) together with its key.
        """
        if not isinstance(d, Mapping):
            raise StudyError(f"limits must be a mapping, got {type(d).__name__}")
        valid = [f.name for f in fields(cls)]
        for key in d:
            if key not in valid:
                raise StudyError(f"unknown limits key {key!r}; valid keys: {', '.join(valid)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """The limits as a plain dict (inverse of :meth:`from_dict`)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def v_low_v(self) -> float | None:
        """Lower voltage limit, V (None if the band check is disabled)."""
        if self.v_band_pct is None:
            return None
        return self.v_nominal_v * (1.0 - self.v_band_pct / 100.0)

    @property
    def v_high_v(self) -> float | None:
        """Upper voltage limit, V (None if the band check is disabled)."""
        if self.v_band_pct is None:
            return None
        return self.v_nominal_v * (1.0 + self.v_band_pct / 100.0)


# ----------------------------------------------------------------------------- violations


_CHECK_RANK: Final[dict[str, int]] = {c: i for i, c in enumerate(sorted(CHECKS))}


class _Rows:
    """Accumulates violation rows as column arrays (no per-row Python work)."""

    def __init__(self) -> None:
        self.cols: dict[str, list[NDArray[Any]]] = {c: [] for c in _VIOLATION_COLUMNS}
        self.check_rank: list[NDArray[np.int64]] = []
        self.item_rank: list[NDArray[np.int64]] = []

    def add(
        self,
        check: str,
        values: NDArray[np.float64],
        mask: NDArray[np.bool_],
        times: NDArray[Any],
        items: NDArray[Any],
        limit: float,
        unit: str,
    ) -> None:
        """Add one row per True entry of ``mask`` (dims: time, item)."""
        ti, ii = np.nonzero(mask)
        n = ti.size
        if n == 0:
            return
        names = items.astype(str).astype(object)
        rank = np.empty(names.size, dtype=np.int64)
        rank[np.argsort(names, kind="stable")] = np.arange(names.size)
        self.cols["time"].append(times[ti])
        self.cols["check"].append(np.full(n, check, dtype=object))
        self.cols["item"].append(names[ii])
        self.cols["value"].append(values[ti, ii].astype(np.float64))
        self.cols["limit"].append(np.full(n, limit, dtype=np.float64))
        self.cols["unit"].append(np.full(n, unit, dtype=object))
        self.check_rank.append(np.full(n, _CHECK_RANK[check], dtype=np.int64))
        self.item_rank.append(rank[ii])

    def frame(self, time_dtype: np.dtype[Any]) -> pd.DataFrame:
        """The rows sorted by time, check (alphabetical), item (alphabetical)."""
        if not self.cols["time"]:
            cols: dict[str, NDArray[Any]] = {
                "time": np.array([], dtype=time_dtype),
                "check": np.array([], dtype=object),
                "item": np.array([], dtype=object),
                "value": np.array([], dtype=np.float64),
                "limit": np.array([], dtype=np.float64),
                "unit": np.array([], dtype=object),
            }
        else:
            cols = {c: np.concatenate(v) for c, v in self.cols.items()}
            order = np.lexsort(
                (
                    np.concatenate(self.item_rank),
                    np.concatenate(self.check_rank),
                    cols["time"],
                )
            )
            cols = {c: v[order] for c, v in cols.items()}
        df = pd.DataFrame(cols)
        return df.astype({"check": str, "item": str, "unit": str})


def _customer_bus_mask(pf: xr.Dataset, buses: NDArray[Any]) -> NDArray[np.bool_]:
    """Boolean mask over ``buses`` of the buses that serve at least one customer.

    Empty bus names (customers without a connected node) are ignored.
    """
    cust = _require(pf, "customer_bus", "limits.where='customers' (use where='all')")
    wanted = np.unique(np.asarray(cust.values).astype(str))
    wanted = wanted[wanted != ""]
    bus_str = buses.astype(str)
    unknown = np.setdiff1d(wanted, bus_str)
    if unknown.size:
        raise UnknownItemError(f"customer bus {unknown[0]!r} is not a bus of the power flow")
    return np.isin(bus_str, wanted)


def _element_coord(pf: xr.Dataset, name: str, why: str) -> NDArray[Any]:
    return np.asarray(_require(pf, name, why).values)


def line_loading_pct(pf: xr.Dataset, why: str = "line loading") -> xr.DataArray:
    """Loading of every rated line, % of ``element_normamps``: its most loaded conductor's
    current magnitude at terminal 1 (NaN where no conductor has a current), dims
    ``(time, element)`` over the lines with a rating > 0."""
    cur = _require(pf, "current", why)
    if set(cur.dims) != {"time", "element", "conductor"}:
        raise Lv3phError(f"pf['current'] must have dims (time, element, conductor); got {tuple(cur.dims)}")
    kind = _element_coord(pf, "element_kind", why).astype(str)
    normamps = _element_coord(pf, "element_normamps", why).astype(np.float64)
    sel = (kind == "line") & np.isfinite(normamps) & (normamps > 0.0)
    cur = cur.transpose("time", "element", "conductor")
    mag = np.abs(np.asarray(cur.values)[:, sel, :])
    nan = np.isnan(mag)
    imax = np.where(nan.all(axis=-1), np.nan, np.where(nan, -np.inf, mag).max(axis=-1)) if sel.any() else mag[..., 0]
    return xr.DataArray(
        imax / normamps[sel][None, :] * 100.0,
        dims=("time", "element"),
        coords={"time": cur["time"].values, "element": np.asarray(cur["element"].values)[sel]},
        attrs={"units": "%"},
    )


def violations(pf: xr.Dataset, unb: xr.Dataset, limits: Limits) -> pd.DataFrame:
    """All limit violations, one row per (time, item, check).

    Parameters
    ----------
    pf:
        Power-flow result: ``current`` (time, element, conductor; complex A) with
        element coords ``element_kind``, ``element_normamps`` (A), ``element_kva``
        (kVA); ``winding_s_kva`` (time, element; kVA, apparent power of the most
        loaded winding); ``customer_bus`` (customer; str). Only what the enabled
        checks need must be present.
    unb:
        Output of :func:`unbalance` for ``pf``.
    limits:
        Limit values; ``None`` disables a check.

    Returns
    -------
    pandas.DataFrame
        Columns ``time`` (time coord value), ``check`` (one of :data:`CHECKS`),
        ``item`` (bus or element name), ``value``, ``limit``, ``unit`` (``"V"`` for
        ``voltage_low``, ``voltage_high``, ``vne``; ``"%"`` otherwise). Sorted by
        ``time``, ``check`` (alphabetically), ``item``; index 0..n-1.

        * ``voltage_low`` / ``voltage_high``: ``vmin_pn_v`` / ``vmax_pn_v`` outside
          ``v_nominal_v * (1 -/+ v_band_pct/100)``;
        * ``vuf``, ``pvur``, ``vne``: ``unb`` variable above its limit;
        * ``line_thermal``: line loading % above ``line_loading_pct``;
        * ``transformer_thermal``: transformer loading % above
          ``transformer_loading_pct``.
    """
    rows = _Rows()

    # --- bus checks (time, bus)
    bus_vars = {
        "voltage_low": "vmin_pn_v",
        "voltage_high": "vmax_pn_v",
        "vuf": "vuf_pct",
        "pvur": "pvur_pct",
        "vne": "vne_v",
    }
    bus_limits: dict[str, tuple[float | None, str]] = {
        "voltage_low": (limits.v_low_v, "V"),
        "voltage_high": (limits.v_high_v, "V"),
        "vuf": (limits.vuf_pct, "%"),
        "pvur": (limits.pvur_pct, "%"),
        "vne": (limits.vne_v, "V"),
    }
    unb_times = np.asarray(unb["time"].values)
    if any(lim is not None for lim, _ in bus_limits.values()):
        buses = np.asarray(unb["bus"].values)
        if limits.where == "customers":
            keep = _customer_bus_mask(pf, buses)
        else:
            keep = np.ones(buses.shape, dtype=bool)
        for check, (lim, unit) in bus_limits.items():
            if lim is None:
                continue
            name = bus_vars[check]
            if name not in unb:
                raise Lv3phError(f"unbalance dataset has no {name!r}, needed for check {check!r}")
            vals = np.asarray(unb[name].transpose("time", "bus").values, dtype=np.float64)
            if check == "voltage_low":
                mask = vals < lim
            else:
                mask = vals > lim
            rows.add(check, vals, mask & keep[None, :], unb_times, buses, lim, unit)

    pf_times = np.asarray(pf["time"].values)

    # --- line thermal (time, element)
    if limits.line_loading_pct is not None:
        why = "check 'line_thermal' (set line_loading_pct to null to disable)"
        loading = line_loading_pct(pf, why)
        if loading.sizes["element"]:
            lim = limits.line_loading_pct
            values = np.asarray(loading.values)
            rows.add("line_thermal", values, values > lim, pf_times, np.asarray(loading["element"].values), lim, "%")

    # --- transformer thermal (time, element)
    if limits.transformer_loading_pct is not None:
        why = "check 'transformer_thermal' (set transformer_loading_pct to null to disable)"
        kind = _element_coord(pf, "element_kind", why).astype(str)
        if (kind == "transformer").any():
            s_kva = _require(pf, "winding_s_kva", why).transpose("time", "element")
            kind_s = np.asarray(s_kva["element_kind"].values).astype(str)
            kva = np.asarray(s_kva["element_kva"].values, dtype=np.float64)
            sel = (kind_s == "transformer") & np.isfinite(kva) & (kva > 0.0)
            elements = np.asarray(s_kva["element"].values)[sel]
            loading = np.asarray(s_kva.values, dtype=np.float64)[:, sel] / kva[sel][None, :] * 100.0
            lim = limits.transformer_loading_pct
            times = np.asarray(s_kva["time"].values)
            rows.add("transformer_thermal", loading, loading > lim, times, elements, lim, "%")

    time_dtype = pf_times.dtype if pf_times.size else unb_times.dtype
    return rows.frame(time_dtype)


def violation_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Summarise :func:`violations` per (check, item).

    Parameters
    ----------
    df:
        Output of :func:`violations`.

    Returns
    -------
    pandas.DataFrame
        Columns ``check``, ``item``, ``n_steps`` (number of violating time steps),
        ``first_time``, ``last_time``, ``worst_value`` (lowest value for
        ``voltage_low``, highest otherwise; in ``unit``), ``worst_time`` (first step at
        which the worst value occurs), ``limit``, ``unit``. Sorted by check, item.
    """
    cols = [
        "check",
        "item",
        "n_steps",
        "first_time",
        "last_time",
        "worst_value",
        "worst_time",
        "limit",
        "unit",
    ]
    missing = set(_VIOLATION_COLUMNS) - set(df.columns)
    if missing:
        raise Lv3phError(f"violation_summary: input lacks column(s) {sorted(missing)}")
    if df.empty:
        empty = pd.DataFrame({c: pd.Series([], dtype=object) for c in cols})
        return empty.astype(
            {
                "check": str,
                "item": str,
                "n_steps": np.int64,
                "first_time": df["time"].dtype,
                "last_time": df["time"].dtype,
                "worst_value": np.float64,
                "worst_time": df["time"].dtype,
                "limit": np.float64,
                "unit": str,
            }
        )
    work = df.sort_values(["time"], kind="stable").reset_index(drop=True)
    severity = np.where(work["check"].to_numpy() == "voltage_low", -1.0, 1.0) * work["value"].to_numpy(dtype=np.float64)
    work = work.assign(_severity=severity)
    grouped = work.groupby(["check", "item"], sort=True)
    out = grouped.agg(
        n_steps=("time", "size"),
        first_time=("time", "min"),
        last_time=("time", "max"),
        limit=("limit", "first"),
        unit=("unit", "first"),
    )
    worst_idx = grouped["_severity"].idxmax()
    out["worst_value"] = work["value"].to_numpy()[worst_idx.to_numpy()]
    out["worst_time"] = work["time"].to_numpy()[worst_idx.to_numpy()]
    out["n_steps"] = out["n_steps"].astype(np.int64)
    return out.reset_index()[cols]
