"""Independent jobs (scenarios, placements) on Dask or in turn, results in submission order.

Each job runs in a worker process with its own OpenDSS engine. Workers are started
single-threaded (numba, BLAS) and without two environment settings that slow array-heavy
jobs on small machines: numpy's transparent-huge-page requests (see ``lv3ph/__init__``) and
Dask's ``MALLOC_TRIM_THRESHOLD_=65536``, which also pins glibc's mmap threshold at 128 kB so
that every larger array comes fresh from the kernel (measured 1.7x slower per job).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from tqdm.auto import tqdm

from lv3ph.errors import SchedulerError

T = TypeVar("T")

WORKER_ENV = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "NUMPY_MADVISE_HUGEPAGE": "0"}
#: Seconds to wait for an existing scheduler to answer (Dask's default is 30 s).
CONNECT_TIMEOUT_S = 5.0


def run_jobs(
    func: Callable[..., T],
    jobs: Sequence[tuple[Any, ...]],
    *,
    serial: bool = False,
    workers: int = 2,
    scheduler: str | None = None,
    desc: str = "jobs",
    progress: bool = True,
    keys: Sequence[str] | None = None,
    retries: int = 0,
    on_error: Callable[[int, BaseException], T] | None = None,
    single_in_process: bool = True,
) -> list[T]:
    """``[func(*job) for job in jobs]``, on a Dask ``LocalCluster`` (or ``scheduler``) unless
    ``serial``; a progress bar counts finished jobs.

    ``retries``: Dask runs a job again (on another worker) if it raised or its worker died,
    up to this many times. ``on_error(position, exception)``: the result of a job that still
    failed (default: the exception propagates). A job whose worker died repeatedly fails
    with Dask's ``KilledWorker`` (after ``distributed.scheduler.allowed-failures``).
    ``single_in_process``: a single job runs in this process (default) instead of on Dask.

    Raises:
        SchedulerError: ``scheduler`` cannot be reached (see :func:`connect`).
    """
    if serial or not jobs or (len(jobs) == 1 and single_in_process):
        return [_call(func, job, i, on_error) for i, job in enumerate(tqdm(jobs, desc=desc, disable=not progress))]
    import dask
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if not scheduler:
        environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
        environ.pop("MALLOC_TRIM_THRESHOLD_", None)
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            cluster = LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, env=WORKER_ENV
            )
    try:
        with connect(scheduler) if scheduler else Client(cluster) as client:
            names = list(keys) if keys is not None else [None] * len(jobs)
            futures = [
                client.submit(func, *job, pure=False, key=k, retries=retries)
                for job, k in zip(jobs, names, strict=True)
            ]
            position = {f.key: i for i, f in enumerate(futures)}
            out: list[Any] = [None] * len(jobs)
            with tqdm(total=len(jobs), desc=desc, disable=not progress) as bar:
                for fut in as_completed(futures):
                    i = position[fut.key]
                    try:
                        out[i] = fut.result()
                    except Exception as exc:
                        if on_error is None:
                            raise
                        out[i] = on_error(i, exc)
                    bar.update()
            return out
    finally:
        if cluster is not None:
            cluster.close()


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """BLAS/OpenMP and numba's parallel kernels on one thread inside the block.

    A job on a worker started by ``dask worker`` (not by lv3ph, so without
    :data:`WORKER_ENV`) would otherwise start one BLAS and one numba thread per core in every
    worker process: N workers x N threads on N cores.
    """
    import numba
    from threadpoolctl import threadpool_limits

    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        numba.set_num_threads(before)


def _call(
    func: Callable[..., T], job: tuple[Any, ...], i: int, on_error: Callable[[int, BaseException], T] | None
) -> T:
    try:
        return func(*job)
    except Exception as exc:
        if on_error is None:
            raise
        return on_error(i, exc)


def connect(scheduler: str) -> Any:
    """A ``dask.distributed.Client`` of the running scheduler at address ``scheduler``.

    Raises:
        SchedulerError: ``scheduler`` is not a Dask address or does not answer within
            :data:`CONNECT_TIMEOUT_S` (one line: ``cannot reach Dask scheduler ADDRESS (...)``).
    """
    from dask.distributed import Client

    try:
        return Client(scheduler, timeout=CONNECT_TIMEOUT_S)
    except (OSError, ValueError) as exc:
        raise SchedulerError(f"cannot reach Dask scheduler {scheduler} ({' '.join(str(exc).split())})") from None
