"""Plack::Test::Suite, Plack's server conformance tests, against the pymaster Perl handler:
directly on an HTTP listener, and with nginx in front speaking uwsgi (uwsgi_pass)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pymaster.config import Config
from pymaster.workers.contract import Recycling, option_environment
from pymaster.workers.psgi.bridge import PERL_DIR
from tests.external import free_port, have, nginx

DRIVER = Path(__file__).with_name("plack_suite.t")

needs_suite = pytest.mark.skipif(
    not shutil.which("prove") or subprocess.run(
        ["perl", "-MPlack::Test::Suite", "-e1"], capture_output=True).returncode != 0,
    reason="Plack::Test::Suite (libplack-perl) missing")

# Differences nginx itself introduces, not the handler: uwsgi_params sends its own
# server_name as SERVER_NAME (not the Host header), and merge_slashes folds '//foo///bar'.
NGINX_KNOWN = {"validate env", "repeated slashes"}


def run_suite(env_extra: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, set[str]]:
    # the handler runs without a master here: give it the environment a master would
    env = dict(os.environ, **option_environment(Config()),
               **Recycling.for_worker(Config(), 1).environment(), **(env_extra or {}))
    proc = subprocess.run(["prove", "-v", "-I", PERL_DIR, str(DRIVER)], env=env,
                          capture_output=True, text=True, timeout=180)
    failed, current = set(), None
    for line in proc.stdout.splitlines():
        note = re.match(r"# (\S.*)$", line)
        if note and not line.startswith("#  "):
            current = note.group(1)
        elif line.startswith("not ok"):
            failed.add(current or line)
    return proc, failed


@needs_suite
def test_plack_suite_over_http():
    proc, failed = run_suite()
    assert proc.returncode == 0 and not failed, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert re.search(r"^1\.\.(\d+)$", proc.stdout, re.M)


@needs_suite
@pytest.mark.skipif(not have("nginx"), reason="nginx not installed")
def test_plack_suite_behind_nginx_uwsgi_pass():
    port = free_port()
    with nginx(f"127.0.0.1:{port}", "uwsgi_pass") as front:
        proc, failed = run_suite({"PYMASTER_SUITE_SERVER_PORT": str(port),
                                  "PYMASTER_SUITE_HTTP_PORT": str(front.port)})
    assert failed <= NGINX_KNOWN, proc.stdout[-4000:] + proc.stderr[-4000:]
    count = int(re.search(r"^1\.\.(\d+)$", proc.stdout, re.M).group(1))
    assert count >= 100
