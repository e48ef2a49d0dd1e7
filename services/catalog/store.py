"""Catalog's own database: products and prices, seeded with the reference products."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import aiosqlite

from services.catalog.api import Product
from services.common.db import Database
from services.common.seed import seed_products

MIGRATIONS: Sequence[str] = (
    """
    CREATE TABLE products (
        product_id  TEXT PRIMARY KEY,
        name        TEXT NOT NULL,
        description TEXT NOT NULL,
        category    TEXT NOT NULL,
        tags        TEXT NOT NULL,          -- JSON list
        price_cents INTEGER NOT NULL CHECK (price_cents > 0),
        currency    TEXT NOT NULL DEFAULT 'USD',
        version     INTEGER NOT NULL DEFAULT 1,
        updated_at  REAL NOT NULL
    );
    CREATE INDEX products_by_category ON products (category, product_id);
    """,
)


def _product(row: aiosqlite.Row) -> Product:
    return Product(
        product_id=row["product_id"],
        name=row["name"],
        description=row["description"],
        category=row["category"],
        tags=json.loads(row["tags"]),
        price_cents=row["price_cents"],
        currency=row["currency"],
        version=row["version"],
    )


class CatalogStore:
    """Typed queries over catalog's database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @classmethod
    async def open(cls, db: Database, *, seed_count: int) -> CatalogStore:
        store = cls(db)
        await store.seed(seed_count)
        return store

    async def seed(self, count: int) -> int:
        """Insert the reference products if the table is empty; returns how many were added."""
        async with self.db.transaction() as conn:
            async with conn.execute("SELECT COUNT(*) FROM products") as cur:
                row = await cur.fetchone()
            if row is not None and row[0] > 0:
                return 0
            now = time.time()
            products = seed_products(count)
            await conn.executemany(
                "INSERT INTO products (product_id, name, description, category, tags, price_cents,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        p.product_id,
                        p.name,
                        p.description,
                        p.category,
                        json.dumps(list(p.tags)),
                        p.price_cents,
                        now,
                    )
                    for p in products
                ],
            )
            return len(products)

    async def list_products(
        self, *, after: str, limit: int, category: str | None
    ) -> tuple[list[Product], bool]:
        """Products with ids after ``after`` in id order; the flag says whether more follow."""
        query = "SELECT * FROM products WHERE product_id > ?"
        args: list[object] = [after]
        if category is not None:
            query += " AND category = ?"
            args.append(category)
        query += " ORDER BY product_id LIMIT ?"
        args.append(limit + 1)
        async with self.db.snapshot() as conn, conn.execute(query, args) as cur:
            rows = list(await cur.fetchall())
        return [_product(r) for r in rows[:limit]], len(rows) > limit

    async def get_product(self, product_id: str) -> Product | None:
        async with (
            self.db.snapshot() as conn,
            conn.execute("SELECT * FROM products WHERE product_id = ?", (product_id,)) as cur,
        ):
            row = await cur.fetchone()
        return None if row is None else _product(row)

    async def all_products(self) -> list[Product]:
        async with (
            self.db.snapshot() as conn,
            conn.execute("SELECT * FROM products ORDER BY product_id") as cur,
        ):
            return [_product(r) for r in await cur.fetchall()]
