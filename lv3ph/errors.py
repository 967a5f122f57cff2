"""Typed errors of lv3ph.

Every error lv3ph raises for bad input derives from :class:`Lv3phError`, which is a
:class:`ValueError` (as xarray's domain errors are). Messages name the offending item
(file, element, bus, step, contract row) in one line; the CLI prints that line and
exits with code 2.
"""

from __future__ import annotations


class Lv3phError(ValueError):
    """Base class of all lv3ph input and model errors."""


class ModelError(Lv3phError):
    """The OpenDSS model is missing, does not compile or contains an unsupported element."""


class ConvergenceError(Lv3phError):
    """OpenDSS did not converge at a time step."""


class ProfileError(Lv3phError):
    """A time series (load shape, PV profile) has NaN values or the wrong length."""


class ContractError(Lv3phError):
    """A P2P contract is invalid (unknown customer, bad kW, wrong time, oversold ...)."""


class StudyError(Lv3phError):
    """A study file is invalid (unknown key, bad value, missing model ...)."""


class UnknownItemError(Lv3phError):
    """A bus, element or customer name does not exist in the model."""


class IsolatedCustomerWarning(UserWarning):
    """Customers on isolated nodes were dropped from the model (``drop_isolated``)."""


class SchedulerError(Lv3phError):
    """A Dask scheduler given by address cannot be reached."""


class OutputError(Lv3phError):
    """An output file or folder cannot be written (a folder in the way, no permission ...)."""
