"""The only package that talks to OpenDSS (through ``opendssdirect.py``).

An :class:`Engine` owns one OpenDSS context (a separate DSS instance, so several engines
can live in one process, e.g. one per Dask worker). It compiles a model, extracts it as
plain arrays (:class:`lv3ph.model.FeederModel`), and runs OpenDSS's own time modes step
by step, returning the complex node voltages of every step. Everything else (currents,
losses, unbalance, allocation) is derived from those voltages and the primitive
admittances, in bulk, outside this package.

``engine`` holds :class:`Engine` (compile, extract, solve); ``devices`` its fast device
set-points and reads (:class:`~lv3ph.dss.devices.Devices`, a base of :class:`Engine`).
"""

from lv3ph.dss.engine import MODES, Engine, parse_stepsize

__all__ = ["MODES", "Engine", "parse_stepsize"]
