"""Plots of hosting-capacity results."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lv3ph.errors import StudyError

if TYPE_CHECKING:
    from lv3ph.hosting.result import HostingResult


def plot_hosting(results: Sequence[HostingResult] | Mapping[str, HostingResult], path: str | Path) -> Path:
    """Histogram and ECDF of the hosting capacity of one or several results, as a PNG
    written atomically (a mapping gives each result its label)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from lv3ph.io import atomic_path

    items = list(results.items()) if isinstance(results, Mapping) else [(r.label, r) for r in results]
    if not items:
        raise StudyError("plot_hosting: no result to plot")
    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax_h, ax_e = fig.subplots(1, 2)
    all_hc = np.concatenate([r.placements["hosting_kw"].to_numpy(dtype=float) for _, r in items])
    top = float(all_hc.max()) if all_hc.size and all_hc.max() > 0 else 1.0
    bins = np.linspace(0.0, top * 1.02, 31)
    for label, r in items:
        hc = np.sort(r.placements["hosting_kw"].to_numpy(dtype=float))
        s = r.summary
        text = f"{label} (n={hc.size}, median {s['median_kw']:.1f} kWp)"
        ax_h.hist(hc, bins=bins, alpha=0.5, label=text)
        ax_e.step(np.r_[0.0, hc], np.arange(hc.size + 1) / max(hc.size, 1), where="post", label=text)
    ax_h.set(xlabel="hosting capacity (kWp installed)", ylabel="placements", title="distribution")
    ax_e.set(
        xlabel="hosting capacity (kWp installed)",
        ylabel="share of placements at or below",
        title="ECDF",
        ylim=(0, 1.02),
    )
    ax_e.grid(alpha=0.3)
    ax_h.legend(fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return Path(path)
