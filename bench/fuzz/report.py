"""The campaign's Markdown report: the totals, a section per phase, the defects (with the request, the response
and the log line that show each), and whether any was found."""

from __future__ import annotations

import argparse
from collections import Counter

from .families import FamiliesReport
from .faults import FaultReport
from .hostile_phase import HostileReport
from .kills import KillReport
from .logs import LogReport


def _cell(text: str) -> str:
    """Text for a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _status_table(statuses: Counter) -> list[str]:
    lines = ["| status | responses |", "|---|---|"]
    lines += [f"| {status} | {count} |" for status, count in sorted(statuses.items())]
    return lines


RETENTION_LIMIT_BYTES = 20_000  # of a request's record, when it sent a megabyte field


def _hostile_section(args: argparse.Namespace, hostile: HostileReport) -> list[str]:
    out = [f"## 1. Hostile requests ({hostile.sent} in {hostile.seconds:.1f} s, {args.concurrency} workers)", ""]
    if not args.requests:
        return [*out, "Skipped.", ""]
    out += [
        *_status_table(hostile.statuses),
        "",
        f"5xx: {hostile.five_xx}; bodies with a traceback or injected header: {hostile.leaks}; server alive at the "
        f"end: {'yes' if hostile.server_alive else 'NO'} (exit status after SIGTERM {hostile.exit_status}); memory "
        f"{hostile.rss_before or 0:.0f} MB -> {hostile.rss_after or 0:.0f} MB.",
        "",
        f"Live log (/admin/ws/logs, open throughout): {hostile.live_log}.",
        "",
        f"Retention: {hostile.retention}.",
        "",
        "| category | outcomes |",
        "|---|---|",
    ]
    for category, counter in sorted(hostile.by_category.items()):
        out.append(f"| {category} | {', '.join(f'{k}: {v}' for k, v in sorted(counter.items(), key=str))} |")
    if hostile.errors:
        out += [
            "",
            "Connections that ended without the awaited answer, by case:",
            "",
            "| what happened | case | count | first example |",
            "|---|---|---|---|",
        ]
        out += [
            f"| {error} | {kind} | {n} | {_cell(hostile.error_examples[(error, kind)])} |"
            for (error, kind), n in sorted(hostile.errors.items())
        ]
    return [*out, ""]


def _fault_section(args: argparse.Namespace, faults: FaultReport) -> list[str]:
    out = [
        f"## 2. Upstream faults ({faults.sent} requests in {faults.seconds:.1f} s; fault probability {args.faults} per "
        f"upstream request, {faults.upstream_attempts} upstream requests)",
        "",
    ]
    if not args.fault_requests:
        return [*out, "Skipped.", ""]
    out += [
        "Faults injected: " + (", ".join(f"{k}: {v}" for k, v in sorted(faults.faults_injected.items())) or "none"),
        "",
        *_status_table(faults.statuses),
        "",
        "| endpoint | mode | outcome | cause | requests |",
        "|---|---|---|---|---|",
    ]
    out += [f"| {e} | {m} | {o} | {c} | {n} |" for (e, m, o, c), n in sorted(faults.outcomes.items())]
    out += [
        "",
        f"5xx: {faults.five_xx}, of which {faults.five_xx_upstream} after an injected fault. Tracebacks in the fake "
        f"upstream's own log: {len(faults.upstream_tracebacks)}.",
        "",
    ]
    return out


def _kill_section(args: argparse.Namespace, kill: KillReport) -> list[str]:
    out = [f"## 3. kill -9 loop ({kill.kills} kills in {kill.seconds:.1f} s)", ""]
    if not args.kills:
        return [*out, "Skipped.", ""]
    return [
        *out,
        "| measure | value |",
        "|---|---|",
        f"| admin changes sent | {kill.changes_sent} |",
        f"| server starts | {kill.starts} |",
        f"| starts refused | {kill.starts_refused} |",
        f"| saves acknowledged | {kill.saves_acknowledged} |",
        f"| saves in flight at a kill (either outcome allowed) | {kill.saves_pending} |",
        f"| saves lost | {kill.saves_lost} |",
        f"| requests of a caller beside the changes (/audio, /rag, retrieval) | {kill.reads} |",
        f"| clip/transcript pairs checked (stored, and as played) | {kill.pairs_checked} |",
        f"| pairs mismatched | {kill.pairs_mismatched} |",
        f"| files a crash left behind, after a restart | {kill.leftovers} |",
        f"| responses by status | {', '.join(f'{s}: {n}' for s, n in sorted(kill.statuses.items()))} |",
        "",
    ]


def _families_section(args: argparse.Namespace, families: FamiliesReport) -> list[str]:
    out = [f"## 4. Targeted families ({families.sent} requests in {families.seconds:.1f} s)", ""]
    if not args.families:
        return [*out, "Skipped.", ""]
    out += ["| family | requests | outcomes | problems | measured |", "|---|---|---|---|---|"]
    for family in families.families:
        outcomes = ", ".join(f"{k}: {v}" for k, v in sorted(family.statuses.items(), key=str))
        measured = "; ".join(family.measures) or "-"
        out.append(f"| {family.name} | {family.sent} | {outcomes} | {len(family.problems)} | {_cell(measured)} |")
    return [*out, ""]


def summary(
    args: argparse.Namespace,
    hostile: HostileReport,
    faults: FaultReport,
    kill: KillReport,
    families: FamiliesReport,
    seconds: float,
) -> tuple[str, bool]:
    """The Markdown report, and whether it found a defect (a 5xx not caused by the upstream, a traceback or ERROR
    line, a lost save, a mismatched pair, a refused start, or a broken answer)."""
    all_statuses = hostile.statuses + faults.statuses + kill.statuses + families.statuses
    five_xx = hostile.five_xx + faults.five_xx + kill.five_xx + families.five_xx
    five_xx_upstream = faults.five_xx_upstream + families.five_xx_upstream
    five_xx_defects = five_xx - five_xx_upstream
    logs = LogReport()
    for log in (hostile.log, faults.log, kill.log, families.log):
        logs.add(log)
    resets = sum(n for (error, _), n in hostile.errors.items() if error == "reset") + faults.resets + kill.resets
    timeouts = sum(n for (error, _), n in hostile.errors.items() if error == "timeout")
    closed = sum(n for (error, _), n in hostile.errors.items() if error in ("closed", "bad-response"))
    defects = [f"{what}: {len(cases)} time(s); the first: {cases[0]}" for what, cases in hostile.defect_groups.items()]
    defects += hostile.defects + faults.defects + kill.defects + families.problems
    if not hostile.server_alive:
        defects.insert(0, "the server was not serving /healthz after the hostile requests")
    if not hostile.live_log_ok:
        defects.insert(0, f"the live log failed during the hostile requests: {hostile.live_log}")
    failed = bool(defects or five_xx_defects or logs.tracebacks or logs.error_lines)
    findings = []
    if hostile.retention.record_bytes > RETENTION_LIMIT_BYTES or hostile.retention.log_bytes > RETENTION_LIMIT_BYTES:
        findings.append(
            f"Oversized fields are kept whole: {hostile.retention}. The request log keeps REQUEST_LOG_SIZE records "
            "(1000 by default), so requests like these can pin about a gigabyte, and each writes its field into the "
            "log line."
        )
    out = [
        f"# Fuzz campaign (seed {args.seed}, {seconds:.0f} s)",
        "",
        "## Totals",
        "",
        "| measure | value |",
        "|---|---|",
        f"| requests sent (hostile + faulty upstream + admin changes + targeted families) | {hostile.sent} + "
        f"{faults.sent} + {kill.changes_sent} + {families.sent} |",
        f"| responses by status | {', '.join(f'{s}: {n}' for s, n in sorted(all_statuses.items()))} |",
        f"| 5xx responses | {five_xx} ({five_xx_upstream} caused by the upstream, {five_xx_defects} not) |",
        f"| tracebacks in the server logs | {len(logs.tracebacks)} |",
        f"| ERROR lines in the server logs (other than the access log's 5xx lines) | {len(logs.error_lines)} |",
        f"| connections reset / timed out / closed without an answer | {resets} / {timeouts} / {closed} |",
        f"| failed completions through the faulty upstream: caused by it / not | {faults.failed_upstream} / "
        f"{faults.failed_defect} |",
        f"| saves acknowledged / lost | {kill.saves_acknowledged} / {kill.saves_lost} |",
        f"| clip pairs checked / mismatched | {kill.pairs_checked} / {kill.pairs_mismatched} |",
        f"| kills / starts refused | {kill.kills} / {kill.starts_refused} |",
        f"| verdict | {'DEFECTS FOUND' if failed else 'no defect found'} |",
        "",
        *_hostile_section(args, hostile),
        *_fault_section(args, faults),
        *_kill_section(args, kill),
        *_families_section(args, families),
    ]
    if defects or logs.tracebacks or logs.error_lines:
        out += ["## Defects", ""]
        out += [f"- {d}" for d in defects[:40]]
        if len(defects) > 40:
            out.append(f"- ... and {len(defects) - 40} more")
        for title, items in (("Tracebacks", logs.tracebacks), ("ERROR lines", logs.error_lines)):
            if items:
                out += ["", f"{title} ({len(items)}; the first 15):", "", "```"]
                out += items[:15]
                out += ["```"]
        out.append("")
    if findings:
        out += ["## Other findings (not counted in the exit status)", "", *[f"- {f}" for f in findings], ""]
    return "\n".join(out), failed
