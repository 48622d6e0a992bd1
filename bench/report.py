"""Machine information and the result tables (plain text and Markdown)."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.tools import REPO, version_of

PHASE_LABELS: dict[str, str] = {
    "initial": "initial sync (empty Maildir)",
    "noop-1": "no-op resync, first",
    "noop": "no-op resync, steady state",
    "verify": "no-op resync, mirrorsync --verify",
    "remote": "resync after server-side batch",
    "local": "resync after local batch",
    "big": "resync after one 30 MB message",
}


def _first_match(path: str, pattern: str) -> str:
    try:
        text = Path(path).read_text()
    except OSError:
        return "unknown"
    m = re.search(pattern, text, re.MULTILINE)
    return m.group(1).strip() if m else "unknown"


def _git(*args: str) -> str:
    try:
        p = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)
    except OSError:
        return ""
    return p.stdout.strip() if p.returncode == 0 else ""


def dovecot_setting(conf: Path, name: str) -> str:
    return _first_match(str(conf), rf"^{re.escape(name)}\s*=\s*(\S+)")


def machine_info(workdir: Path, tools: list[str], mirrorsync_src: Path = REPO) -> dict[str, Any]:
    mem_kb = _first_match("/proc/meminfo", r"^MemTotal:\s+(\d+)")
    fs = subprocess.run(
        ["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", str(workdir)], capture_output=True, text=True
    ).stdout.split()
    info: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": _first_match("/proc/cpuinfo", r"^model name\s*:\s*(.*)$"),
        "memory_gib": round(int(mem_kb) / 1024 / 1024, 1) if mem_kb.isdigit() else None,
        "kernel": platform.release(),
        "os": _first_match("/etc/os-release", r'^PRETTY_NAME="?([^"\n]*)"?'),
        "filesystem": f"{fs[0]} ({fs[1]})" if len(fs) == 2 else "unknown",
        "python": sys.version.split()[0],
        "dovecot": version_of(["dovecot", "--version"]),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    if "mirrorsync" in tools and mirrorsync_src.resolve() == REPO:
        commit = _git("rev-parse", "--short", "HEAD")
        dirty = bool(_git("status", "--porcelain", "--", "mirrorsync"))
        info["mirrorsync"] = f"{commit}{' + uncommitted changes' if dirty else ''}"
    elif "mirrorsync" in tools:
        marker = mirrorsync_src / "COMMIT"  # written by whoever exported it, if anyone
        what = marker.read_text().strip() if marker.exists() else "unknown version"
        info["mirrorsync"] = f"{what} from {mirrorsync_src}"
    if "mbsync" in tools:
        info["mbsync"] = version_of(["mbsync", "--version"])
    if "offlineimap" in tools:
        info["offlineimap"] = version_of(["offlineimap", "--version"])
    return info


def machine_lines(info: dict[str, Any]) -> list[str]:
    lines = [
        f"- CPU: {info['cpu']}, {info['nproc']} CPUs available; memory {info['memory_gib']} GiB",
        f"- OS: {info['os']}, kernel {info['kernel']}; Maildirs on {info['filesystem']}; "
        f"load average at start {' '.join(map(str, info['loadavg_at_start']))}",
        f"- Python {info['python']}; Dovecot {info['dovecot']}"
        + (f" (mail_fsync = {info['dovecot_mail_fsync']})" if "dovecot_mail_fsync" in info else ""),
    ]
    tools = [f"{t} {info[t]}" for t in ("mirrorsync", "mbsync", "offlineimap") if t in info]
    if tools:
        lines.append(f"- Tools: {'; '.join(tools)}")
    return lines


def _cell(r: dict[str, Any] | None) -> tuple[str, str]:
    if r is None:
        return "-", "-"
    mark = ""
    if r.get("timed_out"):
        mark = " TIMEOUT"
    elif r.get("returncode"):
        mark = f" exit {r['returncode']}"
    if not r.get("verified", True):
        mark += " MISMATCH"
    return f"{r['seconds']:.2f}{mark}", f"{r['max_rss_mb']:.0f}"


def table_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    tools: list[str] = results["tools"]
    peers = [t for t in tools if t != "mirrorsync"] if "mirrorsync" in tools else []
    header = ["phase"]
    for t in tools:
        header += [f"{t} s", f"{t} RSS MB"]
    header += [f"mirrorsync/{p}" for p in peers]
    floors = results.get("floors", {}).get("phases")
    if floors is not None:
        header += ["floor s"] + [f"floor/{p}" for p in peers]
    rows = []
    for phase, by_tool in results["phases"].items():
        row = [PHASE_LABELS.get(phase, phase)]
        for t in tools:
            row += list(_cell(by_tool.get(t)))
        ms = by_tool.get("mirrorsync")
        for p in peers:
            peer = by_tool.get(p)
            if ms is None or peer is None or not peer["seconds"]:
                row.append("-")
            else:
                row.append(f"{ms['seconds'] / peer['seconds']:.2f}x")
        if floors is not None:
            floor = floors.get(phase)
            row.append("-" if floor is None else f"{floor['seconds']:.2f}")
            for p in peers:
                peer = by_tool.get(p)
                ok = floor is not None and peer is not None and peer["seconds"]
                row.append(f"{floor['seconds'] / peer['seconds']:.2f}x" if ok else "-")
        rows.append(row)
    return header, rows


def floor_lines(results: dict[str, Any]) -> list[str]:
    """What the floors were (see bench/floor.py)."""
    floors = results.get("floors")
    if not floors:
        return []
    return [
        f"- Start-up floor: a Python process importing imapclient and sqlite3 takes "
        f"{floors['startup_seconds']:.3f} s (median of 7).",
        "- Server floor (no-op and server batch): a raw client on a user of its own with "
        "the same mail and batches logs in, runs one LIST-STATUS and selects (QRESYNC) "
        "each folder whose HIGHESTMODSEQ moved, and nothing else.",
        "- Floor of the local batch: the server's part (the batch made on that user by a "
        "client that knows exactly what changed: one STORE per resulting flag list, "
        "STORE \\Deleted and UID EXPUNGE, APPEND) plus listing one Maildir's folders.",
    ]


def text_table(results: dict[str, Any]) -> str:
    header, rows = table_rows(results)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt(r: list[str]) -> str:
        cells = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        return "  ".join(cells)

    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, rows)])


def markdown_table(results: dict[str, Any]) -> str:
    header, rows = table_rows(results)
    align = ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    mb = results["corpus_bytes"] / 1e6
    parts = [
        f"{results['messages']} messages ({mb:.0f} MB) in {results['folders']} folders, "
        f"seed {results['seed']}; wall seconds (lower is better), peak RSS of the tool's "
        "process, and mirrorsync's time divided by each peer's (below 1 means mirrorsync "
        "is faster).",
        "",
        markdown_table(results),
        "",
        *floor_lines(results),
        *machine_lines(results["machine"]),
    ]
    problems = [
        f"- {PHASE_LABELS.get(phase, phase)}, {tool}: "
        + (r["problems"][0] if r["problems"] else f"exit status {r['returncode']}")
        for phase, by_tool in results["phases"].items()
        for tool, r in by_tool.items()
        if not r.get("verified", True) or r.get("returncode") or r.get("timed_out")
    ]
    if problems:
        parts += ["", "Failures:", "", *problems]
    return "\n".join(parts)
