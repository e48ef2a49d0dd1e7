"""Product images, generated: a deterministic SVG per product id.

The testbed ships no image files; each product's picture is drawn from a hash of its id
(colours, shapes, a monogram), so the same id always gives the same bytes. That makes the
image URL cacheable forever (``immutable``), which is what the CDN experiments want: many
distinct, stable, cacheable objects of realistic size.
"""

from __future__ import annotations

import hashlib
from xml.sax.saxutils import escape

IMAGE_VERSION = "v1"
"""Part of the image URL; bump it when the drawing changes, so caches fetch the new one."""


def image_path(product_id: str) -> str:
    """The URL path of ``product_id``'s image."""
    return f"/images/{IMAGE_VERSION}/products/{product_id}.svg"


def product_svg(product_id: str) -> bytes:
    """The SVG picture of ``product_id`` (same id, same bytes)."""
    digest = hashlib.sha256(product_id.encode()).digest()
    hue_a = digest[0] * 360 // 256
    hue_b = (hue_a + 40 + digest[1] % 140) % 360
    shapes: list[str] = []
    for i in range(6):
        b = digest[2 + 4 * i : 6 + 4 * i]
        cx, cy, r = 20 + b[0] % 160, 20 + b[1] % 160, 12 + b[2] % 40
        hue = (hue_a + b[3]) % 360
        if b[3] % 2:
            shapes.append(
                f'<circle cx="{cx}" cy="{cy}" r="{r}" fill="hsl({hue},70%,60%)" opacity="0.55"/>'
            )
        else:
            shapes.append(
                f'<rect x="{cx - r}" y="{cy - r}" width="{2 * r}" height="{2 * r}" rx="6" '
                f'fill="hsl({hue},65%,55%)" opacity="0.5" '
                f'transform="rotate({b[2] % 90} {cx} {cy})"/>'
            )
    label = escape(product_id[:12])
    monogram = escape(product_id[:1].upper())
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" width="200" height="200" viewBox="0 0 200 200" '
        f'role="img" aria-label="product {label}">'
        '<defs><linearGradient id="g" x1="0" y1="0" x2="1" y2="1">'
        f'<stop offset="0" stop-color="hsl({hue_a},70%,85%)"/>'
        f'<stop offset="1" stop-color="hsl({hue_b},70%,70%)"/>'
        "</linearGradient></defs>"
        '<rect width="200" height="200" fill="url(#g)"/>'
        + "".join(shapes)
        + '<text x="100" y="118" font-family="sans-serif" font-size="64" font-weight="bold" '
        f'text-anchor="middle" fill="hsl({hue_b},60%,25%)">{monogram}</text>'
        '<text x="100" y="188" font-family="monospace" font-size="12" text-anchor="middle" '
        f'fill="#333">{label}</text></svg>'
    )
    return svg.encode()
