"""Result files: written atomically (temporary file in the same folder, then renamed).

netCDF cannot hold complex numbers, so complex variables are stored as two real
variables ``<name>_re`` and ``<name>_im`` (attribute ``complex_parts``) and joined again by
:func:`read_dataset` and :func:`open_result`.

Long runs stream into a zarr store (:class:`BlockStore`): blocks of steps are appended in
order as they are solved, so memory is bounded by the block. The store is built under
``<out>.incomplete`` and renamed to ``<out>`` only when the run is complete; its progress
(steps and intervals written) is kept in ``lv3ph_progress.json``, replaced atomically after
each block, so a killed run leaves a store that says how far it got and can be resumed
(data beyond the recorded progress is cut off on reopening).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
import zarr

from lv3ph.errors import Lv3phError, OutputError

#: Suffix of a store whose run has not finished.
INCOMPLETE = ".incomplete"
#: Dimensions a :class:`BlockStore` appends along.
APPEND_DIMS = ("time", "interval")
_PROGRESS = "lv3ph_progress.json"


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
        if var.dtype.kind == "c":  # (not .values: a lazy variable stays lazy)
            attrs = dict(var.attrs)
            out[f"{name}_re"] = var.real.assign_attrs(attrs, complex_parts=name)
            out[f"{name}_im"] = var.imag.assign_attrs(attrs, complex_parts=name)
            out = out.drop_vars(name)
    return out


def write_dataset(ds: xr.Dataset, path: str | Path) -> Path:
    """Write a result Dataset to netCDF (h5netcdf), complex variables split, atomically."""
    plain = _split_complex(ds)
    return write_atomic(path, lambda tmp: plain.to_netcdf(tmp, engine="h5netcdf"))


def _join_complex(ds: xr.Dataset) -> xr.Dataset:
    """Inverse of :func:`_split_complex` (lazy on dask-backed input)."""
    for name in [str(n) for n in ds.data_vars if str(n).endswith("_re") and "complex_parts" in ds[n].attrs]:
        base = ds[name].attrs["complex_parts"]
        attrs = {k: v for k, v in ds[name].attrs.items() if k != "complex_parts"}
        ds[base] = (ds[name] + 1j * ds[f"{base}_im"]).assign_attrs(attrs)
        ds = ds.drop_vars([name, f"{base}_im"])
    return ds


def read_dataset(path: str | Path) -> xr.Dataset:
    """Read a Dataset written by :func:`write_dataset`, joining complex parts."""
    return _join_complex(xr.load_dataset(path, engine="h5netcdf"))


def is_store(path: str | Path) -> bool:
    """True if ``path`` is a zarr store (a folder lv3ph may replace with a new result)."""
    return (Path(path) / "zarr.json").is_file()


def incomplete_path(out: str | Path) -> Path:
    """Where the store of ``out`` is built until its run is complete."""
    p = Path(out)
    return p.with_name(p.name + INCOMPLETE)


def _objects(ds: xr.Dataset) -> xr.Dataset:
    """Fixed-width unicode variables as Python strings (zarr v3 has a spec for those only)."""
    out = ds.copy()
    for name, var in ds.variables.items():
        if var.dtype.kind == "U":
            out[name] = var.astype(object)
    return out


class BlockStore:
    """A zarr store that receives a run block by block along ``time`` and ``interval``.

    Blocks must arrive in order: the first time (interval) of a block must follow the last
    one written, so blocks solved by separate processes can be appended one after the
    other. Variables without an append dimension are written with the first block.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        #: the store's arrays along an append dimension, opened once for the appends after the first block
        self._arrays: dict[str, zarr.Array] | None = None

    @classmethod
    def create(cls, out: str | Path, attrs: Mapping[str, Any]) -> BlockStore:
        """Start a new store for ``out`` (replacing an unfinished one) with run attributes."""
        path = incomplete_path(out)
        if path.exists():
            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        group = zarr.open_group(str(path), mode="w-")
        group.attrs.update({**attrs, "lv3ph_complete": 0})
        store = cls(path)
        store._write_progress(dict.fromkeys(APPEND_DIMS, 0))
        return store

    @classmethod
    def reopen(cls, out: str | Path) -> BlockStore:
        """Reopen the unfinished store of ``out``, cutting off data past its recorded progress."""
        path = incomplete_path(out)
        if not (path / _PROGRESS).is_file():
            if Path(out).exists():
                raise Lv3phError(f"{out} is complete: nothing to resume")
            raise Lv3phError(f"no unfinished run to resume at {path}")
        store = cls(path)
        done = store.progress()
        group = zarr.open_group(str(path), mode="r+")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=f".*{_PROGRESS}.*")
            arrays = list(group.arrays())
        for _, arr in arrays:
            dim = _first_dim(arr)
            if dim in done and arr.shape[0] != done[dim]:
                arr.resize((done[dim], *arr.shape[1:]))
        return store

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(zarr.open_group(str(self.path), mode="r").attrs)

    def progress(self) -> dict[str, int]:
        """Entries written along each append dimension."""
        return {k: int(v) for k, v in json.loads((self.path / _PROGRESS).read_text()).items()}

    def _write_progress(self, done: Mapping[str, int]) -> None:
        write_atomic(self.path / _PROGRESS, lambda tmp: tmp.write_text(json.dumps(dict(done))))

    def append(self, block: xr.Dataset, chunks: Mapping[str, int] | None = None) -> None:
        """Append a block (Dataset over ``time`` and/or ``interval``); complex values split.

        ``chunks`` (dim -> length) sets the chunking when a dimension is first written
        (default: the block's length).
        """
        plain = _objects(_split_complex(block))
        done = self.progress()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)  # zarr v3 consolidated-metadata notes
            if all(v == 0 for v in done.values()):
                # uncompressed: float64 physics barely compresses and compressing costs more than the capture
                enc = {
                    str(n): {
                        "chunks": tuple((chunks or {}).get(str(d), s) for d, s in zip(v.dims, v.shape, strict=True)),
                        "compressors": None,
                    }
                    for n, v in plain.variables.items()
                    if v.ndim
                }
                # xarray replaces the group's attrs
                plain.assign_attrs(self.attrs).to_zarr(str(self.path), mode="a", consolidated=False, encoding=enc)
            else:  # straight into the zarr arrays: xarray's to_zarr costs ~0.1 s per call here
                arrays = self._append_arrays()
                self._check_order(arrays, plain, done)
                for name, var in plain.variables.items():
                    if var.ndim and var.dims[0] in APPEND_DIMS:
                        arr = arrays.get(str(name))
                        if arr is None or arr.shape[1:] != var.shape[1:]:
                            raise Lv3phError(f"block variable {name} does not fit the store {self.path}")
                        arr.append(np.asarray(var.values), axis=0)
        self._write_progress({d: done[d] + int(plain.sizes.get(d, 0)) for d in APPEND_DIMS})

    def _append_arrays(self) -> dict[str, zarr.Array]:
        """The store's arrays whose first dimension is an append dimension (opened once)."""
        if self._arrays is None:
            group = zarr.open_group(str(self.path), mode="r+")
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=f".*{_PROGRESS}.*")
                arrays = list(group.arrays())
            self._arrays = {name: arr for name, arr in arrays if _first_dim(arr) in APPEND_DIMS}
        return self._arrays

    @staticmethod
    def _check_order(arrays: Mapping[str, zarr.Array], block: xr.Dataset, done: Mapping[str, int]) -> None:
        """Blocks must continue the stored index of each append dimension (time, interval)."""
        for dim in APPEND_DIMS:
            if dim in block.dims and dim in block.coords and done[dim]:
                arr = arrays[dim]
                last = int(np.asarray(arr[done[dim] - 1]))
                first = int(block[dim].values[0])
                if first <= last:
                    raise Lv3phError(f"block starts at {dim} {first} but the store already holds up to {last}")

    def add(self, ds: xr.Dataset) -> None:
        """Write variables that are not appended (e.g. the final statistics)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)
            plain = _objects(_split_complex(ds))
            plain.attrs = {**plain.attrs, **self.attrs}
            plain.to_zarr(str(self.path), mode="a", consolidated=False)

    def open(self) -> xr.Dataset:
        """The store as it is now, lazily (complex parts joined)."""
        return _open_zarr(self.path)

    def read(self, names: list[str]) -> xr.Dataset:
        """The real-valued variables ``names`` of the store as it is now, read on access
        without dask (a slice reads only its part of the store)."""
        return _open_zarr(self.path, names)

    def finish(self, out: str | Path) -> Path:
        """Mark the store complete and move it to ``out`` (replacing what was there)."""
        group = zarr.open_group(str(self.path), mode="r+")
        group.attrs["lv3ph_complete"] = 1
        target = Path(out)
        if target.exists() and not is_store(target):
            raise OutputError(f"cannot write {target}: it is not a result store (left as it is)")
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            if old.exists():
                shutil.rmtree(old) if old.is_dir() else old.unlink()
            target.rename(old)
            self.path.rename(target)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            self.path.rename(target)
        self.path = target
        return target

    def discard(self) -> None:
        """Remove the unfinished store (the run failed on bad input; resuming cannot help)."""
        shutil.rmtree(self.path, ignore_errors=True)


def _first_dim(arr: zarr.Array) -> str | None:
    dims = arr.metadata.dimension_names or ()  # type: ignore[union-attr]
    return str(dims[0]) if dims else None


def _open_zarr(path: Path, names: list[str] | None = None) -> xr.Dataset:
    """The store at ``path``, dask-backed; with ``names`` only those variables, without dask."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        warnings.filterwarnings("ignore", message=f".*{_PROGRESS}.*")
        if names is None:
            ds = xr.open_zarr(str(path), consolidated=False)
        else:
            ds = xr.open_zarr(str(path), consolidated=False, chunks=None)[names]
    # zarr's variable-length strings come back as numpy StringDType: labels as plain str, as written
    fixed = {
        str(n): v.copy(data=np.asarray(v.values, dtype=object).astype(str))
        for n, v in ds.variables.items()
        if v.dtype.kind == "T"
    }
    return _join_complex(
        ds.assign_coords({n: v for n, v in fixed.items() if n in ds.coords}).assign(
            {n: v for n, v in fixed.items() if n not in ds.coords}
        )
    )


def open_result(path: str | Path, *, allow_incomplete: bool = False) -> xr.Dataset:
    """Open a power-flow result lazily (dask-backed): a zarr store or a netCDF file.

    Complex variables come back complex. An unfinished store (``<out>.incomplete``) is
    refused unless ``allow_incomplete`` (finish it with ``lv3ph powerflow --resume``).
    """
    p = Path(path)
    if p.is_file():
        return _join_complex(xr.open_dataset(p, engine="h5netcdf", chunks={}))
    if not p.is_dir() and incomplete_path(p).is_dir():
        if not allow_incomplete:
            raise Lv3phError(f"{p} is not finished ({incomplete_path(p)}): run lv3ph powerflow --resume")
        p = incomplete_path(p)
    if not (p / "zarr.json").is_file():
        raise Lv3phError(f"no lv3ph result at {p}")
    ds = _open_zarr(p)
    if not ds.attrs.get("lv3ph_complete", False) and not allow_incomplete:
        raise Lv3phError(f"{p} is not finished: run lv3ph powerflow --resume")
    return ds


def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a table to CSV atomically (no index)."""
    return write_atomic(path, lambda tmp: df.to_csv(tmp, index=False, float_format="%.10g"))
