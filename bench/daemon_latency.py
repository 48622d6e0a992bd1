#!/usr/bin/env python3
"""How fast `mirrorsync daemon` propagates single changes, and what it costs while idle.

`python3 bench/daemon_latency.py --help`; see bench/README.md ("Daemon latency").

One throw-away Dovecot with one user holding the benchmark corpus (bench/corpus.py),
an initial `mirrorsync sync`, then `mirrorsync daemon` (installed into a venv of its
own, run through its console script, default configuration) watching the account:

1. server -> local: a message APPENDed to INBOX by another IMAP client, timed from
   just before the APPEND until its file (found by Message-ID) is in INBOX/new or
   INBOX/cur, which are listed every 5 ms;
2. local -> server: alternately a file renamed from :2,S to :2,FS, timed until FETCH
   FLAGS on another connection shows \\Flagged, and a file unlinked, timed until UID
   SEARCH no longer finds its UID (the server is polled every 10 ms);
3. the daemon's CPU time (utime + stime of the process and any children, from
   /proc) over --idle-seconds of idleness;
4. its RSS (/proc/PID/status VmRSS) before and after a burst of --burst events
   (half server appends, half local flag renames, in rounds that each wait until
   everything has propagated).

Events are spaced: the next one starts GAP seconds after the previous one was seen
on the other side. The daemon is stopped with SIGTERM at the end (its exit status must
be 0) and Dovecot is stopped, also after an error or Ctrl-C. Results go to
bench/daemon-results.json; a table and a Markdown section are printed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# Run as a script from anywhere: the repository root holds both `bench` and `mirrorsync`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import report
from bench.corpus import Corpus, ensure_corpus, install_for_user, iter_new_messages
from bench.mail import read_message_id, split_info, to_crlf, with_letters
from bench.sides import chunks, connect, server_folder, server_folders
from bench.tools import REPO, Mirrorsync, Server
from devtools.devserver import Dovecot

# Its own venv: a bench/run.py started meanwhile reinstalls /var/tmp/mirrorsync-bench-venv,
# which would pull the files from under a daemon that runs for a quarter of an hour.
DAEMON_VENV = Path("/var/tmp/mirrorsync-bench-daemon-venv")
LOCAL_POLL = 0.005  # seconds between listings of INBOX/new and INBOX/cur
SERVER_POLL = 0.010  # seconds between polls of the server
BURST_POLL = 0.05  # the same while waiting for a burst
GAP = 0.5  # seconds between an event being seen and the next one
BURST_ROUND = 200  # events per burst round: half appends, half renames
TARGET_MEDIAN = 1.0
TARGET_P95 = 2.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
FOLDER = "INBOX"


# -- the daemon process --------------------------------------------------------------


class Daemon:
    """`mirrorsync daemon` in its own session; its output, each line stamped with the
    time it arrived, goes to a log file (and is kept for the results)."""

    def __init__(self, cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> None:
        self.t0 = time.perf_counter()
        self.lines: list[str] = []
        self._log = log.open("w", buffering=1)
        self._log.write(f"$ {' '.join(cmd)}\n")
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
            text=True,
            errors="replace",
        )
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            stamped = f"{time.perf_counter() - self.t0:9.3f} {line.rstrip()}"
            self._log.write(stamped + "\n")
            if len(self.lines) < 5000:
                self.lines.append(stamped)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            tail = "\n".join(self.lines[-10:])
            raise RuntimeError(f"the daemon exited with status {self.proc.returncode}:\n{tail}")

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far: the process (all its threads, plus children it waited
        for) and its live descendants."""
        own = _stat_ticks(self.pid, waited=True)
        kids = sum(_stat_ticks(p, waited=True) for p in _descendants(self.pid))
        return {"self": own / CLK_TCK, "children": kids / CLK_TCK}

    def cpu_total(self) -> float:
        c = self.cpu()
        return c["self"] + c["children"]

    def memory(self) -> dict[str, float]:
        status = _status(self.pid)
        return {
            "rss_mb": round(status.get("VmRSS", 0) / 1024, 1),
            "hwm_mb": round(status.get("VmHWM", 0) / 1024, 1),
            "threads": status.get("Threads", 0),
        }

    def stop(self, timeout: float = 120.0) -> int | None:
        """SIGTERM, then wait for the exit status; SIGKILL (and None) if it hangs."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
        try:
            rc: int | None = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.proc.wait()
            rc = None
        self._reader.join(5)
        self._log.close()
        return rc


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on


def _stat_ticks(pid: int, waited: bool) -> int:
    try:
        f = _stat_fields(pid)
    except (OSError, ValueError):
        return 0
    # utime, stime, cutime, cstime are fields 14-17 of proc(5): 11-14 here.
    ticks = int(f[11]) + int(f[12])
    return ticks + (int(f[13]) + int(f[14]) if waited else 0)


def _descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                parents[int(entry)] = int(_stat_fields(int(entry))[1])
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        found += kids
        todo += kids
    return found


def _status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
    return out


# -- the load average, sampled all along ---------------------------------------------


class LoadSampler(threading.Thread):
    def __init__(self, every: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.every = every
        self.samples: list[tuple[float, float]] = []  # (perf_counter, 1-minute load)
        self._halt = threading.Event()

    def run(self) -> None:
        while True:
            self.samples.append((time.perf_counter(), os.getloadavg()[0]))
            if self._halt.wait(self.every):
                return

    def stop(self) -> None:
        self._halt.set()

    def between(self, start: float, end: float) -> dict[str, float]:
        xs = [load for t, load in self.samples if start <= t <= end] or [os.getloadavg()[0]]
        return {"min": min(xs), "mean": round(statistics.fmean(xs), 2), "max": max(xs)}


# -- the local side -------------------------------------------------------------------


class LocalFolder:
    """One Maildir folder, looked at as a mail reader would."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def names(self) -> set[str]:
        out = set()
        for sub in ("new", "cur"):
            with contextlib.suppress(FileNotFoundError):
                out.update(f"{sub}/{n}" for n in os.listdir(self.path / sub))
        return out

    def mid_of(self, rel: str) -> str | None:
        try:
            return read_message_id(self.path / rel)
        except OSError:  # renamed or removed since the listing
            return None

    def find(self, key: str) -> Path | None:
        """The file whose unique part (before ":2,") is `key`, wherever it is now."""
        for rel in self.names():
            if split_info(rel.split("/", 1)[1])[0] == key:
                return self.path / rel
        return None

    def watch_for(self, mids: set[str], known: set[str], deadline: float, poll: float) -> dict:
        """Wait until a file holding each Message-ID in `mids` appears (a name not in
        `known`); returns Message-ID -> when it was seen (perf_counter). Stops at
        `deadline`, with what was found."""
        seen: dict[str, float] = {}
        while True:
            now_names = self.names()
            now = time.perf_counter()
            for rel in now_names - known:
                mid = self.mid_of(rel)
                if mid in mids and mid not in seen:
                    seen[mid] = now
            known = now_names
            if len(seen) == len(mids) or now > deadline:
                return seen
            time.sleep(poll)


class DaemonMirrorsync(Mirrorsync):
    """bench/tools.py's mirrorsync, run from its own directory rather than the source
    tree, so that nothing can import the tree's (changing) package by accident."""

    @property
    def cwd(self) -> Path:
        return self.home


@dataclass
class Candidate:
    """A local INBOX message flagged exactly \\Seen, and its server UID."""

    key: str
    mid: str
    uid: int


def candidates(local: LocalFolder, server_index: dict[str, int]) -> list[Candidate]:
    out = []
    for rel in sorted(local.names()):
        sub, name = rel.split("/", 1)
        key, _sep, letters = split_info(name)
        if sub != "cur" or letters != "S":
            continue
        mid = local.mid_of(rel)
        if mid and mid in server_index:
            out.append(Candidate(key, mid, server_index[mid]))
    return out


# -- the server side ------------------------------------------------------------------


def server_uids(client: Any, folder: str) -> dict[str, int]:
    """Message-ID -> UID (of the one copy expected)."""
    return {mid: copies[0].where for mid, copies in server_folder(client, folder).items()}


def flagged(client: Any, uids: list[int]) -> set[int]:
    """Which of `uids` are \\Flagged now. The NOOP first makes Dovecot bring this
    session's view up to date with the other sessions' changes."""
    client.noop()
    out = set()
    for chunk in chunks(uids):
        for uid, data in client.fetch(chunk, ["FLAGS"]).items():
            if b"\\Flagged" in data.get(b"FLAGS", ()):
                out.add(uid)
    return out


def present(client: Any, uid: int) -> bool:
    client.noop()
    return bool(client.search(["UID", str(uid)]))


def wait_server(check: Callable[[], bool], deadline: float, poll: float) -> float | None:
    while True:
        if check():
            return time.perf_counter()
        if time.perf_counter() > deadline:
            return None
        time.sleep(poll)


# -- statistics -----------------------------------------------------------------------


def percentile(xs: list[float], p: float) -> float:
    """Nearest-rank percentile (for 50 values, p95 is the 48th smallest)."""
    s = sorted(xs)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def summary(latencies: list[float | None]) -> dict[str, Any]:
    got = [x for x in latencies if x is not None]
    out: dict[str, Any] = {"events": len(latencies), "missed": len(latencies) - len(got)}
    if got:
        out.update(
            median=round(statistics.median(got), 4),
            p95=round(percentile(got, 95), 4),
            max=round(max(got), 4),
            min=round(min(got), 4),
            mean=round(statistics.fmean(got), 4),
        )
    out["meets_targets"] = bool(
        got and not out["missed"] and out["median"] <= TARGET_MEDIAN and out["p95"] <= TARGET_P95
    )
    return out


# -- the benchmark --------------------------------------------------------------------


@dataclass
class Run:
    args: argparse.Namespace
    corpus: Corpus
    workdir: Path
    results: dict[str, Any] = field(default_factory=dict)
    server: Dovecot | None = None
    tool: DaemonMirrorsync | None = None
    daemon: Daemon | None = None
    load: LoadSampler = field(default_factory=LoadSampler)
    phases: dict[str, tuple[float, float]] = field(default_factory=dict)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        cpu = self.daemon.cpu_total() if self.daemon else 0.0
        print(f"daemon-bench: {name} ...", flush=True)
        try:
            yield
        finally:
            end = time.perf_counter()
            self.phases[name] = (start, end)
            self.results.setdefault("phase_seconds", {})[name] = round(end - start, 1)
            self.results.setdefault("load", {})[name] = self.load.between(start, end)
            if self.daemon is not None and self.daemon.alive():
                used = round(self.daemon.cpu_total() - cpu, 2)
                self.results.setdefault("daemon_cpu_seconds", {})[name] = used

    def imap(self) -> Any:
        assert self.server is not None and self.tool is not None
        return connect(self.server.host, self.server.port, self.tool.user, self.tool.password)

    @property
    def inbox(self) -> LocalFolder:
        assert self.tool is not None
        return LocalFolder(self.tool.maildir / FOLDER)

    def memory(self, label: str) -> None:
        assert self.daemon is not None
        m = {
            "when": label,
            **self.daemon.memory(),
            "cpu_seconds": round(self.daemon.cpu_total(), 2),
        }
        self.results.setdefault("memory", []).append(m)
        print(f"  RSS {label}: {m['rss_mb']} MB (peak {m['hwm_mb']} MB, {m['threads']} threads)")

    # -- setup

    def setup(self) -> None:
        self.server = Dovecot(base=self.workdir / "dovecot")
        self.server.start()
        srv = Server(self.server.host, self.server.port)
        tool = DaemonMirrorsync(self.workdir / "mirrorsync", srv)
        tool.user = "bench-daemon"
        tool.src = self.args.mirrorsync_src.resolve()
        tool.venv_dir = self.args.venv
        self.tool = tool
        self.server.add_user(tool.user, tool.password)
        install_for_user(self.corpus, self.server.maildir_of(tool.user))
        tool.prepare()
        (tool.home / "logs").mkdir(exist_ok=True)
        print(f"daemon-bench: Dovecot on {srv.host}:{srv.port}; mail in {self.workdir}")
        self.results["mirrorsync_module"] = tool.module_file()
        self.results["mirrorsync_tree_sha256"] = tree_hash(tool.src / "mirrorsync")
        print(f"daemon-bench: mirrorsync runs from {self.results['mirrorsync_module']}")
        with self.imap() as c:  # Dovecot indexes everything before anything is timed
            counts = {f: sum(map(len, server_folder(c, f).values())) for f in server_folders(c)}
        if sum(counts.values()) != len(self.corpus.messages):
            raise RuntimeError(f"Dovecot sees {counts}, expected {len(self.corpus.messages)}")

    def initial_sync(self) -> None:
        assert self.tool is not None
        r = self.tool.run("initial", self.args.timeout)
        self.results["initial_sync"] = {
            "seconds": round(r.seconds, 2),
            "cpu_seconds": round(r.cpu_seconds, 2),
            "max_rss_mb": round(r.max_rss_mb, 1),
            "returncode": r.returncode,
        }
        print(f"  initial sync: {r.seconds:.1f}s, exit {r.returncode}")
        if not r.ok:
            raise RuntimeError(f"the initial sync failed (exit {r.returncode}); see {r.log}")

    def start_daemon(self) -> None:
        assert self.tool is not None
        cmd = [*self.tool.command()[:-1], "daemon"]
        self.results["daemon_command"] = cmd
        log = self.tool.home / "logs" / "daemon.log"
        self.daemon = Daemon(cmd, self.tool.env(), self.tool.cwd, log)
        print(f"  daemon pid {self.daemon.pid}: {' '.join(cmd)}")

    def warm_up(self, client: Any, poller: Any, spare: list[Candidate]) -> None:
        """One event each way, not counted: the first sync and the watchers are up."""
        self.server_to_local(client, "warmup", 1, timeout=self.args.timeout)
        assert self.daemon is not None
        self.local_flag(poller, spare.pop(), timeout=self.args.timeout)
        self.wait_quiet()

    def wait_quiet(self, seconds: float = 2.0, limit: float = 120.0) -> None:
        """Until the daemon has used no CPU for `seconds` (or `limit` passed)."""
        assert self.daemon is not None
        end = time.perf_counter() + limit
        last, quiet_since = self.daemon.cpu_total(), time.perf_counter()
        while time.perf_counter() < end:
            time.sleep(0.25)
            self.daemon.check_alive()
            now = self.daemon.cpu_total()
            if now != last:
                last, quiet_since = now, time.perf_counter()
            elif time.perf_counter() - quiet_since >= seconds:
                return

    # -- events

    def server_to_local(
        self, client: Any, tag: str, count: int, timeout: float
    ) -> list[dict[str, Any]]:
        """`count` APPENDs, one at a time, each timed until its file is in INBOX."""
        assert self.daemon is not None
        local = self.inbox
        events = []
        for i, (mid, data, when) in enumerate(iter_new_messages(self.corpus, tag, count)):
            self.daemon.check_alive()
            known = local.names()
            raw = to_crlf(data)
            t0 = time.perf_counter()
            client.append(FOLDER, raw, (), msg_time=when)
            t_appended = time.perf_counter()
            seen = local.watch_for({mid}, known, t0 + timeout, LOCAL_POLL)
            t1 = seen.get(mid)
            latency = None if t1 is None else t1 - t0
            events.append(
                {
                    "i": i,
                    "message_id": mid,
                    "latency": None if latency is None else round(latency, 4),
                    "append_seconds": round(t_appended - t0, 4),
                }
            )
            if tag != "warmup":
                shown = "MISSED" if latency is None else f"{latency:.3f}s"
                print(f"    server->local {i + 1}/{count}: {shown}", flush=True)
            time.sleep(GAP)
        return events

    def local_flag(self, poller: Any, c: Candidate, timeout: float) -> float | None:
        path = self.inbox.find(c.key)
        if path is None:
            raise RuntimeError(f"local file {c.key} vanished")
        target = path.parent.parent / "cur" / with_letters(path.name, "FS")
        t0 = time.perf_counter()
        os.rename(path, target)
        t1 = wait_server(lambda: c.uid in flagged(poller, [c.uid]), t0 + timeout, SERVER_POLL)
        return None if t1 is None else t1 - t0

    def local_unlink(self, poller: Any, c: Candidate, timeout: float) -> float | None:
        path = self.inbox.find(c.key)
        if path is None:
            raise RuntimeError(f"local file {c.key} vanished")
        t0 = time.perf_counter()
        os.unlink(path)
        t1 = wait_server(lambda: not present(poller, c.uid), t0 + timeout, SERVER_POLL)
        return None if t1 is None else t1 - t0

    def local_to_server(self, poller: Any, pool: list[Candidate], count: int) -> list[dict]:
        assert self.daemon is not None
        events = []
        for i in range(count):
            self.daemon.check_alive()
            c = pool.pop()
            kind = "flag" if i % 2 == 0 else "unlink"
            do = self.local_flag if kind == "flag" else self.local_unlink
            latency = do(poller, c, self.args.event_timeout)
            events.append(
                {
                    "i": i,
                    "kind": kind,
                    "uid": c.uid,
                    "message_id": c.mid,
                    "latency": None if latency is None else round(latency, 4),
                }
            )
            shown = "MISSED" if latency is None else f"{latency:.3f}s"
            print(f"    local->server {i + 1}/{count} ({kind}): {shown}", flush=True)
            time.sleep(GAP)
        return events

    # -- idle

    def idle(self, seconds: float) -> dict[str, Any]:
        """CPU over `seconds` with nothing happening, sampled every second (the
        periodic full checks show up as bursts)."""
        assert self.daemon is not None
        self.wait_quiet()
        start_cpu = self.daemon.cpu()
        t0 = time.perf_counter()
        series: list[tuple[float, float]] = [(0.0, 0.0)]
        while (elapsed := time.perf_counter() - t0) < seconds:
            time.sleep(min(1.0, seconds - elapsed))
            self.daemon.check_alive()
            series.append((time.perf_counter() - t0, self.daemon.cpu_total()))
        end_cpu = self.daemon.cpu()
        wall = time.perf_counter() - t0
        used = {k: end_cpu[k] - start_cpu[k] for k in end_cpu}
        series[0] = (0.0, start_cpu["self"] + start_cpu["children"])
        deltas = [(round(t, 1), round(c - series[i][1], 2)) for i, (t, c) in enumerate(series[1:])]
        busy = [(t, d) for t, d in deltas if d >= 0.05]
        total = used["self"] + used["children"]
        return {
            "wall_seconds": round(wall, 1),
            "cpu_seconds": round(total, 2),
            "cpu_self_seconds": round(used["self"], 2),
            "cpu_children_seconds": round(used["children"], 2),
            "cpu_share_percent": round(100 * total / wall, 3),
            "busy_seconds": busy,  # (seconds into the phase, CPU seconds) >= 0.05 s
            "nonzero_seconds": [(t, d) for t, d in deltas if d > 0],  # every sample with CPU
            "cpu_outside_busy_seconds": round(total - sum(d for _, d in busy), 2),
            "clock_ticks_per_second": CLK_TCK,
        }

    # -- burst

    def burst(self, client: Any, poller: Any, pool: list[Candidate], total: int) -> dict:
        assert self.daemon is not None
        local = self.inbox
        appends = total // 2
        renames = total - appends
        new = list(iter_new_messages(self.corpus, "burst", appends))
        rounds = []
        self.memory("before the burst")
        done_a = done_r = 0
        while done_a < appends or done_r < renames:
            self.daemon.check_alive()
            na = min(BURST_ROUND // 2, appends - done_a)
            nr = min(BURST_ROUND - BURST_ROUND // 2, renames - done_r)
            batch = new[done_a : done_a + na]
            picks = [pool.pop() for _ in range(nr)]
            known = local.names()
            t0 = time.perf_counter()
            for _mid, data, when in batch:
                client.append(FOLDER, to_crlf(data), (), msg_time=when)
            for c in picks:
                path = local.find(c.key)
                if path is None:
                    raise RuntimeError(f"local file {c.key} vanished")
                os.rename(path, path.parent.parent / "cur" / with_letters(path.name, "FS"))
            t_made = time.perf_counter()
            deadline = t0 + self.args.event_timeout * 5
            seen = local.watch_for({m for m, _d, _w in batch}, known, deadline, BURST_POLL)
            t_local = time.perf_counter()
            uids = [c.uid for c in picks]
            missing = set(uids)
            while missing and time.perf_counter() < deadline:
                missing -= flagged(poller, sorted(missing))
                if missing:
                    time.sleep(BURST_POLL)
            t_done = time.perf_counter()
            r = {
                "appends": na,
                "renames": nr,
                "made_seconds": round(t_made - t0, 3),
                "appends_local_seconds": round(t_local - t0, 3),
                "all_propagated_seconds": round(t_done - t0, 3),
                "appends_missed": na - len(seen),
                "renames_missed": len(missing),
            }
            done_a += na
            done_r += nr
            rounds.append(r)
            print(
                f"    burst round {len(rounds)}: {na} appends + {nr} renames, all "
                f"propagated in {r['all_propagated_seconds']:.2f}s"
                + (
                    f", MISSED {na - len(seen)} + {len(missing)}"
                    if len(seen) != na or missing
                    else ""
                )
            )
            self.memory(f"after burst round {len(rounds)} ({done_a + done_r} events)")
            time.sleep(GAP)
        self.wait_quiet()
        self.memory(f"after the burst ({total} events), quiet again")
        return {"rounds": rounds, "events": total, "appends": appends, "renames": renames}

    # -- the end

    def check_inbox(self) -> list[str]:
        """After the daemon stopped: INBOX holds the same Message-IDs on both sides,
        and the flags match."""
        assert self.tool is not None
        with self.imap() as c:
            server = {mid: e[0].letters for mid, e in server_folder(c, FOLDER).items()}
        local: dict[str, str] = {}
        for rel in self.inbox.names():
            mid = self.inbox.mid_of(rel)
            if mid:
                local[mid] = split_info(rel.split("/", 1)[1])[2]
        problems = []
        if server.keys() != local.keys():
            problems.append(
                f"INBOX differs: {len(server.keys() - local.keys())} only on the server, "
                f"{len(local.keys() - server.keys())} only in the Maildir"
            )
        bad = [m for m in server.keys() & local.keys() if server[m] != "".join(sorted(local[m]))]
        if bad:
            problems.append(f"INBOX flags differ for {len(bad)} messages, e.g. {bad[0]}")
        return problems


def tree_hash(pkg: Path) -> str:
    """A short hash of the package's sources as installed (the tree changes under us)."""
    h = hashlib.sha256()
    for p in sorted(pkg.rglob("*.py")):
        h.update(p.relative_to(pkg).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:12]


# -- output ---------------------------------------------------------------------------

ROWS = (
    ("server_to_local", "server -> local (APPEND -> file in INBOX)"),
    ("local_to_server", "local -> server, all"),
    ("local_flag", "local -> server, rename :2,S -> :2,FS"),
    ("local_unlink", "local -> server, unlink"),
)


def table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["direction", "events", "median s", "p95 s", "max s", "targets"]
    rows = []
    for key, label in ROWS:
        s = results["summary"].get(key)
        if not s:
            continue
        if "median" not in s:
            rows.append([label, str(s["events"]), "-", "-", "-", f"{s['missed']} MISSED"])
            continue
        ok = "met" if s["meets_targets"] else "NOT MET"
        if s["missed"]:
            ok += f", {s['missed']} MISSED"
        rows.append(
            [
                label,
                str(s["events"]),
                f"{s['median']:.3f}",
                f"{s['p95']:.3f}",
                f"{s['max']:.3f}",
                ok,
            ]
        )
    return header, rows


def text_table(results: dict[str, Any]) -> str:
    header, rows = table(results)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt(r: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )

    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, rows)])


def _load_text(load: dict[str, float]) -> str:
    return f"{load['min']:.2f}-{load['max']:.2f} (mean {load['mean']:.2f})"


def facts(results: dict[str, Any]) -> list[str]:
    """The figures besides the latency table, as Markdown bullets."""
    lines = []
    idle = results.get("idle")
    if idle:
        busy = idle["busy_seconds"]
        lines.append(
            f"- Idle: {idle['cpu_seconds']:.2f} CPU seconds in {idle['wall_seconds']:.0f} s "
            f"({idle['cpu_share_percent']:.3f}% of one CPU; children "
            f"{idle['cpu_children_seconds']:.2f} s); {len(busy)} second(s) with >= 0.05 s of "
            f"CPU ({', '.join(f'{d:.2f} s at {t:.0f} s' for t, d in busy) or 'none'}), "
            f"{idle['cpu_outside_busy_seconds']:.2f} s spread over the rest"
        )
    mem = results.get("memory", [])
    before = next((m for m in mem if m["when"] == "before the burst"), None)
    if before and mem:
        after = mem[-1]
        peak = max(m["rss_mb"] for m in mem)
        b = results.get("burst", {})
        lines.append(
            f"- Memory: RSS {before['rss_mb']:.1f} MB before {b.get('events', '?')} events "
            f"({b.get('appends', '?')} server appends + {b.get('renames', '?')} local flag "
            f"renames, in rounds of up to {BURST_ROUND}), {after['rss_mb']:.1f} MB after "
            f"(highest sample {peak:.1f} MB, VmHWM {after['hwm_mb']:.1f} MB); at daemon start "
            f"{mem[0]['rss_mb']:.1f} MB; threads {before['threads']} before, "
            f"{after['threads']} after"
        )
        rounds = b.get("rounds", [])
        if rounds:
            secs = [r["all_propagated_seconds"] for r in rounds]
            lines.append(
                f"- Burst rounds propagated completely in {min(secs):.2f}-{max(secs):.2f} s each"
            )
    cpu = results.get("daemon_cpu_seconds", {})
    per = [
        f"{cpu[phase] / results['events']:.3f} s per {label} event"
        for phase, label in (
            ("server -> local", "server -> local"),
            ("local -> server", "local -> server"),
        )
        if phase in cpu
    ]
    if per:
        lines.append(f"- Daemon CPU during the latency events: {', '.join(per)}")
    init = results.get("initial_sync")
    if init:
        lines.append(f"- Initial `mirrorsync sync` before the daemon: {init['seconds']:.1f} s")
    rc = results.get("daemon_exit")
    lines.append(f"- Daemon stopped with SIGTERM: exit status {rc}")
    if isinstance(results.get("inbox_check"), str):
        lines.append(f"- INBOX afterwards: {results['inbox_check']}")
    if results.get("problems"):
        lines.append("- Problems: " + "; ".join(results["problems"]))
    return lines


def markdown(results: dict[str, Any]) -> str:
    header, rows = table(results)
    m = results["machine"]
    load = results.get("load", {})
    load_lines = "; ".join(f"{k} {_load_text(v)}" for k, v in load.items())
    parts = [
        f"{results['started'][:16].replace('T', ' ')} UTC: {results['messages']} messages, "
        "`mirrorsync daemon` with the default configuration (full check every 300 s), "
        f"{results['events']} events per direction spaced {GAP} s apart; latency in seconds.",
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(["---"] + ["---:"] * (len(header) - 2) + ["---"]) + " |",
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
        *facts(results),
        f"- CPU: {m['cpu']}, {m['nproc']} CPUs; memory {m['memory_gib']} GiB; "
        f"{m['os']}, kernel {m['kernel']}; Maildir on {m['filesystem']}",
        f"- Python {m['python']}; Dovecot {m['dovecot']}; mirrorsync {m.get('mirrorsync', '?')} "
        f"(sources {results.get('mirrorsync_tree_sha256', '?')})",
        f"- Load average (1 min) during the run: {load_lines}",
    ]
    return "\n".join(parts)


# -- main -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/daemon_latency.py",
        description="Measure how fast `mirrorsync daemon` propagates changes each way, "
        "its CPU use while idle and its memory before and after a burst of events.",
    )
    p.add_argument("--messages", type=int, default=10000, help="corpus size (default 10000)")
    p.add_argument("--events", type=int, default=50, help="timed events per direction (50)")
    p.add_argument(
        "--idle-seconds", type=float, default=600, help="idle phase length (default 600)"
    )
    p.add_argument(
        "--burst", type=int, default=1000,
        help="events in the memory burst, half appends, half renames (default 1000)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=1, help="corpus seed (default 1)")
    p.add_argument(
        "--corpus-dir", type=Path,
        help="corpus cache (default /var/tmp/mirrorsync-bench-corpus-N, shared with run.py)",
    )  # fmt: skip
    p.add_argument("--workdir", type=Path, help="work directory (default: a new one in /var/tmp)")
    p.add_argument(
        "--results", type=Path, default=REPO / "bench" / "daemon-results.json",
        help="JSON output (default bench/daemon-results.json)",
    )  # fmt: skip
    p.add_argument(
        "--mirrorsync-src", type=Path, default=REPO,
        help="directory holding the mirrorsync project or package (default: this tree)",
    )  # fmt: skip
    p.add_argument(
        "--venv", type=Path, default=DAEMON_VENV,
        help=f"venv to install mirrorsync into (default {DAEMON_VENV})",
    )  # fmt: skip
    p.add_argument(
        "--event-timeout", type=float, default=60,
        help="seconds after which an event counts as missed (default 60)",
    )  # fmt: skip
    p.add_argument(
        "--timeout", type=float, default=1800,
        help="seconds for the initial sync and the daemon's first sync (default 1800)",
    )  # fmt: skip
    p.add_argument("--keep", action="store_true", help="keep the work dir (Dovecot is stopped)")
    args = p.parse_args(argv)
    if args.messages < 100 or args.events < 1 or args.burst < 0 or args.idle_seconds < 0:
        p.error("need --messages >= 100, --events >= 1, --burst >= 0, --idle-seconds >= 0")
    args.corpus_dir = args.corpus_dir or Path(
        f"/var/tmp/mirrorsync-bench-corpus-{args.messages}"
        + (f"-seed{args.seed}" if args.seed != 1 else "")
    )
    return args


def _sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks: cleanup runs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    if os.geteuid() != 0:
        print("daemon-bench: warning: not root; Dovecot as set up here needs root", file=sys.stderr)
    t_start = time.perf_counter()
    corpus, generated = ensure_corpus(args.corpus_dir, args.messages, args.seed)
    print(
        f"daemon-bench: corpus {'generated' if generated else 'cached'} in {args.corpus_dir}: "
        f"{len(corpus.messages)} messages, {corpus.total_bytes / 1e6:.0f} MB"
    )
    if args.workdir:
        workdir = args.workdir.resolve()
        if workdir.exists() and any(workdir.iterdir()):
            raise SystemExit(f"daemon-bench: --workdir {workdir} is not empty")
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        workdir = Path(tempfile.mkdtemp(prefix="mirrorsync-daemon-bench-", dir="/var/tmp"))
    os.chmod(workdir, 0o755)  # Dovecot's user must reach the mail below it

    run = Run(args, corpus, workdir)
    res = run.results
    res.update(
        messages=len(corpus.messages),
        seed=args.seed,
        events=args.events,
        idle_seconds=args.idle_seconds,
        burst_events=args.burst,
        started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        workdir=str(workdir),
        targets={"median": TARGET_MEDIAN, "p95": TARGET_P95},
        poll_seconds={"local": LOCAL_POLL, "server": SERVER_POLL},
        gap_seconds=GAP,
    )
    res["machine"] = report.machine_info(workdir, ["mirrorsync"], args.mirrorsync_src)
    run.load.start()
    problems: list[str] = []
    res["problems"] = problems
    failed: BaseException | None = None
    try:
        with run.phase("setup"):
            run.setup()
        with run.phase("initial sync"):
            run.initial_sync()
        with run.imap() as client, run.imap() as poller:
            poller.select_folder(FOLDER, readonly=True)
            pool = candidates(run.inbox, server_uids(poller, FOLDER))
            need = 1 + args.events + (args.burst - args.burst // 2)
            if len(pool) < need:
                raise RuntimeError(
                    f"only {len(pool)} INBOX messages flagged exactly \\Seen; {need} needed "
                    "(use more --messages or fewer --events/--burst)"
                )
            pool.reverse()  # pop() takes them in file name order
            with run.phase("daemon start"):
                run.start_daemon()
                run.warm_up(client, poller, pool)
                run.memory("after start")
            with run.phase("server -> local"):
                s2l = run.server_to_local(client, "latency", args.events, args.event_timeout)
            res["server_to_local"] = s2l
            with run.phase("local -> server"):
                l2s = run.local_to_server(poller, pool, args.events)
            res["local_to_server"] = l2s
            run.memory("after the latency events")
            res["summary"] = {
                "server_to_local": summary([e["latency"] for e in s2l]),
                "local_to_server": summary([e["latency"] for e in l2s]),
                "local_flag": summary([e["latency"] for e in l2s if e["kind"] == "flag"]),
                "local_unlink": summary([e["latency"] for e in l2s if e["kind"] == "unlink"]),
            }
            save(args.results, res)
            if args.idle_seconds:
                with run.phase("idle"):
                    res["idle"] = run.idle(args.idle_seconds)
                print(
                    f"  idle: {res['idle']['cpu_seconds']:.2f} CPU s in "
                    f"{res['idle']['wall_seconds']:.0f} s"
                )
                run.memory("after the idle phase")
                save(args.results, res)
            if args.burst:
                with run.phase("burst"):
                    res["burst"] = run.burst(client, poller, pool, args.burst)
                for r in res["burst"]["rounds"]:
                    if r["appends_missed"] or r["renames_missed"]:
                        problems.append(f"burst round missed {r}")
    except BaseException as e:
        failed = e
        problems.append(f"aborted: {type(e).__name__}: {e}")
        raise
    finally:
        if run.daemon is not None:
            rc = run.daemon.stop()
            res["daemon_exit"] = rc
            res["daemon_output"] = run.daemon.lines
            print(f"daemon-bench: daemon stopped with SIGTERM: exit status {rc}")
            if rc != 0:
                problems.append(f"the daemon exited with status {rc} after SIGTERM")
            if failed is None:
                try:
                    found = run.check_inbox()
                except Exception as e:  # the check itself failed: say so, not "OK"
                    found = [f"INBOX check failed: {type(e).__name__}: {e}"]
                res["inbox_check"] = found or "same Message-IDs and flags on both sides"
                problems += found
        if run.server is not None:
            run.server.stop()
        if args.keep:
            print(f"daemon-bench: kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        run.load.stop()
        res["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
        own = resource.getrusage(resource.RUSAGE_SELF)
        res["benchmark_cpu_seconds"] = round(own.ru_utime + own.ru_stime, 1)
        res["total_seconds"] = round(time.perf_counter() - t_start, 1)
        save(args.results, res)

    print()
    print(text_table(res))
    print()
    for line in facts(res):
        print(line[2:])
    print()
    print("Markdown (for docs/benchmarks.md, under 'Daemon latency'):")
    print()
    print(markdown(res))
    print()
    print(f"daemon-bench: results in {args.results}; whole run took {res['total_seconds']:.0f}s")
    met = all(s["meets_targets"] for s in res["summary"].values())
    if problems or not met:
        print("daemon-bench: " + ("; ".join(problems) or "targets not met"))
        return 1
    return 0


def save(path: Path, results: dict[str, Any]) -> None:
    path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
