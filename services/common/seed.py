"""The reference data both catalog and inventory seed at first start, derived deterministically.

Catalog owns the products and inventory owns the stock, each in its own database; they agree on
the product ids because both derive them from this one function (no service reads another's
database, and inventory does not need catalog to be up to start).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

SEED = 20240601
PRODUCT_COUNT = 100

CATEGORIES: dict[str, tuple[str, ...]] = {
    "coffee": ("Espresso Beans", "Filter Roast", "Decaf Blend", "Single Origin", "Cold Brew Pack"),
    "brewing": ("Pour-over Cone", "French Press", "Moka Pot", "Gooseneck Kettle", "Burr Grinder"),
    "tea": ("Green Sencha", "Earl Grey", "Oolong", "Rooibos", "Chai Blend"),
    "cups": ("Ceramic Mug", "Travel Cup", "Glass Tumbler", "Espresso Cup", "Double-wall Glass"),
    "snacks": ("Almond Biscotti", "Dark Chocolate", "Oat Cookies", "Shortbread", "Granola Bar"),
}
ADJECTIVES = (
    "Classic",
    "Bold",
    "Smooth",
    "Bright",
    "Rich",
    "Daily",
    "Reserve",
    "Mini",
    "XL",
    "Pro",
)
TAGS = ("organic", "fair-trade", "gift", "bestseller", "new", "limited", "eco", "premium", "travel")


@dataclass(frozen=True)
class SeedProduct:
    product_id: str
    name: str
    description: str
    category: str
    tags: tuple[str, ...]
    price_cents: int
    initial_stock: int


def product_id(index: int) -> str:
    return f"p-{index:03d}"


def seed_products(count: int = PRODUCT_COUNT) -> list[SeedProduct]:
    """The ``count`` seed products, the same on every call and in every process."""
    rng = random.Random(SEED)
    categories = sorted(CATEGORIES)
    products = []
    for index in range(1, count + 1):
        category = categories[(index - 1) % len(categories)]
        base = rng.choice(CATEGORIES[category])
        adjective = rng.choice(ADJECTIVES)
        tags = tuple(sorted(rng.sample(TAGS, k=rng.randint(1, 3))))
        price_cents = (
            rng.randrange(199, 9999, 10)
            if category != "brewing"
            else rng.randrange(1499, 19999, 10)
        )
        # every tenth product is scarce so that checkouts also exercise the out-of-stock path
        stock = rng.randint(2, 5) if index % 10 == 0 else rng.randint(200, 500)
        products.append(
            SeedProduct(
                product_id=product_id(index),
                name=f"{adjective} {base}",
                description=f"{adjective} {base.lower()} from the testbed's {category} range.",
                category=category,
                tags=tags,
                price_cents=price_cents,
                initial_stock=stock,
            )
        )
    return products
