"""--master-fifo over a real master: a path that is not a FIFO is refused and left intact;
a FIFO left by a previous run is replaced and works."""

import os
import stat

import pytest

from tests.pm import Pymaster, free_port, wait_port

APP = "tests/apps/conformance.py"


def master(tmp_path, *fifos):
    port = free_port()
    args = ["-s", f"127.0.0.1:{port}", "--wsgi-file", APP, "-M", "-p", "1"]
    for path in fifos:
        args += ["--master-fifo", path]
    pm = Pymaster(args, tmp_path)
    pm.port = port
    return pm


@pytest.mark.parametrize("kind", ["a regular file", "a directory", "a symbolic link"])
def test_a_path_that_is_not_a_fifo_stops_the_master_and_is_left_intact(tmp_path, kind):
    path = tmp_path / "app.ini"
    target = tmp_path / "target.ini"
    if kind == "a regular file":
        path.write_text("[uwsgi]\nprocesses = 4\n")
    elif kind == "a directory":
        path.mkdir()
        (path / "keep").write_text("x")
    else:
        target.write_text("[uwsgi]\n")
        path.symlink_to(target)
    pm = master(tmp_path, path)
    try:
        assert pm.wait(15) == 1
        log = pm.log()
        assert (
            f"pymaster: --master-fifo {path}: the path is {kind}, expected a FIFO or no file "
            f"at all; refusing to replace it (check the path)"
        ) in log
        assert "Traceback" not in log and "spawned pymaster worker" not in log
    finally:
        pm.stop()
    if kind == "a regular file":
        assert path.read_text() == "[uwsgi]\nprocesses = 4\n"
    elif kind == "a directory":
        assert (path / "keep").read_text() == "x"
    else:
        assert path.is_symlink() and target.read_text() == "[uwsgi]\n"


def test_every_fifo_slot_is_checked_at_start(tmp_path):
    first, second = tmp_path / "fifo0", tmp_path / "notes.txt"
    second.write_text("mine")
    pm = master(tmp_path, first, second)
    try:
        assert pm.wait(15) == 1
        assert f"--master-fifo {second}: the path is a regular file" in pm.log()
    finally:
        pm.stop()
    assert second.read_text() == "mine" and not first.exists()


def test_a_fifo_left_by_a_previous_run_is_replaced_and_serves(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o644)
    before = os.stat(fifo)
    pm = master(tmp_path, fifo)
    try:
        wait_port(pm.port)
        pm.wait_workers(1)
        now = os.stat(fifo)
        assert stat.S_ISFIFO(now.st_mode) and stat.S_IMODE(now.st_mode) == 0o600
        assert (now.st_ino, now.st_mode) != (before.st_ino, before.st_mode)
        fifo.write_bytes(b"q")
        assert pm.wait(15) == 0
        assert "graceful shutdown triggered..." in pm.log()
    finally:
        pm.stop()
