"""Field types and limits the services' request models share, so every service refuses alike."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

MAX_QUANTITY = 100
"""Largest quantity of one product in one order or reservation."""
MAX_LINES = 20
"""Most distinct products in one order or reservation."""
MAX_AMOUNT_CENTS = 10_000_000
"""Largest single charge (100 000.00): anything above is a bug or an attack, not a purchase."""

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"

ProductId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
OrderId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
Quantity = Annotated[int, Field(strict=True, ge=1, le=MAX_QUANTITY)]
AmountCents = Annotated[int, Field(strict=True, ge=1, le=MAX_AMOUNT_CENTS)]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
