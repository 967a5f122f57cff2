"""Local (P2P) energy markets: clearing, contracts and customer bills.

Sign convention: ``net_kw`` is drawn power per customer (positive = consumption,
negative = surplus offered to the market); prices in EUR/kWh, power in kW, energy in
kWh; bills positive = the customer pays.

* :class:`Tariffs`, :class:`MarketResult` -- inputs and outcome of a market run.
* :func:`community_auction`, :func:`bilateral`, :func:`no_market` -- market clearing.
* :func:`contracts_from_file` -- read a contract CSV (contract, time, seller, buyer, kw).
* :func:`bills` -- per-customer grid/local energy and bills with and without the market.
"""

from lv3ph.market.bills import BILL_COLUMNS, bills, traded_per_customer
from lv3ph.market.clearing import (
    MarketResult,
    Preference,
    PriceRule,
    Tariffs,
    bilateral,
    community_auction,
    local_price,
    no_market,
)
from lv3ph.market.contracts import (
    CONTRACT_COLUMNS,
    contracts_from_file,
    contracts_from_matrix,
    empty_contracts,
)

__all__ = [
    "BILL_COLUMNS",
    "CONTRACT_COLUMNS",
    "MarketResult",
    "Preference",
    "PriceRule",
    "Tariffs",
    "bilateral",
    "bills",
    "community_auction",
    "contracts_from_file",
    "contracts_from_matrix",
    "empty_contracts",
    "local_price",
    "no_market",
    "traded_per_customer",
]
