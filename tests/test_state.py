"""The state database: schema, transactions, the lock, and a corrupt file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mirrorsync.errors import LockedError, StateError
from mirrorsync.state import DB_NAME, AccountLock, FolderState, Pair, State


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
