"""HTTP/1.1 request parsing and response framing for --http-socket."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pymaster.protocols.http import HttpError, HttpFraming, RequestParser, error_response


def test_pipelined_chunked_and_keepalive_flags():
    p = RequestParser(4096)
    reqs = p.feed(b"POST /x?a=1 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"5\r\nhello\r\n0\r\n\r\nGET /y HTTP/1.0\r\n\r\n")
    assert [(r.method, r.target, r.version, r.keep_alive) for r in reqs] == [
        ("POST", "/x?a=1", "1.1", True), ("GET", "/y", "1.0", False)]
    assert reqs[0].body.read() == b"hello" and reqs[0].body_size == 5


def test_request_split_across_feeds():
    p = RequestParser(4096)
    data = b"POST / HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\nbody"
    out = []
    for i in range(len(data)):
        out += p.feed(data[i:i + 1])
    assert len(out) == 1 and out[0].expect_continue and out[0].body.read() == b"body"


@pytest.mark.parametrize("raw,status", [
    (b"BLAH\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX: " + b"a" * 5000 + b"\r\n\r\n", 431),
])
def test_bad_requests_map_to_statuses(raw, status):
    with pytest.raises(HttpError) as info:
        RequestParser(4096).feed(raw)
    assert info.value.status == status


def test_upgrade_request_is_served_once_then_the_connection_ends():
    """Issue 13 item 9: the app answers an Upgrade request (never upgraded); no 501 after."""
    parser = RequestParser(4096)
    (req,) = parser.feed(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                         b"\x81\x05hello")
    assert req.upgrade and not req.keep_alive and parser.error is None and parser.broken
    assert parser.feed(b"GET / HTTP/1.1\r\n\r\n") == []


def test_body_is_filled_as_bytes_arrive_and_ends_with_empty_reads():
    parser = RequestParser(4096)
    (req,) = parser.feed(b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello")
    assert req.body.read(3) == b"hel" and not req.body.complete and req.body.unread() == 6
    feeds = [b" worl", b"dGET /next HTTP/1.1\r\n\r\n"]
    nxt = []
    req.body.fill = lambda: nxt.extend(parser.feed(feeds.pop(0)))
    assert req.body.read() == b"lo world" and req.body.read() == b"" and req.body.complete
    assert [r.target for r in nxt] == ["/next"]


def test_chunked_error_goes_to_the_body_being_read():
    parser = RequestParser(4096, max_body=8)
    (req,) = parser.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    req.body.fill = lambda: parser.feed(b"9\r\n123456789\r\n0\r\n\r\n")
    with pytest.raises(OSError) as info:
        req.body.read()
    assert info.value.status == 413 and parser.broken and parser.error is None


def test_good_requests_before_a_bad_one_are_served_first():
    parser = RequestParser(4096)
    done = parser.feed(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nBLAH\r\n\r\n")
    assert [r.target for r in done] == ["/a"] and parser.error.status == 400


def test_body_limits_give_413():
    with pytest.raises(HttpError) as info:
        RequestParser(4096, max_body=3).feed(b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\n")
    assert info.value.status == 413
    with pytest.raises(HttpError) as info:
        RequestParser(4096, max_body=3).feed(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert info.value.status == 413


@settings(max_examples=300)
@given(st.binary(max_size=2000), st.integers(1, 64))
def test_arbitrary_bytes_only_raise_http_error(data, step):
    p = RequestParser(1024, max_body=512)
    try:
        for i in range(0, len(data), step):
            p.feed(data[i:i + step])
    except HttpError as exc:
        assert 400 <= exc.status < 600


@settings(max_examples=200)
@given(st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
       st.text(alphabet="abcdefghij/%20-_.~", min_size=1, max_size=50),
       st.lists(st.tuples(st.text(alphabet="abcdefXYZ-", min_size=1, max_size=10),
                          st.text(alphabet="abc 123;=,", max_size=20)), max_size=8),
       st.binary(max_size=300))
def test_well_formed_requests_round_trip(method, path, headers, body):
    head = f"{method} /{path} HTTP/1.1\r\nHost: x\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers if k.lower() not in ("content-length", "transfer-encoding", "host", "upgrade", "connection", "expect"))
    raw = head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    (req,) = RequestParser(65536).feed(raw)
    assert req.method == method and req.target == f"/{path}"
    assert (req.body.read() if req.body else b"") == body


def test_framing_chunked_when_length_unknown_and_close_for_http10():
    f = HttpFraming("1.1", True)
    head = f.head("200 OK", [("A", "b")], None, False)
    assert b"Transfer-Encoding: chunked" in head and f.chunk(b"abc") == b"3\r\nabc\r\n"
    assert f.finish() == b"0\r\n\r\n"
    f = HttpFraming("1.0", False)
    head = f.head("200 OK", [], None, False)
    assert b"Transfer-Encoding" not in head and not f.keep_alive
    f = HttpFraming("1.0", True)
    assert b"Content-Length: 3\r\nConnection: keep-alive" in f.head("200 OK", [], 3, False)
    f = HttpFraming("1.1", True)
    assert b"Connection: close" in f.head("200 OK", [("Connection", "close")], 3, False)
    assert not f.keep_alive


def test_error_response_is_complete():
    raw = error_response(431, "too big")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ") and b"Content-Length: %d" % len(body) in head
