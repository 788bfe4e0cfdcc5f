"""uWSGI's option logic in INI files: `if-env`, `if-not-env`, `if-exists`, `if-not-exists`,
`if-file`, `if-dir`, `if-opt`, `else`, `for`, `for-glob`, `for-times`, `for-readline`,
`endif`/`endfor`, with `%(_)`; the table of the reference's observations (uWSGI 2.0.21)."""

from __future__ import annotations

import pytest

from pymaster.config import ConfigError, parse

IF_ENV = """[uwsgi]
if-env = MYVAR
env = GOT_MYVAR=%(_)
socket-timeout = 11
endif =
if-not-env = MYVAR
socket-timeout = 22
endif =
if-env = MYVAR=exact
listen = 77
endif =
"""


@pytest.mark.parametrize("value, env, timeout, listen", [
    (None, [], 22, 100),
    ("foo", ["GOT_MYVAR=foo"], 11, 100),
    ("exact", ["GOT_MYVAR=exact"], 11, 77),
])
def test_if_env_as_uwsgi_observed(tmp_path, value, env, timeout, listen):
    ini = tmp_path / "t.ini"
    ini.write_text(IF_ENV)
    cfg = parse([str(ini)], {} if value is None else {"MYVAR": value})
    assert (cfg.env, cfg.socket_timeout, cfg.listen) == (env, timeout, listen)
    assert not [w for w in cfg.warnings if "unknown option" in w]


def test_if_exists_and_if_not_exists(tmp_path):
    (tmp_path / "cfg").mkdir()
    ini = tmp_path / "t.ini"
    ini.write_text(f"[uwsgi]\nif-exists = {tmp_path}/cfg\nchdir = %(_)\nendif =\n"
                   "if-not-exists = /nonexistent\nbuffer-size = 8192\nendif\n"
                   "if-exists = /nonexistent\nlisten = 5\nendif\n")
    cfg = parse([str(ini)], {})
    assert (cfg.chdir, cfg.buffer_size, cfg.listen) == (f"{tmp_path}/cfg", 8192, 100)


def test_if_file_if_dir_and_else(tmp_path):
    (tmp_path / "f").write_text("x")
    ini = tmp_path / "t.ini"
    ini.write_text(f"[uwsgi]\nif-file = {tmp_path}/f\nprocesses = 3\nelse =\nprocesses = 4\nendif\n"
                   f"if-dir = {tmp_path}/f\nlisten = 9\nelse =\nlisten = 10\nendif\n")
    cfg = parse([str(ini)], {})
    assert (cfg.processes, cfg.listen) == (3, 10)


def test_if_opt_sees_what_was_collected_before(tmp_path):
    ini = tmp_path / "t.ini"
    ini.write_text("[uwsgi]\nmode = prod\nif-opt = mode=prod\nprocesses = 8\nendif\n"
                   "if-not-opt = mode=prod\nprocesses = 1\nendif\n")
    assert parse([str(ini)], {}).processes == 8


def test_for_loops(tmp_path):
    (tmp_path / "venv-a").mkdir()
    (tmp_path / "venv-b").mkdir()
    lines = tmp_path / "lines.txt"
    lines.write_text("/one\n/two\n")
    ini = tmp_path / "t.ini"
    ini.write_text(f"[uwsgi]\nfor = a b c\nenv = X_%(_)=1\nendfor\n"
                   f"for-glob = {tmp_path}/venv-*\npythonpath = %(_)lib\nendfor =\n"
                   f"for-times = 2\nsocket = 127.0.0.1:900%(_)\nendfor\n"
                   f"for-readline = {lines}\ntouch-reload = %(_)\nend-for\n")
    cfg = parse([str(ini)], {})
    assert cfg.env == ["X_a=1", "X_b=1", "X_c=1"]
    assert cfg.pythonpath == [f"{tmp_path}/venv-a/lib", f"{tmp_path}/venv-b/lib"]
    assert cfg.socket == ["127.0.0.1:9001", "127.0.0.1:9002"]
    assert cfg.touch_reload == ["/one", "/two"]


def test_for_glob_without_a_match_yields_the_pattern(tmp_path):
    # the corpus' library_registry: `for-glob = /libreg_venv/libreg_app-*` on a machine without it
    ini = tmp_path / "t.ini"
    ini.write_text("[uwsgi]\nfor-glob = /nonexistent/app-*\nvirtualenv = %(_)\nendfor =\n")
    assert parse([str(ini)], {}).home == "/nonexistent/app-*"


def test_nested_logic_is_refused_with_the_file_named(tmp_path):
    ini = tmp_path / "t.ini"
    ini.write_text("[uwsgi]\nif-env = A\nif-env = B\nendif\n")
    with pytest.raises(ConfigError, match=r"recursive logic in options is not supported "
                                          r"\(option = if-env in .*t\.ini\)"):
        parse([str(ini)], {"A": "1"})


def test_for_readline_of_a_missing_file_is_an_error(tmp_path):
    ini = tmp_path / "t.ini"
    ini.write_text("[uwsgi]\nfor-readline = /nonexistent/list\nenv = %(_)\nendfor\n")
    with pytest.raises(ConfigError, match="for-readline = /nonexistent/list in .*t.ini: cannot read"):
        parse([str(ini)], {})


def test_a_block_left_open_is_named(tmp_path):
    ini = tmp_path / "t.ini"
    ini.write_text("[uwsgi]\nif-env = NOPE\nprocesses = 4\n")
    cfg = parse([str(ini)], {})
    assert cfg.processes == 1
    assert any("'if-env' block" in w and "never closed" in w for w in cfg.warnings)


def test_logic_on_the_command_line_as_in_an_ini(tmp_path):
    ini = tmp_path / "after.ini"
    ini.write_text("[uwsgi]\nlisten = 7\n")
    argv = ["--if-env", "MODE=prod", "--processes", "8", "--endif", str(ini)]
    cfg = parse(argv, {"MODE": "prod"})
    assert (cfg.processes, cfg.listen) == (8, 7)  # the INI after --endif is still read
    cfg = parse(argv, {"MODE": "dev"})
    assert (cfg.processes, cfg.listen) == (1, 7)


def test_logic_keys_are_listed_in_the_help():
    from pymaster.config.docs import format_help
    text = format_help()
    for key in ("--if-env VALUE", "--for-glob VALUE", "--endif ", "--endfor "):
        assert key in text
