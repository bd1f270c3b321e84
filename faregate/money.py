"""Money is integer micro-USD everywhere inside Faregate (1 USD = 1,000,000).

Prices are configured in USD per 1M tokens and kept as integer micro-USD per 1M tokens,
so a request's cost is exact integer arithmetic: the sum over token kinds of
``tokens × price``, divided by 1M and rounded up to the next micro-USD (a request is never
billed less than it used).
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

MICROS_PER_USD = 1_000_000
TOKENS_PER_PRICE_UNIT = 1_000_000


def usd_to_micros(usd: float | int | str | Decimal) -> int:
    """Exact conversion of a decimal USD amount (as written by people) to micro-USD."""
    return int((Decimal(str(usd)) * MICROS_PER_USD).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def micros_to_usd(micros: int) -> float:
    return micros / MICROS_PER_USD


def token_cost(prompt_tokens: int, completion_tokens: int, prompt_price: int, completion_price: int) -> int:
    """Cost in micro-USD of a request, prices in micro-USD per 1M tokens; rounded up."""
    numerator = prompt_tokens * prompt_price + completion_tokens * completion_price
    return -(-numerator // TOKENS_PER_PRICE_UNIT)
