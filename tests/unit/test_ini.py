"""INI files, magic variables and the $(ENV) / @(file) / %(placeholder) passes."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pymaster import __version__
from pymaster.config.ini import djb33x, magic_sub, split_spec
from pymaster.config.options import ConfigError, parse
from pymaster.config.placeholders import evaluate_math, substitute


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


# --- format ---------------------------------------------------------------------------------------

def test_sections_comments_bare_keys_and_spaces(tmp_path):
    ini = write(tmp_path / "a.ini", """
; a comment
# another
[other]
processes = 9
[uwsgi]
   master
  processes   =   4\t
logformat = value with spaces ; not a comment
socket = ":1"
vacuum = false
""")
    cfg = parse(["--ini", ini], {})
    assert cfg.master is True
    assert cfg.processes == 4
    assert cfg.logformat == "value with spaces ; not a comment"
    assert cfg.socket == ['":1"']
    assert cfg.vacuum is False


def test_split_at_first_equals(tmp_path):
    ini = write(tmp_path / "a.ini", "[uwsgi]\nenv = A=b=c\n")
    assert parse([ini], {}).env == ["A=b=c"]


def test_bare_int_key_is_one(tmp_path):
    ini = write(tmp_path / "a.ini", "[uwsgi]\nprocesses\n")
    assert parse([ini], {}).processes == 1


@pytest.mark.parametrize("word, expected", [
    ("true", True), ("1", True), ("yes", True), ("anything", True), ("", True),
    ("false", False), ("OFF", False), ("No", False), ("0", False),
])
def test_bool_words(tmp_path, word, expected):
    ini = write(tmp_path / "a.ini", f"[uwsgi]\nmaster = {word}\n")
    assert parse([ini], {}).master is expected


def test_pymaster_section_when_no_uwsgi_section(tmp_path):
    ini = write(tmp_path / "a.ini", "[pymaster]\nprocesses = 3\n")
    assert parse([ini], {}).processes == 3
    both = write(tmp_path / "b.ini", "[pymaster]\nprocesses = 3\n[uwsgi]\nprocesses = 5\n")
    assert parse([both], {}).processes == 5


def test_named_section(tmp_path):
    ini = write(tmp_path / "a.ini", "[uwsgi]\nprocesses = 2\n[other]\nprocesses = 6\n")
    assert parse(["--ini", f"{ini}:other"], {}).processes == 6
    assert parse([f"{ini}:other"], {}).processes == 6


def test_ini_colon_section_reads_last_file(tmp_path):
    ini = write(tmp_path / "a.ini", "[uwsgi]\nsocket = :1\nini = :other\n"
                                    "[other]\nsocket = :2\n")
    cfg = parse([ini], {})
    assert cfg.socket == [":1", ":2"]
    assert cfg.ini_files == [ini, ini]


def test_section_only_without_a_file_is_an_error():
    with pytest.raises(ConfigError, match="names only a section"):
        parse(["--ini", ":other"], {})


def test_self_include_is_stopped(tmp_path):
    ini = write(tmp_path / "a.ini", "[uwsgi]\nini = :uwsgi\n")
    with pytest.raises(ConfigError, match="nested"):
        parse([ini], {})


def test_missing_section_is_a_warning(tmp_path):
    ini = write(tmp_path / "a.ini", "[uwsgi]\nprocesses = 2\n")
    cfg = parse(["--ini", f"{ini}:nope"], {})
    assert cfg.processes == 1
    assert cfg.warnings == [f'*** WARNING: Can\'t find section "nope" '
                            f"in INI configuration file {ini} ***"]


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="INI file 'etc/nope.ini' not found"):
        parse(["--ini", "etc/nope.ini"], {})


@pytest.mark.parametrize("line, expected", [
    ("= value", "expected 'key = value' or '[section]', got '= value'"),
    ("[broken", "expected '[section]', got '[broken'"),
])
def test_bad_line_names_file_and_line(tmp_path, monkeypatch, line, expected):
    write(tmp_path / "etc" / "x.ini", f"[uwsgi]\nmaster\n{line}\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        parse(["etc/x.ini"], {})
    assert str(info.value) == f"etc/x.ini line 3: {expected}"


def test_lines_of_other_sections_are_not_checked(tmp_path):
    ini = write(tmp_path / "x.ini", "[other]\nfree text here\n[uwsgi]\nmaster\n")
    assert parse([ini], {}).master is True


def test_a_word_for_a_number_is_read_as_uwsgi_reads_it_and_named(tmp_path):
    ini = write(tmp_path / "x.ini", "[uwsgi]\nprocesses = many\ncheaper = true\n"
                                     "harakiri = 60   ; a comment\n")
    cfg = parse([ini], {})
    assert (cfg.processes, cfg.cheaper, cfg.harakiri) == (0, 0, 60)
    assert f"option 'processes' = 'many' (in {ini}) is not a number: read as 0, as uWSGI does" \
        in cfg.warnings
    assert f"option 'cheaper' = 'true' (in {ini}) is not a number: read as 0, as uWSGI does" \
        in cfg.warnings
    assert f"option 'harakiri' = '60   ; a comment' (in {ini}) is not a number: read as 60, " \
        "as uWSGI does" in cfg.warnings


def test_a_word_for_a_size_is_read_as_uwsgi_reads_it(tmp_path):
    # RunestoneServer: `post-buffering = true`
    ini = write(tmp_path / "x.ini", "[uwsgi]\npost-buffering = true\nlimit-post = 64k\n")
    cfg = parse([ini], {})
    assert (cfg.post_buffering, cfg.limit_post) == (0, 65536)
    assert any("option 'post-buffering' = 'true'" in w and "read as 0" in w for w in cfg.warnings)


def test_a_word_for_a_number_on_the_command_line_is_an_error():
    with pytest.raises(ConfigError, match="option '--processes' expects an integer, got 'many'"):
        parse(["--processes", "many"], {})


def test_an_atoi_value_is_still_range_checked(tmp_path):
    ini = write(tmp_path / "x.ini", "[uwsgi]\nsubscribe-freq = true\n")
    with pytest.raises(ConfigError, match="'--subscribe-freq' must be >= 1, got 'true'"):
        parse([ini], {})


def test_a_line_whose_key_has_spaces_is_an_unknown_key_as_in_uwsgi(tmp_path):
    # ArchiveBox: `static-map /static=./x` (no '=' after the key): uWSGI stores an unknown key
    ini = write(tmp_path / "x.ini", "[uwsgi]\nstatic-map /static=./x\nmaster\n")
    cfg = parse([ini], {})
    assert cfg.master is True and cfg.static_map == []
    assert cfg.placeholders["static-map /static"] == "./x"
    assert any(w.startswith("unknown option 'static-map /static' (in ") for w in cfg.warnings)


def test_unknown_keys_are_logged_by_name_unless_used_as_placeholders(tmp_path):
    ini = write(tmp_path / "x.ini", "[uwsgi]\nbase = /srv\nchdir = %(base)/app\n"
                                     "wsgi-quantum-flux = true\n")
    cfg = parse([ini], {})
    assert cfg.chdir == "/srv/app"
    unknown = [w for w in cfg.warnings if w.startswith("unknown option")]
    assert unknown == [f"unknown option 'wsgi-quantum-flux' (in {ini}): not a pymaster option, ignored "
                       "(kept as a placeholder; docs/options.md lists the options)"]


def test_ini_files_are_absolute(tmp_path, monkeypatch):
    write(tmp_path / "conf" / "a.ini", "[uwsgi]\n")
    monkeypatch.chdir(tmp_path)
    assert parse(["conf/a.ini"], {}).ini_files == [str(tmp_path / "conf" / "a.ini")]


@pytest.mark.parametrize("spec, expected", [
    ("a.ini", ("a.ini", None)),
    ("a.ini:other", ("a.ini", "other")),
    (":other", ("", "other")),
    ("/x:y/a.ini", ("/x:y/a.ini", None)),
    ("a.ini:", ("a.ini", "")),
])
def test_split_spec(spec, expected):
    assert split_spec(spec) == expected


# --- magic variables -----------------------------------------------------------------------------

def test_file_magic_variables(tmp_path, monkeypatch):
    ini = write(tmp_path / "conf" / "sub" / "my.app.ini", """[uwsgi]
set-ph = p=%p
set-ph = d=%d
set-ph = s=%s
set-ph = n=%n
set-ph = e=%e
set-ph = c=%c
set-ph = o=%o
set-ph = x=%x
set-ph = zero=%0
set-ph = j=%j
set-ph = big-p=%P
""")
    monkeypatch.chdir(tmp_path)
    cfg = parse(["--ini", "conf/sub/my.app.ini:uwsgi"], {})
    directory = str(tmp_path / "conf" / "sub")
    assert cfg.placeholders == {
        "p": ini, "d": directory + "/", "s": "my.app.ini", "n": "my.app", "e": "ini",
        "c": "sub", "o": "conf/sub/my.app.ini", "x": "uwsgi",
        "zero": directory.split("/")[1], "j": f"{djb33x(ini):08X}", "big-p": ini,
    }


def test_instance_magic_variables(tmp_path, monkeypatch):
    ini = write(tmp_path / "a.ini", "[uwsgi]\nset-ph = h=%h\nset-ph = v=%v\nset-ph = V=%V\n"
                                    "set-ph = k=%k\nset-ph = u=%u\n")
    monkeypatch.chdir(tmp_path)
    cfg = parse([ini], {})
    assert cfg.placeholders == {"h": socket.gethostname(), "v": str(tmp_path), "V": __version__,
                                "k": str(os.cpu_count()), "u": str(os.getuid())}


def test_wsgi_file_relative_to_ini(tmp_path):
    ini = write(tmp_path / "etc" / "w.ini", "[uwsgi]\nwsgi-file = %d../app.wsgi\n")
    assert parse([ini], {}).wsgi_file == str(tmp_path / "etc") + "/../app.wsgi"


def test_magic_sub_rules():
    table = {"d": "/x/"}
    assert magic_sub("%dy", table) == "/x/y"
    assert magic_sub("a%zb%%c", table) == "ab%c"
    assert magic_sub("%(name)", table) == "%(name)"
    assert magic_sub("50%\nnext", table) == "50next"


def test_percent_at_line_end_swallows_the_newline(tmp_path):
    ini = write(tmp_path / "a.ini", "[uwsgi]\nset-ph = t2=50%\nt3 = x\n")
    assert parse([ini], {}).placeholders == {"t2": "50t3 = x"}


@given(st.text(alphabet=st.characters(blacklist_characters="%")))
def test_magic_sub_leaves_text_without_percent(text):
    assert magic_sub(text, {"d": "x"}) == text


def test_djb33x_matches_uwsgi():
    assert djb33x("") == 5381
    assert djb33x("a") == (5381 * 33) ^ ord("a")


# --- $(ENV) and @(file) --------------------------------------------------------------------------

def test_env_pass(tmp_path):
    ini = write(tmp_path / "a.ini", "[uwsgi]\nsocket = $(PORT)\nchdir = $(NOPE_NOT_SET)\n")
    cfg = parse([ini, "--procname", "app-$(NAME)"], {"PORT": ":7", "NAME": "x"})
    assert cfg.socket == [":7"]
    assert cfg.chdir == "$(NOPE_NOT_SET)"
    assert cfg.procname == "app-x"


def test_file_pass(tmp_path):
    write(tmp_path / "val.txt", "42\n")
    ini = write(tmp_path / "a.ini", "[uwsgi]\nprocesses = @(%dval.txt)\n")
    assert parse([ini], {}).processes == 42


def test_unreadable_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read '@\(/nonexistent/v.txt\)'"):
        parse(["--procname", "@(/nonexistent/v.txt)"], {})


# --- %(placeholder) -------------------------------------------------------------------------------

def test_first_definition_wins_wherever_it_is(tmp_path):
    ini = write(tmp_path / "a.ini", "[uwsgi]\nref = %(placeholder)\nplaceholder = first\n"
                                    "placeholder = second\n")
    cfg = parse([ini], {})
    assert cfg.placeholders["ref"] == "first"
    assert cfg.placeholders["placeholder"] == "first"


def test_placeholder_refers_to_options(tmp_path):
    ini = write(tmp_path / "a.ini", "[uwsgi]\nsocket = :4005\nstats = 127.0.0.1%(socket)1\n")
    assert parse([ini], {}).stats == "127.0.0.1:40051"


def test_placeholder_by_alias():
    assert parse(["--workers", "3", "--procname", "w%(processes)-%(-p)-%(p)"], {}).procname == \
        "w3-%(-p)-%(p)"


def test_unknown_placeholder_is_kept():
    assert parse(["--procname", "%(nobody)"], {}).procname == "%(nobody)"


def test_placeholder_math(tmp_path):
    ini = write(tmp_path / "a.ini", "[uwsgi]\nprocesses = %(num + 3)\nnum = 4\n"
                                    "listen = %(num * 2 + 1)\nharakiri = %(num ++)\n"
                                    "procname = w%(num)x\n")
    cfg = parse([ini], {})
    assert (cfg.processes, cfg.listen, cfg.harakiri, cfg.procname) == (7, 9, 5, "w4x")


def test_math_concatenates_without_operator():
    values = {"a": "1", "b": "2"}
    assert evaluate_math("a b 3", values.get) == "123"
    assert evaluate_math("a - 5", values.get) == "-4"
    assert evaluate_math("b --", values.get) == "1"
    assert evaluate_math("7 / 2", values.get) == "3"
    assert evaluate_math("missing + 1", values.get) == "1"


def test_math_division_by_zero():
    with pytest.raises(ConfigError, match="division by zero"):
        evaluate_math("1 / 0", {}.get)


@given(st.integers(0, 10**6), st.integers(0, 10**6), st.sampled_from("+-*"))
def test_math_agrees_with_python(a, b, op):
    assert evaluate_math(f"x {op} {b}", {"x": str(a)}.get) == str(eval(f"{a} {op} {b}"))


def test_substitute_tracks_nested_parentheses():
    assert substitute("$(A(B))-$(C)", "$", {"A(B)": "1", "C": "2"}.get) == "1-2"
    assert substitute("$(unclosed", "$", {}.get) == "$(unclosed"
