"""`sync --verify` (and the daemon's periodic check) against a real Dovecot: drifts
that a folder's counts and MODSEQ cannot show, made here by editing the state the
way a bug or a lost write would, are found and healed; a second copy of a synced
message is reported with its Message-ID and never copied to the other side."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from mirrorsync.state import DB_NAME
from tests.conftest import SettleClock
from tests.harness import Mirror, message


@pytest.fixture(autouse=True)
def _no_oracle(monkeypatch: pytest.MonkeyPatch) -> None:
    """A drift is, by construction, what the fast paths cannot see: the plan oracle,
    which holds them equal to the full path, would rightly stop the plain syncs these
    tests make to show that. A verifying run is the full path itself."""
    from mirrorsync.sync.oracle import ENV

    monkeypatch.delenv(ENV, raising=False)


@pytest.fixture
def steady(account: Any, tmp_path: Path, settle_clock: SettleClock) -> Mirror:
    """INBOX with three messages, in steady state: the fast paths skip it."""
    m = Mirror(account, tmp_path)
    for n in (1, 2, 3):
        m.client.append("INBOX", message(n))
    m.sync()
    settle_clock.advance()
    m.sync()
    settle_clock.advance()
    assert "no changes" in m.sync().out
    return m


def db(m: Mirror) -> sqlite3.Connection:
    return sqlite3.connect(m.state_dir / DB_NAME)


def record_server_position(m: Mirror) -> None:
    """Make the state's folder row claim the server's present position, as if the
    last sync had seen everything there is: the drift the issue describes."""
    status = m.client.folder_status("INBOX", ["UIDNEXT", "HIGHESTMODSEQ"])
    with db(m) as conn:
        conn.execute(
            "UPDATE folders SET uidnext = ?, highestmodseq = ? WHERE name = 'INBOX'",
            (status[b"UIDNEXT"], status[b"HIGHESTMODSEQ"]),
        )


def test_a_missed_expunge_is_found_only_by_verify(
    steady: Mirror, settle_clock: SettleClock
) -> None:
    m = steady
    m.client.select_folder("INBOX")
    m.client.delete_messages([3])
    m.client.expunge()
    record_server_position(m)
    assert "no changes" in m.sync().out  # counts and MODSEQ agree: nothing to see
    r = m.sync("--verify")
    assert "1 deleted locally" in r.out, r
    assert len(m.files("INBOX")) == 2
    m.assert_mirrored()
    settle_clock.advance()
    assert "no changes" in m.sync("--verify").out


def test_a_lost_state_row_is_linked_by_verify_not_copied(
    steady: Mirror, settle_clock: SettleClock
) -> None:
    m = steady
    with db(m) as conn:
        conn.execute("DELETE FROM messages WHERE folder = 'INBOX' AND uid = 2")
    assert "no changes" in m.sync().out
    r = m.sync("--verify")
    assert "1 linked" in r.out and "uploaded" not in r.out and "downloaded" not in r.out, r
    assert len(m.server_uids("INBOX")) == 3 and len(m.files("INBOX")) == 3
    settle_clock.advance()
    assert "no changes" in m.sync("--verify").out


def test_a_second_server_copy_the_state_lost_is_reported_not_downloaded(
    steady: Mirror, settle_clock: SettleClock
) -> None:
    """A drift as the soak found it: the server holds a copy of a synced message that
    the state does not know (here: it was synced, then its row and file were lost)."""
    m = steady
    m.client.append("INBOX", message(1))  # UID 4, the same content as UID 1
    m.sync()
    with db(m) as conn:
        (key,) = conn.execute(
            "SELECT key FROM messages WHERE folder = 'INBOX' AND uid = 4"
        ).fetchone()
        conn.execute("DELETE FROM messages WHERE folder = 'INBOX' AND uid = 4")
    (copy,) = [p for p in m.files("INBOX") if p.name.startswith(key)]
    copy.unlink()
    settle_clock.advance()
    assert "no changes" in m.sync().out
    r = m.sync("--verify")
    assert r.status == 0, r
    assert "1 duplicates on server (not downloaded)" in r.out, r
    assert "a copy of UID 1, Message-ID <1@example.org>" in r.err, r
    assert len(m.files("INBOX")) == 3  # nothing downloaded
    assert len(m.server_uids("INBOX")) == 4  # nothing deleted either: the user decides
    # Said again on every verifying run, never acted on.
    r = m.sync("--verify")
    assert "1 duplicates on server (not downloaded)" in r.out
    assert len(m.files("INBOX")) == 3


def test_a_copy_made_since_the_last_sync_is_synced_as_usual(
    steady: Mirror,
) -> None:
    """Another client's copy of a message into the same folder is its own doing, not a
    drift: it is downloaded, verifying or not."""
    m = steady
    m.client.select_folder("INBOX")
    m.client.copy([1], "INBOX")
    r = m.sync("--verify")
    assert "1 downloaded" in r.out and "duplicates" not in r.out, r
    assert len(m.files("INBOX")) == 4
    m.assert_mirrored()
