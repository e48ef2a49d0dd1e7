"""The byte-bounded LRU store (no network)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from edge.cdn.policy import EMPTY_CACHE_CONTROL
from edge.cdn.store import ENTRY_OVERHEAD_BYTES, CacheStore, Entry

NO_HEADERS: CIMultiDict[str] = CIMultiDict()


def entry(size: int, *, vary: tuple[str, ...] = (), tag: str = "") -> Entry:
    return Entry(
        status=200,
        headers=(),
        body=(tag.encode() + b"x" * size)[:size],
        cache_control=EMPTY_CACHE_CONTROL,
        lifetime=60.0,
        initial_age=0.0,
        response_time=0.0,
        vary=vary,
    )


def cost(size: int) -> int:
    return size + ENTRY_OVERHEAD_BYTES


def test_evicts_least_recently_used_to_stay_within_bytes() -> None:
    store = CacheStore(max_bytes=cost(100) * 3, max_object_bytes=10_000)
    for key in ("/a", "/b", "/c"):
        assert store.put(key, NO_HEADERS, entry(100))
    assert store.get("/a", NO_HEADERS) is not None  # /a is now the most recently used
    store.put("/d", NO_HEADERS, entry(100))
    assert store.get("/b", NO_HEADERS) is None
    assert {k for k in ("/a", "/c", "/d") if store.get(k, NO_HEADERS) is not None} == {
        "/a",
        "/c",
        "/d",
    }
    assert store.bytes == cost(100) * 3
    assert store.evictions == 1


def test_object_over_the_limit_is_not_stored() -> None:
    store = CacheStore(max_bytes=100_000, max_object_bytes=1_000)
    assert not store.put("/big", NO_HEADERS, entry(5_000))
    assert len(store) == 0
    assert store.fits(1_000)
    assert not store.fits(1_001)


def test_replacing_an_entry_keeps_byte_count_right() -> None:
    store = CacheStore(max_bytes=100_000, max_object_bytes=100_000)
    store.put("/a", NO_HEADERS, entry(100))
    store.put("/a", NO_HEADERS, entry(300))
    assert store.bytes == cost(300)
    assert len(store) == 1


def test_vary_keeps_one_variant_per_request_value() -> None:
    store = CacheStore(max_bytes=100_000, max_object_bytes=100_000)
    en = CIMultiDict({"Accept-Language": "en"})
    fr = CIMultiDict({"Accept-Language": "fr"})
    store.put("/p", en, entry(10, vary=("accept-language",), tag="en"))
    assert store.get("/p", fr) is None
    store.put("/p", fr, entry(10, vary=("accept-language",), tag="fr"))
    got_en, got_fr = store.get("/p", en), store.get("/p", fr)
    assert got_en is not None
    assert got_en.body.startswith(b"en")
    assert got_fr is not None
    assert got_fr.body.startswith(b"fr")
    assert store.get("/p", NO_HEADERS) is None  # absent header is its own variant
    assert len(store) == 2


def test_changed_vary_drops_old_variants() -> None:
    store = CacheStore(max_bytes=100_000, max_object_bytes=100_000)
    en = CIMultiDict({"Accept-Language": "en"})
    store.put("/p", en, entry(10, vary=("accept-language",)))
    store.put("/p", en, entry(10, vary=()))
    assert len(store) == 1
    assert store.bytes == cost(10)


def test_purge_by_paths_prefix_and_all() -> None:
    store = CacheStore(max_bytes=100_000, max_object_bytes=100_000)
    for key in ("/static/a.js", "/static/a.js?v=2", "/static/b.css", "/api/products"):
        store.put(key, NO_HEADERS, entry(10))
    assert store.purge_paths(["/static/a.js"]) == 2
    assert store.get("/static/b.css", NO_HEADERS) is not None
    assert store.purge_prefix("/static/") == 1
    assert store.purge_all() == 1
    assert len(store) == 0
    assert store.bytes == 0


def test_negative_sizes_rejected() -> None:
    with pytest.raises(ValueError, match="sizes"):
        CacheStore(max_bytes=-1, max_object_bytes=10)
