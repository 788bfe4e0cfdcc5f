"""The compiled codec (pymaster/protocols/_codec.c) against the pure-Python one, the
reference: same environ, same bytes, same exceptions with the same messages, and no crash
on arbitrary bytes (hypothesis drives both with the same input)."""

import os
import shutil
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pymaster.apps import wsgi
from pymaster.protocols import http, speedups, uwsgi

codec = pytest.importorskip(
    "pymaster.protocols._codec", reason="the compiled codec is not built (no C compiler?)"
)

FUZZ = settings(max_examples=600, deadline=None)


def outcome(fn, *args):
    """('ok', result) or ('raise', exception type, message)."""
    try:
        return ("ok", fn(*args))
    except Exception as exc:  # the comparison is the point: any exception type
        return ("raise", type(exc), str(exc))


# ------------------------------------------------------------------- selection


def test_the_compiled_codec_is_built_where_a_compiler_is():
    if shutil.which("gcc") or shutil.which("cc"):
        assert speedups.codec is codec or os.environ.get(speedups.PURE_ENV)


@pytest.mark.parametrize("value, pure", [("1", True), ("yes", True), ("0", False), ("", False)])
def test_the_environment_variable_selects_the_pure_python_codec(value, pure):
    code = (
        "from pymaster.protocols import speedups, uwsgi;"
        "print(speedups.codec is None, uwsgi._decode_environ is uwsgi._decode_environ_py,"
        " speedups.describe())"
    )
    env = dict(os.environ, **{speedups.PURE_ENV: value})
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split(maxsplit=2)
    assert out[:2] == [str(pure), str(pure)]
    assert out[2].startswith("pure-Python codec" if pure else "compiled codec")


# ------------------------------------------------------------------- uwsgi vars

keys = st.binary(min_size=1, max_size=40)
values = st.binary(max_size=300)
known = st.sampled_from(
    [
        b"REQUEST_METHOD",
        b"PATH_INFO",
        b"QUERY_STRING",
        b"HTTP_HOST",
        b"REMOTE_ADDR",
        b"CONTENT_LENGTH",
        b"HTTP_COOKIE",
        b"X",
    ]
)
pairs = st.lists(st.tuples(st.one_of(known, keys), values), max_size=30)


@FUZZ
@given(pairs)
def test_well_formed_blocks_decode_the_same(items):
    block = uwsgi.encode_vars(items)
    expected = uwsgi._decode_environ_py(block)
    for form in (block, bytearray(block), memoryview(block)):
        got = codec.decode_environ(form)
        assert got == expected
        assert list(got[0]) == list(expected[0])  # the same key order


@FUZZ
@given(st.binary(max_size=400))
def test_arbitrary_bytes_give_the_same_result_or_the_same_error(data):
    assert outcome(codec.decode_environ, data) == outcome(uwsgi._decode_environ_py, data)


@FUZZ
@given(pairs, st.integers(0, 2000), st.binary(max_size=8))
def test_truncated_and_extended_blocks_give_the_same_error(items, cut, tail):
    block = uwsgi.encode_vars(items)
    for data in (block[:cut], block + tail, block[cut:]):
        assert outcome(codec.decode_environ, data) == outcome(uwsgi._decode_environ_py, data)


def test_errors_are_uwsgi_errors_with_the_python_wording():
    for data in (b"\x00\x00", b"\x05\x00ab", b"\x01", b"\x01\x00a\x05\x00xy"):
        with pytest.raises(uwsgi.UwsgiError) as c_err:
            codec.decode_environ(data)
        with pytest.raises(uwsgi.UwsgiError) as py_err:
            uwsgi._decode_environ_py(data)
        assert str(c_err.value) == str(py_err.value)


def test_non_buffers_are_refused_as_python_refuses_them():
    assert outcome(codec.decode_environ, "text")[:2] == ("raise", TypeError)
    assert outcome(uwsgi._decode_environ_py, "text")[:2] == ("raise", TypeError)


@FUZZ
@given(st.integers(0, 255), st.integers(0, 255), pairs, st.binary(max_size=20))
def test_parse_packet_sees_the_same_packet(m1, m2, items, rest):
    block = uwsgi.encode_vars(items)
    if len(block) > uwsgi.MAX_DATASIZE:
        return
    buf = bytearray(uwsgi.HEADER.pack(m1, len(block), m2) + block + rest)
    packet = uwsgi.parse_packet(buf, 4 + len(block))
    assert packet.modifier1 == m1 and packet.modifier2 == m2
    assert (packet.vars, packet.nvars) == uwsgi._decode_environ_py(block)


# ------------------------------------------------------------------- WSGI head checks

token = st.text(st.sampled_from("!#$%&'*+-.^_`|~09azAZ"), min_size=1, max_size=12)
any_text = st.text(max_size=12)
names = st.one_of(
    token,
    any_text,
    st.sampled_from(["Content-Length", "Connection", "TRANSFER-ENCODING", "X\n", "é", ""]),
)
header_values = st.one_of(
    any_text, st.sampled_from(["close", "Keep-Alive", "CLOSE", "a\r\nb", "\0", "ÿ", "€", "12"])
)
items = st.one_of(
    st.tuples(names, header_values),
    st.tuples(names, st.integers()),
    st.tuples(names),
    st.lists(names, max_size=2),
    st.none(),
)
plain_items = st.tuples(names, header_values)
statuses = st.one_of(
    st.sampled_from(
        [
            "200 OK",
            "204 No Content",
            "304 Not Modified",
            "404 Not Found",
            "099 X",
            "200",
            "200 OK\r\nX: y",
            "2000 OK",
            "500 €",
            "101 Switching",
            "200 é",
        ]
    ),
    any_text,
)


@FUZZ
@given(
    st.one_of(statuses, st.integers()),
    st.one_of(st.lists(items, max_size=5), st.tuples(plain_items), st.none()),
)
def test_head_ok_only_accepts_what_python_accepts(status, headers):
    py = outcome(wsgi._validate_head_py, status, headers)
    if codec.head_ok(status, headers):
        assert py == ("ok", None)
    # and the public check behaves as the Python one, whichever path decided
    assert outcome(wsgi.validate_head, status, headers) == py


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["200 OK", "404 Not Found"]),
    st.lists(
        st.tuples(token, st.text(st.characters(max_codepoint=255, blacklist_characters="\r\n\0"))),
        max_size=6,
    ),
)
def test_head_ok_accepts_valid_latin1_heads(status, headers):
    assert codec.head_ok(status, headers) is True


# ------------------------------------------------------------------- framing


@FUZZ
@given(
    st.sampled_from(["HTTP/1.0", "HTTP/1.1", "", "é", "€"]),
    statuses,
    st.one_of(st.lists(items, max_size=5), st.lists(plain_items, max_size=5)),
)
def test_raw_framing_gives_the_same_bytes_or_defers(protocol, status, headers):
    framing = uwsgi.RawFraming(protocol)
    py = outcome(framing._head_py, status, headers)
    got = codec.raw_head(framing.protocol, status, headers)
    if got is not None:
        assert py == ("ok", got)
    assert outcome(framing.head, status, headers, None, False) == py


@FUZZ
@given(
    st.sampled_from(["1.0", "1.1", "0.9"]),
    statuses,
    st.one_of(st.lists(items, max_size=5), st.lists(plain_items, max_size=5)),
    st.one_of(st.none(), st.integers(0, 10**20), st.booleans()),
    st.booleans(),
    st.booleans(),
)
def test_http_framing_gives_the_same_bytes_and_state(
    version, status, headers, length, no_body, keep_alive
):
    ref = http.HttpFraming(version, keep_alive)
    py = outcome(ref._head_py, status, headers, length, no_body)
    py_state = (ref.keep_alive, ref.chunked)
    got = codec.http_head(version, status, headers, length, no_body, keep_alive)
    if got is not None:
        assert py == ("ok", got[0]) and py_state == (got[1], got[2])
    public = http.HttpFraming(version, keep_alive)
    assert outcome(public.head, status, headers, length, no_body) == py
    assert (public.keep_alive, public.chunked) == py_state


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["1.0", "1.1"]),
    st.sampled_from(["200 OK", "204 No Content", "304 X"]),
    st.lists(
        st.tuples(
            st.sampled_from(
                ["Content-Length", "connection", "Transfer-Encoding", "X-A", "Content-Type"]
            ),
            st.sampled_from(["close", "keep-alive", "5", "text/plain", "ÿ"]),
        ),
        max_size=4,
    ),
    st.one_of(st.none(), st.integers(0, 1000)),
    st.booleans(),
    st.booleans(),
)
def test_http_framing_common_heads_are_compiled(
    version, status, headers, length, no_body, keep_alive
):
    got = codec.http_head(version, status, headers, length, no_body, keep_alive)
    assert got is not None
    ref = http.HttpFraming(version, keep_alive)
    assert ref._head_py(status, headers, length, no_body) == got[0]
    assert (ref.keep_alive, ref.chunked) == got[1:]


def test_the_bad_argument_counts_raise_type_errors():
    for fn, n in (
        (codec.head_ok, 1),
        (codec.raw_head, 2),
        (codec.http_head, 5),
        (codec.headers_environ, 1),
    ):
        with pytest.raises(TypeError):
            fn(*range(n))


# ------------------------------------------------------------------- HTTP head -> environ

field_names = st.one_of(
    st.binary(min_size=1, max_size=12),
    st.sampled_from(
        [
            b"Host",
            b"cookie",
            b"Cookie",
            b"X-Two",
            b"x-two",
            b"Content-Type",
            b"CONTENT-LENGTH",
            b"X_Under",
            b"\xdf",
            b"\xff-a",
            b"Accept",
        ]
    ),
)
fields = st.lists(st.tuples(field_names, st.binary(max_size=20)), max_size=12)
start_env = st.dictionaries(
    st.sampled_from(["HTTP_HOST", "HTTP_COOKIE", "REMOTE_ADDR", "CONTENT_TYPE", "HTTP_X_TWO"]),
    st.text(max_size=5),
    max_size=3,
)


@FUZZ
@given(start_env, fields)
def test_header_fields_go_into_the_environ_the_same_way(env, headers):
    c_env, py_env = dict(env), dict(env)
    done = codec.headers_environ(c_env, headers)
    http._headers_to_environ_py(py_env, headers)
    if done:
        assert c_env == py_env and list(c_env) == list(py_env)
    else:
        assert c_env == env  # untouched: the Python code runs instead
        assert any(b >= 0x80 for name, _ in headers for b in name)
    public = dict(env)
    http.headers_to_environ(public, headers)
    assert public == py_env and list(public) == list(py_env)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([b"Host", b"Cookie", b"X-A", b"User-Agent"]), st.binary(max_size=10)
        ),
        max_size=8,
    )
)
def test_ascii_header_fields_are_compiled(headers):
    assert codec.headers_environ({}, headers) is True


def test_headers_environ_leaves_other_input_to_python():
    assert codec.headers_environ({}, [(b"A", "str value")]) is False
    assert codec.headers_environ({}, ((b"A", b"b"),)) is False
    assert codec.headers_environ([], [(b"A", b"b")]) is False
