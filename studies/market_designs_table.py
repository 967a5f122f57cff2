"""Print the README's market-design table and draw its plot from
`lv3ph study studies/eu_lv_market_designs.toml`.

One row per design: traded, curtailed and shifted energy, welfare, bills and charges, losses,
peak import, worst PVUR and minutes with PVUR / VUF / voltage / thermal violations, and for the
linearised designs how far OpenDSS disagrees with what they promised. The plot
(``docs/img/eu_lv_market_designs.png``) shows the feeder's worst PVUR and its import over
the day for each design.

Run: ``.venv/bin/python studies/market_designs_table.py [out/eu_lv_market_designs]``
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import xarray as xr

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = [
    ("market", "design", None),
    ("traded_kwh", "traded kWh", 1),
    ("curtailed_kwh", "curtailed kWh", 1),
    ("shifted_kwh", "shifted kWh", 1),
    ("battery_throughput_kwh", "battery kWh", 1),
    ("welfare_eur", "welfare EUR", 2),
    ("bills_eur", "bills EUR", 2),
    ("network_charges_eur", "network charges EUR", 2),
    ("loss_charges_eur", "loss charges EUR", 3),
    ("loss_kwh", "losses kWh", 2),
    ("peak_import_kw", "peak import kW", 1),
    ("pvur_max_pct", "max PVUR %", 2),
    ("minutes_pvur", "PVUR min", 0),
    ("minutes_vuf", "VUF min", 0),
    ("minutes_voltage_high", "V high min", 0),
    ("minutes_voltage_low", "V low min", 0),
    ("minutes_line_thermal", "line thermal min", 0),
    ("minutes_transformer_thermal", "trafo thermal min", 0),
    ("vmax_v", "max V", 1),
    ("promise_broken_minutes", "promise broken min", 0),
]


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "out" / "eu_lv_market_designs"
    summary = pd.read_csv(out / "summary.csv")
    head = "| " + " | ".join(label for _, label, _ in COLUMNS) + " |"
    print(head)
    print("|" + "---|" * len(COLUMNS))
    for _, row in summary.iterrows():
        cells = []
        for key, _, dp in COLUMNS:
            v = row.get(key, np.nan)
            cells.append(str(v) if dp is None else ("-" if pd.isna(v) else f"{float(v):.{dp}f}"))
        print("| " + " | ".join(cells) + " |")
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    for name, market in zip(summary.scenario, summary.market, strict=True):
        ds = xr.open_dataset(out / name / "series.nc")
        hours = ds.time.values / 60.0
        ax1.plot(hours, ds.pvur_max_pct.rolling(time=15, center=True, min_periods=1).mean(), lw=1.2, label=market)
        ax2.plot(hours, ds.source_p_kw.rolling(time=15, center=True, min_periods=1).mean(), lw=1.2, label=market)
        ds.close()
    ax1.axhline(2.0, color="k", ls=":", lw=1)
    ax1.set_ylabel("worst PVUR at a customer bus, %\n(15-min mean)")
    ax2.set_ylabel("feeder import, kW\n(15-min mean)")
    ax2.set_xlabel("hour of 21 June")
    ax2.set_xticks(range(0, 25, 3))
    ax1.legend(fontsize=7, ncol=2)
    fig.suptitle("Market designs on the four-wire IEEE EU LV feeder (PV 60 %, batteries, EVs, shiftable demand)")
    fig.tight_layout()
    target = ROOT / "docs" / "img" / "eu_lv_market_designs.png"
    fig.savefig(target, dpi=110)
    print(f"\nplot: {target}")


if __name__ == "__main__":
    main()
