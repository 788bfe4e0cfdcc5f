"""--threads pieces without processes: the per-core scoreboard table and the mode line."""

from __future__ import annotations

import pytest

from pymaster.cli import operational_mode
from pymaster.config import parse
from pymaster.workers import scoreboard as sb


def test_core_slots_count_and_show_the_request_in_flight():
    board = sb.Scoreboard(4, cores=3)
    try:
        core = board.core(1, 2)
        core.reset(1234)
        core.begin(100.0, b"GET /slow")
        cores = board.read_cores(1, 1234)
        assert cores is not None and len(cores) == 3
        assert cores[2] == {"pid": 1234, "requests": 0, "req_start": 100.0, "request": "GET /slow"}
        core.end()
        assert board.read_cores(1, 1234)[2]["requests"] == 1
        assert board.read_cores(1, 1234)[2]["req_start"] == 0.0
        # a respawned worker (another pid) starts with empty cores
        assert board.read_cores(1, 999)[2]["requests"] == 0
        # the worker slots (the Perl worker's layout) are untouched
        assert board.slot(1).read()["pid"] == 0
        with pytest.raises(IndexError):
            board.core(1, 3)
    finally:
        board.close()


def test_no_core_table_without_threads():
    board = sb.Scoreboard(4)
    try:
        assert board.cores == 1 and board.read_cores(0, 1) is None
        with pytest.raises(IndexError):
            board.core(0, 0)
    finally:
        board.close()


@pytest.mark.parametrize(
    ("args", "processes", "mode"),
    [
        ([], 1, "single process"),
        (["--threads", "1"], 1, "single process"),
        (["--threads", "0"], 1, "single process"),
        (["--threads", "4"], 1, "threaded"),
        ([], 2, "preforking"),
        (["--threads", "2"], 3, "preforking+threaded"),
        (["--threads", "2"], 0, "no-workers"),
    ],
)
def test_operational_mode_lines_as_uwsgi(args, processes, mode):
    cfg = parse([*args, "-s", ":1"], {})
    assert operational_mode(cfg, processes) == f"*** Operational MODE: {mode} ***"


def test_stacksize_spellings_and_ini_key():
    for name in ("thread-stacksize", "threads-stacksize", "thread-stack-size", "threads-stack-size"):
        assert parse([f"--{name}", "256", "-s", ":1"], {}).thread_stacksize == 256
    assert parse(["-s", ":1"], {"UWSGI_THREADS": "8"}).threads == 8
