"""The archive executor and its recovery, against the in-memory fake server: what is
moved, delivered, kept and expunged, and (by failing each state commit in turn) that
an interrupted archive is completed or rolled back without loss or duplicates.
The same against a real Dovecot, killing real processes, is test_archive_e2e.py."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from fakeremote import BASIC_CAPABILITIES, FULL_CAPABILITIES, FakeRemoteStore

from mirrorsync import archive
from mirrorsync.archive import estimate, recover_archive, run_archive
from mirrorsync.config import AccountConfig, ArchiveRule, FolderFilter, LocalConfig, RemoteConfig
from mirrorsync.content import content_hash, message_id, to_lf
from mirrorsync.errors import UsageError
from mirrorsync.maildir import Maildir
from mirrorsync.model import Flags, Pair
from mirrorsync.state import FolderState, JournalEntry, State

NOW = datetime(2026, 6, 1, 12, tzinfo=timezone.utc)
OLD = datetime(2024, 3, 1, 12, tzinfo=timezone.utc)
NEW = datetime(2026, 5, 30, 12, tzinfo=timezone.utc)
SEEN: Flags = frozenset({"\\Seen"})
RULE = ArchiveRule("INBOX", older_than="1y")


def message(name: str, size: int = 0) -> bytes:
    body = ("x" * size + "\r\n") if size else "hello\r\n"
    return (
        f"Message-ID: <{name}@archive.test>\r\nSubject: {name}\r\nFrom: a@b.example\r\n\r\n{body}"
    ).encode()


class World:
    """One account: the fake server, the Maildir, the state, a config."""

    def __init__(self, tmp: Path, capabilities: frozenset[str] = FULL_CAPABILITIES) -> None:
        self.tmp = tmp
        self.remote = FakeRemoteStore(capabilities)
        self.maildir = Maildir(tmp / "Mail")
        self.maildir.root.mkdir(parents=True)
        self.maildir.create_folder("INBOX")
        self.state = State.open(tmp / "state")
        self.account = AccountConfig(
            name="test",
            remote=RemoteConfig(host="localhost", username="u", port=143),
            local=LocalConfig(tmp / "Mail", local_only=("Archive", "Archive/*")),
            state_dir=tmp / "state",
        )
        self.lines: list[str] = []

    def synced(
        self, folder: str, name: str, flags: Flags = SEEN, date: datetime = OLD, size: int = 0
    ) -> tuple[int, str]:
        """A message on the server and in the Maildir, paired, as a sync leaves it."""
        data = message(name, size)
        uid = self.remote.inject(folder, data, flags, date, create=True)
        mfolder = self.maildir.create_folder(folder)
        key = mfolder.new_key()
        mfolder.deliver(key, to_lf(data), flags)
        status = self.remote.statuses()[folder]
        with self.state.transaction():
            self.state.put_folder(FolderState(folder, status.uidvalidity, status.uidnext))
            self.state.put_pairs(folder, [Pair(uid, key, content_hash(to_lf(data)), flags, flags)])
        return uid, key

    def server_only(
        self, folder: str, name: str, flags: Flags = SEEN, date: datetime = OLD, size: int = 0
    ) -> int:
        return self.remote.inject(folder, message(name, size), flags, date, create=True)

    def run(self, rules: tuple[ArchiveRule, ...] = (RULE,), dry_run: bool = False) -> Any:
        return run_archive(
            self.account,
            self.remote,
            self.maildir,
            self.state,
            rules,
            dry_run,
            self.lines.append,
            now=NOW,
        )

    def reopen(self) -> None:
        """As a new process would find things: the state from disk."""
        self.state.close()
        self.state = State.open(self.tmp / "state")

    # -- looking

    def server_ids(self, folder: str) -> list[str]:
        f = self.remote.folders.get(folder)
        return sorted(str(message_id(m.data)) for m in f.messages.values()) if f else []

    def local_files(self, folder: str) -> list[Path]:
        d = self.maildir.folder(folder).path
        if not d.exists():
            return []
        return sorted(p for sub in ("cur", "new") for p in (d / sub).iterdir())

    def local_ids(self, folder: str) -> list[str]:
        return sorted(str(message_id(p.read_bytes())) for p in self.local_files(folder))

    def all_local_ids(self) -> list[str]:
        return sorted(
            str(message_id(p.read_bytes()))
            for p in self.maildir.root.rglob("*")
            if p.is_file() and p.parent.name in ("cur", "new")
        )


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.state.close()


def mid(name: str) -> str:
    return f"<{name}@archive.test>"


def test_moves_synced_files_delivers_the_rest_and_keeps_flagged_unread_and_new(
    world: World,
) -> None:
    _, key = world.synced("INBOX", "synced")
    before = world.local_files("INBOX")[0]
    inode = before.stat().st_ino
    world.server_only("INBOX", "server-only", frozenset({"\\Seen", "\\Answered"}))
    world.synced("INBOX", "flagged", frozenset({"\\Seen", "\\Flagged"}))
    world.synced("INBOX", "unread", frozenset())
    world.synced("INBOX", "recent", SEEN, NEW)
    world.server_only("INBOX", "deleted", frozenset({"\\Seen", "\\Deleted"}))

    report = world.run()

    archived = [mid("server-only"), mid("synced")]
    assert world.local_ids("Archive/INBOX") == archived
    assert world.server_ids("INBOX") == sorted(
        [mid("flagged"), mid("unread"), mid("recent"), mid("deleted")]
    )
    assert world.local_ids("INBOX") == sorted([mid("flagged"), mid("unread"), mid("recent")])
    # the synced file was moved (same inode, same key), not copied
    moved = [p for p in world.local_files("Archive/INBOX") if p.name.startswith(key)]
    assert len(moved) == 1 and moved[0].stat().st_ino == inode
    # the delivered one carries the server's flags
    other = next(p for p in world.local_files("Archive/INBOX") if not p.name.startswith(key))
    assert other.name.endswith(":2,RS")
    assert key not in {p.key for p in world.state.pairs("INBOX")}
    assert world.state.journal_count() == 0
    assert report.messages == 2
    assert report.bytes == len(message("synced")) + len(message("server-only"))
    assert report.per_folder == {"INBOX": (2, report.bytes)}
    assert "Archive" not in world.remote.folders and "Archive/INBOX" not in world.remote.folders
    assert any("archived 2 messages" in line for line in world.lines)


def test_dry_run_changes_nothing(world: World) -> None:
    world.synced("INBOX", "a")
    world.server_only("INBOX", "b")
    pairs, files = world.state.pairs("INBOX"), world.local_files("INBOX")
    report = world.run(dry_run=True)
    assert report.messages == 2 and report.bytes == len(message("a")) + len(message("b"))
    assert world.server_ids("INBOX") == [mid("a"), mid("b")]
    assert world.state.pairs("INBOX") == pairs and world.local_files("INBOX") == files
    assert not world.maildir.folder("Archive/INBOX").exists()
    assert world.lines == ["[test] INBOX: would archive 2 messages (140 B) to Archive/INBOX"]


def test_size_rule_and_two_rules_count_a_message_once(world: World) -> None:
    world.synced("INBOX", "small")
    world.synced("INBOX", "big", size=5000)
    world.synced("INBOX", "big-new", SEEN, NEW, size=5000)
    big = ArchiveRule("INBOX", larger_than=4000, to="Archive/big")
    found = estimate(world.account, world.remote, (big, RULE), now=NOW)
    assert [(t.dest, n) for t, n, _b in found] == [("Archive/big", 2), ("Archive/INBOX", 1)]
    report = world.run((big, RULE))
    assert report.messages == 3
    assert world.local_ids("Archive/big") == sorted([mid("big"), mid("big-new")])
    assert world.local_ids("Archive/INBOX") == [mid("small")]
    assert world.server_ids("INBOX") == []


def test_a_local_file_that_differs_from_the_server_is_kept(world: World) -> None:
    world.synced("INBOX", "edited")
    path = world.local_files("INBOX")[0]
    path.write_bytes(path.read_bytes() + b"edited locally\n")
    report = world.run()
    assert report.messages == 0 and report.kept == 1
    assert world.server_ids("INBOX") == [mid("edited")]
    assert world.local_files("INBOX") == [path]


def test_a_message_deleted_locally_since_the_sync_is_left_to_the_sync(world: World) -> None:
    world.synced("INBOX", "gone")
    world.local_files("INBOX")[0].unlink()
    report = world.run()
    assert report.messages == 0 and report.kept == 1
    assert world.server_ids("INBOX") == [mid("gone")]
    assert world.all_local_ids() == []


@pytest.mark.parametrize("why", ["needs_match", "uidvalidity", "never synced"])
def test_a_folder_with_unfinished_sync_work_is_skipped(world: World, why: str) -> None:
    world.synced("INBOX", "a")
    row = world.state.folder("INBOX")
    assert row is not None
    with world.state.transaction():
        if why == "needs_match":
            world.state.put_folder(FolderState("INBOX", row.uidvalidity, needs_match=True))
        elif why == "uidvalidity":
            world.state.put_folder(FolderState("INBOX", row.uidvalidity + 1))
        else:
            world.state.delete_folder("INBOX")
    report = world.run()
    assert report.messages == 0 and "INBOX" in report.skipped
    assert "sync first" in report.skipped["INBOX"]
    assert world.server_ids("INBOX") == [mid("a")]


def test_an_unsynced_folder_is_delivered_from_the_server(world: World) -> None:
    """A folder the sync excludes has no local copies to move: the server's bytes
    are delivered into the archive."""
    world.server_only("Old", "o1")
    account = world.account
    world.account = AccountConfig(
        account.name,
        account.remote,
        account.local,
        account.state_dir,
        folders=FolderFilter(exclude=("Old",)),
    )
    report = world.run((ArchiveRule("Old", older_than="1y"),))
    assert report.messages == 1
    assert world.local_ids("Archive/Old") == [mid("o1")] and world.server_ids("Old") == []


def test_flags_changed_on_the_server_since_the_sync_are_kept(world: World) -> None:
    uid, _ = world.synced("INBOX", "a")
    world.remote.set_flags("INBOX", uid, {"\\Seen", "\\Answered"})
    world.run()
    (path,) = world.local_files("Archive/INBOX")
    assert path.name.endswith(":2,RS")


def test_large_messages_are_streamed(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive, "LARGE_MESSAGE", 1000)
    world.synced("INBOX", "big-synced", size=3000)
    world.server_only("INBOX", "big-server", frozenset({"\\Seen", "$Forwarded"}), size=3000)
    report = world.run()
    assert report.messages == 2
    assert world.local_ids("Archive/INBOX") == [mid("big-server"), mid("big-synced")]
    contents = {p.read_bytes() for p in world.local_files("Archive/INBOX")}
    assert contents == {to_lf(message(n, 3000)) for n in ("big-synced", "big-server")}
    assert any(p.name.endswith(":2,PS") for p in world.local_files("Archive/INBOX"))
    assert world.server_ids("INBOX") == []


def test_without_uidplus_a_message_left_flagged_keeps_a_pair(tmp_path: Path) -> None:
    """Without UIDPLUS the store does not expunge while another client's \\Deleted
    message would go too; the pair then stays, so the next sync expunges it instead
    of downloading it again."""
    w = World(tmp_path, BASIC_CAPABILITIES)
    uid, key = w.synced("INBOX", "a")
    fresh = w.server_only("INBOX", "b")
    w.server_only("INBOX", "theirs", frozenset({"\\Seen", "\\Deleted"}), NEW)
    report = w.run()
    assert report.messages == 0 and report.kept == 2
    assert w.local_ids("Archive/INBOX") == [mid("a"), mid("b")]
    pairs = {p.uid: p.key for p in w.state.pairs("INBOX")}
    assert pairs[uid] == key and fresh in pairs
    assert not w.local_files("INBOX")  # to the sync: deleted locally -> expunge
    w.state.close()


def test_destination_must_be_local_only(world: World) -> None:
    world.synced("INBOX", "a")
    with pytest.raises(UsageError, match="not a local-only folder"):
        world.run((ArchiveRule("INBOX", older_than="1y", to="Elsewhere"),))
    assert world.server_ids("INBOX") == [mid("a")]


# -- recovery ------------------------------------------------------------------------


def test_recovery_is_one_count_when_the_journal_is_empty(world: World) -> None:
    world.remote.calls.clear()
    assert recover_archive(world.remote, world.maildir, world.state) == 0
    assert world.remote.calls == []


def test_recovery_completes_or_rolls_back_each_row(world: World) -> None:
    uid_moved, key_moved = world.synced("INBOX", "moved")  # file in Archive, still on server
    uid_done, key_done = world.synced("INBOX", "done")  # file in Archive, already expunged
    uid_stay, key_stay = world.synced("INBOX", "stayed")  # never left INBOX
    status = world.remote.statuses()["INBOX"]
    src = world.maildir.folder("INBOX")
    dst = world.maildir.create_folder("Archive/INBOX")
    local = src.scan()
    rows = []
    for uid, key in ((uid_moved, key_moved), (uid_done, key_done), (uid_stay, key_stay)):
        h = content_hash(src.read(local[key]))
        rows.append(JournalEntry("INBOX", status.uidvalidity, uid, dst.name, key, h))
    rows.append(JournalEntry("INBOX", status.uidvalidity, 999, dst.name, "never-placed", "h"))
    with world.state.transaction():
        world.state.put_journal(rows)
    src.move_to(local[key_moved], dst)
    src.move_to(local[key_done], dst)
    world.remote.expunge_external("INBOX", [uid_done])

    assert recover_archive(world.remote, world.maildir, world.state) == 4
    assert world.state.journal_count() == 0
    assert world.server_ids("INBOX") == [mid("stayed")]
    assert world.local_ids("Archive/INBOX") == [mid("done"), mid("moved")]
    assert world.local_ids("INBOX") == [mid("stayed")]
    assert [p.uid for p in world.state.pairs("INBOX")] == [uid_stay]


def test_recovery_after_the_server_renumbered_expunges_nothing(world: World) -> None:
    uid, key = world.synced("INBOX", "a")
    status = world.remote.statuses()["INBOX"]
    src, dst = world.maildir.folder("INBOX"), world.maildir.create_folder("Archive/INBOX")
    msg = src.scan()[key]
    row = JournalEntry("INBOX", status.uidvalidity, uid, dst.name, key, content_hash(src.read(msg)))
    with world.state.transaction():
        world.state.put_journal([row])
    src.move_to(msg, dst)
    world.remote.set_uidvalidity("INBOX", status.uidvalidity + 5)
    assert recover_archive(world.remote, world.maildir, world.state) == 1
    assert world.server_ids("INBOX") == [mid("a")]  # its UID means nothing now
    assert world.state.journal_count() == 0


# -- interrupted at every commit -----------------------------------------------------


class Killed(BaseException):
    """Stands for kill -9 just before a state commit (see state.KILL_ENV)."""


@contextlib.contextmanager
def dying_at(n: int) -> Iterator[list[int]]:
    """Fail the n-th state commit from here on, as the process would die there."""
    count = [0]
    original = State.transaction

    @contextlib.contextmanager
    def transaction(self: State) -> Iterator[None]:
        with original(self):
            yield
            count[0] += 1
            if count[0] == n:
                raise Killed

    State.transaction = transaction  # type: ignore[method-assign]
    try:
        yield count
    finally:
        State.transaction = original  # type: ignore[method-assign]


def _scenario(w: World) -> list[str]:
    """Synced and server-only messages, small and (with LARGE_MESSAGE lowered) large,
    in two folders and batches; returns the Message-IDs to be archived."""
    names = []
    for i in range(3):
        w.synced("INBOX", f"s{i}")
        w.server_only("INBOX", f"r{i}")
        names += [f"s{i}", f"r{i}"]
    w.synced("INBOX", "big-s", size=3000)
    w.server_only("INBOX", "big-r", size=3000)
    w.synced("Work", "w0")
    w.server_only("Work", "w1")
    w.synced("INBOX", "keep", SEEN, NEW)
    return sorted(mid(n) for n in [*names, "big-s", "big-r", "w0", "w1"])


RULES = (RULE, ArchiveRule("Work", older_than="1y", to="Archive"))


def test_interrupted_before_each_commit_then_rerun_loses_and_duplicates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archive, "LARGE_MESSAGE", 1000)
    monkeypatch.setattr(archive, "BATCH", 2)
    n = 1
    while True:
        w = World(tmp_path / f"k{n}")
        expected = _scenario(w)
        everything = sorted([*expected, mid("keep")])
        with dying_at(n) as count:
            try:
                w.run(RULES)
                died = False
            except Killed:
                died = True
        # what a kill leaves: every message exactly once somewhere, locally or not
        w.reopen()
        if died:
            w.run(RULES)
        assert w.state.journal_count() == 0, n
        assert w.all_local_ids() == everything, f"lost or duplicated locally at commit {n}"
        assert sorted(w.local_ids("Archive/INBOX") + w.local_ids("Archive")) == expected, n
        assert w.server_ids("INBOX") == [mid("keep")] and w.server_ids("Work") == [], n
        assert {p.key for p in w.state.pairs("INBOX")} <= {
            p.name.split(":2,")[0] for p in w.local_files("INBOX")
        }, n
        assert not w.state.pairs("Work"), n
        w.state.close()
        if not died:
            break
        n += 1
        assert n < 60
    assert count[0] >= 10, "the scenario should pass through many commits"


def test_a_failed_expunge_is_settled_by_the_end_of_the_run(world: World) -> None:
    from mirrorsync.errors import ServerError

    world.synced("INBOX", "a")
    world.server_only("INBOX", "b")
    world.remote.fail("expunge", ServerError("expunge 'INBOX' failed: NO [INUSE] try later"))
    report = world.run()
    assert "INUSE" in report.failed["INBOX"]
    # the files were in place: the end-of-run recovery expunged them after all
    assert world.state.journal_count() == 0
    assert world.server_ids("INBOX") == [] and world.local_ids("INBOX") == []
    assert world.local_ids("Archive/INBOX") == [mid("a"), mid("b")]
    assert world.state.pairs("INBOX") == []
