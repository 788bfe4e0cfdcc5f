"""Subscription datagrams (uwsgi packets with modifier1 224), the `--subscribe-to` and
`--subscribe2` grammars, and pymaster's HMAC signing.

Wire format (byte-compatible with uWSGI 2.0.21): header `e0 <u16le size> <cmd>` with cmd 0 =
subscribe/heartbeat, 1 = unsubscribe, then the vars `key`, `address`, `modifier1`,
`modifier2`, `cores`, `load`, `weight` in that order, then optionally `sni_*`, `notify`,
and when signing `unix` and `sign` (last). See docs/subscriptions.md. Subscription servers
are addresses of `pymaster.protocols.address`, checked here and kept as written.

Pure functions over bytes and strings; nothing here does I/O except `read_secret` and
`expand_keys_file` (which raises OSError for an unreadable keys file). Bad input raises
`SubscriptionError` with a message naming the thing.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from pymaster.protocols.address import AddressError
from pymaster.protocols.address import parse as parse_address
from pymaster.protocols.uwsgi import HEADER, UwsgiError, encode_vars, iter_vars

MODIFIER1 = 224
SUBSCRIBE = 0
UNSUBSCRIBE = 1
MAX_NAME = 255  # key and address limit (uWSGI's)
SIGN_CONTEXT = b"pymaster-subscription-v1\0"
_DIGITS = re.compile(r"[0-9]{1,3}\Z")


class SubscriptionError(ValueError):
    """A subscription spec or datagram that cannot be used; the message says why."""


# --------------------------------------------------------------------------- grammar


@dataclass(frozen=True)
class Target:
    """One subscription: where to announce, what key, which address and modifiers."""

    server: str  # as given: 'host:port' / '[v6]:port' (UDP) or a unix datagram path
    key: str
    address: str
    modifier1: int = 0
    modifier2: int = 0
    weight: int | None = None  # subscribe2 weight=; None = the instance's --weight
    rsa_sign: str | None = None  # uWSGI's `DIGEST:keyfile` (not supported, warned)
    check: str | None = None  # subscribe2 check=FILE: skip while FILE exists
    extra: tuple[tuple[str, str], ...] = ()  # sni_key / sni_crt / sni_ca
    keys_file: str | None = None  # SERVER:@FILE, expanded at each announcement
    value: str = ""  # the option value as given

    def describe(self) -> str:
        if self.keys_file:
            return f"server {self.server}, keys from file {self.keys_file}, address {self.address}"
        text = (
            f"server {self.server}, key {self.key!r}, address {self.address}, "
            f"modifier1 {self.modifier1}, modifier2 {self.modifier2}"
        )
        return text + (f", weight {self.weight}" if self.weight is not None else "")


def _small_int(text: str, what: str, value: str) -> int:
    if not _DIGITS.match(text) or int(text) > 255:
        raise SubscriptionError(
            f"invalid {what} {text!r} in subscription '{value}' (expected an integer 0-255)"
        )
    return int(text)


def _server(text: str, value: str) -> str:
    """Check a subscription server address (pymaster.protocols.address); kept as given."""
    try:
        parse_address(text, "subscription server")
    except AddressError as exc:
        raise SubscriptionError(f"{exc} (in subscription '{value}')") from None
    return text


def _split_server(rest: str, value: str) -> tuple[str, str]:
    """'host:port:KEY...', '[v6]:port:KEY...' or '/unix/path:KEY...' -> (server, key part)."""
    if rest.startswith(("/", ".", "@")):
        server, sep, keypart = rest.partition(":")
    else:
        close = rest.find("]:") + 1 if rest.startswith("[") else 0
        host_end = rest.find(":", close)
        port_end = rest.find(":", host_end + 1) if host_end >= 0 else -1
        if host_end < 0:
            raise SubscriptionError(
                f"invalid subscription server in '{value}' "
                f"(expected HOST:PORT:KEY, [V6]:PORT:KEY or /unix/path:KEY)"
            )
        server = rest if port_end < 0 else rest[:port_end]
        sep, keypart = (":", rest[port_end + 1 :]) if port_end >= 0 else ("", "")
    _server(server, value)
    if not sep or not keypart:
        raise SubscriptionError(
            f"missing key in subscription '{value}' "
            f"(expected SERVER:KEY[,MODIFIER1] or SERVER:KEY:MODIFIER1)"
        )
    return server, keypart


def split_key(keypart: str, value: str = "") -> tuple[str, int, int, str | None]:
    """A key part -> (key, modifier1, modifier2, rsa sign spec).

    With a comma it is uWSGI 2.0's `KEY,MODIFIER1[,SIGN]` and the key is taken verbatim
    (colons included). Without one it is the seed's colon form: up to two trailing
    `:N` components with N a decimal 0-255 are modifier1 (then modifier2); anything else
    (e.g. a port such as `:8000`) stays in the key. See docs/subscriptions.md.
    """
    value = value or keypart
    if "," in keypart:
        key, _, tail = keypart.partition(",")
        m1_text, _, sign_text = tail.partition(",")
        m1 = _small_int(m1_text, "modifier1", value) if m1_text else 0
        m2 = 0
        sign = sign_text or None
    else:
        parts = keypart.split(":")
        mods: list[int] = []
        while (
            len(parts) > 1 and len(mods) < 2 and _DIGITS.match(parts[-1]) and int(parts[-1]) <= 255
        ):
            mods.insert(0, int(parts.pop()))
        key = ":".join(parts)
        m1, m2 = (mods + [0, 0])[:2]
        sign = None
    if not key:
        raise SubscriptionError(f"empty key in subscription '{value}'")
    if len(key.encode("latin-1", "replace")) > MAX_NAME:
        raise SubscriptionError(f"key longer than {MAX_NAME} bytes in subscription '{value}'")
    return key, m1, m2, sign


def parse_subscribe_to(
    value: str, default_address: str, own_sockets: list[str] | None = None
) -> Target:
    """Parse one `--subscribe-to` value.

    Forms: `[NAME=]SERVER:KEY[,MODIFIER1[,SIGN]]`, `=N=SERVER:KEY...` (address = own
    socket N), `SERVER:@FILE`, with SERVER `host:port`, `[v6]:port` or a unix path, and the
    seed's `host:port:KEY:MODIFIER1[:MODIFIER2]`. The address announced (`NAME`, own socket
    or the default) is kept as text, never parsed or resolved.
    """
    text = value.strip()
    address = default_address
    if text.startswith("="):
        num, sep, text = text[1:].partition("=")
        sockets = own_sockets or [default_address]
        if not sep or not num.isdigit() or int(num) >= len(sockets):
            raise SubscriptionError(f"invalid shared socket number in subscription '{value}'")
        address = sockets[int(num)]
    else:
        head = re.split(r"[:/]", text, maxsplit=1)[0]
        if "=" in head:
            address, _, text = text.partition("=")
    server, keypart = _split_server(text, value)
    if keypart.startswith("@"):
        if not keypart[1:]:
            raise SubscriptionError(f"missing file name in subscription '{value}'")
        return Target(server, "", address, keys_file=keypart[1:], value=value)
    key, m1, m2, sign = split_key(keypart, value)
    return Target(server, key, address, m1, m2, rsa_sign=sign, value=value)


_SUBSCRIBE2_KEYS = {
    "server",
    "key",
    "addr",
    "address",
    "socket",
    "weight",
    "modifier1",
    "modifier2",
    "sign",
    "check",
    "sni_key",
    "sni_crt",
    "sni_ca",
}


def parse_subscribe2(
    value: str, default_address: str, own_sockets: list[str] | None = None
) -> Target:
    """Parse one `--subscribe2 server=..,key=..[,addr=..,socket=N,weight=..,modifier1=..,
    modifier2=..,sign=..,check=..,sni_key=..,sni_crt=..,sni_ca=..]` value."""
    items: dict[str, str] = {}
    for part in value.split(","):
        if not part.strip():
            continue
        name, sep, val = part.partition("=")
        name = name.strip()
        if not sep or name not in _SUBSCRIBE2_KEYS:
            raise SubscriptionError(
                f"invalid item {part!r} in --subscribe2 '{value}' "
                f"(expected one of {', '.join(sorted(_SUBSCRIBE2_KEYS))})"
            )
        items[name] = val.strip()
    for need in ("server", "key"):
        if not items.get(need):
            raise SubscriptionError(f"--subscribe2 '{value}' needs {need}=")
    address = items.get("addr") or items.get("address") or default_address
    if "socket" in items:
        sockets = own_sockets or [default_address]
        num = items["socket"]
        if not num.isdigit() or int(num) >= len(sockets):
            raise SubscriptionError(f"invalid socket={num} in --subscribe2 '{value}'")
        address = sockets[int(num)]
    weight = None
    if items.get("weight"):
        if not items["weight"].isdigit():
            raise SubscriptionError(f"invalid weight in --subscribe2 '{value}'")
        weight = int(items["weight"])
    m1 = _small_int(items["modifier1"], "modifier1", value) if items.get("modifier1") else 0
    m2 = _small_int(items["modifier2"], "modifier2", value) if items.get("modifier2") else 0
    extra = tuple((k, items[k]) for k in ("sni_key", "sni_crt", "sni_ca") if items.get(k))
    server = _server(items["server"], value)
    if len(items["key"].encode("latin-1", "replace")) > MAX_NAME:
        raise SubscriptionError(f"key longer than {MAX_NAME} bytes in --subscribe2 '{value}'")
    return Target(
        server,
        items["key"],
        address,
        m1,
        m2,
        weight,
        items.get("sign") or None,
        items.get("check") or None,
        extra,
        value=value,
    )


def expand_keys_file(target: Target) -> list[Target]:
    """A `SERVER:@FILE` target -> one target per key line (`key` or `key,modifier1`);
    blank and `#` lines skipped. Raises OSError / SubscriptionError."""
    if not target.keys_file:
        return [target]
    out = []
    with open(target.keys_file, encoding="latin-1") as fh:
        for line in fh:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, m1, m2, sign = split_key(line, f"{target.value} ({target.keys_file}: {line})")
            out.append(
                replace(target, key=key, modifier1=m1, modifier2=m2, rsa_sign=sign, keys_file=None)
            )
    return out


# --------------------------------------------------------------------------- packets


def sign_digest(secret: bytes, cmd: int, signed_vars: bytes) -> str:
    """Hex HMAC-SHA256 over a context string, the command byte and the vars before `sign`."""
    mac = hmac.new(secret, SIGN_CONTEXT + bytes([cmd & 0xFF]) + signed_vars, hashlib.sha256)
    return mac.hexdigest()


def build_packet(
    cmd: int,
    key: str,
    address: str,
    modifier1: int = 0,
    modifier2: int = 0,
    cores: int = 1,
    load: int = 0,
    weight: int = 0,
    extra: tuple[tuple[str, str], ...] | list = (),
    notify: str | None = None,
    secret: bytes | None = None,
    now: float | None = None,
) -> bytes:
    """One subscription datagram, vars in uWSGI 2.0.21's order; signed when `secret`."""
    pairs: list[tuple[str, str | int]] = [
        ("key", key),
        ("address", address),
        ("modifier1", modifier1),
        ("modifier2", modifier2),
        ("cores", cores),
        ("load", load),
        ("weight", weight),
    ]
    pairs += list(extra)
    if notify:
        pairs.append(("notify", notify))
    try:
        block = encode_vars(pairs)
        if secret is not None:
            stamp = time.time() if now is None else now
            block += encode_vars([("unix", f"{stamp:.6f}")])
            block += encode_vars([("sign", sign_digest(secret, cmd, block))])
    except (UwsgiError, UnicodeError) as exc:
        raise SubscriptionError(f"cannot encode subscription for key {key!r}: {exc}") from None
    if len(block) > 0xFFFF:
        raise SubscriptionError(f"subscription for key {key!r} is too large ({len(block)} bytes)")
    return HEADER.pack(MODIFIER1, len(block), cmd) + block


class Announcement(NamedTuple):
    """A parsed subscription datagram."""

    cmd: int  # 0 subscribe, anything else unsubscribe
    key: str
    address: str
    modifier1: int
    modifier2: int
    cores: int
    load: int
    weight: int  # as sent (0 allowed; the pool reads 0 as 1)
    notify: str | None
    unix: float | None  # signing timestamp
    sign: bytes | None
    signed_part: bytes  # the vars bytes covered by `sign`
    sni: tuple[tuple[str, str], ...] = ()  # sni_key / sni_crt / sni_ca, as sent

    @property
    def subscribe(self) -> bool:
        return self.cmd == SUBSCRIBE


def _num(raw: bytes) -> int:
    """uWSGI-style decimal: the leading digits, 0 when none."""
    m = re.match(rb"[0-9]{1,18}", raw)
    return int(m.group()) if m else 0


def parse_packet(data: bytes) -> Announcement:
    """Parse a subscription datagram as uWSGI 2.0.21's server does: the header's modifier1
    and size are not checked (only byte 3, the command); all bytes after it are vars.
    Raises SubscriptionError for anything unusable."""
    if len(data) < 4:
        raise SubscriptionError(f"subscription datagram too short ({len(data)} bytes)")
    cmd = data[3]
    block = memoryview(data)[4:]
    found: dict[bytes, bytes] = {}
    pos = 0
    signed_end = None
    try:
        for k, v in iter_vars(block):
            if k == b"sign" and signed_end is None:
                signed_end = pos
            pos += 4 + len(k) + len(v)
            found.setdefault(k, v)
    except UwsgiError as exc:
        raise SubscriptionError(f"malformed subscription datagram: {exc}") from None
    sign = found.get(b"sign")
    if sign is not None and signed_end is not None and signed_end + 8 + len(sign) != pos:
        sign = b""  # vars after `sign` would be unsigned: never valid
    key, address = found.get(b"key", b""), found.get(b"address", b"")
    if not 0 < len(key) <= MAX_NAME:
        raise SubscriptionError(
            f"subscription datagram with a missing or too long key ({len(key)} bytes)"
        )
    if not 0 < len(address) <= MAX_NAME:
        raise SubscriptionError(
            f"subscription datagram for key {key.decode('latin-1')!r} "
            f"with a missing or too long address ({len(address)} bytes)"
        )
    m1, m2 = _num(found.get(b"modifier1", b"")), _num(found.get(b"modifier2", b""))
    if m1 > 255 or m2 > 255:
        raise SubscriptionError(
            f"subscription datagram for key {key.decode('latin-1')!r} "
            f"with modifier out of range ({m1}/{m2})"
        )
    unix = None
    if b"unix" in found:
        try:
            unix = float(found[b"unix"].decode("ascii"))
        except (UnicodeError, ValueError):
            unix = None
        if unix is not None and unix != unix:  # NaN
            unix = None
    notify = found.get(b"notify")
    return Announcement(
        cmd,
        key.decode("latin-1"),
        address.decode("latin-1"),
        m1,
        m2,
        _num(found.get(b"cores", b"")),
        _num(found.get(b"load", b"")),
        _num(found.get(b"weight", b"")),
        notify.decode("latin-1") if notify else None,
        unix,
        sign,
        bytes(block[:signed_end]) if signed_end else b"",
        tuple(
            (name, found[name.encode()].decode("latin-1"))
            for name in ("sni_key", "sni_crt", "sni_ca")
            if found.get(name.encode())
        ),
    )


def verify(ann: Announcement, secret: bytes, now: float, tolerance: float) -> str | None:
    """None when `ann` carries a valid, fresh signature for `secret`; else the reason."""
    if ann.sign is None or ann.unix is None:
        return "unsigned"
    expected = sign_digest(secret, ann.cmd, ann.signed_part).encode("ascii")
    if not hmac.compare_digest(expected, ann.sign):
        return "bad signature"
    if abs(now - ann.unix) > tolerance:
        return f"stale signature (unix {ann.unix:.0f}, now {now:.0f})"
    return None


def read_secret(path: str) -> bytes:
    """The signing secret: the file's bytes without surrounding whitespace."""
    try:
        with open(path, "rb") as fh:
            secret = fh.read().strip()
    except OSError as exc:
        raise SubscriptionError(
            f"cannot read the subscription secret file '{path}' "
            f"(--subscriptions-sign-secret): {exc.strerror}"
        ) from None
    if len(secret) < 16:
        raise SubscriptionError(
            f"subscription secret in {path} is too short "
            f"({len(secret)} bytes, at least 16 expected)"
        )
    return secret


# --------------------------------------------------------------------------- log throttle


@dataclass
class Throttle:
    """`ok(name, now)` is true at most once per `period` seconds for each name."""

    period: float = 60.0
    seen: dict = field(default_factory=dict)

    def ok(self, name, now: float) -> bool:
        last = self.seen.get(name)
        if last is not None and now - last < self.period:
            return False
        if len(self.seen) > 4096:
            self.seen = {k: t for k, t in self.seen.items() if now - t < self.period}
        self.seen[name] = now
        return True
