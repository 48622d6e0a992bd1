#!/usr/bin/env python3
"""A soak of `mirrorsync daemon`: a working day's load on both sides, then a ledger audit.

    python3 bench/soak.py --minutes 60 [--seed 1] [--json out.json]

One throw-away Dovecot (NOTIFY, or IDLE only with --idle), one account seeded with a
few hundred messages, an initial `mirrorsync sync`, then `mirrorsync daemon` (run from
this tree) while two actors work, each every 0.2-2 s, and write every action into one
ledger:

- another IMAP client: appends, flag changes, expunges, UID MOVE, COPY+EXPUNGE, new
  folders;
- a mail reader on the Maildir: flag renames, new/ -> cur/, renames into other folders,
  copy then delete, deletions, deliveries.

On a schedule the daemon gets SIGHUP and SIGUSR1, and Dovecot is restarted. At the end
the daemon is asked for a full sync (SIGUSR1), both sides are left to settle, the daemon
is stopped with SIGTERM (it must exit 0), and both sides are compared with the ledger,
message by message (by Message-ID):

- lost: a message the ledger says exists is missing on a side;
- duplicated: more than one copy on a side;
- resurrected: a message the ledger says was deleted is back;
- diverged: the folder or the flags (\\Seen, \\Flagged) differ from the ledger or
  between the two sides.

Races are judged leniently: when both sides acted on one message within `RACE_WINDOW`
seconds of each other (before the first action could have been synced), or while the
server was down, either outcome is accepted (present or deleted, any folder it was in,
any flags), as long as both sides agree and neither holds a duplicate. Everything else
is judged strictly.

Latencies are measured each way: server -> Maildir from just before an APPEND until the
file is in the folder, Maildir -> server from a delivery into new/ until UID SEARCH finds
it. Samples taken within `DISTURBED` seconds of a restart or SIGHUP are reported apart
(a reconnect is not push latency). The daemon's RSS, descriptors, threads and CPU are
sampled every few seconds. tests/test_soak_e2e.py runs three minutes of it in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import imapclient
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.mail import letters_of_imap, read_message_id, split_info
from devtools.devserver import Dovecot

REPO = Path(__file__).resolve().parent.parent
USER, PASSWORD = "soak", "soak-pw"
FOLDERS = ("INBOX", "Work", "Lists", "Archive")
SEED_MESSAGES = 160  # the whole account at the start, spread over FOLDERS
MAX_NEW_FOLDERS = 3
RACE_WINDOW = 10.0  # seconds: actions of both sides on one message this close are a race
DISTURBED = 12.0  # seconds after a restart or SIGHUP whose latency samples are set apart
SETTLE = 90.0  # seconds to wait at the end for both sides to match the ledger
SAMPLE_EVERY = 5.0
COMPARED = "FS"  # the flags the actors change; others are not compared
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- the ledger ----------------------------------------------------------------------


@dataclass
class Action:
    t: float  # seconds since the start
    side: str  # "server", "local" or "seed"
    kind: str
    folder: str | None  # where the message is afterwards; None: deleted
    flags: str  # its compared flags afterwards ("" when deleted)


@dataclass
class Ledger:
    """Every action, by Message-ID, in the order they were made."""

    actions: dict[str, list[Action]] = field(default_factory=dict)
    outages: list[tuple[float, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, mid: str, action: Action) -> None:
        with self.lock:
            self.actions.setdefault(mid, []).append(action)

    def where(self, mid: str) -> tuple[str | None, str]:
        with self.lock:
            last = self.actions[mid][-1]
            return last.folder, last.flags

    def live(self, folder: str | None = None) -> list[str]:
        with self.lock:
            return sorted(
                mid
                for mid, acts in self.actions.items()
                if acts[-1].folder is not None and (folder is None or acts[-1].folder == folder)
            )

    def raced(self, mid: str) -> bool:
        """Both sides acted on the message within RACE_WINDOW seconds, or one acted
        during a server outage (its change could not be synced before the other's)."""
        acts = self.actions[mid]
        for a, b in itertools.pairwise(acts):
            if {a.side, b.side} == {"server", "local"} and b.t - a.t < RACE_WINDOW:
                return True
        return any(
            a.side == "local" and start - RACE_WINDOW <= a.t <= end + DISTURBED
            for a in acts
            for start, end in self.outages
        )


def compared(letters: str) -> str:
    return "".join(sorted(set(letters) & set(COMPARED)))


def message(mid: str, n: int) -> bytes:
    return (
        f"From: soak@example.org\r\nTo: you@example.org\r\nSubject: soak {n}\r\n"
        f"Message-ID: {mid}\r\nDate: Thu, 03 Dec 2026 12:00:00 +0000\r\n\r\n"
        f"Body of soak message {n}.\r\n"
    ).encode()


# -- the sides -----------------------------------------------------------------------


def imap(server: Dovecot) -> Any:
    c = imapclient.IMAPClient(server.host, server.port, ssl=False, timeout=30)
    c.login(USER, PASSWORD)
    return c


def server_view(server: Dovecot) -> dict[str, dict[str, list[str]]]:
    """folder -> Message-ID -> compared flags of every copy."""
    c = imap(server)
    try:
        out: dict[str, dict[str, list[str]]] = {}
        for attrs, _d, name in c.list_folders():
            if b"\\Noselect" in attrs:
                continue
            folder = "INBOX" if name.upper() == "INBOX" else name
            info = c.select_folder(name, readonly=True)
            msgs: dict[str, list[str]] = {}
            if int(info.get(b"EXISTS", 0)):
                uids = c.search(["ALL"])
                got = c.fetch(uids, ["FLAGS", "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
                for uid, data in got.items():
                    if b"\\Deleted" in data[b"FLAGS"]:
                        continue
                    head = data[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"]
                    mid = _mid(head) or f"<uid {uid}>"
                    msgs.setdefault(mid, []).append(compared(letters_of_imap(data[b"FLAGS"])))
            out[folder] = msgs
        return out
    finally:
        with contextlib.suppress(Exception):
            c.logout()


def _mid(head: bytes) -> str | None:
    for line in head.splitlines():
        if line.lower().startswith(b"message-id:"):
            return line.split(b":", 1)[1].strip().decode("ascii", "replace")
    return None


def local_folders(root: Path) -> list[str]:
    found = []
    for entry in sorted(os.listdir(root)) if root.exists() else []:
        if (root / entry / "cur").is_dir() and (root / entry / "new").is_dir():
            found.append(entry)
    return found


class LocalIndex:
    """Message-IDs of Maildir files, read once per unique name (a rename keeps it)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._mids: dict[str, str | None] = {}

    def files(self, folder: str) -> Iterator[tuple[str, Path]]:
        """(Message-ID, path) of every file in the folder now."""
        for sub in ("cur", "new"):
            try:
                names = os.listdir(self.root / folder / sub)
            except FileNotFoundError:
                continue
            for name in names:
                if name.startswith("."):
                    continue
                path = self.root / folder / sub / name
                key = split_info(name)[0]
                mid = self._mids.get(key)
                if mid is None:
                    try:
                        mid = read_message_id(path)
                    except FileNotFoundError:
                        continue
                    self._mids[key] = mid
                if mid is not None:
                    yield mid, path

    def view(self) -> dict[str, dict[str, list[str]]]:
        out: dict[str, dict[str, list[str]]] = {}
        for folder in local_folders(self.root):
            msgs: dict[str, list[str]] = {}
            for mid, path in self.files(folder):
                letters = split_info(path.name)[2] if path.parent.name == "cur" else ""
                msgs.setdefault(mid, []).append(compared(letters))
            out[folder] = msgs
        return out


# -- the daemon ----------------------------------------------------------------------


def _ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


@dataclass
class Sample:
    t: float
    rss_kb: int
    fds: int
    threads: int
    cpu_s: float


def sample(pid: int, t: float) -> Sample | None:
    try:
        status = {
            k: v.split()[0]
            for k, _, v in (
                line.partition(":") for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            )
            if v.strip()
        }
        return Sample(
            round(t, 1),
            int(status["VmRSS"]),
            len(os.listdir(f"/proc/{pid}/fd")),
            int(status["Threads"]),
            _ticks(pid) / CLK_TCK,
        )
    except (OSError, KeyError, ValueError):
        return None


# -- the soak ------------------------------------------------------------------------


@dataclass
class Result:
    minutes: float
    seed: int
    mode: str
    actions: dict[str, int]
    lost: list[str]
    duplicated: list[str]
    resurrected: list[str]
    diverged: list[str]
    raced: int
    messages: int
    latency: dict[str, dict[str, float | int]]
    latency_disturbed: dict[str, dict[str, float | int]]
    samples: list[Sample]
    daemon_exit: int | None
    stop_seconds: float
    settle_seconds: float
    syncs: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.resurrected or self.diverged) and (
            self.daemon_exit == 0
        )


def summary(xs: list[float]) -> dict[str, float | int]:
    if not xs:
        return {"n": 0}
    s = sorted(xs)
    return {
        "n": len(s),
        "median": round(statistics.median(s), 3),
        "p95": round(s[min(len(s) - 1, int(0.95 * len(s)))], 3),
        "max": round(s[-1], 3),
    }


class Soak:
    def __init__(
        self,
        base: Path,
        seconds: float,
        seed: int,
        idle: bool = False,
        messages: int = SEED_MESSAGES,
    ) -> None:
        self.base = base
        self.seconds = seconds
        self.seed_messages = messages
        self.rnd_server = random.Random(seed)
        self.rnd_local = random.Random(seed + 1)
        self.seed = seed
        self.idle = idle
        self.root = base / "Mail"
        self.ledger = Ledger()
        # Dovecot's own temporary base: its unprivileged processes must be able to
        # reach it, which a pytest tmp_path (under a 0700 directory) does not allow.
        self.server = Dovecot(
            capabilities=(
                "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ UIDPLUS MOVE "
                "CONDSTORE QRESYNC ESEARCH LIST-EXTENDED LIST-STATUS NAMESPACE CHILDREN"
                if idle
                else None
            ),
        )
        self.counter = 0
        self.counter_lock = threading.Lock()
        self.t0 = time.monotonic()
        self.stop = threading.Event()
        self.server_gate = threading.Lock()  # held while Dovecot restarts
        self.counts: dict[str, int] = {}
        self.pending_down: dict[str, tuple[float, str]] = {}  # mid -> (t, folder)
        self.pending_up: dict[str, tuple[float, str]] = {}
        self.pending_lock = threading.Lock()
        self.lat: dict[str, list[float]] = {"server->maildir": [], "maildir->server": []}
        self.lat_disturbed: dict[str, list[float]] = {"server->maildir": [], "maildir->server": []}
        self.disturbances: list[float] = []
        self.samples: list[Sample] = []
        self.new_folders = 0
        self.problems: list[str] = []
        self.daemon: subprocess.Popen[bytes] | None = None
        self.index = LocalIndex(self.root)

    # -- helpers

    def now(self) -> float:
        return time.monotonic() - self.t0

    def new_mid(self) -> tuple[str, int]:
        with self.counter_lock:
            self.counter += 1
            return f"<soak-{self.seed}-{self.counter}@example.org>", self.counter

    def count(self, kind: str) -> None:
        with self.counter_lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1

    def forget(self, mid: str) -> None:
        """A message acted on again before it arrived: its latency is not push latency."""
        with self.pending_lock:
            self.pending_down.pop(mid, None)
            self.pending_up.pop(mid, None)

    def disturbed(self, t: float) -> bool:
        return any(d - 1.0 <= t <= d + DISTURBED for d in self.disturbances) or any(
            s <= t <= e + DISTURBED for s, e in self.ledger.outages
        )

    def record_latency(self, way: str, started: float, seen: float) -> None:
        target = self.lat_disturbed if self.disturbed(started) else self.lat
        target[way].append(seen - started)

    # -- setup

    def setup(self) -> None:
        self.server.start()
        self.server.add_user(USER, PASSWORD)
        c = imap(self.server)
        for folder in FOLDERS[1:]:
            c.create_folder(folder)
        for folder in FOLDERS:
            for _ in range(self.seed_messages // len(FOLDERS)):
                mid, n = self.new_mid()
                flags = self.rnd_server.choice(["", "S", "S", "FS", "F"])
                c.append(folder, message(mid, n), flags=_imap_flags(flags))
                self.ledger.add(mid, Action(0.0, "seed", "seed", folder, flags))
        c.logout()
        cfg = {
            "accounts": {
                "soak": {
                    "remote": {
                        "host": self.server.host,
                        "port": self.server.port,
                        "tls": "none",
                        "username": USER,
                        "password": PASSWORD,
                    },
                    "local": {"path": str(self.root)},
                    "state_dir": str(self.base / "state"),
                    "daemon": {
                        "full_check_interval": 120,
                        "debounce": 0.3,
                        # Without NOTIFY, one IDLE connection per seeded folder.
                        "idle_folders": list(FOLDERS),
                    },
                }
            }
        }
        (self.base / "config.yaml").write_text(yaml.safe_dump(cfg))
        subprocess.run(self.cli("sync"), env=self.env(), check=True, capture_output=True)

    def env(self) -> dict[str, str]:
        return {**os.environ, "XDG_CACHE_HOME": str(self.base / "cache"), "PYTHONPATH": str(REPO)}

    def cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "mirrorsync", "-c", str(self.base / "config.yaml"), *args]

    # -- the server actor

    def server_actor(self) -> None:
        client: Any = None
        while not self.stop.wait(self.rnd_server.uniform(0.2, 2.0)):
            with self.server_gate:
                try:
                    if client is None:
                        client = imap(self.server)
                    self.server_act(client)
                except (OSError, imapclient.exceptions.IMAPClientError) as e:
                    self.count(f"server error {type(e).__name__}")
                    client = None
        if client is not None:
            with contextlib.suppress(Exception):
                client.logout()

    def server_folders(self) -> list[str]:
        return list(FOLDERS) + [f"New{i}" for i in range(1, self.new_folders + 1)]

    def find_on_server(self, client: Any, mid: str, folder: str) -> list[int]:
        client.select_folder(folder)
        return list(client.search(["HEADER", "Message-ID", mid]))

    def server_act(self, client: Any) -> None:
        rnd = self.rnd_server
        kind = rnd.choices(
            ["append", "flag", "expunge", "move", "copy+expunge", "folder"],
            [35, 30, 10, 12, 10, 3],
        )[0]
        folders = self.server_folders()
        if kind == "folder":
            if self.new_folders >= MAX_NEW_FOLDERS:
                kind = "append"
            else:
                self.new_folders += 1
                client.create_folder(f"New{self.new_folders}")
                self.count("server folder")
                return
        if kind == "append":
            # With IDLE only the seeded folders are watched: new folders wait for the
            # full check, which is not push latency.
            folder = rnd.choice(list(FOLDERS) if self.idle else self.server_folders())
            mid, n = self.new_mid()
            flags = rnd.choice(["", "", "S", "F"])
            t = self.now()
            with self.pending_lock:
                self.pending_down[mid] = (t, folder)
            client.append(folder, message(mid, n), flags=_imap_flags(flags))
            self.ledger.add(mid, Action(t, "server", kind, folder, flags))
            self.count("server append")
            return
        live = self.ledger.live()
        if not live:
            return
        mid = rnd.choice(live)
        at, flags = self.ledger.where(mid)
        assert at is not None
        folder = at
        uids = self.find_on_server(client, mid, folder)
        if len(uids) != 1:
            self.count("server skipped (not there yet)")
            return
        uid = uids[0]
        t = self.now()
        self.forget(mid)
        if kind == "flag":
            letter = rnd.choice("FS")
            got = client.get_flags([uid]).get(uid, ())
            now_flags = compared(letters_of_imap(got))
            if letter in now_flags:
                client.remove_flags([uid], _imap_flags(letter))
                after = now_flags.replace(letter, "")
            else:
                client.add_flags([uid], _imap_flags(letter))
                after = compared(now_flags + letter)
            self.ledger.add(mid, Action(t, "server", kind, folder, after))
        elif kind == "expunge":
            client.add_flags([uid], [b"\\Deleted"])
            client.uid_expunge([uid])
            self.ledger.add(mid, Action(t, "server", kind, None, ""))
        else:
            target = rnd.choice([f for f in folders if f != folder])
            got = client.get_flags([uid]).get(uid, ())
            now_flags = compared(letters_of_imap(got))
            if kind == "move":
                client.move([uid], target)
            else:
                client.copy([uid], target)
                client.add_flags([uid], [b"\\Deleted"])
                client.uid_expunge([uid])
            self.ledger.add(mid, Action(t, "server", kind, target, now_flags))
        self.count(f"server {kind}")

    # -- the local actor

    def local_actor(self) -> None:
        while not self.stop.wait(self.rnd_local.uniform(0.2, 2.0)):
            try:
                self.local_act()
            except OSError as e:  # the daemon renamed the file meanwhile
                self.count(f"local error {type(e).__name__}")

    def local_act(self) -> None:
        rnd = self.rnd_local
        kind = rnd.choices(
            ["deliver", "flag", "new->cur", "rename-folder", "copy+delete", "delete"],
            [25, 30, 10, 12, 10, 13],
        )[0]
        folders = local_folders(self.root)
        if kind == "deliver":
            folder = rnd.choice(folders)
            mid, n = self.new_mid()
            name = f"{int(time.time())}.soak{n}_{os.getpid()}.soakhost"
            tmp = self.root / folder / "tmp" / name
            tmp.write_bytes(message(mid, n).replace(b"\r\n", b"\n"))
            t = self.now()
            with self.pending_lock:
                self.pending_up[mid] = (t, folder)
            os.rename(tmp, self.root / folder / "new" / name)
            self.ledger.add(mid, Action(t, "local", kind, folder, ""))
            self.count("local deliver")
            return
        live = self.ledger.live()
        if not live:
            return
        mid = rnd.choice(live)
        at, _ = self.ledger.where(mid)
        assert at is not None
        folder = at
        paths = [p for m, p in self.index.files(folder) if m == mid]
        if len(paths) != 1:
            self.count("local skipped (not there yet)")
            return
        path = paths[0]
        in_new = path.parent.name == "new"
        letters = "" if in_new else split_info(path.name)[2]
        key = split_info(path.name)[0]
        t = self.now()
        self.forget(mid)
        if kind == "new->cur" and not in_new:
            kind = "flag"
        if kind == "flag":
            if in_new:
                return
            letter = rnd.choice("FS")
            new_letters = "".join(sorted(set(letters) ^ {letter}))
            os.rename(path, path.parent / f"{key}:2,{new_letters}")
            self.ledger.add(mid, Action(t, "local", kind, folder, compared(new_letters)))
        elif kind == "new->cur":
            os.rename(path, path.parent.parent / "cur" / f"{key}:2,")
            self.ledger.add(mid, Action(t, "local", kind, folder, ""))
        elif kind == "delete":
            os.unlink(path)
            self.ledger.add(mid, Action(t, "local", kind, None, ""))
        else:
            others = [f for f in folders if f != folder]
            if not others:
                return
            target = rnd.choice(others)
            sub = path.parent.name
            if kind == "rename-folder":
                os.rename(path, self.root / target / sub / path.name)
            else:
                _, n = self.new_mid()
                name = f"{int(time.time())}.soakcopy{n}_{os.getpid()}.soakhost"
                tmp = self.root / target / "tmp" / name
                shutil.copyfile(path, tmp)
                info = f":2,{letters}" if sub == "cur" else ""
                copy = self.root / target / sub / (name + info)
                os.rename(tmp, copy)
                try:
                    os.unlink(path)
                except FileNotFoundError:  # the daemon renamed it meanwhile: undo
                    os.unlink(copy)
                    raise
            self.ledger.add(mid, Action(t, "local", kind, target, compared(letters)))
        self.count(f"local {kind}")

    # -- watching latencies

    def watcher(self) -> None:
        client: Any = None
        next_server = 0.0
        while not self.stop.is_set():
            time.sleep(0.05)
            with self.pending_lock:
                down = dict(self.pending_down)
                up = dict(self.pending_up)
            for folder in {f for _, f in down.values()}:
                for mid, _path in self.index.files(folder):
                    if mid in down and down[mid][1] == folder:
                        with self.pending_lock:
                            got = self.pending_down.pop(mid, None)
                        if got is not None:
                            self.record_latency("server->maildir", got[0], self.now())
            if up and time.monotonic() >= next_server:
                next_server = time.monotonic() + 0.2
                if not self.server_gate.acquire(timeout=0.1):
                    continue
                try:
                    if client is None:
                        client = imap(self.server)
                    for folder in sorted({f for _, f in up.values()}):
                        client.select_folder(folder, readonly=True)
                        for mid, (_t, f) in up.items():
                            if f == folder and client.search(["HEADER", "Message-ID", mid]):
                                with self.pending_lock:
                                    got = self.pending_up.pop(mid, None)
                                if got is not None:
                                    self.record_latency("maildir->server", got[0], self.now())
                except (OSError, imapclient.exceptions.IMAPClientError):
                    client = None
                finally:
                    self.server_gate.release()

    def sampler(self) -> None:
        while not self.stop.wait(SAMPLE_EVERY):
            if self.daemon is not None:
                s = sample(self.daemon.pid, self.now())
                if s is not None:
                    self.samples.append(s)

    # -- the schedule

    def schedule(self) -> list[tuple[float, str]]:
        """(seconds, event): SIGHUP, SIGUSR1 and Dovecot restarts, spread over the run
        (at least one of each; more in longer runs)."""
        events: list[tuple[float, str]] = []
        for frac, what in ((0.25, "SIGHUP"), (0.45, "SIGUSR1"), (0.6, "restart")):
            events.append((self.seconds * frac, what))
        t = 600.0
        while t < self.seconds - 60:
            events += [(t, "restart"), (t + 120, "SIGHUP"), (t + 240, "SIGUSR1")]
            t += 600.0
        return sorted(events)

    def disturb(self, what: str) -> None:
        assert self.daemon is not None
        if what == "SIGHUP":
            self.disturbances.append(self.now())
            self.daemon.send_signal(signal.SIGHUP)
        elif what == "SIGUSR1":
            self.daemon.send_signal(signal.SIGUSR1)
        else:
            with self.server_gate:
                start = self.now()
                self.server.stop()
                time.sleep(2.0)
                self.server.start()
                self.ledger.outages.append((start, self.now()))

    # -- the run

    def run(self) -> Result:
        self.setup()
        log = (self.base / "daemon.log").open("wb")
        self.daemon = subprocess.Popen(
            self.cli("-v", "daemon"), env=self.env(), stdout=log, stderr=subprocess.STDOUT
        )
        wait_for(lambda: b"listening" in (self.base / "daemon.log").read_bytes(), 30)
        self.t0 = time.monotonic()
        threads = [
            threading.Thread(target=f, daemon=True)
            for f in (self.server_actor, self.local_actor, self.watcher, self.sampler)
        ]
        for th in threads:
            th.start()
        for at, what in self.schedule():
            if self.stop.wait(max(0.0, at - self.now())):
                break
            self.disturb(what)
        self.stop.wait(max(0.0, self.seconds - self.now()))
        self.stop.set()
        for th in threads:
            th.join(30)
        # Settle: a full sync, then wait until both sides match (or give up).
        settle_start = time.monotonic()
        self.daemon.send_signal(signal.SIGUSR1)
        time.sleep(3)
        while time.monotonic() - settle_start < SETTLE:
            if not self.judge()[0]:
                break
            time.sleep(3)
        settle = time.monotonic() - settle_start
        end = sample(self.daemon.pid, self.now())
        if end is not None:
            self.samples.append(end)
        stop_start = time.monotonic()
        self.daemon.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.daemon.wait(30)
        except subprocess.TimeoutExpired:
            self.daemon.kill()
            code = None
        stop_seconds = time.monotonic() - stop_start
        log.close()
        problems, verdict, raced = self.judge()
        text = (self.base / "daemon.log").read_text(errors="replace")
        return Result(
            minutes=round(self.seconds / 60, 2),
            seed=self.seed,
            mode="IDLE" if self.idle else "NOTIFY",
            actions=dict(sorted(self.counts.items())),
            lost=verdict["lost"],
            duplicated=verdict["duplicated"],
            resurrected=verdict["resurrected"],
            diverged=verdict["diverged"],
            raced=raced,
            messages=len(self.ledger.live()),
            latency={k: summary(v) for k, v in self.lat.items()},
            latency_disturbed={k: summary(v) for k, v in self.lat_disturbed.items()},
            samples=self.samples,
            daemon_exit=code,
            stop_seconds=round(stop_seconds, 2),
            settle_seconds=round(settle, 1),
            syncs=text.count("] sync #"),
            problems=problems[:50],
        )

    # -- the audit

    def judge(self) -> tuple[list[str], dict[str, list[str]], int]:
        """Compare both sides with the ledger: (problems, by kind, raced messages)."""
        sides = {"server": server_view(self.server), "maildir": self.index.view()}
        located: dict[str, dict[str, list[tuple[str, str]]]] = {}  # side -> mid -> [(f, flags)]
        for side, view in sides.items():
            for folder, msgs in view.items():
                for mid, flag_sets in msgs.items():
                    for flags in flag_sets:
                        located.setdefault(side, {}).setdefault(mid, []).append((folder, flags))
        verdict: dict[str, list[str]] = {
            "lost": [],
            "duplicated": [],
            "resurrected": [],
            "diverged": [],
        }
        raced = 0
        with self.ledger.lock:
            mids = dict(self.ledger.actions)
        for mid, acts in mids.items():
            here = {side: located.get(side, {}).get(mid, []) for side in sides}
            for side, copies in here.items():
                if len(copies) > 1:
                    verdict["duplicated"].append(f"{mid} {side}: {copies}")
            if self.ledger.raced(mid):
                raced += 1
                # Either outcome, but both sides agree (folder and flags).
                s, m = here["server"][:1], here["maildir"][:1]
                folders = {a.folder for a in acts}
                if bool(s) != bool(m):
                    verdict["lost"].append(f"{mid} (raced) only on {'server' if s else 'maildir'}")
                elif s and (s[0] != m[0] or s[0][0] not in folders):
                    verdict["diverged"].append(f"{mid} (raced) server {s} maildir {m}")
                continue
            last = acts[-1]
            for side, copies in here.items():
                if last.folder is None:
                    if copies:
                        verdict["resurrected"].append(
                            f"{mid} {side}: {copies} after {last.side} {last.kind}"
                        )
                elif not copies:
                    verdict["lost"].append(f"{mid} {side}: expected in {last.folder}")
                elif copies[0] != (last.folder, last.flags):
                    verdict["diverged"].append(
                        f"{mid} {side}: {copies[0]} expected {(last.folder, last.flags)} "
                        f"after {last.side} {last.kind} at {last.t:.1f}s"
                    )
        for side in sides:
            for mid in located.get(side, {}):
                if mid not in mids:
                    verdict["duplicated"].append(f"{mid} {side}: not in the ledger")
        problems = [f"{k}: {x}" for k, xs in verdict.items() for x in xs]
        return problems, verdict, raced

    def close(self) -> None:
        self.stop.set()
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.kill()
            self.daemon.wait(10)
        self.server.cleanup()


def _imap_flags(letters: str) -> list[bytes]:
    return [{"S": b"\\Seen", "F": b"\\Flagged"}[c] for c in letters]


def wait_for(check: Any, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(OSError):
            if check():
                return
        time.sleep(0.1)
    raise TimeoutError("the daemon did not start listening")


def run(
    minutes: float,
    seed: int = 1,
    idle: bool = False,
    base: Path | None = None,
    messages: int = SEED_MESSAGES,
) -> Result:
    """Run one soak in `base` (a fresh temporary directory by default) and audit it."""
    own = base is None
    where = Path(tempfile.mkdtemp(prefix="mirrorsync-soak-")) if base is None else base
    soak = Soak(where, minutes * 60, seed, idle, messages)
    try:
        return soak.run()
    finally:
        soak.close()
        if own:
            shutil.rmtree(where, ignore_errors=True)


def report(r: Result) -> str:
    lines = [
        f"soak: {r.minutes} min, seed {r.seed}, push {r.mode}, {r.messages} messages at the end, "
        f"{r.syncs} syncs, {r.raced} raced messages judged leniently",
        "actions: " + ", ".join(f"{k} {v}" for k, v in r.actions.items()),
    ]
    for way, s in r.latency.items():
        d = r.latency_disturbed[way]
        lines.append(
            f"{way}: n {s.get('n')}, median {s.get('median', '-')} s, p95 {s.get('p95', '-')} s, "
            f"max {s.get('max', '-')} s (after restarts/SIGHUP: n {d.get('n')}, "
            f"max {d.get('max', '-')} s)"
        )
    if r.samples:
        first, last = r.samples[0], r.samples[-1]
        cpu = (last.cpu_s - first.cpu_s) / max(1.0, last.t - first.t) * 100
        lines.append(
            f"daemon: RSS {min(s.rss_kb for s in r.samples) // 1024}-"
            f"{max(s.rss_kb for s in r.samples) // 1024} MB, descriptors "
            f"{min(s.fds for s in r.samples)}-{max(s.fds for s in r.samples)}, threads "
            f"{min(s.threads for s in r.samples)}-{max(s.threads for s in r.samples)}, "
            f"CPU {cpu:.1f}% of a core"
        )
    lines.append(
        f"exit {r.daemon_exit} after SIGTERM in {r.stop_seconds} s; settled in "
        f"{r.settle_seconds} s; lost {len(r.lost)}, duplicated {len(r.duplicated)}, "
        f"resurrected {len(r.resurrected)}, diverged {len(r.diverged)}"
    )
    lines += r.problems[:20]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--idle", action="store_true", help="take NOTIFY away: push by IDLE")
    ap.add_argument("--messages", type=int, default=SEED_MESSAGES, help="account size at the start")
    ap.add_argument("--keep", type=Path, help="run in this directory and keep it (logs)")
    ap.add_argument("--json", type=Path, help="write the full result here")
    args = ap.parse_args(argv)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    r = run(args.minutes, args.seed, args.idle, args.keep, args.messages)
    print(report(r))
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(r), indent=1))
    return 0 if r.ok else 1


if __name__ == "__main__":
    socket.setdefaulttimeout(60)
    sys.exit(main())
