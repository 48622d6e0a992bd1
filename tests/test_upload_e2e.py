"""Bulk uploads end to end against a real Dovecot: many new local files go up in a few
APPEND commands where the server has MULTIAPPEND (one per file where it has not), and
end up mirrored exactly, flags and dates included; a file the server refuses is named
and kept, and the others go up all the same."""

from __future__ import annotations

import imaplib
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Account, _new_account

from mirrorsync import flags as flagmod
from mirrorsync.content import message_id
from mirrorsync.imap.store import ImapStore
from mirrorsync.sync.transfer import UPLOAD_BATCH
from tests.harness import Mirror, message

LETTERS = ["", "S", "FS", "RS", "DS", "S"]


@pytest.fixture(params=["full", "basic"])
def mirror(request: Any, tmp_path: Path) -> Any:
    account = request.getfixturevalue("account" if request.param == "full" else "basic_account")
    m = Mirror(account, tmp_path)
    m.sync()
    yield m
    m.close()


@pytest.fixture
def appends(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The first write of every APPEND command sent in this process: imaplib's and
    ImapStore's MULTIAPPEND both start a command with its tag."""
    sent: list[bytes] = []
    real = imaplib.IMAP4.send

    def spy(self: imaplib.IMAP4, data: bytes) -> None:
        if re.match(rb"[A-Z]+\d+ APPEND ", data):
            sent.append(data)
        real(self, data)

    monkeypatch.setattr(imaplib.IMAP4, "send", spy)
    return sent


def new_local_folder(m: Mirror, name: str, count: int) -> dict[str, float]:
    """`count` new files in a new local folder, some in new/ and most in cur/ with
    assorted flags, each with its own mtime; Message-ID -> mtime."""
    d = m.folder_dir(name)
    for sub in ("cur", "new", "tmp"):
        (d / sub).mkdir(parents=True)
    mtimes = {}
    for n in range(count):
        data = message(f"up{n}", body="x" * (50 * (n % 7))).replace(b"\r\n", b"\n")
        if n % 10 == 9:
            path = d / "new" / f"17000{n:05d}.M{n}.host"
        else:
            path = d / "cur" / f"17000{n:05d}.M{n}.host:2,{LETTERS[n % len(LETTERS)]}"
        path.write_bytes(data)
        mtime = 1_600_000_000 + 3600 * n
        os.utime(path, (mtime, mtime))
        mtimes[f"<up{n}@example.org>"] = mtime
    return mtimes


def server_dates(m: Mirror, folder: str) -> dict[str, float]:
    c = m.client
    c.select_folder(folder, readonly=True)
    rows = c.fetch(c.search("ALL"), ["INTERNALDATE", "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
    return {
        str(message_id(row[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"])): row[b"INTERNALDATE"].timestamp()
        for row in rows.values()
    }


def test_many_new_local_files_go_up_in_few_commands(mirror: Mirror, appends: list[bytes]) -> None:
    mtimes = new_local_folder(mirror, "Bulk", 120)
    appends.clear()
    r = mirror.sync()
    assert "120 uploaded" in r.out
    if mirror.client.has_capability("MULTIAPPEND"):
        per_command = min(UPLOAD_BATCH, ImapStore.append_batch_count)
        assert len(appends) == math.ceil(120 / per_command) == 3
    else:
        assert len(appends) == 120
    snap = mirror.assert_mirrored()
    assert sum(snap["Bulk"].values()) == 120 and set(snap["Bulk"].values()) == {1}
    letters = {flagmod.to_letters(flagmod.from_letters(x)) for x in LETTERS}
    assert {flags for _hash, flags in snap["Bulk"]} == letters
    assert server_dates(mirror, "Bulk") == mtimes
    # every upload was paired: the next run has nothing to do
    appends.clear()
    r = mirror.sync()
    assert appends == [] and "uploaded" not in r.out
    assert mirror.assert_mirrored() == snap


def test_a_file_the_server_refuses_is_named_and_the_rest_go_up(
    mirror: Mirror, appends: list[bytes]
) -> None:
    """Dovecot refuses an empty message. With MULTIAPPEND that refuses its whole
    command (RFC 3502), so the engine sends that batch again one file at a time."""
    new_local_folder(mirror, "Bulk", 12)
    empty = mirror.folder_dir("Bulk") / "cur" / "1700000099.empty.host:2,S"
    empty.write_bytes(b"")
    r = mirror.run("sync")
    assert r.status == 1, r
    assert f"could not upload {empty}" in r.err
    assert "1 messages could not be uploaded" in r.err
    assert "Traceback" not in r.err
    assert empty.exists()
    server, local = mirror.server(), mirror.local()
    assert sum(server["Bulk"].values()) == 12 and set(server["Bulk"].values()) == {1}
    local["Bulk"] -= server["Bulk"]
    assert sum(local["Bulk"].values()) == 1  # only the empty file is not on the server
    # the next run tries the refused file alone, and nothing else again
    appends.clear()
    r = mirror.run("sync")
    assert r.status == 1 and f"could not upload {empty}" in r.err
    assert len(appends) == 1
    empty.unlink()
    mirror.sync()
    assert sum(mirror.assert_mirrored()["Bulk"].values()) == 12


@pytest.fixture(params=["full", "basic"])
def new_account(request: Any) -> Callable[[], Account]:
    """Fresh users, on the full Dovecot or on the one without extensions."""
    server = request.getfixturevalue("dovecot" if request.param == "full" else "dovecot_basic")
    return lambda: _new_account(server)


def test_killed_before_each_commit_of_a_bulk_upload(
    new_account: Callable[[], Account], tmp_path: Path
) -> None:
    """Die just before each state commit of a run that uploads two batches (after
    their APPENDs, before their pairs are recorded), re-run: the uploads are linked
    by content, never sent twice, and the outcome is an uninterrupted run's."""
    outcomes = {}
    kill_at = 1
    while True:
        m = Mirror(new_account(), tmp_path / f"k{kill_at}")
        m.sync()
        mtimes = new_local_folder(m, "Bulk", UPLOAD_BATCH + 10)
        killed = m.run_killed("sync", kill_at)
        snap = m.assert_mirrored()
        assert set(snap["Bulk"].values()) == {1}, f"duplicate at {kill_at}"
        assert server_dates(m, "Bulk") == mtimes
        outcomes[kill_at] = snap
        m.close()
        if not killed:
            break
        kill_at += 1
        assert kill_at < 30, "a sync that never finishes"
    assert kill_at > 3, "the run should pass through several commits"
    assert all(snap == outcomes[kill_at] for snap in outcomes.values())
