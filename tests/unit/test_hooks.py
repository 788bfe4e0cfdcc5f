"""uWSGI hooks (master/hooks.py): actions, refusals, unix_signal bound to the arbiter."""

from __future__ import annotations

import os
import signal

import pytest

from pymaster.config import parse
from pymaster.master import hooks
from tests.master_fakes import lines, make_arbiter


def test_unknown_actions_and_bad_unix_signal_are_refused_naming_them():
    with pytest.raises(hooks.HookError, match="hook action not found: mount"):
        hooks.check(parse(["--hook-asap", "mount:proc none /proc"], {}))
    with pytest.raises(hooks.HookError, match='unable to find function "nope"'):
        hooks.check(parse(["--hook-master-start", "unix_signal:15 nope"], {}))
    with pytest.raises(hooks.HookError, match="must be hook:args"):
        hooks.check(parse(["--hook-pre-app", "print"], {}))
    hooks.check(parse(["--hook-master-start", "unix_signal:15 gracefully_kill_them_all"], {}))


def test_file_and_env_actions(tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "run"
    cfg = parse(
        [
            "--hook-asap",
            f"mkdir:{d}",
            "--hook-asap",
            f"mkdir:{d}",  # again (a reload): fine
            "--hook-asap",
            f"write:{d}/f hello",
            "--hook-asap",
            f"append:{d}/f  world",
            "--hook-asap",
            "putenv:HOOKED=yes",
            "--hook-asap",
            f"chdir:{d}",
            "--hook-asap",
            "print:hello from a hook",
            "--hook-asap",
            f"exec:test -f {d}/f",
            "--hook-asap",
            "safeexec:false",
        ],
        {},
    )
    monkeypatch.delenv("HOOKED", raising=False)
    hooks.run(cfg, "asap")
    assert (d / "f").read_text() == "hello world"
    assert os.environ["HOOKED"] == "yes" and os.getcwd() == str(d)
    out = lines(capfd)
    assert f'running "mkdir:{d}" (asap)...' in out and "hello from a hook" in out
    assert 'command "false" exited with non-zero code: 1' in out
    hooks.run(parse(["--hook-post-app", f"unlink:{d}/f"], {}), "post app")
    assert not (d / "f").exists()


def test_a_failing_hook_is_fatal(capfd):
    with pytest.raises(hooks.HookError):
        hooks.run(parse(["--hook-pre-app", "exec:exit 3"], {}), "pre app")
    assert any("FATAL hook failed, destroying instance" in line for line in lines(capfd))


def test_unix_signal_binds_master_functions(capfd):
    arbiter, system = make_arbiter(
        "-M",
        "--hook-master-start",
        "unix_signal:15 gracefully_kill_them_all",
        "--hook-master-start",
        "unix_signal:10 reap_them_all",
        "--hook-master-start",
        "unix_signal:2 gracefully_kill_them_all",
    )
    old = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGINT)}
    try:
        hooks.attach(arbiter, arbiter.cfg)
        arbiter.on_start[0]()
        out = lines(capfd)
        assert any("SIGTERM already does this in pymaster" in line for line in out)
        assert arbiter.on_SIGUSR1 == arbiter.cmd_brutal_reload
        arbiter.dispatch(signal.SIGINT)  # now graceful
        assert arbiter.state.mode == "stopping" and arbiter.state.graceful
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
