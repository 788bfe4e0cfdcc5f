"""The fastrouter's key lookup over a raw vars block: precedence, bounds, hostile bytes."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pymaster.protocols.uwsgi import UwsgiError, decode_vars, encode_vars
from pymaster.routers.session import route_key


def test_precedence_and_empty_values():
    block = encode_vars([("SERVER_NAME", "s"), ("HTTP_HOST", "h"), ("UWSGI_FASTROUTER_KEY", "k")])
    assert route_key(block) == "k"
    assert route_key(encode_vars([("SERVER_NAME", "s"), ("HTTP_HOST", "h")])) == "h"
    assert route_key(encode_vars([("UWSGI_FASTROUTER_KEY", ""), ("SERVER_NAME", "s")])) == "s"
    assert route_key(encode_vars([("HTTP_HOST", "x" * 256), ("SERVER_NAME", "s")])) == "s"
    assert route_key(b"") == ""


@given(st.lists(st.tuples(st.sampled_from(["HTTP_HOST", "SERVER_NAME", "UWSGI_FASTROUTER_KEY",
                                           "PATH_INFO", "X"]),
                          st.text(alphabet="abc.:0123", max_size=20)), max_size=8))
def test_matches_the_codec(pairs):
    block = encode_vars(pairs)
    found = {}
    for k, v in decode_vars(block):
        if v and len(v) <= 255:
            found.setdefault(k, v)       # the first non-empty value of each name
    expected = next((found[k].decode() for k in (b"UWSGI_FASTROUTER_KEY", b"HTTP_HOST",
                                                 b"SERVER_NAME") if k in found), "")
    assert route_key(block) == expected


@given(st.binary(max_size=400))
def test_hostile_bytes_only_raise_the_codec_error(data):
    try:
        route_key(data)
    except UwsgiError:
        pass


def test_truncated_block_is_rejected():
    with pytest.raises(UwsgiError):
        route_key(encode_vars([("HTTP_HOST", "example.com")])[:-3])
