"""RFC 9111 shared-cache rules, one directive at a time (pure functions, no network)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from edge.cdn.policy import (
    EMPTY_CACHE_CONTROL,
    HEURISTIC_CAP_SECONDS,
    CacheControl,
    Reuse,
    corrected_initial_age,
    format_http_date,
    freshness_lifetime,
    is_storable,
    may_serve_stale_on_error,
    not_modified,
    parse_cache_control,
    request_cache_control,
    reuse,
    split_list,
    vary_fields,
)

T0 = 1_800_000_000.0


def cc(value: str) -> CacheControl:
    return parse_cache_control(value)


def storable(
    response_cc: str = "",
    *,
    method: str = "GET",
    status: int = 200,
    request_cc: str = "",
    auth: bool = False,
    headers: dict[str, str] | None = None,
) -> bool:
    return is_storable(
        method=method,
        status=status,
        request_cc=cc(request_cc),
        request_has_authorization=auth,
        response_cc=cc(response_cc),
        response_headers=CIMultiDict(headers or {}),
    )


# -- parsing -----------------------------------------------------------------------------


def test_parse_directives_case_insensitive_with_arguments() -> None:
    parsed = cc('Public, MAX-AGE=60, s-maxage="120", stale-while-revalidate=5, stale-if-error=30')
    assert parsed.public
    assert parsed.max_age == 60
    assert parsed.s_maxage == 120
    assert parsed.stale_while_revalidate == 5
    assert parsed.stale_if_error == 30
    assert not parsed.invalid_lifetime


def test_parse_several_field_lines_and_unknown_extensions() -> None:
    parsed = parse_cache_control(["no-cache", "must-revalidate, community=UCI"])
    assert parsed.no_cache
    assert parsed.must_revalidate
    assert parsed.extensions == frozenset({"community"})


def test_split_list_respects_quotes() -> None:
    assert split_list('private="set-cookie, x-a", max-age=3') == [
        'private="set-cookie, x-a"',
        "max-age=3",
    ]


def test_qualified_private_names_fields_only() -> None:
    parsed = cc('private="Set-Cookie, X-User", max-age=60')
    assert not parsed.private
    assert parsed.private_fields == frozenset({"set-cookie", "x-user"})


@pytest.mark.parametrize("value", ["max-age=abc", "max-age=-1", "max-age=1, max-age=2", "max-age"])
def test_duplicate_or_malformed_max_age_makes_response_stale(value: str) -> None:
    parsed = cc(value)
    assert parsed.invalid_lifetime
    assert freshness_lifetime(parsed, CIMultiDict()) == 0.0


def test_request_directives() -> None:
    parsed = cc("max-stale, min-fresh=10, only-if-cached, no-store")
    assert parsed.max_stale == -1
    assert parsed.min_fresh == 10
    assert parsed.only_if_cached
    assert parsed.no_store
    assert cc("max-stale=5").max_stale == 5


def test_empty_and_missing_cache_control() -> None:
    assert parse_cache_control(None) is EMPTY_CACHE_CONTROL
    assert parse_cache_control("  ,  ") is EMPTY_CACHE_CONTROL


def test_pragma_no_cache_only_without_cache_control() -> None:
    headers = CIMultiDict({"Pragma": "no-cache"})
    assert request_cache_control(headers, []).no_cache
    assert not request_cache_control(headers, ["max-age=5"]).no_cache


# -- storability (section 3, 3.5) --------------------------------------------------------


def test_max_age_response_is_storable() -> None:
    assert storable("max-age=60")


def test_no_store_in_response_or_request_prevents_storing() -> None:
    assert not storable("no-store, max-age=60")
    assert not storable("max-age=60", request_cc="no-store")


def test_private_is_never_stored_by_shared_cache() -> None:
    assert not storable("private, max-age=60")
    assert storable('private="set-cookie", max-age=60')  # stored without the named field


def test_no_cache_response_is_storable_but_must_be_revalidated() -> None:
    assert storable("no-cache")
    assert reuse(
        age=0, lifetime=60, response_cc=cc("no-cache"), request_cc=EMPTY_CACHE_CONTROL
    ) is (Reuse.REVALIDATE)


def test_only_get_is_stored_and_only_final_cacheable_statuses() -> None:
    assert not storable("max-age=60", method="POST")
    assert not storable("max-age=60", method="HEAD")
    assert not storable("max-age=60", status=206)
    assert not storable("max-age=60", status=304)
    assert not storable("max-age=60", status=500)


def test_heuristically_cacheable_status_without_directives() -> None:
    assert storable("", status=200)
    assert storable("", status=404)
    assert not storable("", status=302)  # needs explicit freshness
    assert storable("max-age=30", status=302)
    assert storable("", status=302, headers={"Expires": format_http_date(T0)})


def test_vary_star_is_never_stored() -> None:
    assert not storable("max-age=60", headers={"Vary": "*"})
    assert vary_fields(CIMultiDict({"Vary": "Accept-Encoding, accept-language"})) == (
        "accept-encoding",
        "accept-language",
    )
    assert vary_fields(CIMultiDict()) == ()


@pytest.mark.parametrize(
    ("directives", "expected"),
    [
        ("max-age=60", False),
        ("", False),
        ("public, max-age=60", True),
        ("s-maxage=60", True),
        ("must-revalidate, max-age=60", True),
    ],
)
def test_authorization_requires_explicit_permission(directives: str, expected: bool) -> None:
    assert storable(directives, auth=True) is expected


# -- freshness (section 4.2) -------------------------------------------------------------


def test_s_maxage_wins_over_max_age_for_shared_cache() -> None:
    assert freshness_lifetime(cc("max-age=10, s-maxage=100"), CIMultiDict()) == 100.0
    assert freshness_lifetime(cc("max-age=0, s-maxage=30"), CIMultiDict()) == 30.0


def test_max_age_wins_over_expires() -> None:
    headers = CIMultiDict({"Date": format_http_date(T0), "Expires": format_http_date(T0 + 500)})
    assert freshness_lifetime(cc("max-age=10"), headers) == 10.0
    assert freshness_lifetime(EMPTY_CACHE_CONTROL, headers) == 500.0


def test_invalid_expires_means_expired() -> None:
    headers = CIMultiDict({"Date": format_http_date(T0), "Expires": "0"})
    assert freshness_lifetime(EMPTY_CACHE_CONTROL, headers) == 0.0


def test_heuristic_freshness_from_last_modified() -> None:
    headers = CIMultiDict(
        {"Date": format_http_date(T0), "Last-Modified": format_http_date(T0 - 1000)}
    )
    assert freshness_lifetime(EMPTY_CACHE_CONTROL, headers) == pytest.approx(100.0)
    old = CIMultiDict({"Date": format_http_date(T0), "Last-Modified": format_http_date(0)})
    assert freshness_lifetime(EMPTY_CACHE_CONTROL, old) == HEURISTIC_CAP_SECONDS
    assert freshness_lifetime(EMPTY_CACHE_CONTROL, headers, status=302) == 0.0


def test_corrected_initial_age_uses_age_header_and_delay() -> None:
    headers = CIMultiDict({"Date": format_http_date(T0), "Age": "30"})
    age = corrected_initial_age(headers, request_time=T0, response_time=T0 + 2)
    assert age == pytest.approx(32.0)
    clock_skew = CIMultiDict({"Date": format_http_date(T0 - 100)})
    assert corrected_initial_age(clock_skew, request_time=T0, response_time=T0) == 100.0


# -- reuse (section 4) and RFC 5861 ------------------------------------------------------


def _reuse(age: float, lifetime: float, response: str = "", request: str = "") -> Reuse:
    return reuse(age=age, lifetime=lifetime, response_cc=cc(response), request_cc=cc(request))


def test_fresh_response_is_reused_stale_one_revalidated() -> None:
    assert _reuse(5, 60) is Reuse.FRESH
    assert _reuse(61, 60) is Reuse.REVALIDATE


def test_request_no_cache_max_age_min_fresh() -> None:
    assert _reuse(5, 60, request="no-cache") is Reuse.REVALIDATE
    assert _reuse(5, 60, request="max-age=3") is Reuse.REVALIDATE
    assert _reuse(5, 60, request="max-age=10") is Reuse.FRESH
    assert _reuse(50, 60, request="min-fresh=20") is Reuse.REVALIDATE


def test_request_max_stale_accepts_stale_unless_forbidden() -> None:
    assert _reuse(70, 60, request="max-stale=20") is Reuse.FRESH
    assert _reuse(90, 60, request="max-stale=20") is Reuse.REVALIDATE
    assert _reuse(9999, 60, request="max-stale") is Reuse.FRESH
    assert _reuse(70, 60, response="must-revalidate", request="max-stale") is Reuse.REVALIDATE


def test_stale_while_revalidate_window() -> None:
    response = "max-age=60, stale-while-revalidate=30"
    assert _reuse(80, 60, response) is Reuse.STALE_WHILE_REVALIDATE
    assert _reuse(100, 60, response) is Reuse.REVALIDATE


@pytest.mark.parametrize(
    "response",
    [
        "max-age=60, must-revalidate, stale-while-revalidate=30",
        "max-age=60, proxy-revalidate, stale-while-revalidate=30",
        "s-maxage=60, stale-while-revalidate=30",
    ],
)
def test_revalidate_directives_forbid_stale_serving(response: str) -> None:
    assert _reuse(70, 60, response) is Reuse.REVALIDATE
    assert not may_serve_stale_on_error(
        age=70, lifetime=60, response_cc=cc(response + ", stale-if-error=60"), request_cc=cc("")
    )


def test_stale_if_error_window_from_response_or_request() -> None:
    response = cc("max-age=10, stale-if-error=60")
    none = EMPTY_CACHE_CONTROL
    assert may_serve_stale_on_error(age=50, lifetime=10, response_cc=response, request_cc=none)
    assert not may_serve_stale_on_error(age=80, lifetime=10, response_cc=response, request_cc=none)
    assert not may_serve_stale_on_error(
        age=50, lifetime=10, response_cc=cc("max-age=10"), request_cc=none
    )
    assert may_serve_stale_on_error(
        age=50, lifetime=10, response_cc=cc("max-age=10"), request_cc=cc("stale-if-error=100")
    )


# -- client conditional requests ---------------------------------------------------------


def test_not_modified_by_etag_weak_comparison_and_star() -> None:
    stored = CIMultiDict({"ETag": 'W/"v1"'})
    assert not_modified(CIMultiDict({"If-None-Match": '"v0", "v1"'}), stored)
    assert not_modified(CIMultiDict({"If-None-Match": "*"}), stored)
    assert not not_modified(CIMultiDict({"If-None-Match": '"v2"'}), stored)


def test_not_modified_by_date_only_without_if_none_match() -> None:
    stored = CIMultiDict({"Last-Modified": format_http_date(T0), "ETag": '"v1"'})
    assert not_modified(CIMultiDict({"If-Modified-Since": format_http_date(T0)}), stored)
    assert not not_modified(CIMultiDict({"If-Modified-Since": format_http_date(T0 - 1)}), stored)
    both = CIMultiDict({"If-Modified-Since": format_http_date(T0), "If-None-Match": '"v9"'})
    assert not not_modified(both, stored)
