"""Numba kernels for the power-flow capture (hot loops over elements and steps).

Each kernel has a plain numpy/scipy reference in :mod:`lv3ph.powerflow`
(:func:`lv3ph.powerflow.element_flows_reference`) that the tests compare it with.

The kernels run serially and release the GIL (``nogil``): a streamed run
(:mod:`lv3ph.stream`) captures one block in a worker thread while OpenDSS solves the next
one on the other core, so a kernel must neither hold the GIL nor take that core too.
"""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True, nogil=True)
def series_flows(
    vt: np.ndarray,
    node1: np.ndarray,
    node2: np.ndarray,
    offsets: np.ndarray,
    yser: np.ndarray,
    element: np.ndarray,
    current_row: np.ndarray,
    current: np.ndarray,
    p_cond: np.ndarray,
) -> None:
    """Currents and conductor losses of two-terminal series elements, in place.

    Args:
        vt: node voltages (n_nodes, steps), V.
        node1, node2: node index of each conductor row at terminal 1 / 2 (-1 = earth),
            rows of element ``j`` at ``offsets[j]:offsets[j+1]``.
        offsets: (n_series + 1,) row offsets.
        yser: series admittance blocks, row-major, block ``j`` of size k_j^2 starting
            at ``sum_{i<j} k_i^2``, S.
        element: position of each series element in ``p_cond``.
        current_row: row of each series element in ``current``, -1 = not wanted.
        current: out (rows, max_conductors, steps): current into terminal 1, A.
        p_cond: out (n_elements, max_conductors, steps): conductor loss, kW.
    """
    n_el = offsets.size - 1
    steps = vt.shape[1]
    ystart = 0
    for j in range(n_el):
        r0 = offsets[j]
        k = offsets[j + 1] - r0
        e = element[j]
        row = current_row[j]
        dv = np.empty(k, dtype=np.complex128)
        for t in range(steps):
            for a in range(k):
                v1 = vt[node1[r0 + a], t] if node1[r0 + a] >= 0 else 0.0
                v2 = vt[node2[r0 + a], t] if node2[r0 + a] >= 0 else 0.0
                dv[a] = v1 - v2
            for a in range(k):
                acc = 0.0 + 0.0j
                base = ystart + a * k
                for b in range(k):
                    acc += yser[base + b] * dv[b]
                if row >= 0:
                    current[row, a, t] = acc
                p_cond[e, a, t] = (dv[a] * np.conj(acc)).real / 1000.0
        ystart += k * k
