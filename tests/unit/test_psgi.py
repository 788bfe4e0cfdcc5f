"""pymaster.workers.psgi.bridge: plackup argv, worker environment, preflight messages."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pymaster.config import parse
from pymaster.config.table import OPTIONS
from pymaster.workers.contract import Recycling, option_environment
from pymaster.workers.psgi import bridge as psgi
from tests.conftest import config_with

needs_plackup = pytest.mark.skipif(not shutil.which("plackup"), reason="plackup missing")


def cfg(app="app.psgi", **kw):
    return config_with(psgi=str(app), **kw)


def test_handler_files_ship_with_the_package():
    base = Path(psgi.PERL_DIR)
    assert (base / "Plack" / "Handler" / "Pymaster.pm").is_file()
    assert (base / "Plack" / "Loader" / "Pymaster.pm").is_file()


def test_argv_defaults():
    argv = psgi.worker_argv(cfg("/srv/app.psgi"))
    assert Path(argv[0]).name == "plackup"
    assert argv[1:] == ["-I", psgi.PERL_DIR, "-E", "deployment", "-s", "Pymaster", "-L", "Pymaster",
                        "/srv/app.psgi"]


def test_argv_plackup_opts_are_shell_split_and_override_the_environment():
    argv = psgi.worker_argv(cfg(plackup_opt=["-I lib -MFoo::Bar=x,y", "-E 'production'"],
                                perl_local_lib="/opt/ll"))
    assert argv[1:] == ["-I", psgi.PERL_DIR, "-I", "/opt/ll/lib/perl5", "-E", "deployment",
                        "-I", "lib", "-MFoo::Bar=x,y", "-E", "production",
                        "-s", "Pymaster", "-L", "Pymaster", "app.psgi"]


def test_worker_env(monkeypatch):
    monkeypatch.setenv("PERL5LIB", "/old")
    env = psgi.worker_env(cfg(max_requests=50, max_requests_delta=2, buffer_size=8192,
                              socket_timeout=9, disable_logging=True, env=["FOO=bar=baz"],
                              perl_local_lib="/opt/ll", procname_prefix="pre "),
                          3, [(3, "uwsgi"), (7, "http")], 9, 1234)
    assert env["PYMASTER_LISTEN_FDS"] == "3:uwsgi,7:http"
    assert env["PYMASTER_WORKER_ID"] == "3"
    assert env["PYMASTER_SCOREBOARD_FD"] == "9"
    assert env["PYMASTER_MASTER_PID"] == "1234"
    assert env["PYMASTER_RECYCLE_MAX_REQUESTS"] == "56"     # 50 + worker 3 * delta 2
    assert env["PYMASTER_RECYCLE_MIN_LIFETIME"] == "10.0"
    assert env["PYMASTER_RECYCLE_RSS"] == "0"
    assert env["PYMASTER_OPT_BUFFER_SIZE"] == "8192"
    assert env["PYMASTER_OPT_SOCKET_TIMEOUT"] == "9"
    assert env["PYMASTER_OPT_DISABLE_LOGGING"] == "1"
    assert env["PYMASTER_OPT_LOGFORMAT"] == ""
    assert env["PYMASTER_PROCNAME"] == "pre pymaster worker 3"
    assert env["PYMASTER_OPT_HTTP_KEEPALIVE"] == "5"          # the table's default

    assert env["PYMASTER_PSGI"] == "app.psgi"
    assert env["FOO"] == "bar=baz"
    assert env["PERL5LIB"] == "/opt/ll/lib/perl5" + os.pathsep + "/old"
    assert "PYMASTER_CHECK" not in env


def test_worker_env_carries_every_worker_option_from_the_parsed_config():
    parsed = parse(["--psgi", "a.psgi", "--log-slow", "0", "--log-4xx", "--logformat",
                    "%(method) %(uri)", "--reload-on-rss", "64", "--min-worker-lifetime", "0"], {})
    env = psgi.worker_env(parsed, 1, [(3, "http")], 9, 1234)
    assert env["PYMASTER_OPT_LOG_SLOW"] == "0"
    assert env["PYMASTER_OPT_LOG_4XX"] == "1"
    assert env["PYMASTER_OPT_LOG_5XX"] == "0"
    assert env["PYMASTER_OPT_LOGFORMAT"] == "%(method) %(uri)"
    assert env["PYMASTER_RECYCLE_RSS"] == str(64 * 1024 * 1024)
    assert env["PYMASTER_RECYCLE_MIN_LIFETIME"] == "0.0"
    assert set(option_environment(parsed)) <= set(env)


@pytest.mark.parametrize("value, expected", [(0, "0"), (12, "12")])
def test_worker_env_http_keepalive(value, expected):
    env = psgi.worker_env(cfg(http_keepalive=value), 1, [(3, "http")], 9, 1234)
    assert env["PYMASTER_OPT_HTTP_KEEPALIVE"] == expected


def test_every_worker_option_reaches_the_perl_worker():
    """Each option flagged `worker` in the table is read by the Perl handler as
    PYMASTER_OPT_<NAME>, or comes to it through PYMASTER_RECYCLE_*, or is the master's, or
    is declared not honoured (and then logged at start): a new worker option that none of
    these covers fails here."""
    source = (Path(psgi.PERL_DIR) / "Plack" / "Handler" / "Pymaster.pm").read_text()
    worker_options = {option.name: option for option in OPTIONS if option.worker}
    declared = [*psgi.VIA_RECYCLING, *psgi.BY_THE_MASTER, *psgi.OTHER_KINDS, *psgi.NOT_HONOURED]
    assert len(declared) == len(set(declared)) and set(declared) <= set(worker_options)
    for name, option in worker_options.items():
        if name not in declared:
            assert f"'{option.env_name}'" in source, f"--{name}: not read by the Perl worker"
    for name in Recycling(0, 0, 0.0).environment():
        assert f"'{name}'" in source, name


def test_worker_env_without_master():
    env = psgi.worker_env(cfg(), 1, [(3, "uwsgi")], 4, None)
    assert env["PYMASTER_MASTER_PID"] == "0"


def test_preflight_missing_app_file(tmp_path):
    with pytest.raises(RuntimeError, match=r"PSGI app file '.*nope\.psgi' not found"):
        psgi.preflight(cfg(tmp_path / "nope.psgi"))


def test_preflight_missing_plackup(tmp_path, monkeypatch):
    app = tmp_path / "app.psgi"
    app.write_text("sub { [200, [], ['x']] }")
    real_which = shutil.which
    monkeypatch.setattr(psgi.shutil, "which", lambda name: None if name == "plackup" else real_which(name))
    with pytest.raises(RuntimeError, match=r"plackup not found.*libplack-perl"):
        psgi.preflight(cfg(app))


@needs_plackup
def test_preflight_missing_plack_modules(tmp_path, monkeypatch):
    """plackup present but Plack's modules not loadable (PERL5LIB-only install gone)."""
    app = tmp_path / "app.psgi"
    app.write_text("sub { [200, [], ['x']] }")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "plackup").write_text("#!/usr/bin/perl\nuse Plack::NoSuchRunner;\n")
    (fake / "plackup").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(RuntimeError, match=r"Plack is not installed.*libplack-perl"):
        psgi.preflight(cfg(app))


@needs_plackup
def test_preflight_ok(tmp_path):
    app = tmp_path / "app.psgi"
    app.write_text("sub { [200, ['Content-Type' => 'text/plain'], ['x']] };\n__END__\ndata\n")
    psgi.preflight(cfg(app))


@needs_plackup
def test_preflight_missing_module_names_the_package(tmp_path):
    app = tmp_path / "app.psgi"
    app.write_text("use Text::NoSuchModule;\nsub { [200, [], ['x']] };\n")
    with pytest.raises(RuntimeError) as info:
        psgi.preflight(cfg(app))
    msg = str(info.value)
    assert "needs the Perl module Text::NoSuchModule" in msg
    assert "apt-get install libtext-nosuchmodule-perl" in msg and "cpanm Text::NoSuchModule" in msg


@needs_plackup
def test_preflight_missing_module_from_plackup_opt(tmp_path):
    app = tmp_path / "app.psgi"
    app.write_text("sub { [200, [], ['x']] };\n")
    with pytest.raises(RuntimeError, match=r"needs the Perl module No::Preload"):
        psgi.preflight(cfg(app, plackup_opt=["-MNo::Preload"]))


@needs_plackup
def test_preflight_uses_include_dirs(tmp_path):
    lib = tmp_path / "lib" / "My"
    lib.mkdir(parents=True)
    (lib / "Mod.pm").write_text("package My::Mod; sub hi { 'hi' } 1;\n")
    app = tmp_path / "app.psgi"
    app.write_text("use My::Mod;\nsub { [200, [], [My::Mod::hi()]] };\n")
    psgi.preflight(cfg(app, plackup_opt=[f"-I {tmp_path / 'lib'}"]))


@needs_plackup
@pytest.mark.parametrize("source, message", [
    ("sub { [200, [], ['x']] ;\n", r"failed to load: .*(syntax error|Missing right curly)"),
    ("die 'no database';\n", r"failed to load: .*no database"),
    ("42;\n", r"did not return a PSGI application"),
])
def test_preflight_load_failures(tmp_path, source, message):
    app = tmp_path / "app.psgi"
    app.write_text(source)
    with pytest.raises(RuntimeError, match=message):
        psgi.preflight(cfg(app))
