"""The state database: schema, transactions, the lock, and a corrupt file."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest

from mirrorsync import state as state_module
from mirrorsync.errors import ExitStatus, LockedError, StateError, StateUnwritable
from mirrorsync.model import Pair
from mirrorsync.state import DB_NAME, AccountLock, FolderState, State


def test_round_trip_and_mode(tmp_path: Path) -> None:
    s = State.open(tmp_path / "st")
    with s.transaction():
        s.put_folder(FolderState("INBOX", 7, 10, 99, needs_match=True, local_stamp="a:b"))
        s.put_pairs("INBOX", [Pair(3, "k3", "h", frozenset({"\\Seen"}), frozenset({"\\Seen"}))])
    s.close()
    s = State.open(tmp_path / "st")
    assert s.folder("INBOX") == FolderState("INBOX", 7, 10, 99, True, "a:b", 0.0)
    assert s.pairs("INBOX") == [Pair(3, "k3", "h", frozenset({"\\Seen"}), frozenset({"\\Seen"}))]
    assert stat.S_IMODE(os.stat(tmp_path / "st" / DB_NAME).st_mode) == 0o600
    s.close()


def test_a_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    s = State.open(tmp_path)
    with pytest.raises(RuntimeError), s.transaction():
        s.put_folder(FolderState("A", 1))
        raise RuntimeError("boom")
    assert s.folders() == {}
    s.close()


def test_corrupt_state_is_moved_aside_not_silently_emptied(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"this is not a database" * 100)
    s = State.open(tmp_path)
    assert s.folders() == {}
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(DB_NAME + ".corrupt-")]
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not")
    s.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    s = State.open(tmp_path)
    s._db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    s.close()
    with pytest.raises(StateError, match="newer mirrorsync"):
        State.open(tmp_path)


def test_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    held = AccountLock(tmp_path, "acct").__enter__()
    with pytest.raises(LockedError, match="another mirrorsync"), AccountLock(tmp_path, "acct"):
        pass
    held.__exit__(None, None, None)
    with AccountLock(tmp_path, "acct"):
        pass


def test_archive_journal(tmp_path: Path) -> None:
    from mirrorsync.state import JournalEntry

    s = State.open(tmp_path)
    assert s.journal_count() == 0 and s.journal() == []
    a = JournalEntry("INBOX", 7, 3, "Archive/INBOX", "k3", "h3")
    b = JournalEntry("INBOX", 7, 1, "Archive/INBOX", "k1", "h1")
    c = JournalEntry("Work", 9, 1, "Old", "k", "h")
    with s.transaction():
        s.put_journal([a, b, c])
    assert s.journal_count() == 3
    assert s.journal() == [b, a, c]  # by folder, then UID
    with s.transaction():
        s.delete_journal("INBOX", [1, 3, 99])
    s.close()
    s = State.open(tmp_path)
    assert s.journal() == [c]
    s.close()


# -- a file system that is full, read-only or failing is not damage -------------------


class _Failing:
    """A connection that fails one statement as SQLite does on a full disk, and passes
    the rest to the real one (sqlite3's connections take no new attributes)."""

    def __init__(self, conn: sqlite3.Connection, on: str, error: sqlite3.Error) -> None:
        self._conn, self._on, self._error = conn, on, error

    def execute(self, sql: str, *args: Any) -> Any:
        if sql.strip().startswith(self._on):
            raise self._error
        return self._conn.execute(sql, *args)

    def executescript(self, sql: str) -> Any:
        if sql.strip().startswith(self._on):
            raise self._error
        return self._conn.executescript(sql)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def _good_state(path: Path) -> None:
    s = State.open(path)
    with s.transaction():
        s.put_folder(FolderState("INBOX", 7, 10, 99))
        s.put_pairs("INBOX", [Pair(3, "k3", "h", frozenset(), frozenset())])
    s.close()


def _intact(path: Path) -> None:
    assert not [p for p in path.iterdir() if ".corrupt-" in p.name]
    s = State.open(path)
    assert s.folder("INBOX") == FolderState("INBOX", 7, 10, 99)
    assert [p.uid for p in s.pairs("INBOX")] == [3]
    s.close()


@pytest.mark.parametrize(
    ("words", "said"),
    [
        ("database or disk is full", "no space left for the state in"),
        ("attempt to write a readonly database", "read-only file system"),
    ],
)
def test_a_full_disk_at_open_keeps_the_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, words: str, said: str
) -> None:
    """Before, any error at open moved the good database aside and started afresh
    (so deletions came back): the file system's errors now keep it."""
    _good_state(tmp_path)
    real = state_module.connect

    def connect(path: Any) -> Any:
        return _Failing(real(path), "CREATE", sqlite3.OperationalError(words))

    monkeypatch.setattr(state_module, "connect", connect)
    with pytest.raises(StateUnwritable, match=said) as got:
        State.open(tmp_path)
    assert got.value.exit_status == ExitStatus.PARTIAL
    assert str(tmp_path) in str(got.value) and "the state is kept" in str(got.value)
    monkeypatch.setattr(state_module, "connect", real)
    _intact(tmp_path)


def test_a_full_disk_at_commit_rolls_back_and_keeps_the_state(tmp_path: Path) -> None:
    _good_state(tmp_path)
    s = State.open(tmp_path)
    full = sqlite3.OperationalError("database or disk is full")
    s._db = _Failing(s._db, "COMMIT", full)  # type: ignore[assignment]
    with pytest.raises(StateUnwritable, match="no space left for the state in"), s.transaction():
        s.delete_pairs("INBOX", [3])
    assert not s._db.in_transaction
    s.close()
    _intact(tmp_path)


def test_damage_found_at_open_is_still_moved_aside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _good_state(tmp_path)
    real = state_module.connect

    def connect(path: Any) -> Any:
        damage = sqlite3.DatabaseError("database disk image is malformed")
        return _Failing(real(path), "SELECT count(*) FROM sqlite_master", damage)

    monkeypatch.setattr(state_module, "connect", connect)
    with pytest.raises(sqlite3.DatabaseError):  # the fresh file fails the same way here
        State.open(tmp_path)
    assert [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
