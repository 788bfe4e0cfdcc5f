"""The uwsgi packet codec: captured bytes, round trips, and hostile input."""


import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pymaster.protocols import uwsgi

# The subscription packet uWSGI 2.0.21 sent (reference 2.2): a real-world uwsgi packet.
CAPTURED = bytes.fromhex(
    "e066000003006b65790b006578616d706c652e636f6d0700616464726573730f003132372e302e302e313a"
    "313931303109006d6f6469666965723101003009006d6f646966696572320100300500636f726573010031"
    "04006c6f61640100300600776569676874010030")


def test_captured_packet_decodes_and_reencodes_byte_for_byte():
    m1, size, m2 = uwsgi.parse_header(CAPTURED)
    assert (m1, size, m2) == (224, 102, 0)
    pairs = uwsgi.decode_vars(CAPTURED[4:])
    assert pairs[0] == (b"key", b"example.com")
    assert pairs[1] == (b"address", b"127.0.0.1:19101")
    assert [k for k, _ in pairs] == [b"key", b"address", b"modifier1", b"modifier2", b"cores",
                                     b"load", b"weight"]
    assert uwsgi.encode_packet(224, pairs, 0) == CAPTURED


def test_empty_values_and_order_and_duplicates_kept():
    block = uwsgi.encode_vars([("A", ""), ("B", "x"), ("A", "y")])
    assert uwsgi.decode_vars(block) == [(b"A", b""), (b"B", b"x"), (b"A", b"y")]
    env, n = uwsgi.decode_environ(block)
    assert env == {"A": "y", "B": "x"} and n == 3


def test_null_key_is_rejected_with_uwsgi_wording():
    with pytest.raises(uwsgi.UwsgiError, match="uwsgi key cannot be null"):
        uwsgi.decode_vars(b"\x00\x00\x01\x00x")


@pytest.mark.parametrize("block", [b"\x05\x00ab", b"\x01\x00a\x05\x00xy", b"\x01", b"\x01\x00a\x01"])
def test_overrun_is_rejected(block):
    with pytest.raises(uwsgi.UwsgiError, match="invalid uwsgi request"):
        uwsgi.decode_vars(block)


@pytest.mark.parametrize("value,expected", [("11", 11), ("12abc", 12), ("", 0), (None, 0),
                                            ("abc", 0), (" 5", 0)])
def test_content_length_reads_leading_digits(value, expected):
    assert uwsgi.content_length(value) == expected


def _reader(data: bytes, step: int):
    chunks = [data[i:i + step] for i in range(0, len(data), step)]

    def recv(_n):
        return chunks.pop(0) if chunks else b""
    return recv


def test_read_packet_in_small_pieces_keeps_body_remainder():
    pkt = uwsgi.encode_packet(0, {"REQUEST_METHOD": "POST", "CONTENT_LENGTH": "11"}) + b"hello world"
    packet, rest = uwsgi.read_packet(_reader(pkt, 3), 4096)
    assert packet.vars["REQUEST_METHOD"] == "POST" and packet.nvars == 2
    body = uwsgi.BodyReader(_reader(pkt[len(pkt) - 11 + len(rest):], 4), 11, rest)
    assert body.readline() == b"hello world" and body.read() == b""


def test_read_packet_over_buffer_size_uses_uwsgi_log_line():
    pkt = uwsgi.encode_packet(0, {"XY": "y" * 5000})
    with pytest.raises(uwsgi.UwsgiError, match=r"invalid request block size: 5006 \(max 4096\)\.\.\.skip"):
        uwsgi.read_packet(_reader(pkt, 1000), 4096)
    packet, _ = uwsgi.read_packet(_reader(pkt, 1000), 8192)
    assert len(packet.vars["XY"]) == 5000


def test_stream_closed_early():
    pkt = uwsgi.encode_packet(0, {"A": "b"})
    with pytest.raises(uwsgi.UwsgiError, match="uwsgi_proto_uwsgi_parser"):
        uwsgi.read_packet(_reader(pkt[:-1], 2), 4096)
    with pytest.raises(uwsgi.UwsgiError, match="uwsgi_proto_uwsgi_parser"):
        uwsgi.read_packet(_reader(b"", 1), 4096)


def test_body_reader_interfaces():
    data = b"line1\nline2\nrest"
    body = uwsgi.BodyReader(_reader(data[4:], 3), len(data), data[:4])
    assert body.readline() == b"line1\n"
    assert body.read(3) == b"lin"
    assert list(body) == [b"e2\n", b"rest"]
    assert body.read() == b""


def test_body_reader_reports_short_body():
    body = uwsgi.BodyReader(_reader(b"abc", 3), 10)
    with pytest.raises(uwsgi.UwsgiError, match="7 body bytes missing"):
        body.read()


keys = st.binary(min_size=1, max_size=300)
values = st.binary(max_size=300)


@given(st.lists(st.tuples(keys, values), max_size=30), st.integers(0, 255), st.integers(0, 255))
def test_round_trip(pairs, m1, m2):
    pkt = uwsgi.encode_packet(m1, pairs, m2)
    h1, size, h2 = uwsgi.parse_header(pkt)
    assert (h1, h2, size) == (m1, m2, len(pkt) - 4)
    assert uwsgi.decode_vars(pkt[4:]) == pairs


@settings(max_examples=400)
@given(st.binary(max_size=600), st.integers(1, 64))
def test_arbitrary_bytes_only_raise_the_codec_error(data, step):
    try:
        uwsgi.decode_vars(data)
    except uwsgi.UwsgiError:
        pass
    try:
        uwsgi.read_packet(_reader(data, step), 512)
    except uwsgi.UwsgiError:
        pass


def test_raw_framing_uses_server_protocol_or_http10():
    f = uwsgi.RawFraming("HTTP/1.1")
    assert f.head("200 OK", [("A", "b")], 3, False) == b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n"
    assert uwsgi.RawFraming(None).head("201 Created", [], None, False) == b"HTTP/1.0 201 Created\r\n\r\n"
