"""The typed Config: every option's type and default come from the table, and an explicit 0
means what uWSGI means by it (the value itself, a default uWSGI maps 0 to, or an error for
an option that cannot be 0)."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from pymaster.config import Config, ConfigError, parse
from pymaster.config import fields as fields_module
from pymaster.config.docs import field_type
from pymaster.config.table import OPTIONS

NUMERIC = [o for o in OPTIONS if o.kind in ("int", "size")]
# Where 0 is a legal value and means itself; what it means, for the reader.
ZERO_IS_ZERO = {
    "listen": "a backlog of 0",
    "http-keepalive": "no keep-alive",
    "limit-post": "no limit",
    "post-buffering": "off",
    "max-idle-connections": "derived from RLIMIT_NOFILE when the worker starts",
    "max-vars": "accepted, no effect",
    "processes": "no workers (gateways only)",
    "harakiri": "off",
    "max-requests": "off",
    "max-requests-delta": "no delta",
    "min-worker-lifetime": "may recycle at once",
    "max-worker-lifetime": "off",
    "max-worker-lifetime-delta": "no delta",
    "worker-reload-mercy": "killed at the next check",
    "reload-on-rss": "off",
    "reload-on-as": "off",
    "evil-reload-on-rss": "off",
    "forkbomb-delay": "no delay",
    "cron-harakiri": "off",
    "cheaper": "off",
    "cheaper-initial": "none at first",
    "log-slow": "off",
    "py-autoreload": "off",
    "max-fd": "unset: the inherited limit",
    "cheaper-overload": "react on the first tick (uWSGI divides by it)",
    "subscription-tolerance": "expire at the next check",
    "weight": "weight 0 (routers treat it as 1)",
    "subscribe-with-modifier1": "modifier1 0",
    "fastrouter-events": "accepted, no effect",
    "fastrouter-connect-timeout": "the connect is bounded by --fastrouter-timeout (uWSGI)",
    "http-headers-timeout": "the head is bounded by --http-timeout",
    "http-connect-timeout": "the connect is bounded by --http-timeout",
    "http-manage-expect": "the router does not answer Expect",
    "http-modifier1": "modifier 0 (WSGI)",
    "http-modifier2": "modifier2 0",
    "http-chunked-limit": "chunked request bodies are refused (413) unless empty",
    "http-buffer-size": "accepted, no effect",
    "http-events": "accepted, no effect",
    "http-gracetime": "accepted, no effect",
    "offload-threads": "no offload threads: the request thread sends files itself",
    "static-cache-paths": "accepted, no effect",
    "log-maxsize": "no rotation (uWSGI: log_maxsize > 0)",
    "log-master-bufsize": "accepted, no effect",
    "thread-stacksize": "the default stack size",
    "write-errors-tolerance": "no tolerance: the first write error ends the response",
    "websockets-ping-freq": "no pings",
    "emperor-curse-tolerance": "accepted, no effect",
    "emperor-broodlord": "refused at start whatever the value",
    "emperor-required-heartbeat": "refused at start whatever the value",
}
# Where uWSGI maps 0 to a default (source file:line of uWSGI 2.0).
ZERO_IS_DEFAULT = {
    "check-interval": 1,  # core/master.c:708
    "reload-mercy": 3,  # core/daemons.c:237 (the wait for daemons to stop)
    "cheaper-step": 1,  # core/master_utils.c:301 (the spawn loop stops after one)
    "cheaper-busyness-max": 50,  # plugins/cheaper_busyness/cheaper_busyness.c:374
    "cheaper-busyness-min": 25,  # plugins/cheaper_busyness/cheaper_busyness.c:375
    "cheaper-busyness-multiplier": 10,  # plugins/cheaper_busyness/cheaper_busyness.c:376
    "cheaper-busyness-penalty": 2,  # plugins/cheaper_busyness/cheaper_busyness.c:377
    "cheaper-busyness-backlog-alert": 33,  # plugins/cheaper_busyness/cheaper_busyness.c:380
    "cheaper-busyness-backlog-multiplier": 3,  # plugins/cheaper_busyness/cheaper_busyness.c:381
    "cheaper-busyness-backlog-step": 1,  # plugins/cheaper_busyness/cheaper_busyness.c:382
    "cheaper-busyness-backlog-nonzero": 60,  # plugins/cheaper_busyness/cheaper_busyness.c:383
    "fastrouter-timeout": 60,  # plugins/corerouter/corerouter.c:719
    "fastrouter-processes": 1,  # plugins/corerouter/corerouter.c:1024
    "http-timeout": 60,  # plugins/corerouter/corerouter.c:680
    "http-processes": 1,  # plugins/corerouter/corerouter.c:965
    "threads": 1,  # core/init.c:105,472 (cores stay 1 unless threads > 1)
}
# Where 0 cannot work (uWSGI divides by it, or nothing could ever be served).
ZERO_IS_REFUSED = {
    "buffer-size",
    "socket-timeout",
    "subscribe-freq",
    "header-timeout",
    "asgi-concurrency",  # no request could ever be served
    "websockets-max-size",  # no message could ever be taken
    "emperor-freq",  # the scan would never sleep
    "emperor-throttle",
    "emperor-max-throttle",
    "http-max-headers",
    "http-max-head",
}


def test_every_numeric_option_has_a_declared_meaning_for_zero():
    names = {o.name for o in NUMERIC}
    declared = set(ZERO_IS_ZERO) | set(ZERO_IS_DEFAULT) | ZERO_IS_REFUSED
    assert names == declared, f"undeclared: {names - declared}, unknown: {declared - names}"


@pytest.mark.parametrize("name", sorted(ZERO_IS_ZERO))
def test_explicit_zero_is_zero(name):
    cfg = parse([f"--{name}", "0", "-s", ":1"], {})
    assert cfg.get(name) == 0
    # and from an INI-style source (UWSGI_* variable) too
    env = {"UWSGI_" + name.upper().replace("-", "_"): "0"}
    assert parse(["-s", ":1"], env).get(name) == 0


@pytest.mark.parametrize("name", sorted(ZERO_IS_DEFAULT))
def test_zero_maps_to_the_uwsgi_default(name):
    assert parse([f"--{name}", "0"], {}).get(name) == ZERO_IS_DEFAULT[name]
    assert parse([f"--{name}", "7"], {}).get(name) == 7


@pytest.mark.parametrize("name", sorted(ZERO_IS_REFUSED))
def test_zero_is_refused_with_the_option_named(name):
    with pytest.raises(ConfigError) as info:
        parse([f"--{name}", "0"], {})
    assert str(info.value) == f"option '--{name}' must be >= 1, got '0'"


def test_refusal_names_the_ini_file(tmp_path):
    ini = tmp_path / "app.ini"
    ini.write_text("[uwsgi]\nsubscribe-freq = 0\n")
    with pytest.raises(ConfigError, match=r"'--subscribe-freq' must be >= 1, got '0' \(in .*app\.ini"):
        parse(["--ini", str(ini)], {})


def test_maximum_is_checked():
    with pytest.raises(ConfigError, match=r"'--cheaper-busyness-max' must be <= 100, got '101'"):
        parse(["--cheaper-busyness-max", "101"], {})
    with pytest.raises(ConfigError, match=r"'--subscribe-with-modifier1' must be <= 255"):
        parse(["--subscribe-with-modifier1", "300"], {})


def test_negative_numbers_are_refused():
    with pytest.raises(ConfigError, match=r"option '--harakiri' must be >= 0, got '-1'"):
        parse(["--harakiri", "-1"], {})


def test_size_ranges_apply_after_units():
    assert parse(["--buffer-size", "8k"], {}).buffer_size == 8192
    with pytest.raises(ConfigError, match=r"'--buffer-size' must be >= 1, got '0k'"):
        parse(["--buffer-size", "0k"], {})


def test_defaults_and_types_come_from_the_table():
    cfg = Config()
    hints = typing.get_type_hints(fields_module.Options)
    fields = {f.name for f in dataclasses.fields(fields_module.Options)}
    assert fields == {o.attr for o in OPTIONS}
    for option in OPTIONS:
        value = getattr(cfg, option.attr)
        expected = list(option.default) if option.kind == "list" else option.default
        assert value == expected, option.name
        assert str(hints[option.attr]).replace("typing.", "") in (field_type(option),
                                                                 field_type(option).replace(" | None", " | NoneType"),
                                                                 "<class '" + field_type(option) + "'>")


def test_list_defaults_are_not_shared():
    a, b = Config(), Config()
    a.socket.append(":1")
    assert b.socket == []


def test_every_parsed_value_has_its_declared_type():
    argv = []
    for option in OPTIONS:
        if option.name in ("help", "version", "ini", "set", "set-placeholder", "reload", "stop"):
            continue
        if option.kind == "bool":
            argv.append(option.flag)
        elif option.kind in ("int", "size"):
            argv += [option.flag, str(max(option.minimum, 2))]
        elif option.choices:
            argv += [option.flag, option.choices[-1]]
        elif option.name == "plugins":
            argv += [option.flag, "python3"]
        else:
            argv += [option.flag, "x"]
    cfg = parse(argv, {})
    for option in OPTIONS:
        value = getattr(cfg, option.attr)
        kind = {"int": int, "size": int, "bool": bool, "list": list, "str": str}[option.kind]
        assert value is None or isinstance(value, kind), option.name
