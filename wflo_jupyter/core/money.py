"""Money as integer micro-dollars (1 USD = 1_000_000 micros); ``Decimal`` only at the edges."""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal, DecimalException

MICROS_PER_USD = 1_000_000
MAX_MICROS = 10**18  # a trillion dollars; the ledger's BIGINT holds up to ~9.2e18


def usd_to_micros(value: str | Decimal | int) -> int:
    """Parse a dollar amount (``"0.50"``, ``"$1"``) into micro-dollars, rounding up.

    Raises ``ValueError`` with a one-line message for anything that is not a finite,
    non-negative amount of at most ``MAX_MICROS``.
    """
    text = str(value).strip().removeprefix("$")
    try:
        amount = Decimal(text)
    except DecimalException:
        raise ValueError(f"not a dollar amount: {value!r}") from None
    if not amount.is_finite():
        raise ValueError(f"not a dollar amount: {value!r}")
    if amount < 0:
        raise ValueError(f"a budget cannot be negative: {value!r}")
    if amount > MAX_MICROS // MICROS_PER_USD:
        raise ValueError(f"at most {MAX_MICROS // MICROS_PER_USD} dollars, got {value!r}")
    return int((amount * MICROS_PER_USD).to_integral_value(rounding=ROUND_CEILING))


def micros_to_usd(micros: int) -> Decimal:
    """Exact dollar value of ``micros``."""
    return Decimal(micros) / MICROS_PER_USD


def format_usd(micros: int) -> str:
    """Human form: ``$0.50``, ``$0.000123`` for sub-cent amounts, ``-$1.00``."""
    sign = "-" if micros < 0 else ""
    magnitude = abs(micros)
    if magnitude == 0 or magnitude % 10_000 == 0:
        return f"{sign}${micros_to_usd(magnitude):.2f}"
    return f"{sign}${micros_to_usd(magnitude).normalize():f}"
