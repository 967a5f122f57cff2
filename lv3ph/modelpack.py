"""Model files that travel with a job: no shared file system between client and workers.

:func:`pack_model` packs an OpenDSS master and every file it references (the list comes from
:func:`lv3ph.modelfiles.model_files`: Redirect/Compile targets, load-shape files, BusCoords)
into one gzip'd tar, each file stored relative to the files' common folder, so relative
references (``Redirect ../common/LineCode.txt``, ``mult=(file=profiles/p1.txt)``) still
resolve after unpacking. :func:`unpacked` extracts a pack into a fresh temporary folder on
the worker and yields the master's path there; the folder is removed afterwards.

References by absolute path cannot travel (they would point into the worker's own file
system); they are left out of the pack and OpenDSS then reports the missing file on the worker.
"""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lv3ph.errors import ModelError


@dataclass(frozen=True)
class ModelPack:
    """A master and the files it references: ``master`` is its path inside the pack (POSIX),
    ``data`` the gzip'd tar, ``files`` how many files it holds and ``nbytes`` their size."""

    master: str
    data: bytes
    files: int
    nbytes: int


def pack_model(master: str | Path) -> ModelPack:
    """Pack ``master`` and the files it references (see the module docstring).

    Raises:
        ModelError: the master does not exist.
    """
    from lv3ph.modelfiles import model_files

    path = Path(master).resolve()
    if not path.is_file():
        raise ModelError(f"model file not found: {master}")
    files = [path] + [Path(f).resolve() for f in model_files(path)]
    files = [f for i, f in enumerate(files) if f.is_file() and f not in files[:i]]
    root = Path(os.path.commonpath([f.parent for f in files]))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for f in files:
            tar.add(f, arcname=f.relative_to(root).as_posix(), recursive=False)
    return ModelPack(
        master=path.relative_to(root).as_posix(),
        data=buf.getvalue(),
        files=len(files),
        nbytes=sum(f.stat().st_size for f in files),
    )


@contextlib.contextmanager
def local_master(source: str | Path | ModelPack) -> Iterator[Path]:
    """The master to compile on this machine: ``source`` itself, or a pack unpacked here."""
    if isinstance(source, ModelPack):
        with unpacked(source) as path:
            yield path
    else:
        yield Path(source)


@contextlib.contextmanager
def unpacked(pack: ModelPack) -> Iterator[Path]:
    """Extract ``pack`` into a new temporary folder and yield the master's path in it."""
    with tempfile.TemporaryDirectory(prefix="lv3ph-model-") as tmp:
        with tarfile.open(fileobj=io.BytesIO(pack.data), mode="r:gz") as tar:
            tar.extractall(tmp, filter="data")
        yield Path(tmp) / pack.master
