"""Numba kernels of the loss allocation, each with a plain numpy reference.

Parties (contracts, grid exchanges, the no-load term) are *rows*: row ``r`` acts at step
``row_time[r]`` (column of the voltage history) with injections ``val[ptr[r]:ptr[r+1]]``
(A, into the network) at positions ``pos[...]`` of the extended node set E (customer
ports and source nodes). With ``U[part] = Z_E^H G_part Z_E J_E`` (the fast form of the
design note), a row's loss in a part is ``Re(sum conj(val) U[part, pos, t])``.
"""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(parallel=True, cache=True)
def row_losses(u: np.ndarray, row_time: np.ndarray, ptr: np.ndarray, pos: np.ndarray, val: np.ndarray) -> np.ndarray:
    """Loss of every row in every part, W: ``out[r, p] = Re(sum conj(val) u[p, pos, row_time[r]])``.

    ``u`` is (parts, m, steps) in V*A/A = W per A of injection (the fast form's ``U``).
    """
    n_rows = row_time.size
    parts = u.shape[0]
    out = np.zeros((n_rows, parts))
    for r in nb.prange(n_rows):
        t = row_time[r]
        for p in range(parts):
            acc = 0.0
            for q in range(ptr[r], ptr[r + 1]):
                z = val[q]
                w = u[p, pos[q], t]
                acc += z.real * w.real + z.imag * w.imag
            out[r, p] = acc
    return out


def row_losses_reference(
    u: np.ndarray, row_time: np.ndarray, ptr: np.ndarray, pos: np.ndarray, val: np.ndarray
) -> np.ndarray:
    """Plain numpy version of :func:`row_losses`."""
    owner = np.repeat(np.arange(row_time.size), np.diff(ptr))
    terms = (np.conj(val)[None, :] * u[:, pos, row_time[owner]]).real  # (parts, entries)
    out = np.zeros((row_time.size, u.shape[0]))
    for p in range(u.shape[0]):
        out[:, p] = np.bincount(owner, weights=terms[p], minlength=row_time.size)
    return out


@nb.njit(parallel=True, cache=True)
def branch_losses(
    mz_t: np.ndarray,
    w: np.ndarray,
    row_slot: np.ndarray,
    n_slots: int,
    group_ptr: np.ndarray,
    rows_by_group: np.ndarray,
    row_time: np.ndarray,
    ptr: np.ndarray,
    pos: np.ndarray,
    val: np.ndarray,
) -> np.ndarray:
    """Per-branch-conductor loss of each group of rows, summed over its rows, W.

    For a party row with injections ``j`` at E positions, its contribution to the loss
    rows is ``x = mz_t[pos].T @ j`` (``mz_t = (M Z_E)^T``, C-contiguous so each port's
    column streams) and its share of loss row ``k`` is
    ``Re(conj(x[k]) * w[k, t])`` with ``w = B M V`` (loss rows x steps).
    ``row_slot[k]`` is the (element, conductor) slot of loss row ``k``.
    Groups (contract ids) run in parallel; each owns its output row.
    """
    n_groups = group_ptr.size - 1
    out = np.zeros((n_groups, n_slots))
    n_rows = mz_t.shape[1]
    for g in nb.prange(n_groups):
        x = np.empty(n_rows, dtype=np.complex128)
        for gi in range(group_ptr[g], group_ptr[g + 1]):
            r = rows_by_group[gi]
            t = row_time[r]
            x[:] = 0.0
            for q in range(ptr[r], ptr[r + 1]):
                col = pos[q]
                z = val[q]
                for i in range(n_rows):
                    x[i] += mz_t[col, i] * z
            for k in range(n_rows):
                a = x[k]
                b = w[k, t]
                out[g, row_slot[k]] += a.real * b.real + a.imag * b.imag
    return out


def branch_losses_reference(
    mz_t: np.ndarray,
    w: np.ndarray,
    row_slot: np.ndarray,
    n_slots: int,
    group_ptr: np.ndarray,
    rows_by_group: np.ndarray,
    row_time: np.ndarray,
    ptr: np.ndarray,
    pos: np.ndarray,
    val: np.ndarray,
) -> np.ndarray:
    """Plain numpy version of :func:`branch_losses` (one row at a time)."""
    out = np.zeros((group_ptr.size - 1, n_slots))
    for g in range(group_ptr.size - 1):
        for r in rows_by_group[group_ptr[g] : group_ptr[g + 1]]:
            sl = slice(ptr[r], ptr[r + 1])
            x = mz_t[pos[sl]].T @ val[sl]
            share = (np.conj(x) * w[:, row_time[r]]).real
            out[g] += np.bincount(row_slot, weights=share, minlength=n_slots)
    return out
