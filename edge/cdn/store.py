"""The PoP's cache: stored responses bounded in bytes, least recently used evicted first.

Keys are the request target (path and query); ``Vary`` makes secondary keys from the request
fields the stored response names (RFC 9111 section 4.1). An ``OrderedDict`` gives O(1) LRU
moves; hand-written because the cache is bounded by *bytes* (body plus headers) rather than by
count, with a per-object limit and purge by path or prefix, which ``functools.lru_cache`` and
the common LRU packages do not offer.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from edge.cdn.policy import CacheControl, normalize_field

ENTRY_OVERHEAD_BYTES = 256  # bookkeeping per object, so many tiny objects still count


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored response; times are ``time.time()`` seconds."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    cache_control: CacheControl
    lifetime: float
    initial_age: float
    response_time: float
    vary: tuple[str, ...]
    etag: str | None = None
    last_modified: str | None = None

    @property
    def size(self) -> int:
        return (
            len(self.body)
            + sum(len(k) + len(v) + 4 for k, v in self.headers)
            + ENTRY_OVERHEAD_BYTES
        )

    def age(self, now: float) -> float:
        """``current_age`` of RFC 9111 section 4.2.3."""
        return self.initial_age + max(0.0, now - self.response_time)

    @property
    def validatable(self) -> bool:
        return self.etag is not None or self.last_modified is not None


def variant_key(vary: tuple[str, ...], request_headers: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(normalize_field(request_headers.get(name)) for name in vary)


class CacheStore:
    """A byte-bounded LRU of ``Entry`` objects, keyed by request target and Vary values."""

    def __init__(self, *, max_bytes: int, max_object_bytes: int) -> None:
        if max_bytes < 0 or max_object_bytes < 0:
            raise ValueError("cache sizes must be >= 0")
        self.max_bytes = max_bytes
        self.max_object_bytes = min(max_object_bytes, max_bytes)
        self._entries: OrderedDict[tuple[str, tuple[str, ...]], Entry] = OrderedDict()
        self._vary: dict[str, tuple[str, ...]] = {}
        self._variants: dict[str, set[tuple[str, ...]]] = {}
        self._bytes = 0
        self.evictions = 0

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def fits(self, body_bytes: int) -> bool:
        """Whether a body of this size may be cached at all (larger ones stream through)."""
        return body_bytes <= self.max_object_bytes

    def get(self, key: str, request_headers: Mapping[str, str]) -> Entry | None:
        vary = self._vary.get(key)
        if vary is None:
            return None
        full = (key, variant_key(vary, request_headers) if vary else ())
        entry = self._entries.get(full)
        if entry is not None:
            self._entries.move_to_end(full)
        return entry

    def put(self, key: str, request_headers: Mapping[str, str], entry: Entry) -> bool:
        """Store ``entry``; False (and nothing stored) when it is larger than the object limit."""
        size = entry.size
        if size > self.max_object_bytes:
            return False
        if self._vary.get(key, entry.vary) != entry.vary:
            self._drop_key(key)  # the origin changed its Vary: older variants cannot match
        full = (key, variant_key(entry.vary, request_headers) if entry.vary else ())
        old = self._entries.pop(full, None)
        if old is not None:
            self._bytes -= old.size
        self._entries[full] = entry
        self._bytes += size
        self._vary[key] = entry.vary
        self._variants.setdefault(key, set()).add(full[1])
        while self._bytes > self.max_bytes:
            evicted_key, evicted = self._entries.popitem(last=False)
            self._forget(evicted_key, evicted)
            self.evictions += 1
        return True

    def _forget(self, full: tuple[str, tuple[str, ...]], entry: Entry) -> None:
        self._bytes -= entry.size
        key = full[0]
        variants = self._variants.get(key)
        if variants is not None:
            variants.discard(full[1])
            if not variants:
                del self._variants[key]
                self._vary.pop(key, None)

    def _drop_key(self, key: str) -> int:
        count = 0
        for variant in tuple(self._variants.get(key, ())):
            full = (key, variant)
            entry = self._entries.pop(full, None)
            if entry is not None:
                self._forget(full, entry)
                count += 1
        self._vary.pop(key, None)
        self._variants.pop(key, None)
        return count

    def invalidate(self, key: str) -> int:
        """Remove every variant stored under ``key`` (after an unsafe method succeeded)."""
        return self._drop_key(key)

    def purge_paths(self, paths: list[str]) -> int:
        """Remove every object whose path (query ignored) is one of ``paths``."""
        wanted = set(paths)
        keys = [k for k in self._variants if k.partition("?")[0] in wanted]
        return sum(self._drop_key(k) for k in keys)

    def purge_prefix(self, prefix: str) -> int:
        keys = [k for k in self._variants if k.startswith(prefix)]
        return sum(self._drop_key(k) for k in keys)

    def purge_all(self) -> int:
        count = len(self._entries)
        self._entries.clear()
        self._vary.clear()
        self._variants.clear()
        self._bytes = 0
        return count
