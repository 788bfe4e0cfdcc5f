"""The one address grammar (pymaster.protocols.address): every form, every error, binding and
connecting through real sockets, and arbitrary text raising only AddressError."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pymaster.master import sockets
from pymaster.protocols import subscription
from pymaster.protocols.address import AddressError, parse, sockaddr_text

INET, INET6, UNIX = socket.AF_INET, socket.AF_INET6, socket.AF_UNIX


@pytest.mark.parametrize("text,family,host,port,path", [
    ("127.0.0.1:3031", INET, "127.0.0.1", 3031, ""),
    ("localhost:1", INET, "localhost", 1, ""),
    ("my-host.example.com:65535", INET, "my-host.example.com", 65535, ""),
    (":4000", INET, "", 4000, ""),
    ("*:4000", INET, "*", 4000, ""),
    ("0.0.0.0:4000", INET, "0.0.0.0", 4000, ""),
    ("[::1]:4000", INET6, "::1", 4000, ""),
    ("[::]:4000", INET6, "::", 4000, ""),
    ("[fe80::1%lo]:80", INET6, "fe80::1%lo", 80, ""),
    ("/run/app.sock", UNIX, "", 0, "/run/app.sock"),
    ("./app.sock", UNIX, "", 0, "./app.sock"),
    ("app.sock", UNIX, "", 0, "app.sock"),
    ("/odd/dir:with/colon.sock", UNIX, "", 0, "/odd/dir:with/colon.sock"),
    ("@pymaster", UNIX, "", 0, "\0pymaster"),
    ("@with:colon", UNIX, "", 0, "\0with:colon"),
])
def test_every_form(text, family, host, port, path):
    addr = parse(text)
    assert (addr.family, addr.host, addr.port, addr.path) == (family, host, port, path)
    assert addr.text == str(addr) == text
    assert addr.unix == (family == UNIX)
    assert addr.abstract == text.startswith("@")


@pytest.mark.parametrize("text,bind,connect", [
    (":4000", ("0.0.0.0", 4000), ("127.0.0.1", 4000)),
    ("*:4000", ("0.0.0.0", 4000), ("127.0.0.1", 4000)),
    ("0.0.0.0:4000", ("0.0.0.0", 4000), ("127.0.0.1", 4000)),
    ("127.0.0.2:4000", ("127.0.0.2", 4000), ("127.0.0.2", 4000)),
    ("localhost:4000", ("127.0.0.1", 4000), ("127.0.0.1", 4000)),
    ("[::]:4000", ("::", 4000), ("::1", 4000)),
    ("[::1]:4000", ("::1", 4000), ("::1", 4000)),
])
def test_wildcards_and_names_resolve_in_one_place(text, bind, connect):
    addr = parse(text)
    assert addr.resolve(bind=True)[1][:2] == bind
    assert addr.resolve(socket.SOCK_DGRAM)[1][:2] == connect
    assert parse("@x").resolve() == (UNIX, "\0x")
    assert parse("/a/b").resolve(bind=True) == (UNIX, "/a/b")


@pytest.mark.parametrize("text,message", [
    ("", "empty address: expected host:port, :port, *:port, [v6]:port, a unix path or @name"),
    ("@", "empty abstract socket name in address '@': expected @name"),
    ("host:", "invalid port '' in address 'host:': expected 1-65535"),
    (":0", "invalid port '0' in address ':0': expected 1-65535"),
    ("h:65536", "invalid port '65536' in address 'h:65536': expected 1-65535"),
    ("h:99999999", "invalid port '99999999' in address 'h:99999999': expected 1-65535"),
    ("h:http", "invalid port 'http' in address 'h:http': expected 1-65535"),
    ("h:+80", "invalid port '+80' in address 'h:+80': expected 1-65535"),
    ("h:٣٠", "invalid port '٣٠' in address 'h:٣٠': expected 1-65535"),
    ("[::1]:0", "invalid port '0' in address '[::1]:0': expected 1-65535"),
    ("[::1]", "invalid address '[::1]': expected [v6]:port"),
    ("[::1]4000", "invalid address '[::1]4000': expected [v6]:port"),
    ("[::1:4000", "invalid address '[::1:4000': expected [v6]:port"),
    ("[example.com]:80", "invalid IPv6 address '[example.com]' in address '[example.com]:80'"),
    ("[127.0.0.1]:80", "invalid IPv6 address '[127.0.0.1]'"),
    ("::1:4000", "invalid host '::1' in address '::1:4000': expected a name, an IPv4 address, "
                 "* or nothing (an IPv6 address needs brackets: [v6]:port)"),
    ("a b:80", "invalid host 'a b' in address 'a b:80'"),
    ("h%st:80", "invalid host 'h%st'"),
    ("a:b:80", "invalid host 'a:b'"),
    ("/tmp/\0x", "a unix path cannot contain NUL"),
    ("/" + "x" * 107, "unix socket path too long in address '/xxx"),
    ("@" + "x" * 108, "unix socket path too long in address '@xxx"),
    ("/tmp/\ud800", "the unix path is not encodable as a file name"),
])
def test_every_error_names_the_address_and_what_was_expected(text, message):
    with pytest.raises(AddressError) as err:
        parse(text)
    assert message in str(err.value)


def test_limits_are_inclusive():
    assert parse("/" + "x" * 106).path == "/" + "x" * 106  # 107 bytes
    assert parse("@" + "x" * 107).path == "\0" + "x" * 107
    assert parse("h:1").port == 1 and parse("h:65535").port == 65535
    assert parse("h:00080").port == 80


def test_the_caller_names_the_address():
    with pytest.raises(AddressError, match=r"invalid port '0' in --fastrouter-to node 'h:0'"):
        parse("h:0", "--fastrouter-to node")


def test_a_name_that_does_not_resolve():
    addr = parse("no-such-host.invalid:80", "subscription server")
    with pytest.raises(AddressError, match=r"cannot resolve host 'no-such-host.invalid' in "
                                           r"subscription server 'no-such-host.invalid:80'"):
        addr.resolve()


def test_sockaddr_text_writes_the_grammar():
    assert sockaddr_text(("127.0.0.1", 80)) == "127.0.0.1:80"
    assert sockaddr_text(("::1", 80, 0, 0)) == "[::1]:80"
    assert sockaddr_text("/run/x.sock") == "/run/x.sock"
    assert sockaddr_text(b"\0name") == "@name"
    for text in ("127.0.0.1:80", "[::1]:80", "/run/x.sock", "@name"):
        assert sockaddr_text(parse(text).resolve()[1]) == text


# --------------------------------------------------------------------------- the users

def test_sockets_bind_every_kind_through_the_parser(tmp_path):
    path = str(tmp_path / "u.sock")
    with pytest.raises(sockets.SocketError, match=r"invalid port '0' in uwsgi socket ':0'"):
        sockets.setup([("uwsgi", ":0")], 16, environ={})
    specs = [("uwsgi", "127.0.0.1:%d" % _free()), ("subscription", "127.0.0.1:%d" % _free_udp()),
             ("fastrouter", path), ("fastrouter-stats", "@pymaster-test-%d" % _free())]
    listeners = sockets.setup(specs, 16, environ={})
    try:
        kinds = [(lst.kind, lst.sock.type, lst.family) for lst in listeners]
        assert kinds == [("uwsgi", socket.SOCK_STREAM, INET),
                         ("subscription", socket.SOCK_DGRAM, INET),
                         ("fastrouter", socket.SOCK_STREAM, UNIX),
                         ("fastrouter-stats", socket.SOCK_STREAM, UNIX)]
        with socket.socket(UNIX) as client:
            client.connect(path)               # really listening
        assert listeners[2].path == path and listeners[3].path is None
    finally:
        for lst in listeners:
            lst.sock.close()


def test_a_regular_file_is_never_replaced_by_a_socket(tmp_path):
    victim = tmp_path / "data.txt"
    victim.write_text("keep me")
    with pytest.raises(sockets.SocketError, match="cannot bind uwsgi socket"):
        sockets.setup([("uwsgi", str(victim))], 16, environ={})
    assert victim.read_text() == "keep me"


def test_bad_chmod_socket_is_one_clear_error(tmp_path):
    with pytest.raises(sockets.SocketError, match=r"invalid --chmod-socket 'rw' .*octal mode"):
        sockets.setup([("uwsgi", str(tmp_path / "s.sock"))], 16, chmod="rw", environ={})


def test_subscription_servers_share_the_grammar():
    t = subscription.parse_subscribe_to("[::1]:4001:k.example,5", "127.0.0.1:3031")
    assert (t.server, t.key, t.modifier1) == ("[::1]:4001", "k.example", 5)
    t = subscription.parse_subscribe_to("@subs:k", "x")
    assert (t.server, t.key) == ("@subs", "k")
    for value, wrong in [("127.0.0.1:0:k", "invalid port '0'"),
                         ("127.0.0.1:65536:k", "invalid port '65536'"),
                         ("[::1:4001:k", "expected [v6]:port")]:
        with pytest.raises(subscription.SubscriptionError) as err:
            subscription.parse_subscribe_to(value, "x")
        assert wrong in str(err.value) and value in str(err.value)
    with pytest.raises(subscription.SubscriptionError) as err:
        subscription.parse_subscribe2("server=a:0,key=k", "x")
    assert str(err.value) == ("invalid port '0' in subscription server 'a:0': expected 1-65535 "
                              "(in subscription 'server=a:0,key=k')")


def test_an_announced_address_keeps_its_text():
    t = subscription.parse_subscribe_to("myname=127.0.0.1:4001:k", "x")
    assert t.address == "myname"
    t = subscription.parse_subscribe2("server=127.0.0.1:1,key=k,addr=localhost:3031", "x")
    assert t.address == "localhost:3031"


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=120))
def test_arbitrary_text_raises_only_address_error(text):
    try:
        addr = parse(text)
    except AddressError as exc:
        assert str(exc)
        return
    assert addr.text == text
    if addr.unix:
        assert "\0" not in (addr.path[1:] if addr.abstract else addr.path)
    else:
        assert 1 <= addr.port <= 65535


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["", "*", "127.0.0.1", "localhost", "[::1]", "[::]"]),
       st.integers(min_value=-5, max_value=70000))
def test_ports_are_checked_the_same_everywhere(host, port):
    text = f"{host}:{port}"
    ok = 1 <= port <= 65535
    try:
        parse(text)
        parsed = True
    except AddressError as exc:
        parsed = False
        assert f"invalid port '{port}' in address '{text}': expected 1-65535" == str(exc)
    assert parsed == ok
    try:
        subscription.parse_subscribe_to(f"{text}:key", "x")
        grammar = True
    except subscription.SubscriptionError as exc:
        grammar = False
        assert f"invalid port '{port}'" in str(exc)
    assert grammar == ok


def _free() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_udp() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
