"""Prosumers: rooftop PV output profiles, PV placement and home-battery dispatch.

Pure functions on numpy arrays; nothing here talks to OpenDSS.

Sign convention (as everywhere in lv3ph): a customer's net power ``net_kw`` is *drawn*
power, positive = consumption (load convention): consumption - PV - battery discharge;
negative = exporting. A battery's power ``battery_kw`` is also drawn power: positive =
charging, negative = discharging, so the customer's net power with the battery is
``net_kw + battery_kw``.

Time steps are integer step indices, 1-based: step ``k`` is at ``date 00:00 + k *
stepsize`` (the step's end; a 60 s study has step 1 at 00:01 and step 1440 at 24:00).

* :func:`pv_profile_kw_per_kwp` -- PV AC output per kWp for each step (pvlib).
* :func:`place_pv` -- reproducible choice of PV customers and their sizes (kWp).
* :class:`Battery`, :func:`dispatch_self_consumption`, :func:`dispatch_p2p` -- battery
  power (kW) and state of charge (fraction of kWh) per step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from lv3ph.errors import ProfileError, StudyError

__all__ = [
    "CLEAR_SKY_TEMP_AIR_C",
    "DEFAULT_ALTITUDE_M",
    "DEFAULT_LATITUDE",
    "DEFAULT_LONGITUDE",
    "DEFAULT_TZ",
    "DEFAULT_WIND_SPEED_M_S",
    "GAMMA_PDC_PER_C",
    "INVERTER_EFFICIENCY",
    "Battery",
    "dispatch_p2p",
    "dispatch_self_consumption",
    "place_pv",
    "pv_profile_kw_per_kwp",
]

# Default site for the IEEE European LV Test Feeder. The published feeder is a UK-style
# 416 V network (its load shapes come from UK smart-meter style data), but the test case
# gives no location, so lv3ph assumes Manchester, UK (53.48 N, 2.24 W, ~40 m above sea
# level, Europe/London clock). Pass your own latitude/longitude for other feeders.
DEFAULT_LATITUDE: Final[float] = 53.48
DEFAULT_LONGITUDE: Final[float] = -2.24
DEFAULT_ALTITUDE_M: Final[float] = 40.0
DEFAULT_TZ: Final[str] = "Europe/London"

#: PVWatts DC temperature coefficient of power, 1/degC (-0.4 %/degC, crystalline Si).
GAMMA_PDC_PER_C: Final[float] = -0.004
#: Nominal inverter efficiency (PVWatts default); inverter AC rating = 1 kW per kWp.
INVERTER_EFFICIENCY: Final[float] = 0.96
#: Ambient air temperature used with clear-sky irradiance (no weather file), degC:
#: a warm summer afternoon in the UK, so clear-sky output is not optimistic.
CLEAR_SKY_TEMP_AIR_C: Final[float] = 20.0
#: Wind speed used when the weather file has no ``wind_speed`` column, m/s.
DEFAULT_WIND_SPEED_M_S: Final[float] = 1.0
# Cell temperature: SAPM "open rack glass/polymer". UK domestic arrays are glass/polymer
# modules on roof rails with a ventilated gap; the cooler open-rack set errs towards more
# PV power, which is the conservative side for voltage-rise / hosting-capacity studies.
_SAPM_MOUNT: Final[str] = "open_rack_glass_polymer"
_WEATHER_REQUIRED: Final[tuple[str, ...]] = ("time", "ghi", "dni", "dhi")
_WEATHER_OPTIONAL: Final[tuple[str, ...]] = ("temp_air", "wind_speed")


# ------------------------------------------------------------------------------- PV


def _step_times(date: str, stepsize_s: float, start: int, steps: int, tz: str) -> pd.DatetimeIndex:
    """Timestamps of steps ``start .. start+steps-1`` (elapsed time from local midnight)."""
    if not (math.isfinite(stepsize_s) and stepsize_s > 0):
        raise StudyError(f"stepsize_s must be > 0 s, got {stepsize_s}")
    if steps < 1:
        raise StudyError(f"steps must be >= 1, got {steps}")
    if start < 0:
        raise StudyError(f"start must be >= 0, got {start}")
    try:
        midnight = pd.Timestamp(date).normalize()
        midnight = midnight.tz_localize(tz) if midnight.tzinfo is None else midnight.tz_convert(tz)
    except (ValueError, TypeError, KeyError) as exc:  # bad date string or unknown zone
        raise StudyError(f"PV profile: bad date {date!r} or time zone {tz!r}: {exc}") from exc
    k = np.arange(start, start + steps, dtype=np.float64)
    return pd.DatetimeIndex(midnight + pd.to_timedelta(k * stepsize_s, unit="s"))


def _read_weather(path: Path, times: pd.DatetimeIndex, start: int) -> pd.DataFrame:
    """Read and validate a weather CSV; return columns ghi, dni, dhi, temp_air, wind_speed."""
    where = f"weather file {path}"
    try:
        raw = pd.read_csv(path)
    except FileNotFoundError as exc:
        raise ProfileError(f"{where}: file not found") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{where}: not a readable CSV ({exc})") from exc
    raw.columns = [str(c).strip().lower() for c in raw.columns]
    missing = [c for c in _WEATHER_REQUIRED if c not in raw.columns]
    if missing:
        raise ProfileError(
            f"{where}: missing column(s) {', '.join(missing)} "
            f"(required: {', '.join(_WEATHER_REQUIRED)}; optional: {', '.join(_WEATHER_OPTIONAL)})"
        )
    if len(raw) != len(times):
        raise ProfileError(f"{where}: has {len(raw)} data rows, expected {len(times)} (one per step)")
    out = pd.DataFrame(index=times)
    for col in ("ghi", "dni", "dhi", *_WEATHER_OPTIONAL):
        if col not in raw.columns:
            continue
        values = pd.to_numeric(raw[col], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            line = int(bad[0]) + 2  # 1-based, line 1 is the header
            raise ProfileError(f"{where}: column {col} has {bad.size} NaN/non-numeric value(s), first at line {line}")
        if col in ("ghi", "dni", "dhi", "wind_speed") and (values < 0).any():
            line = int(np.flatnonzero(values < 0)[0]) + 2
            raise ProfileError(f"{where}: column {col} is negative at line {line}")
        out[col] = values
    _check_weather_time(raw["time"], times, start, where)
    if "temp_air" not in out:
        out["temp_air"] = CLEAR_SKY_TEMP_AIR_C
    if "wind_speed" not in out:
        out["wind_speed"] = DEFAULT_WIND_SPEED_M_S
    return out


def _check_weather_time(col: pd.Series, times: pd.DatetimeIndex, start: int, where: str) -> None:
    """The ``time`` column holds step indices or timestamps matching the requested steps."""
    numeric = pd.to_numeric(col, errors="coerce")
    if numeric.notna().all():
        expected = np.arange(start, start + len(times))
        got = numeric.to_numpy(dtype=np.float64)
        bad = np.flatnonzero(got != expected)
        if bad.size:
            i = int(bad[0])
            raise ProfileError(
                f"{where}: line {i + 2}: time {col.iloc[i]} is not step {expected[i]} "
                f"(time must hold the step indices {start}..{start + len(times) - 1} or timestamps)"
            )
        return
    try:
        try:
            stamps = pd.DatetimeIndex(pd.to_datetime(col, errors="raise"))
        except ValueError:  # e.g. UTC offsets changing across a DST switch
            stamps = pd.DatetimeIndex(pd.to_datetime(col, errors="raise", utc=True))
    except (ValueError, TypeError) as exc:
        raise ProfileError(f"{where}: time column is neither step indices nor timestamps ({exc})") from exc
    stamps = stamps.tz_localize(times.tz) if stamps.tz is None else stamps.tz_convert(times.tz)
    bad = np.flatnonzero(stamps != times)
    if bad.size:
        i = int(bad[0])
        raise ProfileError(f"{where}: line {i + 2}: time {col.iloc[i]} is not the step time {times[i]}")


def pv_profile_kw_per_kwp(
    *,
    latitude: float,
    longitude: float,
    date: str,
    stepsize_s: float,
    start: int,
    steps: int,
    tz: str = "UTC",
    altitude: float = 0,
    tilt: float = 30,
    azimuth: float = 180,
    weather_file: Path | None = None,
    system_loss_pct: float = 14.0,
) -> NDArray[np.float64]:
    """PV AC output per installed kWp (kW/kWp, >= 0) for steps ``start .. start+steps-1``.

    Step ``k`` is the instant ``date 00:00 (local time in tz) + k * stepsize_s`` seconds of
    elapsed time (so a DST change shifts the wall clock, not the step spacing). The model
    chain (pvlib) is:

    1. Irradiance: clear-sky Ineichen (``Location.get_clearsky``, climatological Linke
       turbidity) or, if ``weather_file`` is given, GHI/DNI/DHI (W/m2) from that CSV.
    2. Transposition to the plane of array (``tilt`` degrees from horizontal, ``azimuth``
       degrees east of north, 180 = south) with the Hay-Davies sky-diffuse model, albedo
       0.25; beam reflection loss with the physical IAM model.
    3. Cell temperature: SAPM, open-rack glass/polymer; ambient ``temp_air`` from the
       file or :data:`CLEAR_SKY_TEMP_AIR_C`, wind from the file or 1 m/s.
    4. PVWatts DC with gamma = -0.4 %/degC, then ``system_loss_pct`` % DC losses (soiling,
       shading, mismatch, wiring, ...; PVWatts default 14 %), then the PVWatts inverter
       (96 % nominal efficiency, AC rating 1 kW per kWp).

    Weather CSV: columns ``time``, ``ghi``, ``dni``, ``dhi`` (W/m2), optional ``temp_air``
    (degC) and ``wind_speed`` (m/s); one row per step; ``time`` holds either the step
    indices or timestamps equal to the step times (naive timestamps are local in ``tz``).
    A missing column, NaN / non-numeric / negative value, wrong row count or mismatching
    time raises :class:`~lv3ph.errors.ProfileError` naming the file and the problem.

    Returns an array of shape ``(steps,)`` in kW per kWp (multiply by kWp for kW).
    """
    # Imported here: pvlib is only needed for PV profiles and takes ~0.5 s to import.
    import pvlib

    if not (0.0 <= system_loss_pct < 100.0):
        raise StudyError(f"system_loss_pct must be in [0, 100), got {system_loss_pct}")
    if not (-90.0 <= latitude <= 90.0 and -180.0 <= longitude <= 180.0):
        raise StudyError(f"PV site: latitude {latitude} / longitude {longitude} out of range")
    if not (0.0 <= tilt <= 90.0):
        raise StudyError(f"PV tilt must be in [0, 90] degrees, got {tilt}")
    times = _step_times(date, stepsize_s, start, steps, tz)
    site = pvlib.location.Location(latitude, longitude, tz=tz, altitude=altitude)
    solpos = site.get_solarposition(times)
    if weather_file is None:
        weather = site.get_clearsky(times, model="ineichen", solar_position=solpos)
        weather["temp_air"] = CLEAR_SKY_TEMP_AIR_C
        weather["wind_speed"] = DEFAULT_WIND_SPEED_M_S
    else:
        weather = _read_weather(Path(weather_file), times, start)

    dni_extra = pvlib.irradiance.get_extra_radiation(times)
    poa = pvlib.irradiance.get_total_irradiance(
        surface_tilt=tilt,
        surface_azimuth=azimuth,
        solar_zenith=solpos["apparent_zenith"],
        solar_azimuth=solpos["azimuth"],
        dni=weather["dni"],
        ghi=weather["ghi"],
        dhi=weather["dhi"],
        dni_extra=dni_extra,
        model="haydavies",
    )
    aoi = pvlib.irradiance.aoi(tilt, azimuth, solpos["apparent_zenith"], solpos["azimuth"])
    iam = pvlib.iam.physical(aoi)
    effective = (poa["poa_direct"] * iam + poa["poa_diffuse"]).fillna(0.0).clip(lower=0.0)
    params = pvlib.temperature.TEMPERATURE_MODEL_PARAMETERS["sapm"][_SAPM_MOUNT]
    temp_cell = pvlib.temperature.sapm_cell(
        poa["poa_global"].fillna(0.0),
        weather["temp_air"],
        weather["wind_speed"],
        **params,
    )
    pdc = pvlib.pvsystem.pvwatts_dc(effective, temp_cell, pdc0=1.0, gamma_pdc=GAMMA_PDC_PER_C)
    pdc = pdc * (1.0 - system_loss_pct / 100.0)
    pac = pvlib.inverter.pvwatts(pdc, pdc0=1.0 / INVERTER_EFFICIENCY, eta_inv_nom=INVERTER_EFFICIENCY)
    out = np.clip(np.asarray(pac, dtype=np.float64), 0.0, None)
    out[~np.isfinite(out)] = 0.0
    return out


def place_pv(
    customers: Sequence[str],
    *,
    share: float,
    kwp: float | Mapping[str, float] | tuple[float, float],
    seed: int,
) -> dict[str, float]:
    """Choose which customers get PV and how big (kWp), reproducibly.

    ``round(share * n)`` customers (n = ``len(customers)``, rounding half up, so 2.5 -> 3)
    are drawn without replacement with ``numpy.random.default_rng(seed)``. Sizes:

    * ``float`` -- every chosen customer gets that many kWp;
    * ``(low, high)`` -- uniform in [low, high] kWp, drawn from the same generator;
    * ``Mapping`` customer -> kWp -- the chosen customers' own sizes (every chosen customer
      must be in the mapping).

    Returns ``{customer: kWp}`` in the order of ``customers``. The same inputs and seed
    always give the same result.
    """
    names = list(customers)
    if len({c.lower() for c in names}) != len(names):
        raise StudyError("place_pv: customer names are not unique (case-insensitive)")
    try:
        share = float(share)
    except (TypeError, ValueError) as exc:
        raise StudyError(f"place_pv: share must be a number, got {share!r}") from exc
    if not 0.0 <= share <= 1.0:
        raise StudyError(f"place_pv: share must be in [0, 1], got {share}")
    n = len(names)
    count = math.floor(share * n + 0.5 + 1e-9)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(n, size=count, replace=False)) if count else np.array([], dtype=int)
    if isinstance(kwp, tuple):
        if len(kwp) != 2:
            raise StudyError(f"place_pv: kwp range must be (low, high), got {kwp}")
        low, high = float(kwp[0]), float(kwp[1])
        if not (math.isfinite(low) and math.isfinite(high) and 0.0 < low <= high):
            raise StudyError(f"place_pv: kwp range must satisfy 0 < low <= high, got {kwp}")
        sizes = rng.uniform(low, high, size=count)
    elif isinstance(kwp, Mapping):
        missing = [names[i] for i in chosen if names[i] not in kwp]
        if missing:
            raise StudyError(f"place_pv: no kwp given for chosen customer(s) {', '.join(missing)}")
        sizes = np.array([float(kwp[names[i]]) for i in chosen], dtype=np.float64)
    else:
        try:
            sizes = np.full(count, float(kwp))
        except (TypeError, ValueError) as exc:
            raise StudyError(f"place_pv: kwp must be kWp, (low, high) or a mapping, got {kwp!r}") from exc
    if not np.all(np.isfinite(sizes) & (sizes > 0.0)):
        raise StudyError(f"place_pv: kwp must be finite and > 0, got {kwp}")
    return {names[i]: float(s) for i, s in zip(chosen, sizes, strict=True)}


# -------------------------------------------------------------------------- battery


@dataclass(frozen=True)
class Battery:
    """A home battery.

    ``kwh`` usable-capacity basis (kWh), ``kw`` charge/discharge power limit (kW, both
    directions), ``efficiency`` round-trip efficiency (split as sqrt on charge and on
    discharge), ``soc0`` initial state of charge and ``soc_min``/``soc_max`` limits as
    fractions of ``kwh``.
    """

    kwh: float
    kw: float
    efficiency: float = 0.95
    soc0: float = 0.5
    soc_min: float = 0.1
    soc_max: float = 0.9

    def __post_init__(self) -> None:
        if not (math.isfinite(self.kwh) and self.kwh > 0.0):
            raise StudyError(f"Battery: kwh must be > 0, got {self.kwh}")
        if not (math.isfinite(self.kw) and self.kw >= 0.0):
            raise StudyError(f"Battery: kw must be >= 0, got {self.kw}")
        if not (0.0 < self.efficiency <= 1.0):
            raise StudyError(f"Battery: efficiency must be in (0, 1], got {self.efficiency}")
        if not (0.0 <= self.soc_min <= self.soc0 <= self.soc_max <= 1.0):
            raise StudyError(
                "Battery: need 0 <= soc_min <= soc0 <= soc_max <= 1, got "
                f"soc_min={self.soc_min}, soc0={self.soc0}, soc_max={self.soc_max}"
            )


def _battery_arrays(battery: Battery | Sequence[Battery], n: int | None) -> dict[str, NDArray[np.float64]]:
    """Battery parameters as arrays of shape (n,) (or (1,) for one battery and 1-D net)."""
    if isinstance(battery, Battery):
        batts = [battery] * (n or 1)
    else:
        batts = list(battery)
        if len(batts) != (n or 1):
            raise StudyError(f"need one Battery per customer column ({n}), got {len(batts)}")
    fields = ("kwh", "kw", "efficiency", "soc0", "soc_min", "soc_max")
    return {f: np.array([getattr(b, f) for b in batts], dtype=np.float64) for f in fields}


def _net_2d(net_kw: ArrayLike, what: str) -> tuple[NDArray[np.float64], bool]:
    arr = np.asarray(net_kw, dtype=np.float64)
    if arr.ndim not in (1, 2) or arr.shape[0] == 0:
        raise ProfileError(f"{what}: net_kw must have shape (steps,) or (steps, customers), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ProfileError(f"{what}: net_kw has NaN/inf values")
    return (arr[:, None], True) if arr.ndim == 1 else (arr, False)


def _per_step(x: float | ArrayLike, steps: int, what: str) -> NDArray[np.float64]:
    arr = np.asarray(x, dtype=np.float64)
    arr = np.broadcast_to(arr, (steps,)) if arr.ndim == 0 else arr
    if arr.shape != (steps,):
        raise ProfileError(f"{what}: expected a scalar or shape ({steps},), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ProfileError(f"{what}: has NaN/inf values")
    return arr


def _dispatch(
    net: NDArray[np.float64],
    target: NDArray[np.float64],
    b: dict[str, NDArray[np.float64]],
    dt_h: float,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Follow a desired battery power ``target`` (kW, + charge) within kW and SoC limits.

    Loops over steps (SoC is carried), vectorised over customers.
    """
    if not (math.isfinite(dt_h) and dt_h > 0.0):
        raise StudyError(f"dt_h must be > 0 h, got {dt_h}")
    steps, n = net.shape
    eta = np.sqrt(b["efficiency"])
    kwh, kw, lo, hi = b["kwh"], b["kw"], b["soc_min"], b["soc_max"]
    p = np.empty((steps, n))
    soc = np.empty((steps + 1, n))
    soc[0] = b["soc0"]
    s = soc[0].copy()
    for t in range(steps):
        # Largest charge / discharge power (kW, at the customer's meter) the SoC allows.
        room_ch = (hi - s) * kwh / (dt_h * eta)
        room_dis = (s - lo) * kwh * eta / dt_h
        pt = np.clip(target[t], -np.minimum(kw, room_dis), np.minimum(kw, room_ch))
        s = s + np.where(pt > 0.0, pt * eta, pt / eta) * dt_h / kwh
        s = np.clip(s, lo, hi)  # rounding only
        p[t] = pt
        soc[t + 1] = s
    return p, soc


def dispatch_self_consumption(
    net_kw: ArrayLike,
    battery: Battery | Sequence[Battery],
    dt_h: float,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Self-consumption dispatch: charge from the customer's surplus, discharge to cover demand.

    ``net_kw`` (kW, drawn positive, *without* the battery) has shape ``(steps,)`` or
    ``(steps, customers)`` (then ``battery`` is one Battery for all or one per column);
    ``dt_h`` is the step length in hours. At each step the battery charges with
    ``min(surplus, kw, room to soc_max)`` or discharges with ``min(demand, kw, energy above
    soc_min)``; the customer never imports to charge nor exports from the battery.
    Charging ``p`` kW for ``dt_h`` adds ``p * dt_h * sqrt(eff)`` kWh; discharging ``p`` kW
    removes ``p * dt_h / sqrt(eff)`` kWh.

    Returns ``(battery_kw, soc)``: battery power (kW, positive = charging, i.e. drawn; the
    new net power is ``net_kw + battery_kw``), shape like ``net_kw``; state of charge
    (fraction of kWh) with shape ``(steps + 1, ...)``, ``soc[0] = soc0`` and ``soc[k]`` at the
    end of step k, always within ``[soc_min, soc_max]``.
    """
    net, flat = _net_2d(net_kw, "dispatch_self_consumption")
    b = _battery_arrays(battery, None if flat else net.shape[1])
    p, soc = _dispatch(net, -net, b, dt_h)
    return (p[:, 0], soc[:, 0]) if flat else (p, soc)


def dispatch_p2p(
    net_kw: ArrayLike,
    local_price: float | ArrayLike,
    grid_import_price: float | ArrayLike,
    grid_export_price: float | ArrayLike,
    battery: Battery | Sequence[Battery],
    dt_h: float,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Price-responsive dispatch for a P2P community (simple rule, no look-ahead).

    Prices in EUR/kWh, scalars or shape ``(steps,)``; ``local_price`` is the expected
    local market price of each step (e.g. from a previous clearing or a forecast). With
    ``mid = (grid_import_price + grid_export_price) / 2``, per step:

    * ``local_price < mid`` (local energy is cheap, i.e. the community has surplus):
      charge at full power ``kw`` -- from the customer's own surplus first, the rest bought
      in the local market (drawn power);
    * ``local_price > mid`` (local energy is dear, i.e. the community is short):
      discharge at full power -- covering the customer's demand and selling the rest into
      the local market (exported power);
    * ``local_price == mid`` (e.g. the "mid" price rule): self-consumption as
      :func:`dispatch_self_consumption`.

    kW and SoC limits, efficiency, shapes and the returned ``(battery_kw, soc)`` are as in
    :func:`dispatch_self_consumption` (battery_kw positive = charging).
    """
    net, flat = _net_2d(net_kw, "dispatch_p2p")
    steps = net.shape[0]
    b = _battery_arrays(battery, None if flat else net.shape[1])
    lp = _per_step(local_price, steps, "dispatch_p2p: local_price")
    imp = _per_step(grid_import_price, steps, "dispatch_p2p: grid_import_price")
    exp = _per_step(grid_export_price, steps, "dispatch_p2p: grid_export_price")
    if (exp > imp).any():
        raise StudyError("dispatch_p2p: grid_export_price exceeds grid_import_price")
    mid = (imp + exp) / 2.0
    big = np.inf  # clipped to kW/SoC limits by _dispatch
    target = np.where((lp < mid)[:, None], big, np.where((lp > mid)[:, None], -big, -net))
    p, soc = _dispatch(net, target, b, dt_h)
    return (p[:, 0], soc[:, 0]) if flat else (p, soc)
