"""Page tokens: every token the public API lets through is a cursor, never a 400."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.catalog.handlers import decode_token, encode_token
from services.common.errors import InvalidArgument


@pytest.mark.parametrize("last_id", ["p-0001", "sku:9.1", "é"])
def test_a_token_given_out_decodes_to_its_id(last_id: str) -> None:
    assert decode_token(encode_token(last_id)) == last_id


@given(st.from_regex(r"\A[A-Za-z0-9_-]{0,64}\Z"))
def test_any_token_of_the_public_pattern_is_a_cursor(token: str) -> None:
    assert isinstance(decode_token(token), str)


def test_a_token_outside_the_alphabet_is_refused_with_the_fix() -> None:
    with pytest.raises(InvalidArgument, match="next_page_token unchanged"):
        decode_token("a=b")
