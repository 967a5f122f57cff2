"""Result files: written atomically (temporary file in the same folder, then renamed).

netCDF cannot hold complex numbers, so complex variables are stored as two real
variables ``<name>_re`` and ``<name>_im`` (attribute ``complex_parts``) and joined again by
:func:`read_dataset`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from lv3ph.errors import OutputError


def check_output(path: str | Path, *, folder: bool = False) -> None:
    """Raise :class:`OutputError` unless ``path`` can be written as a file (or, with
    ``folder``, created as a folder): run before a long calculation, so that a bad
    ``--out`` fails at once and leaves nothing behind."""
    target = Path(path)
    if target.exists() and target.is_dir() != folder:
        raise OutputError(f"cannot write {target}: it is {'a file' if folder else 'a folder'}")
    parent = target if folder else target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {target}: {parent} is not a writable folder")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only on success.

    Raises:
        OutputError: the folder cannot be created or ``path`` cannot be replaced.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; results are ordinary files
        try:
            os.replace(tmp, target)
        except OSError as exc:
            raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_atomic(path: str | Path, writer: Callable[[Path], object]) -> Path:
    """Call ``writer(tmp_path)`` and move the result to ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def _split_complex(ds: xr.Dataset) -> xr.Dataset:
    out = ds.copy()
    for name in [str(n) for n in ds.data_vars]:
        var = ds[name]
        if np.iscomplexobj(var.values):
            attrs = dict(var.attrs)
            out[f"{name}_re"] = var.real.assign_attrs(attrs, complex_parts=name)
            out[f"{name}_im"] = var.imag.assign_attrs(attrs, complex_parts=name)
            out = out.drop_vars(name)
    return out


def write_dataset(ds: xr.Dataset, path: str | Path) -> Path:
    """Write a result Dataset to netCDF (h5netcdf), complex variables split, atomically."""
    plain = _split_complex(ds)
    return write_atomic(path, lambda tmp: plain.to_netcdf(tmp, engine="h5netcdf"))


def read_dataset(path: str | Path) -> xr.Dataset:
    """Read a Dataset written by :func:`write_dataset`, joining complex parts."""
    ds = xr.load_dataset(path, engine="h5netcdf")
    for name in [str(n) for n in ds.data_vars if str(n).endswith("_re") and "complex_parts" in ds[n].attrs]:
        base = ds[name].attrs["complex_parts"]
        attrs = {k: v for k, v in ds[name].attrs.items() if k != "complex_parts"}
        ds[base] = (ds[name] + 1j * ds[f"{base}_im"]).assign_attrs(attrs)
        ds = ds.drop_vars([name, f"{base}_im"])
    return ds


def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a table to CSV atomically (no index)."""
    return write_atomic(path, lambda tmp: df.to_csv(tmp, index=False, float_format="%.10g"))
