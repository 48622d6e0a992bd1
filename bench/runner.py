"""The benchmark driver: corpus, server, tools, phases, verification, report.

See bench/README.md. Run it as `python3 bench/run.py --help`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench import report
from bench.changes import Batch, Expected, apply_local, apply_remote, plan_batch, plan_big
from bench.corpus import FOLDERS, Corpus, ensure_corpus, install_for_user
from bench.floor import Probe, index, local_floor, scan_seconds, startup_seconds
from bench.sides import connect, server_folder, server_folders
from bench.tools import (
    REPO,
    TOOL_CLASSES,
    TOOL_NAMES,
    Mirrorsync,
    MirrorsyncBase,
    OfflineImap,
    Server,
    Tool,
    install_peers,
    installed_venv,
)
from bench.verify import Verdict, verify
from devtools.devserver import Dovecot

PHASES = ("initial", "noop", "verify", "remote", "local", "big")
FLOOR_USER, FLOOR_PASSWORD = "bench-floor", "secret"  # see bench/floor.py
SETTLE_SECONDS = 1.1  # between a batch and the timed runs (see run_phase)
# Before each timed run: Dovecot goes on working for a moment after a client that
# read a whole 100,000-message account (the previous tool's run or its verification)
# has left, and a run that starts meanwhile shares the two CPUs with that.
QUIET_SECONDS = 1.0
PHASE_HEADINGS = {
    "initial": "initial sync into an empty Maildir",
    "noop": "no-op resync, run twice (the second is the steady state)",
    "verify": "no-op resync with mirrorsync's `sync --verify` (every UID and file checked); "
    "the peers run their plain sync, which always compares whole UID lists",
    "remote": "resync after the same batch of changes on each server user",
    "local": "resync after the same batch of changes in each Maildir",
    "big": "resync after one 30 MB message arrived on the server (memory stays bounded)",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Time mirrorsync against mbsync and offlineimap on one throw-away "
        "Dovecot, phase by phase, and check every mirror after every run.",
    )
    p.add_argument(
        "--messages", type=int, default=10000, metavar="N",
        help="corpus size: 10000 (default, ~75 MB) or 100000 (~750 MB)",
    )  # fmt: skip
    p.add_argument(
        "--tools", default=",".join(TOOL_NAMES),
        help=f"comma-separated, from {','.join(TOOL_NAMES)} (default: all)",
    )  # fmt: skip
    p.add_argument(
        "--phases", default=",".join(PHASES),
        help=f"comma-separated, from {','.join(PHASES)} (default: all; initial always runs)",
    )  # fmt: skip
    p.add_argument("--keep", action="store_true", help="keep the work dir and server running")
    p.add_argument("--seed", type=int, default=1, help="corpus seed (default 1)")
    p.add_argument(
        "--corpus-dir", type=Path,
        help="corpus cache (default /var/tmp/mirrorsync-bench-corpus-N)",
    )  # fmt: skip
    p.add_argument("--workdir", type=Path, help="work directory (default: a new one in /var/tmp)")
    p.add_argument("--results", type=Path, help="JSON output (default bench/results-N.json)")
    p.add_argument(
        "--timeout", type=float, default=7200, help="seconds per tool run (default 7200)"
    )
    p.add_argument(
        "--offlineimap-connections", type=int, default=OfflineImap.connections,
        help="offlineimap's maxconnections (default 1, offlineimap's own default)",
    )  # fmt: skip
    p.add_argument(
        "--mirrorsync-src", type=Path, default=REPO,
        help="directory holding the mirrorsync package to run (default: this working tree; "
        "e.g. an export of a commit: git archive HEAD mirrorsync | tar -x -C DIR)",
    )  # fmt: skip
    p.add_argument(
        "--baseline-src", type=Path,
        help="a second mirrorsync to time in the same run as tool mirrorsync-base "
        "(e.g. a worktree of the commit before a change)",
    )  # fmt: skip
    p.add_argument("--no-install", action="store_true", help="never apt-get install peers")
    p.add_argument(
        "--no-floors", action="store_true",
        help="skip the floors (start-up, and the server's own time on a user of its own)",
    )  # fmt: skip
    args = p.parse_args(argv)
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    if args.baseline_src is not None and "mirrorsync-base" not in args.tools:
        args.tools.insert(1, "mirrorsync-base")
    args.phases = [t.strip() for t in args.phases.split(",") if t.strip()]
    bad = [t for t in args.tools if t not in TOOL_CLASSES] + [
        ph for ph in args.phases if ph not in PHASES
    ]
    if bad or not args.tools or args.messages < 100:
        p.error(f"bad value(s): {', '.join(bad) or 'no tools / too few messages'}")
    args.phases = [ph for ph in PHASES if ph in args.phases or ph == "initial"]
    suffix = f"{args.messages}" + (f"-seed{args.seed}" if args.seed != 1 else "")
    args.corpus_dir = args.corpus_dir or Path(f"/var/tmp/mirrorsync-bench-corpus-{suffix}")
    args.results = args.results or REPO / "bench" / f"results-{suffix}.json"
    return args


class Bench:
    def __init__(self, args: argparse.Namespace, corpus: Corpus, workdir: Path) -> None:
        self.args = args
        self.corpus = corpus
        self.workdir = workdir
        self.server = Dovecot(base=workdir / "dovecot")
        self.tools: list[Tool] = []
        self.expected = Expected.of(corpus)
        self.newest: list[str] = []
        self.probe: Probe | None = None  # the floor user (bench/floor.py)
        self.floor_uids: dict[tuple[str, str], int] = {}
        self.results: dict[str, Any] = {
            "messages": len(corpus.messages),
            "corpus_bytes": corpus.total_bytes,
            "folders": len(FOLDERS),
            "seed": corpus.seed,
            "tools": list(args.tools),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "workdir": str(workdir),
            "setup": {},
            "phases": {},
        }

    # -- setup

    def setup(self) -> None:
        started = time.perf_counter()
        self.server.start()
        srv = Server(self.server.host, self.server.port)
        print(f"bench: Dovecot on {srv.host}:{srv.port}, base {self.server.base}")
        for name in self.args.tools:
            tool = TOOL_CLASSES[name](self.workdir / name, srv)
            if isinstance(tool, OfflineImap):
                tool.connections = self.args.offlineimap_connections
            if isinstance(tool, MirrorsyncBase):
                tool.src = self.args.baseline_src.resolve()
                print(f"bench: mirrorsync-base runs from {tool.module_file()}")
            elif isinstance(tool, Mirrorsync):
                tool.src = self.args.mirrorsync_src.resolve()
                self.results["mirrorsync_module"] = tool.module_file()
                print(f"bench: mirrorsync runs from {self.results['mirrorsync_module']}")
            self.server.add_user(tool.user, tool.password)
            install_for_user(self.corpus, self.server.maildir_of(tool.user))
            tool.prepare()
            self.tools.append(tool)
        if not self.args.no_floors:
            self.probe = Probe(srv.host, srv.port, FLOOR_USER, FLOOR_PASSWORD)
            self.server.add_user(FLOOR_USER, FLOOR_PASSWORD)
            install_for_user(self.corpus, self.server.maildir_of(FLOOR_USER))
        copied = time.perf_counter()
        self.results["setup"]["copy_seconds"] = round(copied - started, 2)
        print(f"bench: copied the corpus to {len(self.tools)} users ({copied - started:.1f}s)")
        for tool in self.tools:
            self.warm_up(tool.user, tool.password)
        if self.probe is not None:
            self.warm_up(FLOOR_USER, FLOOR_PASSWORD)
            self.probe.run()  # learns where every folder stands
            with connect(self.server.host, self.server.port, FLOOR_USER, FLOOR_PASSWORD) as c:
                self.floor_uids = index(c, [name for name, _share in FOLDERS])
            python = sys.executable
            for tool in self.tools:
                if isinstance(tool, Mirrorsync):
                    venv = installed_venv(tool.src, tool.venv_dir)
                    python = str(venv / "bin" / "python") if venv else python
            self.results["floors"] = {
                "startup_seconds": round(startup_seconds(python), 3),
                "phases": {},
            }
        warm = time.perf_counter() - copied
        self.results["setup"]["warmup_seconds"] = round(warm, 2)
        print(f"bench: Dovecot indexed every folder of every user ({warm:.1f}s)")

    def warm_up(self, user: str, password: str) -> None:
        """Let Dovecot build its indexes and caches before anything is timed, and check
        that it sees the corpus exactly."""
        extra = ("RFC822.SIZE", "INTERNALDATE")
        with connect(self.server.host, self.server.port, user, password) as c:
            folders = server_folders(c)
            counts = {f: sum(map(len, server_folder(c, f, extra).values())) for f in folders}
        want = {f: len(m) for f, m in self.expected.folders.items()}
        if counts != want:
            raise SystemExit(f"bench: Dovecot sees {counts} for {user}, expected {want}")

    def imap(self, tool: Tool) -> Any:
        return connect(self.server.host, self.server.port, tool.user, tool.password)

    # -- phases

    def run_phase(self, phase: str) -> None:
        if phase == "noop":
            self.timed_round("noop-1")
            self.timed_round("noop")
            return
        if phase == "verify":
            mirrorsyncs = [t for t in self.tools if isinstance(t, Mirrorsync)]
            for t in mirrorsyncs:
                t.verify = True
            try:
                self.timed_round("verify")
            finally:
                for t in mirrorsyncs:
                    t.verify = False
            return
        if phase in ("remote", "local", "big"):
            batch = (
                plan_big()
                if phase == "big"
                else plan_batch(self.expected, phase, remote=phase == "remote")
            )
            print(f"bench: {phase} batch: {batch.summary()}")
            for tool in self.tools:
                self.apply(tool, batch, remote=phase != "local")
            if self.probe is not None and phase == "remote":
                with connect(self.server.host, self.server.port, FLOOR_USER, FLOOR_PASSWORD) as c:
                    apply_remote(c, batch)
                    for gone in batch.deletions:
                        self.floor_uids.pop(gone, None)
                    self.floor_uids.update(index(c, [batch.new_folder]))
            elif self.probe is not None and phase == "local":
                self.local_floor(batch)
            self.expected.apply(batch)
            self.newest = [mid for mid, *_ in batch.new]
            # A mail reader rarely changes a Maildir in the very second a sync starts;
            # mbsync would then sleep up to a second to be safe from that race.
            time.sleep(SETTLE_SECONDS)
        self.timed_round(phase)

    def local_floor(self, batch: Batch) -> None:
        """The local batch's floor (bench/floor.py): the server's part, made on the
        floor user, and listing one tool's Maildir."""
        with connect(self.server.host, self.server.port, FLOOR_USER, FLOOR_PASSWORD) as c:
            server = local_floor(c, self.floor_uids, batch)
        scan = scan_seconds(self.tools[0].maildir)
        self.results["floors"]["phases"]["local"] = {
            "seconds": round(server + scan, 3),
            "server_seconds": round(server, 3),
            "scan_seconds": round(scan, 3),
        }
        print(f"  [local] floor: {server + scan:.2f}s (server {server:.2f}s, scan {scan:.2f}s)")
        assert self.probe is not None
        self.probe.run()  # the probe's next look starts after these changes

    def apply(self, tool: Tool, batch: Batch, remote: bool) -> None:
        try:
            if remote:
                with self.imap(tool) as c:
                    problems = apply_remote(c, batch)
            else:
                inbox = tool.maildir / "INBOX"
                for sub in ("cur", "new", "tmp"):
                    (inbox / sub).mkdir(parents=True, exist_ok=True)
                problems = apply_local(tool.maildir, batch, inbox)
        except Exception as e:  # e.g. a folder the tool lost; its verification will say
            problems = [f"applying the batch failed: {type(e).__name__}: {e}"]
        for p in problems:
            print(f"bench: WARNING: {tool.name}: {p}")

    def timed_round(self, phase: str) -> None:
        by_tool: dict[str, Any] = {}
        self.results["phases"][phase] = by_tool
        # Only what a client must do to hear of changes has a floor here: in the local
        # phase the server's work is what the tool itself asks of it.
        if self.probe is not None and phase in ("noop-1", "noop", "remote"):
            seconds, selected = self.probe.run()
            self.results["floors"]["phases"][phase] = {
                "seconds": round(seconds, 3),
                "selected": selected,
            }
            print(f"  [{phase}] server floor: {seconds:.2f}s ({selected} folders selected)")
        for tool in self.tools:
            time.sleep(QUIET_SECONDS)
            r = tool.run(phase, self.args.timeout)
            try:
                with self.imap(tool) as c:
                    verdict = verify(
                        self.expected, c, tool.maildir, phase, self.newest, tool.comparable
                    )
            except Exception as e:  # a mirror so broken that looking at it fails
                verdict = Verdict([f"verification itself failed: {type(e).__name__}: {e}"])
            by_tool[tool.name] = {
                "seconds": round(r.seconds, 3),
                "max_rss_mb": round(r.max_rss_mb, 1),
                "cpu_seconds": round(r.cpu_seconds, 3),
                "returncode": r.returncode,
                "timed_out": r.timed_out,
                "verified": verdict.ok,
                "content_checked": verdict.checked_content,
                "problems": verdict.problems,
                "log": str(r.log),
            }
            status = "verify OK" if verdict.ok else "VERIFY MISMATCH"
            exit_note = "" if r.ok else (" TIMED OUT" if r.timed_out else f" EXIT {r.returncode}")
            print(
                f"  [{phase}] {tool.name}: {r.seconds:.2f}s, {r.max_rss_mb:.0f} MB RSS, "
                f"{r.cpu_seconds:.1f}s CPU{exit_note}, {status} "
                f"({verdict.checked_content} bodies compared)"
            )
            if not r.ok:
                print(f"    log: {r.log}")
                for line in _tail(r.log, 12):
                    print(f"    | {line}")
            if not verdict.ok:
                print(f"  !!! {tool.name} {phase}: server and Maildir disagree or are wrong:")
                for line in verdict.problems[:40]:
                    print(f"    {line}")
        self.save()

    def save(self) -> None:
        self.args.results.write_text(json.dumps(self.results, indent=2) + "\n")


def _tail(path: Path, n: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    if os.geteuid() != 0:
        print("bench: warning: not root; Dovecot as set up here needs root", file=sys.stderr)
    if args.no_install:
        from bench.tools import missing_commands

        missing = missing_commands(args.tools)
        if missing:
            raise SystemExit(f"bench: not installed: {', '.join(missing)}")
    else:
        install_peers(args.tools)

    print(f"bench: corpus of {args.messages} messages in {args.corpus_dir}")
    corpus, generated = ensure_corpus(args.corpus_dir, args.messages, args.seed)
    corpus_s = time.perf_counter() - t0
    print(
        f"bench: corpus {'generated' if generated else 'cached'}: {len(corpus.messages)} "
        f"messages, {corpus.total_bytes / 1e6:.0f} MB ({corpus_s:.1f}s)"
    )

    if args.workdir:
        workdir = args.workdir.resolve()
        if workdir.exists() and any(workdir.iterdir()):
            raise SystemExit(f"bench: --workdir {workdir} is not empty")
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        workdir = Path(tempfile.mkdtemp(prefix="mirrorsync-bench-", dir="/var/tmp"))
    os.chmod(workdir, 0o755)  # Dovecot's user must reach the mail below it

    bench = Bench(args, corpus, workdir)
    bench.results["setup"]["corpus_seconds"] = round(corpus_s, 2)
    bench.results["setup"]["corpus_generated"] = generated
    bench.results["machine"] = report.machine_info(workdir, args.tools, args.mirrorsync_src)
    load = bench.results["machine"]["loadavg_at_start"][0]
    if load > 0.5:
        print(f"bench: note: load average {load} at start; other work may skew the timings")
    try:
        bench.setup()
        bench.results["machine"]["dovecot_mail_fsync"] = report.dovecot_setting(
            bench.server.base / "dovecot.conf", "mail_fsync"
        )
        for phase in args.phases:
            print(f"bench: phase {phase}: {PHASE_HEADINGS[phase]}")
            bench.run_phase(phase)
    finally:
        if args.keep:
            pidfile = bench.server.base / "run" / "master.pid"
            print(
                f"bench: kept {workdir}; Dovecot still runs on {bench.server.host}:"
                f"{bench.server.port} (stop it with: kill $(cat {pidfile}))"
            )
        else:
            bench.server.stop()
            shutil.rmtree(workdir, ignore_errors=True)
        total = time.perf_counter() - t0
        bench.results["total_seconds"] = round(total, 1)
        bench.save()

    print()
    print(report.text_table(bench.results))
    print("\n".join(report.floor_lines(bench.results)))
    print()
    print("Markdown (for docs/benchmarks.md):")
    print()
    print(report.markdown(bench.results))
    print()
    print(f"bench: results in {args.results}; whole run took {total:.0f}s")
    failed = [
        (phase, tool)
        for phase, by_tool in bench.results["phases"].items()
        for tool, r in by_tool.items()
        if not r["verified"] or r["returncode"] or r["timed_out"]
    ]
    if failed:
        print("bench: FAILURES: " + ", ".join(f"{t} in {p}" for p, t in failed))
        return 1
    return 0
