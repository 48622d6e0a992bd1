"""Floors: what no tool built like mirrorsync can go below, measured in the same run.

Two costs sit under every mirrorsync run and are not mirrorsync's to remove:

* **Start-up.** A fresh Python process that imports the libraries the project is
  built on (imapclient and the standard library's sqlite3). Timed as the median of
  a few runs of exactly that, with the interpreter mirrorsync runs under.
* **The server's own work.** A "floor" user holds the same corpus and receives the
  same batches as the tools' users. After each phase's batch, a client that does
  nothing but learn what changed (raw socket: LOGIN, ENABLE QRESYNC, one
  LIST-STATUS, then a ``SELECT ... (QRESYNC ...)`` of each folder whose
  HIGHESTMODSEQ moved, responses read and thrown away) is timed. Dovecot re-reads a
  maildir that another client changed when it is next looked at, so this is the
  least any client pays to hear of the batch, before writing anything anywhere.

For the local batch the server's part is what the tools must ask of it: the probe
makes the batch's changes on the floor user as a client that knows exactly what
changed would (per folder: SELECT, one ``UID STORE ... FLAGS.SILENT`` per resulting
flag list, ``+FLAGS.SILENT (\\Deleted)`` and ``UID EXPUNGE`` for the deletions; then
the new messages in one MULTIAPPEND), with the UIDs looked up beforehand, untimed. Any
tool must also list the changed folders to find a reader's changes; the time to
list every folder of one Maildir (names only, as `os.scandir` gives them) is added.

Neither is a target; they say how far below a peer a target can be met at all.
"""

from __future__ import annotations

import os
import re
import socket
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.changes import Batch
from bench.mail import imap_of_letters, to_crlf

STATUS_ITEMS = "UIDVALIDITY UIDNEXT MESSAGES HIGHESTMODSEQ"
_STATUS_RE = re.compile(rb'^\* STATUS ("(?:[^"\\]|\\.)*"|\S+) \(([^)]*)\)')


def startup_seconds(python: str, runs: int = 7) -> float:
    """Median wall time of `python -c "import imapclient, sqlite3"`."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([python, "-c", "import imapclient, sqlite3"], check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


class Probe:
    """The floor user's view: the HIGHESTMODSEQ and UIDVALIDITY of each folder as
    the probe last saw them, so the next probe selects only what changed since."""

    def __init__(self, host: str, port: int, user: str, password: str) -> None:
        self.host, self.port = host, port
        self.user, self.password = user, password
        self.known: dict[bytes, tuple[int, int]] = {}  # quoted name -> (validity, modseq)

    def run(self) -> tuple[float, int]:
        """(seconds, folders selected) for one probe."""
        started = time.perf_counter()
        sock = socket.create_connection((self.host, self.port), timeout=600)
        try:
            reader = sock.makefile("rb")
            tags = iter(range(1, 1 << 30))

            def command(text: str) -> list[bytes]:
                tag = f"f{next(tags)}".encode()
                sock.sendall(tag + b" " + text.encode() + b"\r\n")
                lines = []
                while True:
                    line = reader.readline()
                    if not line:
                        raise ConnectionError("the server closed the connection")
                    if line.startswith(tag + b" "):
                        if not line.startswith(tag + b" OK"):
                            raise RuntimeError(f"{text.split()[0]}: {line!r}")
                        return lines
                    lines.append(line)

            reader.readline()  # greeting
            command(f'LOGIN "{self.user}" "{self.password}"')
            command("ENABLE QRESYNC")
            now: dict[bytes, tuple[int, int]] = {}
            for line in command(f'LIST "" "*" RETURN (STATUS ({STATUS_ITEMS}))'):
                m = _STATUS_RE.match(line)
                if m:
                    items = m.group(2).split()
                    numbers = {items[i]: int(items[i + 1]) for i in range(0, len(items), 2)}
                    now[m.group(1)] = (numbers[b"UIDVALIDITY"], numbers[b"HIGHESTMODSEQ"])
            selected = 0
            for name, (validity, modseq) in sorted(now.items()):
                before = self.known.get(name)
                if before == (validity, modseq):
                    continue
                selected += 1
                if before is None or before[0] != validity:
                    command(f"SELECT {name.decode()}")
                else:
                    command(f"SELECT {name.decode()} (QRESYNC ({validity} {before[1]}))")
            command("LOGOUT")
            self.known = now
            return time.perf_counter() - started, selected
        finally:
            sock.close()


def index(client: Any, folders: list[str]) -> dict[tuple[str, str], int]:
    """(folder, Message-ID) -> UID on the floor user: what the local floor's client
    is assumed to know already (found untimed)."""
    from bench.sides import server_folder

    return {
        (folder, mid): entries[0].where
        for folder in folders
        for mid, entries in server_folder(client, folder).items()
    }


def local_floor(client: Any, uids: dict[tuple[str, str], int], batch: Batch) -> float:
    """Seconds the server takes to make `batch` (a local batch) happen, asked by a
    client that knows exactly what changed; `uids` loses the deleted messages."""
    started = time.perf_counter()
    folders = sorted({f for f, _ in batch.flags} | {f for f, _ in batch.deletions})
    for folder in folders:
        client.select_folder(folder)
        by_flags: dict[str, list[int]] = {}
        for (f, mid), letters in batch.flags.items():
            if f == folder:
                by_flags.setdefault(letters, []).append(uids[(f, mid)])
        for letters, group in sorted(by_flags.items()):
            client.set_flags(group, imap_of_letters(letters), silent=True)
        gone = [uids.pop((f, mid)) for f, mid in batch.deletions if f == folder]
        if gone:
            client.add_flags(gone, [b"\\Deleted"], silent=True)
            client.uid_expunge(gone)
    if batch.new:  # one MULTIAPPEND for them all
        client.multiappend(
            batch.new_folder,
            [
                {"msg": to_crlf(data), "flags": imap_of_letters(letters), "date": when}
                for _mid, data, when, letters in batch.new
            ],
        )
    return time.perf_counter() - started


def scan_seconds(maildir: Path) -> float:
    """Seconds to list the names in every cur/ and new/ under `maildir`."""
    started = time.perf_counter()
    for top, dirs, _files in os.walk(maildir):
        for sub in ("cur", "new"):
            if sub in dirs:
                with os.scandir(os.path.join(top, sub)) as it:
                    for _entry in it:
                        pass
        dirs[:] = [d for d in dirs if d not in ("cur", "new", "tmp")]
    return time.perf_counter() - started
