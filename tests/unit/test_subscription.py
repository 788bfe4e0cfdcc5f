"""Subscription packets (captured uWSGI 2.0.21 bytes), the --subscribe-to / --subscribe2
grammar, HMAC signing, and the master-side Subscriber (cadence, pause, errors)."""

import socket
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pymaster.config import Config, parse
from pymaster.master.subscriber import Subscriber
from pymaster.protocols.subscription import (
    SubscriptionError,
    Target,
    build_packet,
    expand_keys_file,
    parse_packet,
    parse_subscribe2,
    parse_subscribe_to,
    read_secret,
    split_key,
    verify,
)
from pymaster.protocols.uwsgi import encode_vars

CAPTURED = bytes.fromhex(
    "e066000003006b65790b006578616d706c652e636f6d0700616464726573730f003132372e302e302e313a"
    "313931303109006d6f6469666965723101003009006d6f646966696572320100300500636f726573010031"
    "04006c6f61640100300600776569676874010030")
SECRET = b"0123456789abcdef-secret"


# --------------------------------------------------------------------------- packets

def test_build_matches_captured_subscribe_and_unsubscribe():
    assert build_packet(0, "example.com", "127.0.0.1:19101") == CAPTURED
    unsub = build_packet(1, "example.com", "127.0.0.1:19101")
    assert unsub == CAPTURED[:3] + b"\x01" + CAPTURED[4:]
    assert len(CAPTURED) == 106


def test_parse_captured():
    ann = parse_packet(CAPTURED)
    assert ann.subscribe and ann.key == "example.com" and ann.address == "127.0.0.1:19101"
    assert (ann.modifier1, ann.modifier2, ann.cores, ann.load, ann.weight) == (0, 0, 1, 0, 0)
    assert ann.sign is None and ann.unix is None
    assert not parse_packet(CAPTURED[:3] + b"\x01" + CAPTURED[4:]).subscribe


def test_parse_ignores_header_modifier1_and_size_like_uwsgi():
    # OBSERVED in 2.0.21: header 00 00 00 00 with valid vars is a subscription
    ann = parse_packet(b"\0\0\0\0" + CAPTURED[4:])
    assert ann.subscribe and ann.key == "example.com"


def test_subscribe2_vars_order_and_values():
    t = parse_subscribe2("server=127.0.0.1:19102,key=k3.example,addr=10.0.0.1:3031,weight=7,"
                         "modifier1=5,modifier2=9", "127.0.0.1:1")
    data = build_packet(0, t.key, t.address, t.modifier1, t.modifier2, 3, 0, t.weight)
    assert data[4:] == encode_vars([("key", "k3.example"), ("address", "10.0.0.1:3031"),
                                    ("modifier1", "5"), ("modifier2", "9"), ("cores", "3"),
                                    ("load", "0"), ("weight", "7")])


@pytest.mark.parametrize("data", [b"", b"\xe0", b"\xe0\x00\x00\x00",
                                  b"\xe0\x05\x00\x00\x03\x00key",
                                  build_packet(0, "k", "a")[:-1]])
def test_parse_rejects_truncated(data):
    with pytest.raises(SubscriptionError):
        parse_packet(data)


def test_parse_rejects_missing_or_long_names_and_bad_modifiers():
    for pairs in ([("address", "a")], [("key", "k")], [("key", "k" * 256), ("address", "a")],
                  [("key", "k"), ("address", "a" * 256)],
                  [("key", "k"), ("address", "a"), ("modifier1", "300")]):
        with pytest.raises(SubscriptionError):
            parse_packet(b"\xe0\0\0\0" + encode_vars(pairs))


# --------------------------------------------------------------------------- grammar

@pytest.mark.parametrize("value,server,key,address,m1,m2", [
    # uWSGI 2.0 forms
    ("127.0.0.1:19102:example.com", "127.0.0.1:19102", "example.com", "DEF", 0, 0),
    ("127.0.0.1:2626:test.uwsgi.it:8000,5,SHA1:/p.pem", "127.0.0.1:2626",
     "test.uwsgi.it:8000", "DEF", 5, 0),
    ("127.0.0.1:2626:example.com:80,0", "127.0.0.1:2626", "example.com:80", "DEF", 0, 0),
    ("myname=127.0.0.1:19102:k2.example", "127.0.0.1:19102", "k2.example", "myname", 0, 0),
    ("=1=127.0.0.1:19102:k", "127.0.0.1:19102", "k", "SECOND", 0, 0),
    ("/run/sub.sock:k.example,5", "/run/sub.sock", "k.example", "DEF", 5, 0),
    ("/run/sub.sock:k.example:5", "/run/sub.sock", "k.example", "DEF", 5, 0),
    (":4001:wsgi_cluster", ":4001", "wsgi_cluster", "DEF", 0, 0),
    # the seed's colon form
    ("127.0.0.1:4001:psgi_cluster:5", "127.0.0.1:4001", "psgi_cluster", "DEF", 5, 0),
    ("127.0.0.1:4001:psgi_cluster:5:3", "127.0.0.1:4001", "psgi_cluster", "DEF", 5, 3),
    ("127.0.0.1:4001:example.com:8000", "127.0.0.1:4001", "example.com:8000", "DEF", 0, 0),
    ("127.0.0.1:4001:example.com:8000:5", "127.0.0.1:4001", "example.com:8000", "DEF", 5, 0),
    ("127.0.0.1:4001:a:256", "127.0.0.1:4001", "a:256", "DEF", 0, 0),
    ("127.0.0.1:4001:a:1:2:3", "127.0.0.1:4001", "a:1", "DEF", 2, 3),
    ("127.0.0.1:4001:5", "127.0.0.1:4001", "5", "DEF", 0, 0),
    ("127.0.0.1:4001:a:0005", "127.0.0.1:4001", "a:0005", "DEF", 0, 0),
])
def test_subscribe_to_grammar(value, server, key, address, m1, m2):
    t = parse_subscribe_to(value, "DEF", ["DEF", "SECOND"])
    assert (t.server, t.key, t.address, t.modifier1, t.modifier2) == (server, key, address, m1, m2)
    assert t.value == value
    assert key in t.describe() and f"modifier1 {m1}" in t.describe()


def test_subscribe_to_sign_spec_kept():
    t = parse_subscribe_to("127.0.0.1:1:k,5,SHA1:/etc/k.pem", "x")
    assert t.rsa_sign == "SHA1:/etc/k.pem"


@pytest.mark.parametrize("value", ["127.0.0.1", "127.0.0.1:4001", "127.0.0.1:4001:",
                                   "127.0.0.1:port:key", "host:99999:key",
                                   "127.0.0.1:1:k,999", "127.0.0.1:1:,5", "/path",
                                   "=9=127.0.0.1:1:k", "127.0.0.1:1:" + "k" * 300])
def test_subscribe_to_errors_name_the_value(value):
    with pytest.raises(SubscriptionError) as err:
        parse_subscribe_to(value, "x")
    assert value[:40] in str(err.value)


def test_keys_file(tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("a.example\n# comment\n\nb.example,5\nc.example:7\n")
    t = parse_subscribe_to(f"127.0.0.1:19102:@{keys}", "127.0.0.1:3031")
    assert t.keys_file == str(keys)
    got = [(x.key, x.modifier1) for x in expand_keys_file(t)]
    assert got == [("a.example", 0), ("b.example", 5), ("c.example", 7)]


def test_subscribe2_errors():
    for value in ["key=k", "server=127.0.0.1:1", "server=a:1,key=k,bogus=1",
                  "server=a:1,key=k,weight=x", "server=a:1,key=k,modifier1=300",
                  "server=a:1,key=k,socket=3"]:
        with pytest.raises(SubscriptionError):
            parse_subscribe2(value, "x")


def test_subscribe2_socket_check_sni():
    t = parse_subscribe2("server=a:1,key=k,socket=1,check=/nonexistent,sni_key=/k.pem", "s0",
                         ["s0", "s1"])
    assert t.address == "s1" and t.check == "/nonexistent" and t.extra == (("sni_key", "/k.pem"),)


def test_split_key_rule_examples():
    assert split_key("example.com:8000")[:3] == ("example.com:8000", 0, 0)
    assert split_key("psgi_cluster:5")[:3] == ("psgi_cluster", 5, 0)
    assert split_key("[::1]:8000")[:3] == ("[::1]:8000", 0, 0)


# --------------------------------------------------------------------------- signing

def test_signed_packet_verifies_and_is_backward_compatible():
    now = 1_700_000_000.25
    data = build_packet(0, "k", "127.0.0.1:1", secret=SECRET, now=now)
    ann = parse_packet(data)
    assert ann.unix == pytest.approx(now) and len(ann.sign) == 64
    assert verify(ann, SECRET, now + 1, 17) is None
    # a uWSGI router ignores unknown vars: the first seven are exactly the unsigned ones
    plain = build_packet(0, "k", "127.0.0.1:1")
    assert data[4:4 + len(plain) - 4] == plain[4:]


def test_verify_rejects_unsigned_bad_stale_and_cmd_flip():
    now = 1_700_000_000.0
    assert verify(parse_packet(build_packet(0, "k", "a")), SECRET, now, 17) == "unsigned"
    data = build_packet(0, "k", "a", secret=SECRET, now=now)
    assert verify(parse_packet(data), b"another-secret-0123", now, 17) == "bad signature"
    assert "stale" in verify(parse_packet(data), SECRET, now + 18, 17)
    assert "stale" in verify(parse_packet(data), SECRET, now - 18, 17)
    flipped = data[:3] + b"\x01" + data[4:]
    assert verify(parse_packet(flipped), SECRET, now, 17) == "bad signature"
    tampered = data.replace(b"\x01\x00a", b"\x01\x00b")
    assert verify(parse_packet(tampered), SECRET, now, 17) == "bad signature"
    appended = data + encode_vars([("notify", "/tmp/x")])
    assert verify(parse_packet(appended), SECRET, now, 17) == "bad signature"


def test_read_secret(tmp_path):
    f = tmp_path / "secret"
    f.write_bytes(SECRET + b"\n")
    assert read_secret(str(f)) == SECRET
    f.write_bytes(b"short\n")
    with pytest.raises(SubscriptionError):
        read_secret(str(f))
    with pytest.raises(SubscriptionError, match=r"cannot read the subscription secret file "
                                                 r"'.*missing' \(--subscriptions-sign-secret\): "
                                                 r"No such file or directory"):
        read_secret(str(f) + ".missing")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_parse_raises_only_subscription_error(data):
    try:
        ann = parse_packet(data)
    except SubscriptionError:
        return
    assert 0 < len(ann.key) <= 255 and 0 < len(ann.address) <= 255
    verify(ann, SECRET, time.time(), 17)


# --------------------------------------------------------------------------- Subscriber

def cfg(*args: str) -> Config:
    """A real Config from command-line options (table defaults for the rest)."""
    return parse(list(args), {})


@pytest.fixture
def udp():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.01)
    yield sock
    sock.close()


def drain(sock):
    out = []
    while True:
        try:
            out.append(parse_packet(sock.recv(65536)))
        except (TimeoutError, BlockingIOError):
            return out


def test_subscriber_cadence_and_logs(udp, capfd):
    port = udp.getsockname()[1]
    sub = Subscriber(cfg("--subscribe-to", f"127.0.0.1:{port}:psgi_cluster:5",
                         "--subscribe-freq", "3"),
                     "127.0.0.1:4002", 2)
    t0 = 1000.0
    sub.start(t0)
    sent_at = [t0]
    for i in range(1, 100):                       # ticks every 0.1 s for ~10 s
        now = t0 + i * 0.1
        before = sub.sent
        sub.tick(now)
        if sub.sent != before:
            sent_at.append(round(now - t0, 1))
    assert sent_at == [t0, 1.0, 3.0, 6.0, 9.0]
    anns = drain(udp)
    assert len(anns) == 5
    assert {(a.key, a.address, a.modifier1, a.cores, a.weight) for a in anns} == \
        {("psgi_cluster", "127.0.0.1:4002", 5, 2, 0)}
    err = capfd.readouterr().err
    assert f"subscribing to 127.0.0.1:{port}:psgi_cluster:5" in err
    assert "key 'psgi_cluster'" in err and "modifier1 5" in err


def test_subscriber_default_freq_cadence(udp):
    sub = Subscriber(cfg("--subscribe-to", f"127.0.0.1:{udp.getsockname()[1]}:k"), "a:1", 1)
    sub.start(0.0)
    sent = []
    for i in range(1, 26):
        before = sub.sent
        sub.tick(float(i))
        if sub.sent != before:
            sent.append(i)
    assert sent == [1, 10, 20]


def test_subscriber_explicit_zeroes(udp):
    # --subscribe-with-modifier1 0 forces 0 (uWSGI tests the string, so "0" forces too);
    # --weight 0 is sent as 0 (the router reads it as 1)
    port = udp.getsockname()[1]
    sub = Subscriber(cfg("--subscribe-to", f"127.0.0.1:{port}:k,5", "--subscribe-freq", "1",
                         "--subscribe-with-modifier1", "0", "--weight", "0"), "a:1", 1)
    sub.start(0.0)
    for i in range(1, 4):
        sub.tick(float(i))
    anns = drain(udp)
    assert len(anns) == 4 and {(a.modifier1, a.weight) for a in anns} == {(0, 0)}


def test_subscriber_unsubscribe_pause_resume(udp, capfd):
    port = udp.getsockname()[1]
    sub = Subscriber(cfg("--subscribe-to", f"127.0.0.1:{port}:k", "--start-unsubscribed",
                         "--weight", "4"), "127.0.0.1:9", 1)
    sub.tick(time.time() + 100)
    assert drain(udp) == []                      # start-unsubscribed: nothing until toggled
    sub.toggle()
    assert [a.cmd for a in drain(udp)] == [0]
    sub.toggle()
    assert [a.cmd for a in drain(udp)] == [1]
    sub.tick(time.time() + 100)
    assert drain(udp) == []                      # paused
    sub.resume()
    sub.set_load(7)
    sub.tick(time.time() + 1.5)
    anns = drain(udp)
    assert [a.cmd for a in anns] == [0, 0] and anns[-1].load == 7 and anns[-1].weight == 4
    sub.unsubscribe()
    assert [a.cmd for a in drain(udp)] == [1]
    err = capfd.readouterr().err
    assert f"unsubscribing from 127.0.0.1:{port}:k" in err
    assert "subscriptions blocked" in err and "subscriptions re-enabled" in err


def test_subscriber_auto_weight_subscribe2_signing_unix(tmp_path):
    path = str(tmp_path / "sub.sock")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(path)
    rx.settimeout(0.01)
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    try:
        sub = Subscriber(cfg("--subscribe-to", f"{path}:k1", "--auto-weight",
                             "--subscribe2", f"server={path},key=k2,weight=9,modifier2=4",
                             "--subscriptions-sign-secret", str(secret)), "127.0.0.1:9", 3)
        sub.start()
        anns = drain(rx)
    finally:
        rx.close()
    assert [(a.key, a.weight, a.modifier2) for a in anns] == [("k1", 3, 0), ("k2", 9, 4)]
    assert all(verify(a, SECRET, time.time(), 17) is None for a in anns)


def test_subscriber_send_errors_never_raise_and_are_throttled(tmp_path, capfd):
    sub = Subscriber(cfg("--subscribe-to", f"{tmp_path}/missing.sock:k",
                         "--subscribe-to", "127.0.0.1:1:k",
                         "--subscribe-to", f"127.0.0.1:1:@{tmp_path}/nokeys"), "127.0.0.1:9", 1)
    sub.start()
    for i in range(30):
        sub.tick(time.time() + i)
    err = capfd.readouterr().err
    assert err.count("missing.sock: No such file or directory") == 1
    assert err.count("cannot read keys") == 1


def test_subscriber_bad_config_is_an_error():
    with pytest.raises(SubscriptionError):
        Subscriber(cfg("--subscribe-to", "127.0.0.1:1"), "x", 1)
    assert isinstance(parse_subscribe_to("127.0.0.1:1:k", "x"), Target)
