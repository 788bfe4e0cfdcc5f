"""The Emperor's pieces without processes: uWSGI's blacklist throttle, a vassal's command
line (uWSGI's order of effect) and environment, the monitors' view of a directory."""

from __future__ import annotations

import os
import sys

import pytest

from pymaster.config import parse
from pymaster.emperor.blacklist import Blacklist
from pymaster.emperor.emperor import EmperorError, check
from pymaster.emperor.monitor import Monitor, MonitorError
from pymaster.emperor.vassal import EMPEROR_PID_ENV, command, environment


def test_blacklist_grows_by_the_throttle_and_names_the_bad_vassal():
    bl = Blacklist(throttle_ms=1000, max_throttle_ms=3000)
    assert bl.add("c.ini", 100.0) == []  # first death: the next scan may start it
    assert not bl.allows("c.ini", 100.0) and bl.allows("c.ini", 100.002)
    assert bl.add("c.ini", 101.0) == []
    assert bl.items["c.ini"].throttle_us == 1_001_000
    assert not bl.allows("c.ini", 101.9) and bl.allows("c.ini", 102.01)
    assert bl.add("c.ini", 103.0) == [
        "[emperor] unloyal bad behaving vassal found: c.ini throttling it..."
    ]
    assert bl.items["c.ini"].as_stats()["throttle_level"] == 2001
    assert bl.add("c.ini", 106.0) == []
    assert bl.add("c.ini", 110.0) == [
        "[emperor] maximum throttle level for vassal c.ini reached !!!"
    ]
    assert bl.items["c.ini"].throttle_us == 3_001_000 // 2
    assert bl.items["c.ini"].attempt == 4
    bl.remove("c.ini")
    assert bl.allows("c.ini", 110.0) and bl.items == {}


def test_no_blacklist_never_throttles():
    bl = Blacklist(1000, 180000, enabled=False)
    for t in range(5):
        assert bl.add("x.ini", float(t)) == []
    assert bl.allows("x.ini", 4.0)


def test_command_applies_inherited_files_last(tmp_path):
    cfg = parse(
        ["--emperor", str(tmp_path), "--vassals-inherit", "t.ini", "--vassals-include", "i.ini",
         "--vassals-inherit-before", "tb.ini", "--vassals-include-before", "ib.ini",
         "--vassal-set", "processes=2", "--vassals-set", "env=X=1"],
        {},
    )  # fmt: skip
    from pymaster.emperor.monitor import Found

    found = Found(str(tmp_path / "a.ini"), "a.ini", str(tmp_path), str(tmp_path), 0, 0, 0)
    cwd = os.getcwd()
    assert command(cfg, found) == [
        sys.executable, "-m", "pymaster",
        "--ini", f"{cwd}/ib.ini",
        "--set", "processes=2", "--set", "env=X=1",
        "--ini", "a.ini",
        "--ini", f"{cwd}/i.ini", "--ini", f"{cwd}/tb.ini", "--ini", f"{cwd}/t.ini",
        "--master",
    ]  # fmt: skip


def test_vassal_environment():
    env = environment(
        {
            "PATH": "/bin",
            "UWSGI_VASSAL_PROCESSES": "3",
            "PYMASTER_VASSAL_HARAKIRI": "5",
            "UWSGI_EMPEROR": "/etc/vassals",
            "PYMASTER_EMPEROR_FREQ": "1",
            "UWSGI_VASSALS_INHERIT": "x.ini",
            "NOTIFY_SOCKET": "/run/systemd/notify",
            "LISTEN_FDS": "1",
            "LISTEN_PID": "1",
            "WATCHDOG_USEC": "1000",
            "UWSGI_RELOADS": "2",
            "UWSGI_SOCKET": ":9",
        },
        "@emperor-notify",
        42,
    )
    assert env == {
        "PATH": "/bin",
        "UWSGI_PROCESSES": "3",
        "PYMASTER_HARAKIRI": "5",
        "UWSGI_SOCKET": ":9",
        "NOTIFY_SOCKET": "@emperor-notify",
        EMPEROR_PID_ENV: "42",
    }


def test_directory_monitor_sees_ini_files_only(tmp_path):
    (tmp_path / "a.ini").write_text("[uwsgi]\n")
    (tmp_path / "b.ini").mkdir()  # not a regular file
    (tmp_path / "c.yaml").write_text("uwsgi: {}\n")
    (tmp_path / "notes.txt").write_text("x\n")
    (tmp_path / "l.ini").symlink_to(tmp_path / "a.ini")
    monitor = Monitor(str(tmp_path))
    found, notes = monitor.scan()
    assert [(f.name, f.cwd) for f in found] == [("a.ini", str(tmp_path)), ("l.ini", str(tmp_path))]
    assert notes == [
        "[emperor] c.yaml is not an INI file: pymaster's vassals are *.ini files, it is ignored"
    ]
    assert monitor.scan()[1] == []  # reported once
    glob_monitor = Monitor(str(tmp_path / "*.ini"))
    assert [f.name for f in glob_monitor.scan()[0]] == [
        str(tmp_path / "a.ini"),
        str(tmp_path / "l.ini"),
    ]
    assert all(f.cwd is None for f in glob_monitor.scan()[0])


def test_nofollow_takes_the_link_mtime(tmp_path):
    target = tmp_path / "real.conf"
    target.write_text("[uwsgi]\n")
    os.utime(target, (1000, 1000))
    link = tmp_path / "v.ini"
    link.symlink_to(target)
    os.utime(link, (2000, 2000), follow_symlinks=False)
    assert Monitor(str(tmp_path)).scan()[0][0].mtime == 1000
    assert Monitor(str(tmp_path), nofollow=True).scan()[0][0].mtime == 2000


@pytest.mark.parametrize("spec, message", [
    ("zmq://127.0.0.1:5000", "zmq:// monitors are not part of pymaster"),
    ("/nonexistent/vassals", "no such directory or file"),
])  # fmt: skip
def test_bad_monitors_are_refused(spec, message):
    with pytest.raises(MonitorError, match=message):
        Monitor(spec)


def test_instance_options_are_refused_and_others_named_as_ignored(tmp_path):
    with pytest.raises(EmperorError, match="--socket configures an instance"):
        check(parse(["--emperor", str(tmp_path), "-s", ":3031"], {}))
    lines = check(parse(["--emperor", str(tmp_path), "--processes", "4", "--harakiri", "5"], {}))
    assert lines == [
        "*** the Emperor ignores --processes, --harakiri: instance options belong in the "
        "vassal files (or --vassals-inherit / --vassal-set) ***"
    ]
    assert (
        check(parse(["--emperor", str(tmp_path), "--logto", "x.log", "--reload-mercy", "5"], {}))
        == []
    )
