"""Bad things happening mid-sync: each ends in one clear line, the right exit status,
nothing lost or half-written, and a later run that completes the job."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from mirrorsync import maildir as maildir_mod
from mirrorsync.errors import ConnectionFailed
from mirrorsync.state import AccountLock
from tests.conftest import SettleClock
from tests.harness import Mirror, message


@pytest.fixture
def mirror(account: Any, tmp_path: Path) -> Any:
    m = Mirror(account, tmp_path)
    for n in range(30):
        m.client.append("INBOX", message(n), flags=[b"\\Seen"])
    yield m
    m.close()


def _no_partial_files(m: Mirror) -> None:
    for tmp in m.root.rglob("tmp"):
        assert not any(tmp.iterdir()), "a half-written file was left in tmp/"


def test_disk_full_is_one_line_and_the_rerun_completes(
    mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write
    written = {"n": 0}

    def failing_write(fd: int, data: Any) -> int:
        written["n"] += 1
        if written["n"] > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(maildir_mod.os, "write", failing_write)
    r = mirror.run("sync")
    assert r.status == 1
    assert "disk full" in r.err and "Traceback" not in r.err
    _no_partial_files(mirror)
    monkeypatch.setattr(maildir_mod.os, "write", real_write)
    mirror.sync()
    snap = mirror.assert_mirrored()
    assert sum(snap["INBOX"].values()) == 30 and set(snap["INBOX"].values()) == {1}


@pytest.mark.parametrize("batch", [None, 5])
def test_connection_dropped_mid_download_exits_3_and_resumes(
    mirror: Mirror, monkeypatch: pytest.MonkeyPatch, batch: int | None
) -> None:
    """With small batches (5), one batch is being written while the next is fetched
    when the connection drops: the batches before are kept, the one under way is
    removed, and the re-run neither misses nor duplicates a message."""
    from mirrorsync.imap.store import ImapStore
    from mirrorsync.sync import transfer

    if batch is not None:
        monkeypatch.setattr(transfer, "DOWNLOAD_BATCH", batch)
        monkeypatch.setattr(maildir_mod, "SYNCFS_MIN_FILES", 2)

    real_fetch = ImapStore.fetch

    def dropping_fetch(self: Any, uids: Any) -> Any:
        for i, item in enumerate(real_fetch(self, uids)):
            if i == 12:
                raise ConnectionFailed("connection to the server dropped", "re-run")
            yield item

    monkeypatch.setattr(ImapStore, "fetch", dropping_fetch)
    r = mirror.run("sync")
    assert r.status == 3, r
    assert "dropped" in r.err and len(r.err.strip().splitlines()) == 1
    if batch is not None:
        # messages 0-4 placed and recorded; 5-9 were on their way to disk: removed
        inbox = mirror.root / "INBOX"
        assert len([*(inbox / "cur").iterdir(), *(inbox / "new").iterdir()]) == 5
    _no_partial_files(mirror)
    monkeypatch.setattr(ImapStore, "fetch", real_fetch)
    mirror.sync()
    snap = mirror.assert_mirrored()
    assert sum(snap["INBOX"].values()) == 30 and set(snap["INBOX"].values()) == {1}
    _no_partial_files(mirror)


def test_a_second_run_on_a_locked_account_says_so(mirror: Mirror) -> None:
    with AccountLock(mirror.state_dir, "test"):
        r = mirror.run("sync")
    assert r.status == 1
    assert "another mirrorsync process" in r.err


def test_corrupt_state_is_rebuilt_by_content_without_duplicates(mirror: Mirror) -> None:
    mirror.sync()
    (mirror.state_dir / "state.sqlite3").write_bytes(b"garbage" * 1000)
    for p in mirror.state_dir.glob("state.sqlite3-*"):
        p.unlink()
    r = mirror.run("sync")
    assert r.status == 0, r
    assert "moved it to" in r.err
    snap = mirror.assert_mirrored()
    assert sum(snap["INBOX"].values()) == 30 and set(snap["INBOX"].values()) == {1}


def test_a_local_change_in_the_same_second_as_the_sync_is_not_missed(mirror: Mirror) -> None:
    mirror.sync()
    mirror.sync()  # records what it can of the local stamp
    f = mirror.files("INBOX")[0]
    f.rename(f.with_name(f.name.replace(":2,S", ":2,FS")))
    mirror.sync()
    assert sum(1 for fl in mirror.server_uids("INBOX").values() if "\\Flagged" in fl) == 1


def test_a_settled_unchanged_folder_is_skipped_and_a_later_change_seen(
    mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(maildir_mod.Stamp, "SETTLE_FINE", -1.0)  # trust stamps at once
    monkeypatch.setattr(maildir_mod.Stamp, "SETTLE_COARSE", -1.0)
    mirror.sync()
    mirror.sync()
    f = mirror.files("INBOX")[0]
    f.unlink()
    mirror.sync()
    assert len(mirror.server_uids("INBOX")) == 29


def test_directories_made_under_umask_000_are_private(
    account: Any, tmp_path: Path, settle_clock: SettleClock
) -> None:
    """The Maildir root, the state directory and the cache, with every parent
    mirrorsync had to make for them, are 0700 even under `umask 000`."""
    base = tmp_path / "home"
    m = Mirror(
        account,
        tmp_path / "cfg",
        local={"path": str(base / "mail" / "deep" / "Mail"), "layout": "nested"},
        state_dir=str(base / "state" / "deep" / "acct"),
    )
    m.client.append("INBOX", message(1))
    settle_clock.advance()  # the config file counts as settled: the run caches it
    cache = base / "cache" / "deep"
    old_umask = os.umask(0)
    old_cache = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(cache)
    try:
        m.sync()
    finally:
        os.umask(old_umask)
        if old_cache is not None:
            os.environ["XDG_CACHE_HOME"] = old_cache
    loose = {
        str(p.relative_to(base)): oct(p.stat().st_mode & 0o777)
        for p in [base, *base.rglob("*")]
        if p.is_dir() and p != base and p.stat().st_mode & 0o077
    }
    assert not loose, loose
    for top in ("mail", "state", "cache"):
        assert (base / top).stat().st_mode & 0o777 == 0o700
