"""Per-account sync state in SQLite: what was last seen in sync on both sides.

The state is the base of every three-way decision, so it is written only in
transactions and only after the change it records is durable on disk or done on the
server. A process killed at any instant leaves either the old or the new row, never
half of one; what the engine did after its last commit is recognised on the next
run (a folder left with `needs_match` is reconciled by content, so nothing is
fetched or uploaded twice).

A state file that SQLite finds damaged is moved aside (never silently emptied) and a
fresh one started: that forces a content match of every folder, which rebuilds the
pairs without losing a message; what was moved or deleted since the last sync cannot
be known then, and comes back (see `recovery` and `sync --recover`). A file system
that is full, read-only or failing says nothing against the state: then it is kept
as it is and the run stops with `StateUnwritable` (moving a good state aside would
make the next run start afresh, and messages deleted on one side would come back
from the other).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mirrorsync import flags as flagmod
from mirrorsync.errors import MirrorsyncError, StateError, StateUnwritable
from mirrorsync.model import Pair

# The lock, the file name, the schema version and how a connection is opened live in
# the import-light `statefiles`, shared with `mirrorsync.quick`.
from mirrorsync.statefiles import DB_NAME as DB_NAME
from mirrorsync.statefiles import KILL_ENV as KILL_ENV
from mirrorsync.statefiles import SCHEMA_VERSION as SCHEMA_VERSION
from mirrorsync.statefiles import AccountLock as AccountLock
from mirrorsync.statefiles import connect
from mirrorsync.xdg import private_makedirs

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS folders (
    name TEXT PRIMARY KEY,
    uidvalidity INTEGER NOT NULL,
    uidnext INTEGER NOT NULL DEFAULT 0,
    highestmodseq INTEGER NOT NULL DEFAULT 0,
    needs_match INTEGER NOT NULL DEFAULT 0,
    local_stamp TEXT NOT NULL DEFAULT '',
    last_sync REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS messages (
    folder TEXT NOT NULL,
    uid INTEGER NOT NULL,
    key TEXT NOT NULL,
    hash TEXT NOT NULL,
    remote_flags TEXT NOT NULL,
    local_flags TEXT NOT NULL,
    PRIMARY KEY (folder, uid),
    UNIQUE (folder, key)
);
-- `mirrorsync archive`'s intent log: a row is committed before a message's file is
-- placed in `dest` and removed after its server copy is expunged, so a killed run
-- is completed or rolled back by `archive.recover_archive` (see there).
CREATE TABLE IF NOT EXISTS archive_journal (
    folder TEXT NOT NULL,
    uidvalidity INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    dest TEXT NOT NULL,
    key TEXT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (folder, uid)
);
"""


# SQLite's primary result codes (the low byte of an extended code) that tell what a
# failure was about: the file system around the database, or its content.
_SQLITE_PERM, _SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_FULL, _SQLITE_CANTOPEN = 3, 8, 10, 13, 14
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26
# Python 3.10's exceptions carry no code: SQLite's own words for each (sqlite3_errstr).
_CODE_OF_WORDS = {
    "database or disk is full": _SQLITE_FULL,
    "attempt to write a readonly database": _SQLITE_READONLY,
    "disk I/O error": _SQLITE_IOERR,
    "unable to open database file": _SQLITE_CANTOPEN,
    "access permission denied": _SQLITE_PERM,
    "database disk image is malformed": _SQLITE_CORRUPT,
    "file is not a database": _SQLITE_NOTADB,
}
_ERRNO_CAUSE = {
    errno.ENOSPC: "full",
    errno.EDQUOT: "full",
    errno.EROFS: "read-only",
    errno.EIO: "io",
    errno.EACCES: "access",
    errno.EPERM: "access",
}
_NEARLY_FULL = 64 * 1024  # free bytes below which an I/O error is taken for a full disk


def _sqlite_code(e: sqlite3.Error) -> int:
    code = getattr(e, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF
    text = str(e)
    return next((c for words, c in _CODE_OF_WORDS.items() if words in text), 0)


def is_damage(e: sqlite3.Error) -> bool:
    """Whether SQLite says the file's content is broken (the one case where the state
    is moved aside and rebuilt)."""
    return _sqlite_code(e) in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


def outside_cause(e: BaseException, state_dir: Path) -> str | None:
    """The cause outside the database of a failure to use it ("full", "read-only",
    "io", "access"), or None when the failure is not the file system's. SQLite
    reports a full disk met while growing its shared-memory file as an I/O error, so
    an I/O error or a file it cannot open is judged by the directory itself."""
    if isinstance(e, OSError):
        return _ERRNO_CAUSE.get(e.errno or 0, "io")
    if not isinstance(e, sqlite3.Error):
        return None
    code = _sqlite_code(e)
    if code == _SQLITE_FULL:
        return "full"
    if code == _SQLITE_READONLY:
        return "read-only"
    if code == _SQLITE_PERM:
        return "access"
    if code not in (_SQLITE_IOERR, _SQLITE_CANTOPEN):
        return None
    try:
        fs = os.statvfs(state_dir)
    except OSError:
        return "io"
    if fs.f_flag & os.ST_RDONLY:
        return "read-only"
    if fs.f_bavail * fs.f_frsize < _NEARLY_FULL:
        return "full"
    if not os.access(state_dir, os.W_OK):
        return "access"
    return "io"


def state_error(e: sqlite3.Error | OSError, path: Path) -> MirrorsyncError:
    """The typed error for a failure to use the state database at `path`: the file
    system's (the state is kept) or the database's own."""
    cause = outside_cause(e, path.parent)
    if cause is not None:
        return StateUnwritable(str(path.parent), cause, str(e))
    return StateError(
        f"state database {path} is damaged ({e})",
        "move it aside and re-run: messages are then paired by content, and what "
        "was moved or deleted since the last sync cannot be known (see 'When the "
        "state is lost' in the README, and sync --recover)",
    )


@dataclass(frozen=True)
class FolderState:
    name: str
    uidvalidity: int
    uidnext: int = 0
    highestmodseq: int = 0
    needs_match: bool = False
    local_stamp: str = ""
    last_sync: float = 0.0


PairRow = tuple[int, str, str, str]  # uid, key, remote and local flag letters (no hash)


def pair_of(row: tuple[int, str, str, str, str]) -> Pair:
    """The pair of a stored row: uid, key, hash, remote and local flag letters."""
    uid, key, h, remote, local = row
    return Pair(uid, sys.intern(key), h, flagmod.from_letters(remote), flagmod.from_letters(local))


@dataclass(frozen=True)
class JournalEntry:
    """An archive under way: server message `uid` of `folder` (under `uidvalidity`)
    is to end up as the file with key `key` and content hash `hash` in local folder
    `dest`, and only then leave the server."""

    folder: str
    uidvalidity: int
    uid: int
    dest: str
    key: str
    hash: str


class State:
    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._db = conn
        self.path = path
        self._kill_at = int(os.environ.get(KILL_ENV, "0") or 0)
        self._commits = 0

    @classmethod
    def open(cls, state_dir: Path) -> State:
        try:
            private_makedirs(state_dir)
        except OSError as e:
            raise StateError(
                f"cannot create state directory {state_dir}: {e.strerror}",
                "check state_dir in the config and its permissions",
            ) from e
        path = state_dir / DB_NAME
        try:
            return cls._open_checked(path)
        except OSError as e:
            raise state_error(e, path) from e
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
                raise StateError(f"state database {path} is locked by another process") from e
            if not is_damage(e):
                # A full, read-only or failing file system, or anything else that
                # says nothing against the file: keep it as it is.
                raise state_error(e, path) from e
            aside = path.with_name(f"{DB_NAME}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
            os.replace(path, aside)
            log.warning(
                "state database %s was unreadable (%s); moved it to %s and starting afresh: "
                "messages are paired by content, which cannot tell what was moved or "
                "deleted since the last sync",
                path,
                e,
                aside,
            )
            return cls._open_checked(path)

    @classmethod
    def _open_checked(cls, path: Path) -> State:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        os.chmod(path, 0o600)
        conn = connect(path)
        try:
            # Reading the schema catches a file that is no database at all. A full
            # integrity check would read every page on every run, a cost that grows
            # with the mailbox; damage deeper in the file is reported when met.
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            conn.executescript(_SCHEMA)
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO meta(key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            elif int(row[0]) > SCHEMA_VERSION:
                raise StateError(
                    f"state database {path} was written by a newer mirrorsync "
                    f"(schema {row[0]}, this one knows {SCHEMA_VERSION})",
                    "upgrade mirrorsync",
                )
        except BaseException:
            conn.close()
            raise
        return cls(conn, path)

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """All of the body's writes or none. A failure of the file system (full,
        read-only, I/O) rolls back and becomes `StateUnwritable`: what the body
        recorded was already done, and the next run finds it out as after a kill."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._rollback()
                raise
            self._commits += 1
            if self._commits == self._kill_at:
                os._exit(137)
            try:
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        except sqlite3.Error as e:
            cause = outside_cause(e, self.path.parent)
            if cause is None:
                raise
            raise StateUnwritable(str(self.path.parent), cause, str(e)) from e

    def _rollback(self) -> None:
        """End a failed transaction, if SQLite has not already (it rolls back by itself
        after some errors, such as a full disk during COMMIT)."""
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    # -- account-wide values

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # -- folders

    def folders(self) -> dict[str, FolderState]:
        rows = self._db.execute(
            "SELECT name, uidvalidity, uidnext, highestmodseq, needs_match, local_stamp, "
            "last_sync FROM folders"
        ).fetchall()
        return {r[0]: FolderState(r[0], r[1], r[2], r[3], bool(r[4]), r[5], r[6]) for r in rows}

    def folder(self, name: str) -> FolderState | None:
        return self.folders().get(name)

    def put_folder(self, f: FolderState) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO folders(name, uidvalidity, uidnext, highestmodseq, "
            "needs_match, local_stamp, last_sync) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                f.name,
                f.uidvalidity,
                f.uidnext,
                f.highestmodseq,
                int(f.needs_match),
                f.local_stamp,
                f.last_sync,
            ),
        )

    def delete_folder(self, name: str) -> None:
        self._db.execute("DELETE FROM messages WHERE folder = ?", (name,))
        self._db.execute("DELETE FROM folders WHERE name = ?", (name,))

    def clear_pairs(self, folder: str) -> None:
        self._db.execute("DELETE FROM messages WHERE folder = ?", (folder,))

    # -- messages

    def pairs(self, folder: str) -> list[Pair]:
        rows = self._db.execute(
            "SELECT uid, key, hash, remote_flags, local_flags FROM messages WHERE folder = ?",
            (folder,),
        )
        return [pair_of(r) for r in rows]

    def pair_rows(self, folder: str) -> list[PairRow]:
        """The pairs as stored (flags as letters) and without their content hashes:
        what a caller that compares most of them with a listing needs, before the few
        that differ are read whole (`pairs_for`). The hashes were a third of the
        reading time of a 28,000-message folder."""
        rows: list[PairRow] = self._db.execute(
            "SELECT uid, key, remote_flags, local_flags FROM messages WHERE folder = ?",
            (folder,),
        ).fetchall()
        return rows

    def pairs_for(self, folder: str, uids: Iterable[int]) -> list[Pair]:
        """The pairs of just these UIDs: what a server-side delta needs, so its cost
        follows the change and not the folder's size."""
        wanted = sorted(set(uids))
        out: list[Pair] = []
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            rows = self._db.execute(
                "SELECT uid, key, hash, remote_flags, local_flags FROM messages "
                f"WHERE folder = ? AND uid IN ({','.join('?' * len(chunk))})",
                (folder, *chunk),
            ).fetchall()
            out += [pair_of(r) for r in rows]
        return out

    def count_pairs(self) -> dict[str, int]:
        rows = self._db.execute("SELECT folder, COUNT(*) FROM messages GROUP BY folder")
        return {r[0]: r[1] for r in rows}

    def put_pairs(self, folder: str, pairs: Iterable[Pair]) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO messages(folder, uid, key, hash, remote_flags, local_flags) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [
                (
                    folder,
                    p.uid,
                    p.key,
                    p.hash,
                    flagmod.to_letters(p.remote_flags),
                    flagmod.to_letters(p.local_flags),
                )
                for p in pairs
            ],
        )

    def delete_pairs(self, folder: str, uids: Iterable[int]) -> None:
        self._db.executemany(
            "DELETE FROM messages WHERE folder = ? AND uid = ?", [(folder, u) for u in uids]
        )

    # -- the archive journal

    def journal_count(self) -> int:
        """One cheap query, so that every run can check for an interrupted archive."""
        row = self._db.execute("SELECT COUNT(*) FROM archive_journal").fetchone()
        return int(row[0])

    def journal(self) -> list[JournalEntry]:
        rows = self._db.execute(
            "SELECT folder, uidvalidity, uid, dest, key, hash FROM archive_journal "
            "ORDER BY folder, uid"
        ).fetchall()
        return [JournalEntry(*r) for r in rows]

    def put_journal(self, entries: Iterable[JournalEntry]) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO archive_journal(folder, uidvalidity, uid, dest, key, hash) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(e.folder, e.uidvalidity, e.uid, e.dest, e.key, e.hash) for e in entries],
        )

    def delete_journal(self, folder: str, uids: Iterable[int]) -> None:
        self._db.executemany(
            "DELETE FROM archive_journal WHERE folder = ? AND uid = ?",
            [(folder, u) for u in uids],
        )
