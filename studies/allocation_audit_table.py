"""Print the README's loss-allocation audit table from `lv3ph study studies/allocation_audit.toml`.

For each scenario: share of the feeder's losses in the neutral and in earth, what each method
charges the P2P contracts in total, and per-contract errors against the exact method:
weighted mean absolute error (sum |m - exact| / sum |exact| over contract ids, %), split into
same-phase and cross-phase trades.

Run: ``.venv/bin/python studies/allocation_audit_table.py [out/allocation_audit]``
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pandas as pd

from lv3ph.fleet import misallocation_pct

ROOT = Path(__file__).resolve().parents[1]


def customer_phases(loads_file: Path) -> dict[str, str]:
    """Load name -> phase, from an OpenDSS Loads file (``Bus1=<bus>.<phase>...``)."""
    out = {}
    for line in loads_file.read_text().splitlines():
        m = re.search(r"Load\.(\S+).*?Bus1=[^.\s]+\.(\d)", line, re.IGNORECASE)
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


def main(folder: Path) -> None:
    summary = pd.read_csv(folder / "summary.csv")
    phase = customer_phases(ROOT / "dss_models/ieee_eu_lv_4wire/Loads.txt")
    methods = [
        c[: -len("_kwh")]
        for c in pd.read_csv(folder / summary.scenario[0] / "allocation.csv").columns
        if c.endswith("_kwh") and c != "kwh_traded"
    ]
    others = [m for m in methods if m != "exact"]
    head = (
        "| scenario | losses kWh | neutral % | earth % | contracts charged, kWh: "
        + " / ".join(methods)
        + " | "
        + " | ".join(f"{m} error % (same / cross phase)" for m in others)
        + " |"
    )
    print(head)
    print("|" + "---|" * (4 + 1 + len(others)))
    for _, s in summary.iterrows():
        al = pd.read_csv(folder / s.scenario / "allocation.csv")
        c = al[~al.contract.str.startswith("grid:")].copy()
        cross = c.seller.map(phase) != c.buyer.map(phase)
        charged = " / ".join(f"{c[f'{m}_kwh'].sum():.3f}" for m in methods)
        errs = []
        for m in others:
            _, same, crossing = misallocation_pct(al, phase, m)
            errs.append(f"{same:.0f} / {crossing:.0f}")
        print(
            f"| {s.scenario} | {s.loss_kwh:.3f} | {100 * s.loss_neutral_kwh / s.loss_kwh:.1f} | {100 * s.loss_earth_kwh / s.loss_kwh:.2f} | {charged} | "
            + " | ".join(errs)
            + " |"
        )
    print(f"\n({int(cross.sum())} of {len(c)} contract ids in the last scenario cross phases)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "out/allocation_audit")
