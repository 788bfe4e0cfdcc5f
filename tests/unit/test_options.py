"""Option parsing: command line, aliases, environment, ordering, validation, help and docs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pymaster.config.options import OPTIONS, Config, ConfigError, parse

ROOT = Path(__file__).resolve().parents[2]


def write_ini(tmp_path: Path, text: str, name: str = "app.ini") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# --- command line ------------------------------------------------------------------------------

def test_short_flags():
    cfg = parse(["-s", ":4002", "-M", "-p", "4"], {})
    assert cfg.socket == [":4002"]
    assert cfg.master is True
    assert cfg.processes == 4


def test_grouped_short_flags_and_attached_value():
    cfg = parse(["-Mp4", "-s:4002"], {})
    assert (cfg.master, cfg.processes, cfg.socket) == (True, 4, [":4002"])


def test_equals_and_space_forms():
    assert parse(["--processes=3"], {}).processes == 3
    assert parse(["--processes", "3"], {}).processes == 3


def test_defaults():
    cfg = parse([], {})
    assert cfg.processes == 1
    assert cfg.socket == []
    assert cfg.master is False
    assert cfg.listen == 100
    assert cfg.buffer_size == 4096
    assert cfg.callable == "application"
    assert cfg.http_keepalive == 5
    assert cfg.cheaper_algo == "spare"
    assert not cfg.is_set("processes")


def test_bool_flags():
    cfg = parse(["--vacuum", "--lazy-apps", "-T"], {})
    assert cfg.vacuum and cfg.lazy_apps and cfg.enable_threads
    assert cfg.need_app is False


@pytest.mark.parametrize("argv, attr, value", [
    (["--file", "app.wsgi"], "wsgi_file", "app.wsgi"),
    (["--workers", "3"], "processes", 3),
    (["-w", "pkg.app:make"], "module", "pkg.app:make"),
    (["--wsgi", "pkg.app"], "module", "pkg.app"),
    (["--st", "127.0.0.1:4001:k"], "subscribe_to", ["127.0.0.1:4001:k"]),
    (["--uwsgi-socket", ":1"], "socket", [":1"]),
    (["--pp", "/a"], "pythonpath", ["/a"]),
    (["--fastrouter-workers", "2"], "fastrouter_processes", 2),
    (["--log-format", "%(uri)"], "logformat", "%(uri)"),
])
def test_aliases_resolve_to_canonical(argv, attr, value):
    cfg = parse(argv, {})
    assert getattr(cfg, attr) == value
    assert cfg.is_set(attr)


def test_get_by_name_alias_flag_or_placeholder():
    cfg = parse(["--workers", "3", "--set-ph", "color=blue"], {})
    assert cfg.get("processes") == cfg.get("workers") == cfg.get("-p") == 3
    assert cfg.get("color") == "blue"
    assert cfg.get("nothing") is None
    assert cfg.is_set("workers") and cfg.is_set("-p")


def test_chmod_socket_bare_means_666():
    assert parse(["-C"], {}).chmod_socket == "666"
    assert parse(["--chmod-socket=660"], {}).chmod_socket == "660"


def test_list_options_accumulate_in_order():
    cfg = parse(["-s", ":1", "--socket", ":2", "--uwsgi-socket=:3"], {})
    assert cfg.socket == [":1", ":2", ":3"]


@pytest.mark.parametrize("argv, message", [
    (["--proceses", "4"], "unknown option '--proceses' (did you mean '--processes'?)"),
    (["--proceses=4"], "unknown option '--proceses' (did you mean '--processes'?)"),
    (["-Z"], "unknown option '-Z'"),
    (["--procnam", "2"], "unknown option '--procnam' (did you mean '--procname'?)"),  # no abbrev
    (["--processes", "abc"], "option '--processes' expects an integer, got 'abc'"),
    (["--processes", "1_0"], "option '--processes' expects an integer, got '1_0'"),
    (["--harakiri", "-2"], "option '--harakiri' must be >= 0, got '-2'"),
    (["--socket"], "option '--socket' expects a value"),
    (["--master=yes"], "option '--master' takes no value on the command line, got 'yes'"),
    (["app.wsgi"], "unexpected argument 'app.wsgi': expected an option or a FILE.ini"),
])
def test_command_line_errors(argv, message):
    with pytest.raises(ConfigError) as info:
        parse(argv, {})
    assert str(info.value) == message


def test_choices():
    assert parse(["--cheaper-algo", "busyness"], {}).cheaper_algo == "busyness"
    with pytest.raises(ConfigError, match="expects one of spare, busyness, backlog, manual"):
        parse(["--cheaper-algo", "lazy"], {})


def test_size_option_accepts_units():
    assert parse(["--limit-post", "64k"], {}).limit_post == 65536
    with pytest.raises(ConfigError, match="expects a size in bytes"):
        parse(["--limit-post", "lots"], {})


def test_buffer_size_is_clamped():
    cfg = parse(["-b", "100000"], {})
    assert cfg.buffer_size == 65535
    assert any("buffer-size 100000" in w for w in cfg.warnings)
    assert parse(["-b", "32768"], {}).buffer_size == 32768


def test_argv_is_kept():
    argv = ["-s", ":1", "-M"]
    assert parse(argv, {}).argv == argv


# --- plugins -----------------------------------------------------------------------------------

def test_plugins_comma_separated():
    assert parse(["--plugins", "python3, fastrouter", "--plugin", "psgi"], {}).plugins == \
        ["python3", "fastrouter", "psgi"]


def test_unknown_plugin_is_named():
    with pytest.raises(ConfigError, match="unknown plugin 'rack'.*known plugins are python"):
        parse(["--plugins", "python,rack"], {})


def test_a_c_plugin_path_is_skipped_with_uwsgis_line(tmp_path):
    """A project's own uWSGI C plugin (physionet's escape_json_plugin.so): uWSGI goes on
    without a plugin it cannot load, and so does pymaster, saying so; even under --strict."""
    ini = tmp_path / "app.ini"
    ini.write_text("[uwsgi]\nstrict = true\nplugin = /code/escape_json_plugin.so\n"
                   "plugin = python3\n")
    cfg = parse(["--ini", str(ini)], {})
    assert cfg.plugins == ["python3"]
    (warning,) = [w for w in cfg.warnings if "plugin" in w]
    assert warning.startswith("!!! UNABLE to load uWSGI plugin: /code/escape_json_plugin.so !!!")
    assert f"(in {ini})" in warning and "does not load uWSGI's C plugins" in warning
    with pytest.raises(ConfigError, match="unknown plugin 'escape_json'"):
        parse(["--plugin", "escape_json"], {})


# --- ordering across sources ---------------------------------------------------------------------

def test_cli_after_ini_wins_for_scalars(tmp_path):
    ini = write_ini(tmp_path, "[uwsgi]\nprocesses = 2\n")
    assert parse(["--ini", ini, "--processes", "3"], {}).processes == 3
    assert parse(["--processes", "3", "--ini", ini], {}).processes == 2


def test_lists_accumulate_across_ini_and_cli(tmp_path):
    ini = write_ini(tmp_path, "[uwsgi]\nsocket = :2\nsocket = :3\n")
    cfg = parse(["-s", ":1", "--ini", ini, "-s", ":4"], {})
    assert cfg.socket == [":1", ":2", ":3", ":4"]


def test_bare_ini_argument_is_read_after_the_options(tmp_path):
    ini = write_ini(tmp_path, "[uwsgi]\nprocesses = 2\nsocket = :2\n")
    cfg = parse([ini, "--processes", "5", "-s", ":1"], {})
    assert cfg.processes == 2
    assert cfg.socket == [":1", ":2"]
    assert cfg.ini_files == [ini]


def test_uwsgi_env_becomes_options():
    cfg = parse([], {"UWSGI_SOCKET": ":9", "UWSGI_MASTER": "1", "PYMASTER_PROCESSES": "3"})
    assert cfg.socket == [":9"]
    assert cfg.master is True
    assert cfg.processes == 3


def test_env_comes_before_cli():
    assert parse(["-p", "4"], {"UWSGI_PROCESSES": "2"}).processes == 4


def test_unknown_env_is_a_placeholder_and_internal_names_are_skipped():
    cfg = parse([], {"UWSGI_MY_OPT_X": "abc", "UWSGI_RELOADS": "3", "HOME": "/root"})
    assert cfg.placeholders == {"my-opt-x": "abc"}


def test_env_ini(tmp_path):
    ini = write_ini(tmp_path, "[uwsgi]\nprocesses = 7\n")
    assert parse([], {"UWSGI_INI": ini}).processes == 7


# --- --set / placeholders / strict ---------------------------------------------------------------

def test_set_applies_options_and_placeholders():
    cfg = parse(["--set", "processes=3", "-S", "color=red", "--set", "sock=:5", "-s", "%(sock)"], {})
    assert cfg.processes == 3
    assert cfg.placeholders == {"color": "red", "sock": ":5"}
    assert cfg.socket == [":5"]


def test_set_placeholder_refuses_option_names():
    with pytest.raises(ConfigError, match="you cannot use socket as a placeholder"):
        parse(["--set-placeholder", "socket=1"], {})


@pytest.mark.parametrize("flag", ["--set", "--set-ph"])
def test_set_needs_key_value(flag):
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse([flag, "novalue"], {})


def test_placeholder_on_cli_keeps_percent_chars():
    assert parse(["--set", "x=a%zb"], {}).placeholders == {"x": "a%zb"}


def test_strict_rejects_unknown_ini_keys(tmp_path):
    ini = write_ini(tmp_path, "[uwsgi]\nfoo-bar = 1\n")
    assert parse([ini], {}).placeholders == {"foo-bar": "1"}
    with pytest.raises(ConfigError, match=r"\[strict-mode\] unknown config directive: foo-bar"):
        parse(["--strict", ini], {})


def test_strict_allows_explicit_placeholders():
    assert parse(["--strict", "--set-ph", "x=1"], {}).placeholders == {"x": "1"}


# --- master ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, reason", [
    (["--subscribe-to", "127.0.0.1:4001:k"], "subscribe-to"),
    (["--subscribe2", "server=127.0.0.1:4001,key=k"], "subscribe2"),
    (["--stats", ":9191"], "stats"),
    (["--master-fifo", "/tmp/f"], "master-fifo"),
    (["--touch-reload", "/tmp/t"], "touch-reload"),
    (["--touch-workers-reload", "/tmp/t"], "touch-workers-reload"),
    (["--touch-chain-reload", "/tmp/t"], "touch-chain-reload"),
    (["--fastrouter", ":4000"], "fastrouter"),
    (["--http", ":8080"], "http"),
    (["--cheaper", "1"], "cheaper"),
    (["--evil-reload-on-rss", "100"], "evil-reload-on-rss"),
])
def test_force_master(argv, reason):
    cfg = parse(argv, {})
    assert cfg.master is True
    assert cfg.master_reasons == [reason]


def test_no_master_reasons_by_default():
    cfg = parse(["-p", "4", "--harakiri", "30"], {})
    assert cfg.master is False and cfg.master_reasons == []


def test_force_master_even_when_master_is_false(tmp_path):
    ini = write_ini(tmp_path, "[uwsgi]\nmaster = false\nstats = :1\nfastrouter = :2\n")
    cfg = parse([ini], {})
    assert cfg.master is True
    assert cfg.master_reasons == ["stats", "fastrouter"]


# --- the seed's command lines ------------------------------------------------------------------------

def test_seed_psgi_command_line():
    cfg = parse("--plugins psgi -s :4002 --psgi ../app.psgi -M "
                "--subscribe-to 127.0.0.1:4001:psgi_cluster:5".split(), {})
    assert cfg.plugins == ["psgi"]
    assert cfg.socket == [":4002"]
    assert cfg.psgi == "../app.psgi"
    assert cfg.master is True
    assert cfg.subscribe_to == ["127.0.0.1:4001:psgi_cluster:5"]


def test_seed_wsgi_command_line():
    cfg = parse("--plugins python -s :4005 --file ../app.wsgi -M "
                "--subscribe-to 127.0.0.1:4001:wsgi_cluster".split(), {})
    assert (cfg.plugins, cfg.wsgi_file, cfg.subscribe_to) == \
        (["python"], "../app.wsgi", ["127.0.0.1:4001:wsgi_cluster"])


def test_seed_fastrouter_command_line():
    cfg = parse("--plugins fastrouter --fastrouter :4000 "
                "--fastrouter-subscription-server :4001".split(), {})
    assert cfg.fastrouter == [":4000"]
    assert cfg.fastrouter_subscription_server == [":4001"]
    assert cfg.master is True and cfg.master_reasons == ["fastrouter"]
    assert cfg.socket == []


@pytest.mark.parametrize("name", ["wsgi", "psgi", "fastrouter"])
def test_shipped_ini_files_parse(name):
    cfg = parse([str(ROOT / "etc" / f"{name}.ini")], {})
    assert cfg.master is True and cfg.warnings == []
    for path in (cfg.wsgi_file, cfg.psgi):
        assert path is None or Path(path).is_file()


# --- show-config ------------------------------------------------------------------------------------

def test_show_config_flag_and_dump():
    cfg = parse(["-s", ":1", "-s", ":2", "-M", "--set-ph", "k=v"], {})
    assert not cfg.show_config
    text = cfg.dump_ini()
    assert text.splitlines()[0] == ";pymaster instance configuration"
    assert text.splitlines()[-1] == ";end of configuration"
    assert "socket = :1\nsocket = :2\nmaster = true" in text
    shown = parse(["--show-config"], {})
    assert shown.show_config and shown.get("show-config") is True
    assert "show-config = true" in shown.dump_ini()


def _same_settings(a: Config, b: Config) -> None:
    for option in OPTIONS:
        if option.name not in ("ini", "show-config", "set", "set-placeholder"):
            assert a.get(option.name) == b.get(option.name), option.name
    assert a.placeholders == b.placeholders
    assert a.master_reasons == b.master_reasons


def test_show_config_round_trip(tmp_path):
    cfg = parse(["-s", ":1", "--processes", "3", "-M", "--chmod-socket", "--stats", ":9",
                 "--set-ph", "color=red", "--cheaper-algo", "manual", "--plugins", "python,http"],
                {})
    _same_settings(cfg, parse([write_ini(tmp_path, cfg.dump_ini())], {}))


_SAFE_TEXT = st.text(st.sampled_from("abcxyz019:./-_"), min_size=1, max_size=12)
_SETTINGS = st.fixed_dictionaries({}, optional={
    "processes": st.integers(0, 64).map(str),
    "harakiri": st.integers(0, 999).map(str),
    "master": st.sampled_from(["true", "false"]),
    "vacuum": st.sampled_from(["true", "off"]),
    "socket": st.lists(_SAFE_TEXT, max_size=3),
    "env": st.lists(_SAFE_TEXT, max_size=3),
    "procname": _SAFE_TEXT,
    "touch-reload": st.lists(_SAFE_TEXT, max_size=2),
})


@settings(max_examples=60, deadline=None)
@given(_SETTINGS)
def test_show_config_round_trip_property(tmp_path_factory, settings_):
    argv = []
    for name, value in settings_.items():
        for item in value if isinstance(value, list) else [value]:
            argv += ["--set", f"{name}={item}"]
    cfg = parse(argv, {})
    path = write_ini(tmp_path_factory.mktemp("rt"), cfg.dump_ini())
    _same_settings(cfg, parse([path], {}))


# --- help and docs --------------------------------------------------------------------------------

def test_table_is_consistent():
    flags = [flag for option in OPTIONS for flag in option.flags]
    assert len(flags) == len(set(flags))
    for option in OPTIONS:
        assert option.help and option.section
        assert option.kind in ("str", "int", "bool", "list", "size")


def test_help_lists_every_option():
    from pymaster.config.options import format_help
    text = format_help()
    for option in OPTIONS:
        assert f"--{option.name}" in text


def test_docs_options_md_is_up_to_date():
    out = subprocess.run([sys.executable, "-m", "pymaster.config", "--markdown"],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert (ROOT / "docs" / "options.md").read_text() == out, \
        "docs/options.md is stale: run `python -m pymaster.config --markdown > docs/options.md`"


def test_typed_fields_are_generated_from_the_table():
    out = subprocess.run([sys.executable, "-m", "pymaster.config", "--fields"],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert (ROOT / "pymaster" / "config" / "fields.py").read_text() == out, \
        "pymaster/config/fields.py is stale: run `python -m pymaster.config --fields > /tmp/f.py && mv /tmp/f.py pymaster/config/fields.py`"


def test_pymaster_env_takes_known_options_only():
    cfg = parse(["-s", ":1"], {"PYMASTER_PROCESSES": "3", "PYMASTER_LISTEN_FDS": "3:uwsgi"})
    assert cfg.processes == 3
    assert "listen-fds" not in cfg.placeholders
