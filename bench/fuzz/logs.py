"""What a server's log says: tracebacks (each with where it happened), ERROR lines, and the access log's 5xx."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from fakes.processes import ROOT

_LOG_LINE = re.compile(r"^\S+ \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+): (.*)$")


@dataclass
class LogReport:
    tracebacks: list[str] = field(default_factory=list)  # an excerpt of each
    error_lines: list[str] = field(default_factory=list)  # ERROR/CRITICAL lines other than the access log's
    access_5xx: int = 0  # the access log's ERROR lines: one per 5xx response

    def add(self, other: LogReport) -> None:
        self.tracebacks += other.tracebacks
        self.error_lines += other.error_lines
        self.access_5xx += other.access_5xx


def analyse_log(text: str, source: str) -> LogReport:
    report = LogReport()
    lines = text.splitlines()
    last_log_line = ""
    for number, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last)"):
            block = [line]
            for following in lines[number + 1 :]:
                block.append(following)
                if following and not following.startswith((" ", "Traceback", "During handling", "The above")):
                    break
            files = [entry.strip() for entry in block if entry.strip().startswith("File ")]
            ours = [entry for entry in files if ROOT in entry and "site-packages" not in entry]
            where = " ... ".join(dict.fromkeys(([ours[-1]] if ours else []) + files[-1:])) or "?"
            report.tracebacks.append(f"[{source}] after: {last_log_line[:300]}\n    at: {where}\n    {block[-1][:300]}")
            continue
        match = _LOG_LINE.match(line)
        if not match:
            continue
        last_log_line = line
        level, logger_name, message = match.groups()
        if level not in ("ERROR", "CRITICAL"):
            continue
        if logger_name == "tornado.access" and re.match(r"5\d\d ", message):
            report.access_5xx += 1
        else:
            report.error_lines.append(f"[{source}] {line[:400]}")
    return report
