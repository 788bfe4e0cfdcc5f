"""uWSGI's internal routing, the part real configs use: `route = REGEX donotlog:` (no request
log line for a PATH_INFO matching REGEX), and `route-uri` / `route-host` (REQUEST_URI /
HTTP_HOST as the subject). Any other action is refused at start: routing belongs in nginx.

`parse(cfg)` checks the rules (ValueError naming the bad one); `Silencer` answers, for a
request's environ, whether its log line is left out. The Perl worker applies the same rules
(PYMASTER_OPT_ROUTE*, Pymaster.pm `_silenced`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pymaster.config import Config

# option name -> (environ key, uWSGI's subject name in the routing table dump)
SUBJECTS = {
    "route": ("PATH_INFO", "path_info"),
    "route-uri": ("REQUEST_URI", "request_uri"),
    "route-host": ("HTTP_HOST", "http_host"),
}
ACTIONS = ("donotlog",)
INSTEAD = (
    "pymaster's internal routing has only `donotlog:`; route, rewrite, redirect and add "
    "headers per location in nginx (`location`, `rewrite`, `return`, `add_header`, "
    "`access_log off`)"
)


@dataclass(frozen=True)
class Rule:
    option: str
    key: str  # the environ key matched
    pattern: re.Pattern[str]
    text: str  # the REGEX as written
    action: str


def parse(cfg: Config) -> list[Rule]:
    """The rules in table order; ValueError naming a bad regex or an action pymaster lacks."""
    rules = []
    for option, (key, _subject) in SUBJECTS.items():
        for value in cfg.get(option) or ():
            regex, space, action = value.strip().partition(" ")
            action = action.strip()
            if not space or not action:
                raise ValueError(f"--{option} '{value}': expected `REGEX ACTION`")
            name = action.partition(":")[0].strip()
            if name not in ACTIONS:
                raise ValueError(
                    f"--{option} '{value}': the routing action `{name}` is not part of "
                    f"pymaster; {INSTEAD}"
                )
            try:
                pattern = re.compile(regex)
            except re.error as exc:
                raise ValueError(f"--{option} '{value}': bad regex: {exc}") from None
            rules.append(Rule(option, key, pattern, regex, action))
    return rules


def table_lines(rules: list[Rule]) -> list[str]:
    """uWSGI's start-up dump of the routing table."""
    if not rules:
        return []
    lines = ["*** dumping internal routing table ***"]
    for number, rule in enumerate(rules):
        subject = SUBJECTS[rule.option][1]
        lines.append(
            f"[rule: {number}] subject: {subject} regexp: {rule.text} action: {rule.action}"
        )
    lines.append("*** end of the internal routing table ***")
    return lines


class Silencer:
    """Whether a request's log line is left out (a `donotlog:` rule matches)."""

    def __init__(self, cfg: Config):
        self.rules = [(r.key, r.pattern) for r in parse(cfg) if r.action.startswith("donotlog")]

    def __bool__(self) -> bool:
        return bool(self.rules)

    def silenced(self, env) -> bool:
        for key, pattern in self.rules:
            if pattern.search(env.get(key, "")):
                return True
        return False
