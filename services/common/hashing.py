"""The fingerprint of a request body, to tell a replay (same key, same body) from a key reused."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def fingerprint(body: Any) -> str:
    """sha256 of the canonical JSON of ``body`` (keys sorted, no whitespace)."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()
