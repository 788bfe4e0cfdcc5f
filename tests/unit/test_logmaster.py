"""pymaster.master.logmaster: encoders, logger specs, route matching, line reassembly; and
the date prefix of pymaster.log."""

from __future__ import annotations

import json
import os
import re
import time

import pytest

from pymaster import log as logmod
from pymaster.config.options import parse
from pymaster.master import logmaster as lm


class Memory(lm.Sink):
    def __init__(self):
        self.data = b""

    def write(self, chunks):
        self.data += b"".join(chunks)


# -- encoders ------------------------------------------------------------------------------------

def enc(spec: str) -> lm.Encoder:
    return lm.parse_encoder(spec)


def test_format_msg_drops_the_newline_msgnl_keeps_it():
    assert enc("format [${msg}]")(b"hello\n") == b"[hello]"
    assert enc("format [${msgnl}]")(b"hello\n") == b"[hello\n]"
    assert enc("format ${msg}")(b"no newline") == b"no newline"


def test_nl_prefix_suffix():
    assert enc("nl")(b"x") == b"x\n"
    assert enc("prefix >> ")(b"x\n") == b">> x\n"
    assert enc("suffix  <<")(b"x") == b"x <<"


def test_time_variables():
    before = int(time.time())
    out = enc("format ${unix} ${millis} ${micros} ${strftime:%Y}")(b"m\n").split()
    assert before <= int(out[0]) <= before + 2
    assert abs(int(out[1]) // 1000 - before) <= 2 and abs(int(out[2]) // 1_000_000 - before) <= 2
    assert out[3] == time.strftime("%Y").encode()


def test_unknown_variable_writes_nothing_and_is_reported():
    e = enc("format a${nope}b ${msg}")
    assert e(b"m\n") == b"ab m"
    assert e.unknown_variables() == ["nope"]


def test_unterminated_variable_is_literal():
    assert enc("format ${msg} ${unterminated")(b"m\n") == b"m ${unterminated"


def test_json_escapes_what_uwsgi_does_and_control_characters():
    e = enc('json {"message":"${msg}"}')
    raw = 'say "hi"\ttab\\ \x01 caf\u00e9\r'.encode() + b"\xff\n"
    out = e(raw)
    assert json.loads(out)["message"] == 'say "hi"\ttab\\ \x01 caf\u00e9\r\\xff'
    assert b'\\"hi\\"\\ttab\\\\ \\u0001' in out  # uWSGI's escapes, byte for byte


def test_json_strftime_is_escaped():
    assert json.loads(enc('json {"t":"${strftime:"%Y"}"}')(b"x\n"))["t"] == f'"{time.strftime("%Y")}"'


def test_encoder_scope():
    e = enc("format:app [${msg}]")
    assert e.use_for == "app" and e.args == "[${msg}]"
    named = lm.Logger("app", "stdio", Memory())
    other = lm.Logger("other", "stdio", Memory())
    assert e.applies(named) and not e.applies(other) and not e.applies(None)
    assert enc("nl").applies(None) and enc("nl").applies(named)


def test_unknown_encoder_is_named_with_what_exists():
    with pytest.raises(lm.LogConfigError, match=r'log encoder "gzip" not found.*prefix, suffix, nl'):
        enc("gzip")


# -- logger specs --------------------------------------------------------------------------------

def test_logger_name_is_a_leading_alphanumeric_word(tmp_path):
    main = lm.FdSink(2)
    named = lm.parse_logger(f"qcluster file:{tmp_path / 'q.log'}", main)
    assert (named.name, named.plugin) == ("qcluster", "file")
    (tmp_path / "with space").mkdir()
    plain = lm.parse_logger(f"file:{tmp_path / 'with space' / 'a.log'}", main)  # no name
    assert plain.name == "" and plain.plugin == "file"
    assert plain.sink.path == str(tmp_path / "with space" / "a.log")
    assert lm.parse_logger("default stdio", main).sink is main
    assert lm.parse_logger("stdio", main).name == ""
    for sink in (named.sink, plain.sink):
        sink.close()


def test_file_logger_keyval_form(tmp_path):
    path = tmp_path / "k.log"
    lg = lm.parse_logger(f"file:logfile={path},maxsize=100,backupname={tmp_path / 'k.old'}",
                         lm.FdSink(2))
    assert isinstance(lg.sink, lm.FileSink)
    assert (lg.sink.path, lg.sink.maxsize, lg.sink.backup) == (str(path), 100, str(tmp_path / "k.old"))
    lg.sink.write([b"x" * 60 + b"\n"])
    lg.sink.write([b"y" * 60 + b"\n"])  # past 100 bytes: rotated
    assert (tmp_path / "k.old").read_bytes().startswith(b"x" * 60)
    assert b"triggering rotation to" in (tmp_path / "k.old").read_bytes()
    assert path.read_bytes() == b""
    lg.sink.write([b"z\n"])
    assert path.read_bytes() == b"z\n"
    lg.sink.close()


@pytest.mark.parametrize("spec, message", [
    ("redislog:127.0.0.1", r"unable to find logger 'redislog'.*file, fd, stdio, syslog"),
    ("socket:127.0.0.1:9", r"unable to find logger 'socket'.*syslog"),
    ("file:", r"file needs a path"),
    ("fd:x", r"fd needs a descriptor number"),
    ("file:/nonexistent-dir/x.log", r"cannot open /nonexistent-dir/x.log"),
    ("file:logfile=/tmp/x,colour=red", r"invalid keyval syntax"),
])
def test_bad_logger_specs(spec, message):
    with pytest.raises(lm.LogConfigError, match=message):
        lm.parse_logger(spec, lm.FdSink(2))


# -- routes --------------------------------------------------------------------------------------

def stream(routes=(), loggers=(), encoders=(), drains=(), filters=()):
    main = Memory()
    by_name = {lg.name: lg for lg in loggers if lg.name}
    parsed = [lm.parse_route(r) for r in routes]
    for route in parsed:
        route.target = by_name.get(route.name)
    s = lm.Stream(list(loggers), parsed, [enc(e) for e in encoders], main,
                  [re.compile(d.encode()) for d in drains],
                  [re.compile(f.encode()) for f in filters])
    return s, main


def test_routed_lines_go_to_their_named_logger_only():
    app, rest = lm.Logger("app", "x", Memory()), lm.Logger("", "x", Memory())
    s, main = stream(["app ^APP"], [app, rest])
    s.dispatch([b"APP one\n", b"other\n", b"xAPP\n"])
    assert app.sink.data == b"APP one\n"
    assert rest.sink.data == b"other\nxAPP\n"
    assert main.data == b""


def test_a_line_several_routes_match_goes_to_each():
    a, b = lm.Logger("a", "x", Memory()), lm.Logger("b", "x", Memory())
    s, main = stream(["a x", "b y"], [a, b])
    s.dispatch([b"xy\n", b"none\n"])
    assert a.sink.data == b"xy\n" and b.sink.data == b"xy\n"
    assert main.data == b"none\n"  # no unnamed logger: the instance log


def test_route_to_a_missing_logger_takes_nothing():
    s, main = stream(["ghost ."])
    s.dispatch([b"line\n"])
    assert main.data == b"line\n"


def test_negative_lookahead_route_of_the_corpus():
    default, app = lm.Logger("default", "x", Memory()), lm.Logger("applogger", "x", Memory())
    s, main = stream(["applogger {", r"default ^((?!\{).)*$"], [default, app],
                     ['json:default {"m":"${msg}"}', "format:applogger ${msg}", "nl"])
    s.dispatch([b'{"event": 1}\n', b"plain\n"])
    assert app.sink.data == b'{"event": 1}\n'
    assert json.loads(default.sink.data) == {"m": "plain"}


def test_drain_and_filter():
    s, main = stream(drains=["secret"], filters=["keep"])
    s.dispatch([b"keep secret\n", b"keep this\n", b"drop this\n"])
    assert main.data == b"keep this\n"


def test_route_spec_needs_a_regex():
    with pytest.raises(lm.LogConfigError, match="expected NAME REGEX"):
        lm.parse_route("onlyname")
    with pytest.raises(lm.LogConfigError, match="invalid regex"):
        lm.parse_route("x (")


# -- lines ----------------------------------------------------------------------------------------

def test_split_lines():
    assert lm.split_lines(b"a\nb\n") == [b"a\n", b"b\n"]
    assert lm.split_lines(b"a\r\nb") == [b"a\r\n", b"b\n"]
    assert lm.split_lines(b"") == []
    assert lm.split_lines(b"\n") == [b"\n"]


class FakeArbiter:
    def __init__(self):
        self.readers = {}

    def add_reader(self, fd, callback):
        self.readers[fd] = callback

    def remove_reader(self, fd):
        self.readers.pop(fd, None)


def test_pipe_reassembles_lines_and_flushes_at_eof():
    main = Memory()
    master = lm.LogMaster(lm.Stream([], [], [], main), None, lm.FdSink(2), [])
    arbiter = FakeArbiter()
    pipe = master.child_pipe()
    write = os.dup(pipe[1])
    master.in_parent(pipe, arbiter)
    (read,) = arbiter.readers
    os.write(write, b"first li")
    arbiter.readers[read]()
    assert main.data == b""
    os.write(write, b"ne\nsecond\nthi")
    arbiter.readers[read]()
    assert main.data == b"first line\nsecond\n"
    os.write(write, b"rd, unterminated")
    os.close(write)
    arbiter.readers[read]()
    assert main.data == b"first line\nsecond\nthird, unterminated\n"
    assert not arbiter.readers and not master.buffers


def test_a_huge_unterminated_line_is_cut_not_held():
    main = Memory()
    master = lm.LogMaster(lm.Stream([], [], [], main), None, lm.FdSink(2), [])
    arbiter = FakeArbiter()
    pipe = master.child_pipe()
    write = os.dup(pipe[1])
    master.in_parent(pipe, arbiter)
    (read,) = arbiter.readers
    os.set_blocking(write, False)
    sent = 0
    while sent < lm.MAX_LINE + 10:
        try:
            sent += os.write(write, b"x" * 65536)
        except BlockingIOError:
            arbiter.readers[read]()
    os.close(write)
    while read in arbiter.readers:
        arbiter.readers[read]()
    lines = main.data.split(b"\n")
    assert len(lines[0]) == lm.MAX_LINE and sum(map(len, lines)) == sent


# -- configure -----------------------------------------------------------------------------------

def test_needed_by_every_implying_option():
    assert not lm.needed(parse(["-s", ":1", "--logto", "/tmp/x", "--log-date"], {}))
    for argv in (["--log-master"], ["--logger", "stdio"], ["--req-logger", "stdio"],
                 ["--log-route", "a b"], ["--log-encoder", "nl"], ["--log-maxsize", "10"],
                 ["--log-syslog"], ["--log-drain", "x"], ["--touch-logrotate", "/tmp/t"]):
        cfg = parse(["-s", ":1", *argv], {})
        assert lm.needed(cfg), argv
        assert cfg.master, argv


def test_configure_reports_dangling_routes_and_registered_encoders(monkeypatch):
    lines = []
    monkeypatch.setattr(lm, "log", lines.append)
    cfg = parse(["-s", ":1", "--log-route", "ghost x", "--log-encoder", "format ${nope}",
                 "--log-req-encoder", "nl"], {})
    master = lm.configure(cfg)
    try:
        assert master is not None and master.requests is None
        text = "\n".join(lines)
        assert "no logger is named 'ghost'" in text
        assert "[log-encoder] registered format ${nope}" in text
        assert "unknown variable ${nope}" in text
        assert "--log-req-encoder has no effect without --req-logger" in text
    finally:
        lm.set_active(None)


def test_configure_with_a_request_logger_opens_the_request_socket(tmp_path):
    cfg = parse(["-s", ":1", "--req-logger", f"file:{tmp_path / 'r.log'}"], {})
    master = lm.configure(cfg)
    try:
        assert master is not None and master.requests is not None and master.req_write > 2
        os.write(master.req_write, b"[pid: 1|app: 0|req: 1/1] GET /\n")
        master.read_requests()
        assert (tmp_path / "r.log").read_bytes() == b"[pid: 1|app: 0|req: 1/1] GET /\n"
    finally:
        lm.set_active(None)
        for sink in master.sinks:
            sink.close()


# -- pymaster.log --------------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    (None, None), ("true", ""), ("1", ""), ("YES", ""), ("false", None), ("off", None),
    ("%Y-%m-%d", "%Y-%m-%d"),
])
def test_date_format(value, expected):
    assert logmod.date_format(value) == expected


def test_log_date_prefixes_log_once_and_never_request_lines(monkeypatch):
    out = []
    monkeypatch.setattr(logmod, "_sink", out.append)
    monkeypatch.setattr(logmod, "_req_fd", None)
    try:
        logmod.set_date("[%Y]")
        logmod.log("hello")
        logmod.log_verbose("event")
        logmod.log_request("[pid: 1|app: 0|req: 1/1] GET /")
        year = time.strftime("%Y")
        assert out == [f"[{year}] - hello\n".encode(), f"[{year}] - event\n".encode(),
                       b"[pid: 1|app: 0|req: 1/1] GET /\n"]
        logmod.set_date(None)
        out.clear()
        logmod.log("plain")
        assert out == [b"plain\n"]
    finally:
        logmod.set_date(None)
