"""Issue 13 item 7: --uid/--gid that a non-root master cannot honour are refused at start.

pymaster runs as `nobody` here (setpriv; the one ambient capability, CAP_DAC_READ_SEARCH,
only lets it read the interpreter and files under root's directories, it cannot change ids).
"""

from __future__ import annotations

import os
import shutil
import signal

import pytest

from tests.pm import Pymaster, free_port, split_response, uwsgi_get, wait_port

APP = "tests/apps/conformance.py"
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
             "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", "--"]

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                                reason="needs root and setpriv to run pymaster as nobody")


def as_nobody(tmp_path, *args):
    port = free_port()
    pm = Pymaster(["-s", f"127.0.0.1:{port}", "--wsgi-file", APP, "-M", *args], tmp_path,
                  prefix=AS_NOBODY)
    pm.port = port
    return pm


@pytest.mark.parametrize("args, message", [
    (["--uid", "0"], "cannot setuid() as non-root user: --uid 0 asks for uid 0, but pymaster "
                     "runs as uid 65534"),
    (["--uid", "root"], "cannot setuid() as non-root user: --uid root asks for uid 0"),
    (["--gid", "0"], "cannot setgid() as non-root user: --gid 0 asks for gid 0, but pymaster "
                     "runs as uid 65534 gid 65534"),
    (["--uid", "nobody", "--gid", "root"], "cannot setgid() as non-root user: --gid root"),
])
def test_ids_a_non_root_master_cannot_take_are_refused(tmp_path, args, message):
    pm = as_nobody(tmp_path, *args)
    try:
        assert pm.wait(20) == 1
        log = pm.log()
        assert message in log and "only root can change its" in log
        assert "bound to TCP address" not in log  # refused before binding anything
    finally:
        pm.stop()


def test_the_ids_it_already_has_are_nothing_to_do(tmp_path):
    with as_nobody(tmp_path, "--uid", "nobody", "--gid", "65534") as pm:
        wait_port(pm.port, timeout=20)
        pm.wait_workers(1)
        pm.wait_log(r"--uid nobody: already running as uid 65534, nothing to do")
        pm.wait_log(r"--gid 65534: already running as gid 65534, nothing to do")
        status, _, _ = split_response(uwsgi_get(pm.port, "/hello"))
        assert status.endswith("200 OK")
        pm.signal(signal.SIGHUP)  # the reload check and the re-exec'd master agree
        pm.wait_log(r"gracefully \(RE\)spawned pymaster master process", timeout=20)
        pm.wait_log(r"--uid nobody: already running as uid 65534", count=2)


def test_an_unknown_user_is_an_error_as_non_root_too(tmp_path):
    pm = as_nobody(tmp_path, "--uid", "no-such-user-here")
    try:
        assert pm.wait(20) == 1
        assert "unknown user 'no-such-user-here' (--uid)" in pm.log()
    finally:
        pm.stop()
