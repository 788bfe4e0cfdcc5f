"""Router pools: uWSGI's wrr order, expiry every tick, unsubscribe, death marks, static nodes,
--subscription-allow, signed subscriptions (bad / stale / replayed), stats layout,
persistence, and hostile datagrams that must never raise."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pymaster.protocols.subscription import SubscriptionError, build_packet
from pymaster.protocols.uwsgi import encode_vars
from pymaster.routers.pools import Node, StaticNodes, Table, djb33x_hash, parse_allow, wrr_pick

SECRET = b"0123456789abcdef-secret"
T0 = 1_700_000_000.0


class Log(list):
    def __call__(self, line):
        self.append(line)

    def text(self):
        return "\n".join(self)


def table(**kw):
    return Table(log=Log(), pid=42, **kw)


def names(nodes):
    return [n.name for n in nodes]


def take(t, key, n, now=T0):
    out = []
    for _ in range(n):
        node = t.pick(key, now)
        out.append(node.name if node else None)
        if node:
            t.release(key, node)
    return out


def test_wrr_observed_order_weights_1_and_2():
    t = table()
    t.subscribe("k", "A", weight=1, now=T0)
    t.subscribe("k", "B", weight=2, now=T0)
    assert take(t, "k", 9) == list("BABBABBAB")


def test_wrr_equal_weights_first_pick_is_last_node():
    t = table()
    for name in "ABCDE":
        t.subscribe("k", name, now=T0)          # weight 0 -> 1
    assert take(t, "k", 10) == list("EABCDEABCD")
    assert all(n.weight == 1 for n in t.pools["k"].nodes)


def test_wrr_skips_dead_and_handles_weights():
    nodes = [Node("A", weight=3), Node("B", weight=1), Node("C", weight=2)]
    nodes[1].death_mark = 1
    got = [wrr_pick(nodes).name for _ in range(10)]
    # uWSGI's integer division: credits 3//2 = 1 and 2//2 = 1, so A and C alternate
    assert got == ["C", "A"] * 5
    nodes = [Node("A", weight=1), Node("B", weight=3)]
    assert [wrr_pick(nodes).name for _ in range(8)] == ["B", "A", "B", "B"] * 2
    assert wrr_pick([Node("X")]).name == "X"
    dead = Node("D")
    dead.death_mark = 1
    assert wrr_pick([dead]) is None and wrr_pick([]) is None


def test_new_pool_node_logs_and_heartbeat():
    t = table()
    t.subscribe("example.com", "127.0.0.1:1", modifier1=5, now=T0)
    t.subscribe("example.com", "127.0.0.1:1", modifier1=9, weight=3, load=2, now=T0 + 5)
    node = t.pools["example.com"].nodes[0]
    assert node.modifier1 == 5                    # not refreshed by heartbeats (as uWSGI)
    assert (node.weight, node.load, node.last_check) == (3, 2, T0 + 5)
    assert t.log == ["[uwsgi-subscription for pid 42] new pool: example.com (hash key: 30778)",
                     "[uwsgi-subscription for pid 42] example.com => new node: 127.0.0.1:1"]


def test_hash_matches_uwsgi():
    assert djb33x_hash("example.com") == 30778


def test_expiry_every_tick():
    t = table(tolerance=6)
    t.subscribe("k", "A", now=T0)
    t.subscribe("k", "B", now=T0)
    t.subscribe("other", "C", now=T0)
    t.expire(T0 + 6)
    assert len(t.pools["k"].nodes) == 2
    t.subscribe("k", "B", now=T0 + 5)
    t.expire(T0 + 6.5)
    assert names(t.pools["k"].nodes) == ["B"] and "other" not in t.pools
    assert "k => marking A as failed (no announce received in 6 seconds)" in t.log.text()
    t.expire(T0 + 12)
    assert t.pools == {}


def test_unsubscribe_immediate_and_deferred_while_referenced():
    t = table()
    t.subscribe("k", "A", now=T0)
    t.subscribe("k", "B", now=T0)
    assert t.unsubscribe("k", "A") and names(t.pools["k"].nodes) == ["B"]
    assert "k => marking A as failed" in t.log.text()
    node = t.pick("k", T0)
    t.unsubscribe("k", "B")
    assert names(t.pools["k"].nodes) == ["B"] and node.death_mark == 1
    assert t.pick("k", T0) is None                # dead nodes are never picked
    t.release("k", node)
    assert t.pools == {}
    assert not t.unsubscribe("k", "nope")


def test_connect_failure_marks_and_removes():
    t = table()
    t.subscribe("k", "A", now=T0)
    t.subscribe("k", "B", now=T0)
    node = t.pick("k", T0)
    assert node.name == "B"
    t.fail("k", node)
    t.release("k", node)
    assert names(t.pools["k"].nodes) == ["A"] and node.failcnt == 1
    assert "[uwsgi-fastrouter] k => marking B as failed" in t.log
    t.subscribe("k", "B", now=T0 + 1)             # comes back with its next heartbeat
    assert names(t.pools["k"].nodes) == ["A", "B"]


def test_static_nodes_round_robin_and_grace():
    s = StaticNodes(["A", "B", "C"], gracetime=30)
    assert [s.pick(T0).name for _ in range(4)] == ["A", "B", "C", "A"]
    s.fail(s.nodes[1], T0)
    assert [s.pick(T0 + 1).name for _ in range(3)] == ["C", "A", "C"]
    assert [s.pick(T0 + 31).name for _ in range(3)] == ["A", "B", "C"]
    assert s.snapshot()[1]["grace"] >= 0
    assert StaticNodes([]).nodes == []


def test_datagram_intake_and_allow():
    t = table(allow=parse_allow(["10.0.0.0/8", "127.0.0.1"]))
    data = build_packet(0, "k", "127.0.0.1:1", 5)
    assert t.handle_datagram(data, ("127.0.0.1", 5000), T0).key == "k"
    assert t.handle_datagram(data, ("10.1.2.3", 5000), T0) is not None
    for _ in range(3):
        assert t.handle_datagram(build_packet(0, "evil", "6.6.6.6:1"), ("192.168.1.1", 1),
                                 T0) is None
    assert "evil" not in t.pools
    assert t.log.text().count("rejected subscription datagram from 192.168.1.1") == 1
    t.handle_datagram(build_packet(0, "evil", "6.6.6.6:1"), ("192.168.1.1", 1), T0 + 61)
    assert t.log.text().count("rejected subscription datagram from 192.168.1.1") == 2
    assert t.handle_datagram(data, "/tmp/x.sock", T0) is not None    # unix: file permissions
    assert t.handle_datagram(data, ("::ffff:127.0.0.1", 1, 0, 0), T0) is not None
    with pytest.raises(SubscriptionError):
        parse_allow(["10.0.0.0/33"])
    assert parse_allow(["10.0.0.0/8, 192.168.0.0/16"])[1].prefixlen == 16


def test_signed_intake_rejects_unsigned_bad_stale_replayed():
    t = table(secret=SECRET, tolerance=17)
    src = ("127.0.0.1", 1)
    assert t.handle_datagram(build_packet(0, "k", "A"), src, T0) is None
    assert t.handle_datagram(build_packet(0, "k", "A", secret=b"wrong-secret-123456", now=T0),
                             src, T0) is None
    assert t.handle_datagram(build_packet(0, "k", "A", secret=SECRET, now=T0 - 30),
                             src, T0) is None
    good = build_packet(0, "k", "A", secret=SECRET, now=T0)
    assert t.handle_datagram(good, src, T0 + 1) is not None
    unsub = build_packet(1, "k", "A", secret=SECRET, now=T0 + 2)
    assert t.handle_datagram(unsub, src, T0 + 2) is not None and t.pools == {}
    assert t.handle_datagram(good, src, T0 + 3) is None         # replay after unsubscribe
    assert t.pools == {}
    assert "replayed signature" in t.log.text() and "unsigned" in t.log.text()
    later = build_packet(0, "k", "A", secret=SECRET, now=T0 + 4)
    assert t.handle_datagram(later, src, T0 + 4) is not None


def test_replay_state_survives_dump_and_restore():
    t = table(secret=SECRET, tolerance=17)
    src = ("127.0.0.1", 1)
    good = build_packet(0, "k", "A", secret=SECRET, now=T0)
    assert t.handle_datagram(good, src, T0) is not None and t.urgent    # a new node: urgent
    t.urgent = False
    beat = build_packet(0, "k", "A", secret=SECRET, now=T0 + 1)
    assert t.handle_datagram(beat, src, T0 + 1) is not None
    assert t.dirty and not t.urgent                                      # a heartbeat: not
    unsub = build_packet(1, "k", "A", secret=SECRET, now=T0 + 2)
    assert t.handle_datagram(unsub, src, T0 + 2) is not None and t.urgent
    doc = json.loads(json.dumps(t.dump(T0 + 2)))
    assert doc["replay"] == [["k", "A", pytest.approx(T0 + 2)]]
    # a restarted router: no pools to restore, but the replay is still refused
    fresh = table(secret=SECRET, tolerance=17)
    assert fresh.restore(doc, T0 + 3) == 0 and fresh.restore_replay(doc, T0 + 3) == 1
    assert fresh.handle_datagram(good, src, T0 + 6) is None and fresh.pools == {}
    assert "replayed signature" in fresh.log.text()
    # a relayed copy of what the snapshot holds is a duplicate: dropped without a log line
    quiet = table(secret=SECRET, tolerance=17)
    quiet.restore_replay(doc, T0 + 3)
    assert quiet.handle_datagram(unsub, None, T0 + 3, check_source=False) is None
    assert quiet.log == []
    # entries older than the tolerance are neither written nor loaded (stale anyway)
    assert t.dump(T0 + 30)["replay"] == []
    assert table(secret=SECRET).restore_replay(doc, T0 + 30) == 0
    for junk in [None, {"format": "pymaster-subscriptions-1", "replay": "x"},
                 {"format": "pymaster-subscriptions-1",
                  "replay": [1, "abc", ["k", "A"], ["k", 2, T0], ["k", "A", "nan"],
                             ["k", "A", "x"], {"a": 1}]}]:
        assert table().restore_replay(junk, T0) == 0


def test_stats_layout():
    t = table()
    t.subscribe("example.com", "127.0.0.1:19211", now=T0)
    node = t.pick("example.com", T0)
    t.connected(node)
    t.release("example.com", node)
    snap = t.snapshot()
    assert list(snap[0]) == ["key", "hash", "hits", "sni_enabled", "nodes"]
    assert snap[0]["hits"] == 1 and snap[0]["hash"] == 30778
    assert list(snap[0]["nodes"][0]) == [
        "name", "modifier1", "modifier2", "last_check", "pid", "uid", "gid", "requests",
        "last_requests", "tx", "rx", "cores", "load", "weight", "wrr", "ref", "failcnt",
        "death_mark"]
    assert snap[0]["nodes"][0]["requests"] == 1
    json.dumps(snap)


def test_dump_restore_respects_tolerance():
    t = table(tolerance=10)
    t.subscribe("k", "A", modifier1=5, now=T0)
    t.subscribe("k", "B", weight=3, now=T0 + 8)
    doc = json.loads(json.dumps(t.dump(T0 + 8)))
    fresh = table(tolerance=10)
    assert fresh.restore(doc, T0 + 12) == 1                   # A is 12 s old: dropped
    assert names(fresh.pools["k"].nodes) == ["B"] and fresh.pools["k"].nodes[0].weight == 3
    again = table(tolerance=10)
    assert again.restore(doc, T0 + 9) == 2
    assert again.pools["k"].nodes[0].modifier1 == 5
    for junk in [None, {}, {"format": "x"}, {"format": "pymaster-subscriptions-1",
                                             "pools": [{"key": 3}, {"key": "k",
                                                                    "nodes": [{"x": 1}]}]}]:
        assert table().restore(junk, T0) == 0


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.binary(max_size=300),
    st.lists(st.tuples(st.sampled_from(["key", "address", "modifier1", "modifier2", "cores",
                                        "load", "weight", "unix", "sign", "notify", "x"]),
                       st.one_of(st.text(max_size=40), st.binary(max_size=300).map(
                           lambda b: b.decode("latin-1")))), max_size=12)
      .map(lambda pairs: b"\xe0\x00\x00" + bytes([len(pairs) % 3])
           + encode_vars([(k, v.encode("latin-1", "replace")) for k, v in pairs])),
), st.booleans(), st.integers(0, 40))
def test_fuzz_hostile_datagrams_never_raise(data, signing, cut):
    t = table(secret=SECRET if signing else None, allow=parse_allow(["127.0.0.0/8"]))
    for blob in (data, data[:-cut] if cut else data, data + b"\x00" * cut):
        t.handle_datagram(blob, ("127.0.0.1", 9), T0)
        t.handle_datagram(blob, ("8.8.8.8", 9), T0)
    if signing:
        assert t.pools == {}                        # nothing unsigned gets in
    t.expire(T0 + 100)
    assert t.pools == {}
