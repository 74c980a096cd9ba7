"""Unit and property tests for hopchain.scrub (identifying-header removal)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hopchain.scrub import (
    COMMON_USER_AGENT,
    HOP_BY_HOP,
    IDENTIFYING,
    ScrubOptions,
    is_identifying,
    scrub_request_headers,
    strip_hop_by_hop,
)

REQUIRED = [
    "Forwarded",
    "X-Forwarded-For",
    "X-Forwarded-Host",
    "X-Forwarded-Proto",
    "X-Forwarded-Port",
    "X-Forwarded-Server",
    "Via",
    "X-Real-IP",
    "Client-IP",
    "True-Client-IP",
    "CF-Connecting-IP",
    "X-Client-IP",
    "X-Cluster-Client-IP",
    "From",
    "Proxy-Authorization",
    "Proxy-Connection",
    "Connection",
    "Keep-Alive",
    "TE",
    "Trailer",
    "Upgrade",
    "Transfer-Encoding",
]
KEPT = [
    (b"Accept", b"*/*"),
    (b"Cookie", b"a=b"),
    (b"User-Agent", b"curl/8.0"),
    (b"Referer", b"http://elsewhere.example/"),
    (b"X-Forwarder", b"not a forwarding header"),
]
ORIGIN = ("http", "example.com", 80)


def names(headers: list[tuple[bytes, bytes]]) -> list[str]:
    return [name.decode().lower() for name, _ in headers]


def test_every_required_header_is_removed_and_reported() -> None:
    headers = [(name.encode(), b"127.0.0.1") for name in REQUIRED]
    result = scrub_request_headers(headers + KEPT, origin=ORIGIN)
    assert result.headers == KEPT
    assert result.removed == [name.lower() for name in REQUIRED]


def test_headers_named_in_connection_are_removed() -> None:
    headers = [
        (b"Connection", b"keep-alive, X-Secret ,X-Other"),
        (b"X-Secret", b"1"),
        (b"x-other", b"2"),
        (b"X-Kept", b"3"),
    ]
    result = scrub_request_headers(headers)
    assert result.headers == [(b"X-Kept", b"3")]
    assert result.removed == ["connection", "x-secret", "x-other"]


def test_order_and_spelling_of_kept_headers_are_unchanged() -> None:
    headers = [(b"aCCept", b"1"), (b"Via", b"x"), (b"ZZ", b"2"), (b"accept", b"3")]
    assert scrub_request_headers(headers).headers == [
        (b"aCCept", b"1"),
        (b"ZZ", b"2"),
        (b"accept", b"3"),
    ]


def test_via_is_never_added() -> None:
    result = scrub_request_headers([(b"Accept", b"*/*")], origin=ORIGIN)
    assert "via" not in names(result.headers)
    result = scrub_request_headers(
        [], options=ScrubOptions(normalise_identity=True), origin=ORIGIN
    )
    assert result.headers == []


def test_extra_headers_option() -> None:
    options = ScrubOptions(extra_headers=frozenset({"x-tracking-id"}))
    result = scrub_request_headers([(b"X-Tracking-ID", b"42")], options=options)
    assert result.headers == []
    assert result.removed == ["x-tracking-id"]


def test_normalise_identity_fixes_user_agent_and_cross_origin_referer() -> None:
    options = ScrubOptions(normalise_identity=True)
    headers = [
        (b"User-Agent", b"rare/1.0"),
        (b"Referer", b"https://example.com/page"),  # another scheme: cross-origin
        (b"Referer", b"http://example.com:80/same"),
        (b"Referer", b"http://EXAMPLE.com/same-too"),
        (b"Referer", b"http://example.com:8080/other-port"),
        (b"Referer", b"not a url"),
    ]
    result = scrub_request_headers(headers, options=options, origin=ORIGIN)
    assert result.headers == [
        (b"User-Agent", COMMON_USER_AGENT.encode()),
        (b"Referer", b"http://example.com:80/same"),
        (b"Referer", b"http://EXAMPLE.com/same-too"),
    ]
    assert result.removed == ["user-agent", "referer", "referer", "referer"]


def test_normalise_identity_without_origin_drops_every_referer() -> None:
    options = ScrubOptions(normalise_identity=True)
    result = scrub_request_headers(
        [(b"Referer", b"http://example.com/")], options=options
    )
    assert result.headers == []


def test_the_common_user_agent_is_not_counted_as_replaced() -> None:
    options = ScrubOptions(normalise_identity=True)
    result = scrub_request_headers(
        [(b"User-Agent", COMMON_USER_AGENT.encode())], options=options
    )
    assert result.removed == []


def test_without_the_option_user_agent_and_referer_stay() -> None:
    result = scrub_request_headers(KEPT, origin=ORIGIN)
    assert result.headers == KEPT


def test_strip_hop_by_hop_for_responses_keeps_end_to_end_headers() -> None:
    headers = [
        (b"Content-Length", b"3"),
        (b"Connection", b"close, X-Hop"),
        (b"X-Hop", b"1"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Via", b"1.1 origin-cdn"),
        (b"Set-Cookie", b"a=b"),
    ]
    result = strip_hop_by_hop(headers)
    assert result.headers == [
        (b"Content-Length", b"3"),
        (b"Via", b"1.1 origin-cdn"),
        (b"Set-Cookie", b"a=b"),
    ]


@pytest.mark.parametrize("name", sorted(IDENTIFYING))
def test_is_identifying_knows_the_list(name: str) -> None:
    assert is_identifying(name)
    assert is_identifying(name.upper())


def test_is_identifying_prefix() -> None:
    assert is_identifying("X-Forwarded-Anything-New")
    assert not is_identifying("Accept")


def _random_case(draw: st.DrawFn, name: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return "".join(
        c.upper() if f else c.lower() for c, f in zip(name, flips, strict=True)
    )


@st.composite
def identifying_names(draw: st.DrawFn) -> str:
    base = draw(
        st.sampled_from(sorted(IDENTIFYING | HOP_BY_HOP))
        | st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).map(
            lambda tail: "x-forwarded-" + tail
        )
    )
    return _random_case(draw, base)


ordinary_names = st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=20).filter(
    lambda n: not is_identifying(n) and n not in HOP_BY_HOP
)


@given(
    st.lists(
        st.tuples(st.booleans(), identifying_names(), ordinary_names),
        max_size=30,
    )
)
def test_prop_scrub_is_case_insensitive(
    rows: list[tuple[bool, str, str]],
) -> None:
    headers = [((bad if is_bad else good).encode(), b"v") for is_bad, bad, good in rows]
    result = scrub_request_headers(headers)
    expected = [(good.encode(), b"v") for is_bad, _, good in rows if not is_bad]
    assert result.headers == expected
    assert result.removed == [bad.lower() for is_bad, bad, _ in rows if is_bad]
    assert not any(is_identifying(n) for n in names(result.headers))


@given(st.lists(st.tuples(st.binary(max_size=20), st.binary(max_size=40))))
def test_prop_arbitrary_headers_never_crash(
    headers: list[tuple[bytes, bytes]],
) -> None:
    options = ScrubOptions(normalise_identity=True)
    result = scrub_request_headers(headers, options=options, origin=ORIGIN)
    assert len(result.headers) <= len(headers)
    kept = [name.decode("latin-1") for name, _ in result.headers]
    assert not any(is_identifying(name) or name.lower() in HOP_BY_HOP for name in kept)
    assert len(strip_hop_by_hop(headers).headers) <= len(headers)
