"""uWSGI's static file serving (`--static-map` and friends) as a WSGI layer around the app.

Per request, in uWSGI 2.0's order (core/protocol.c:806-926, core/static.c): the
manage-script-name rewrite (done here first when the app is a `Mounts`), `static-skip-ext` on
PATH_INFO, each `check-static` dir, each `static-map`, each `static-map2`, then
`check-static-docroot`. The first candidate that resolves to a servable file answers; anything
else (no match, missing file, directory without index, method other than GET/HEAD, a path
outside its docroot) goes to the app, as in uWSGI: the static code never answers 403/404.

Departure from uWSGI: the "under the docroot" and `static-safe` checks are boundary-aware
(`/srv/www` does not admit `/srv/www-evil`); uWSGI compares plain prefixes.
Files are answered through `wsgi.file_wrapper` (FileWrapper), which the worker sends with
sendfile(), or hands to its offload threads with --offload-threads (docs/static.md).
"""

from __future__ import annotations

import calendar
import os
import re
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pymaster.apps.mount import APP
from pymaster.config import Config
from pymaster.log import log

DEFAULT_MIMEFILE = "/etc/mime.types"
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_IMS = re.compile(
    r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), (\d\d) (" + "|".join(_MONTHS) + r") (\d{4}) "
    r"(\d\d):(\d\d):(\d\d) GMT$"
)
_EXT = re.compile(r"\.([A-Za-z0-9]+)$")
_MIME_CACHE: dict[tuple[str, ...], tuple[dict[str, str], list[tuple[str, int]]]] = {}


class StaticConfigError(ValueError):
    """A static option's value is malformed; the message names it."""


def any_set(cfg: Config) -> bool:
    return bool(cfg.static_map or cfg.static_map2 or cfg.check_static or cfg.check_static_docroot)


def http_date(when: float) -> str:
    """RFC 1123 date, locale-independent (uWSGI's uwsgi_http_date)."""
    t = time.gmtime(when)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


def parse_http_date(value: str) -> int | None:
    """RFC 1123 form only, as uWSGI (static.c:89-180); None when it does not parse."""
    m = _IMS.match(value.strip())
    if not m:
        return None
    try:
        return calendar.timegm(
            (
                int(m[4]),
                _MONTHS.index(m[3]) + 1,
                int(m[2]),
                int(m[5]),
                int(m[6]),
                int(m[7]),
            )
        )
    except (ValueError, OverflowError):
        return None


def load_mime(files: Iterable[str]) -> tuple[dict[str, str], list[tuple[str, int]]]:
    """Extension -> type from mime.types files (the first mention of an extension wins);
    also (file, entries) for the start-up line. Missing files count 0 entries."""
    key = tuple(files) or (DEFAULT_MIMEFILE,)
    if key in _MIME_CACHE:
        return _MIME_CACHE[key]
    table: dict[str, str] = {}
    counts: list[tuple[str, int]] = []
    for path in key:
        n = 0
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    fields = line.split("#", 1)[0].split()
                    for ext in fields[1:]:
                        table.setdefault(ext, fields[0])
                        n += 1
        except OSError:
            pass
        counts.append((path, n))
    _MIME_CACHE[key] = (table, counts)
    return table, counts


def _pair(option: str, value: str, sep: str) -> tuple[str, str]:
    left, found, right = value.partition(sep)
    if not found or not left or not right:
        what = (
            "MOUNT=PATH"
            if sep == "="
            else ("MIME=SECONDS" if "type" in option else "REGEX SECONDS")
        )
        raise StaticConfigError(f"invalid --{option} '{value}': expected {what}")
    return left, right.strip()


def _seconds(option: str, value: str, raw: str) -> int:
    if not value.isdigit():
        raise StaticConfigError(f"invalid --{option} '{raw}': the seconds must be a number")
    return int(value)


@dataclass(frozen=True)
class Expiry:
    regex: re.Pattern[str]
    seconds: int
    from_mtime: bool
    on: str  # "file", "uri" or "path"


def announce(cfg: Config) -> None:
    """At start (once, in the master): check the values and log uWSGI's lines."""
    Settings(cfg)
    for spec in cfg.check_static:
        log(f"[uwsgi-static] added check for {spec}")
    for spec in (*cfg.static_map, *cfg.static_map2):
        mount, path = _pair("static-map", spec, "=")
        log(f"[uwsgi-static] added mapping for {mount} => {path}")
    if any_set(cfg):
        _, counts = load_mime(cfg.mimefile)
        for path, n in counts:
            log(f"building mime-types dictionary from file {path}...{n} entry found")


class Settings:
    """The static options, parsed once per process."""

    def __init__(self, cfg: Config):
        self.maps = [_pair("static-map", s, "=") for s in cfg.static_map]
        self.maps2 = [_pair("static-map2", s, "=") for s in cfg.static_map2]
        self.checks = list(cfg.check_static)
        self.docroot_check = bool(cfg.check_static_docroot)
        self.index = list(cfg.static_index)
        self.skip_ext = tuple(cfg.static_skip_ext)
        self.safe = [s.rstrip("/") or "/" for s in cfg.static_safe]
        self.honour_range = bool(cfg.honour_range)
        self.serve_mode = {
            "x-sendfile": "X-Sendfile",
            "xsendfile": "X-Sendfile",
            "x-accel-redirect": "X-Accel-Redirect",
            "xaccelredirect": "X-Accel-Redirect",
            "nginx": "X-Accel-Redirect",
        }.get((cfg.file_serve_mode or "").lower())
        self.type_expires: dict[str, tuple[int, bool]] = {}
        for values, mtime, name in (
            (cfg.static_expires_type, False, "static-expires-type"),
            (cfg.static_expires_type_mtime, True, "static-expires-type-mtime"),
        ):
            for spec in values:
                mime, secs = _pair(name, spec, "=")
                self.type_expires.setdefault(mime, (_seconds(name, secs, spec), mtime))
        self.expires: list[Expiry] = []
        for values, mtime, on, name in (
            (cfg.static_expires, False, "file", "static-expires"),
            (cfg.static_expires_mtime, True, "file", "static-expires-mtime"),
            (cfg.static_expires_uri, False, "uri", "static-expires-uri"),
            (cfg.static_expires_uri_mtime, True, "uri", "static-expires-uri-mtime"),
            (cfg.static_expires_path_info, False, "path", "static-expires-path-info"),
            (cfg.static_expires_path_info_mtime, True, "path", "static-expires-path-info-mtime"),
        ):
            for spec in values:
                regex, secs = _pair(name, spec.strip(), " ")
                try:
                    pattern = re.compile(regex)
                except re.error as exc:
                    raise StaticConfigError(f"invalid --{name} regex '{regex}': {exc}") from None
                self.expires.append(Expiry(pattern, _seconds(name, secs, spec), mtime, on))
        self.gzip_all = bool(cfg.static_gzip_all)
        try:
            self.gzip_regex = [re.compile(r) for r in cfg.static_gzip]
        except re.error as exc:
            raise StaticConfigError(f"invalid --static-gzip regex: {exc}") from None
        self.gzip_prefix = tuple(cfg.static_gzip_dir)
        self.gzip_suffix = tuple(cfg.static_gzip_ext)
        self.mimefiles = tuple(cfg.mimefile)

    def gzip_wanted(self, filename: str) -> bool:
        return (
            self.gzip_all
            or (bool(self.gzip_prefix) and filename.startswith(self.gzip_prefix))
            or (bool(self.gzip_suffix) and filename.endswith(self.gzip_suffix))
            or any(r.search(filename) for r in self.gzip_regex)
        )


def _under(real: str, root: str) -> bool:
    """`real` is `root` or inside it, on a `/` boundary (uWSGI: plain prefix)."""
    return real == root or real.startswith(root if root.endswith("/") else root + "/")


class Static:
    """The WSGI callable: serve a static file when a mapping resolves one, else the app."""

    def __init__(self, app: Callable[..., Any], cfg: Config):
        self.app = app
        self.s = Settings(cfg)
        self.mime, _ = load_mime(self.s.mimefiles)
        self.rewrite = (
            getattr(app, "rewrite", None) if getattr(app, "manage_script_name", False) else None
        )
        self.dispatch = getattr(app, "dispatch", app) if self.rewrite else app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]):
        if self.rewrite is not None:
            self.rewrite(environ)
        served = self.lookup(environ, start_response)
        if served is not None:
            environ[APP] = (-1, -1)  # no app answered: uWSGI logs `app: -1|req: -1/N`
            return served
        return self.dispatch(environ, start_response)

    def lookup(self, environ: dict[str, Any], start_response: Callable[..., Any]):
        s = self.s
        path = environ.get("PATH_INFO", "") or ""
        if s.skip_ext and path.endswith(s.skip_ext):
            return None
        for root in s.checks:
            out = self.try_serve(environ, start_response, root, root + path)
            if out is not None:
                return out
        for mount, root in s.maps:
            if path.startswith(mount):
                out = self.try_serve(environ, start_response, root, root + "/" + path[len(mount) :])
                if out is not None:
                    return out
        for mount, root in s.maps2:
            if path.startswith(mount):
                out = self.try_serve(environ, start_response, root, root + "/" + path)
                if out is not None:
                    return out
        if s.docroot_check:
            root = environ.get("DOCUMENT_ROOT") or ""
            if root:
                return self.try_serve(environ, start_response, root, root + path)
        return None

    def try_serve(self, environ, start_response, root: str, filename: str):
        try:
            docroot = os.path.realpath(root, strict=True)
            st = os.stat(docroot)
        except OSError:
            return None  # a missing docroot disables the mapping silently, as in uWSGI
        if stat.S_ISREG(st.st_mode):
            real = docroot  # the mapping names a file: every path under the mount is it
        else:
            try:
                real = os.path.realpath(filename, strict=True)
            except OSError:
                return None
            if not _under(real, docroot) and not any(_under(real, p) for p in self.s.safe):
                log(
                    f"[uwsgi-fileserve] security error: {real} is not under {docroot} "
                    "or a safe path"
                )
                return None
            try:
                st = os.stat(real)
            except OSError:
                return None
            if stat.S_ISDIR(st.st_mode):
                for name in self.s.index:
                    candidate = os.path.join(real, name)
                    try:
                        ist = os.stat(candidate)
                    except OSError:
                        continue
                    if stat.S_ISREG(ist.st_mode):
                        real, st = candidate, ist
                        break
                else:
                    return None
            if not stat.S_ISREG(st.st_mode):
                return None
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return None
        if self.s.skip_ext and real.endswith(self.s.skip_ext):
            return None
        return self.serve(environ, start_response, real, st)

    def mime_type(self, filename: str) -> str | None:
        m = _EXT.search(filename)
        return self.mime.get(m[1]) if m else None

    def serve(self, environ, start_response, real: str, st: os.stat_result):
        s = self.s
        headers: list[tuple[str, str]] = []
        ctype = self.mime_type(real)
        now = time.time()
        for exp in s.expires:
            subject = {
                "file": real,
                "uri": environ.get("REQUEST_URI", ""),
                "path": environ.get("PATH_INFO", ""),
            }[exp.on]
            if exp.regex.search(subject):
                base = st.st_mtime if exp.from_mtime else now
                headers.append(("Expires", http_date(base + exp.seconds)))
                break
        sent = real
        if s.gzip_wanted(real):
            accept = environ.get("HTTP_ACCEPT_ENCODING", "")
            for token, ext in (("br", ".br"), ("gzip", ".gz")):
                if token in accept:
                    try:
                        vst = os.stat(real + ext)
                    except OSError:
                        continue
                    if stat.S_ISREG(vst.st_mode):
                        sent, st = real + ext, vst
                        headers.append(("Content-Encoding", token))
                        break
        mtime = int(st.st_mtime)
        ims = environ.get("HTTP_IF_MODIFIED_SINCE")
        if ims:
            since = parse_http_date(ims)
            if since is not None and mtime <= since:
                start_response("304 Not Modified", [])
                return []
        if ctype:
            headers.append(("Content-Type", ctype))
            if ctype in s.type_expires and not any(h == "Expires" for h, _ in headers):
                secs, from_mtime = s.type_expires[ctype]
                headers.append(("Expires", http_date((mtime if from_mtime else now) + secs)))
        if s.serve_mode:
            headers.append((s.serve_mode, sent))
            headers.append(("Last-Modified", http_date(mtime)))
            start_response("200 OK", headers)
            return []
        size = st.st_size
        offset, length, status = 0, size, "200 OK"
        rng = environ.get("HTTP_RANGE") if s.honour_range else None
        if rng:
            span = parse_range(rng, size)
            if span is None:
                start_response(
                    "416 Requested Range Not Satisfiable", [("Content-Range", f"bytes */{size}")]
                )
                return []
            if span != (0, size - 1):
                offset, length = span[0], span[1] - span[0] + 1
                status = "206 Partial Content"
        headers.append(("Content-Length", str(length)))
        if status.startswith("206"):
            headers.append(("Content-Range", f"bytes {offset}-{offset + length - 1}/{size}"))
        headers.append(("Last-Modified", http_date(mtime)))
        try:
            f = open(sent, "rb")  # noqa: SIM115 (closed by the file wrapper)
        except OSError:
            return None
        if offset:
            f.seek(offset)
        start_response(status, headers)
        wrapper = environ.get("wsgi.file_wrapper")
        if wrapper is None:
            from pymaster.apps.wsgi import FileWrapper as wrapper
        return wrapper(f)


def parse_range(value: str, size: int) -> tuple[int, int] | None:
    """The first range of `bytes=...` clamped to the file; None when unsatisfiable or bad."""
    if not value.startswith("bytes="):
        return None
    first = value[6:].split(",", 1)[0].strip()
    start_s, dash, end_s = first.partition("-")
    if not dash:
        return None
    start_s, end_s = start_s.strip(), end_s.strip()
    if not start_s:
        if not end_s.isdigit() or int(end_s) == 0 or size == 0:
            return None
        return max(0, size - int(end_s)), size - 1
    if not start_s.isdigit() or (end_s and not end_s.isdigit()):
        return None
    start = int(start_s)
    end = int(end_s) if end_s else size - 1
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)
