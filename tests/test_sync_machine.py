"""A Hypothesis state machine against the real Dovecot: random edits on both sides,
syncs (some of them killed before a random state commit), and after every completed
sync both sides must hold the same messages with the same flags, and exactly the
messages that were created and not deleted: nothing lost, nothing duplicated."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from mirrorsync import flags as flagmod
from mirrorsync.content import message_id
from mirrorsync.state import KILL_ENV
from tests.harness import Mirror, message

FOLDERS = ["INBOX", "Work", "Ärger/Alt"]
FLAGS = sorted(flagmod.SYNCED_FLAGS - {"\\Deleted"})
flag_sets = st.frozensets(st.sampled_from(FLAGS))
_ids = itertools.count()


class SyncMachine(RuleBasedStateMachine):
    make_account: Any = None
    tmp: Path = Path()

    def __init__(self) -> None:
        super().__init__()
        n = next(_ids)
        self.m = Mirror(self.make_account(), self.tmp / f"run{n}")
        for f in FOLDERS[1:]:
            self.m.client.create_folder(f)
        self.live: set[str] = set()  # Message-IDs that must exist after a sync
        # Since the last completed sync: messages moved on one side, deleted on the
        # other. A message deleted on one side while moved on the other survives, in
        # the folder it was moved to: the move is no deletion, and keeping is safe.
        self.moved: dict[str, set[str]] = {"server": set(), "local": set()}
        self.deleted: dict[str, set[str]] = {"server": set(), "local": set()}
        self.serial = itertools.count()
        self.synced = False

    def teardown(self) -> None:
        self.m.close()

    def _new_id(self) -> str:
        return f"m{next(self.serial)}"

    # -- the server, edited by another client

    @rule(folder=st.sampled_from(FOLDERS), flags=flag_sets)
    def server_append(self, folder: str, flags: frozenset[str]) -> None:
        mid = self._new_id()
        self.m.client.append(folder, message(mid), flags=sorted(flags))
        self.live.add(f"<{mid}@example.org>")

    @rule(folder=st.sampled_from(FOLDERS), data=st.data())
    def server_edit(self, folder: str, data: Any) -> None:
        uids = self.m.server_uids(folder)
        if not uids:
            return
        uid = data.draw(st.sampled_from(sorted(uids)))
        c = self.m.client
        c.select_folder(folder)
        if data.draw(st.booleans()):
            c.set_flags(uid, sorted(data.draw(flag_sets)))
        else:
            mid = message_id(c.fetch(uid, ["BODY.PEEK[HEADER]"])[uid][b"BODY[HEADER]"])
            c.add_flags(uid, ["\\Deleted"])
            c.uid_expunge([uid])
            self._deleted("server", mid or "")

    # -- the Maildir, edited by a mail reader

    @precondition(lambda self: self.synced)
    @rule(folder=st.sampled_from(FOLDERS), flags=flag_sets)
    def local_add(self, folder: str, flags: frozenset[str]) -> None:
        mid = self._new_id()
        letters = flagmod.to_letters(flags)
        sub, name = (
            ("cur", f"1700.{mid}.host:2,{letters}") if letters else ("new", f"1700.{mid}.host")
        )
        (self.m.folder_dir(folder) / sub / name).write_bytes(message(mid).replace(b"\r\n", b"\n"))
        self.live.add(f"<{mid}@example.org>")

    @precondition(lambda self: self.synced)
    @rule(folder=st.sampled_from(FOLDERS), data=st.data())
    def local_edit(self, folder: str, data: Any) -> None:
        files = self.m.files(folder)
        if not files:
            return
        f = data.draw(st.sampled_from(files))
        if data.draw(st.booleans()):
            key = f.name.split(":2,")[0]
            letters = flagmod.to_letters(data.draw(flag_sets))
            f.rename(f.parent.parent / "cur" / f"{key}:2,{letters}")
        else:
            mid = message_id(f.read_bytes())
            f.unlink()
            self._deleted("local", mid or "")

    @precondition(lambda self: self.synced)
    @rule(src=st.sampled_from(FOLDERS), dst=st.sampled_from(FOLDERS), data=st.data())
    def local_move(self, src: str, dst: str, data: Any) -> None:
        files = self.m.files(src)
        if not files or src == dst:
            return
        f = data.draw(st.sampled_from(files))
        self._moved("local", message_id(f.read_bytes()) or "")
        if data.draw(st.booleans()):
            f.rename(self.m.folder_dir(dst) / f.parent.name / f.name)  # notmuch, aerc
        else:  # mutt: a copy under a new name, then the original removed
            (self.m.folder_dir(dst) / "cur" / f"1800.c{next(self.serial)}.host:2,S").write_bytes(
                f.read_bytes()
            )
            f.unlink()

    @rule(src=st.sampled_from(FOLDERS), dst=st.sampled_from(FOLDERS), data=st.data())
    def server_move(self, src: str, dst: str, data: Any) -> None:
        uids = self.m.server_uids(src)
        if not uids or src == dst:
            return
        uid = data.draw(st.sampled_from(sorted(uids)))
        c = self.m.client
        c.select_folder(src)
        self._moved(
            "server", message_id(c.fetch(uid, ["BODY.PEEK[HEADER]"])[uid][b"BODY[HEADER]"]) or ""
        )
        c.move([uid], dst)

    def _deleted(self, side: str, mid: str) -> None:
        other = "local" if side == "server" else "server"
        self.deleted[side].add(mid)
        if mid not in self.moved[other]:
            self.live.discard(mid)

    def _moved(self, side: str, mid: str) -> None:
        other = "local" if side == "server" else "server"
        self.moved[side].add(mid)
        if mid in self.deleted[other]:
            self.live.add(mid)  # deleted there before, moved here: it survives

    # -- syncing

    @rule()
    def sync(self) -> None:
        r = self.m.run("sync", "--force")
        assert r.status == 0, r
        self.synced = True
        self._check()
        for changes in (*self.moved.values(), *self.deleted.values()):
            changes.clear()

    @precondition(lambda self: self.synced)
    @rule(kill_at=st.integers(1, 4))
    def sync_killed_then_resumed(self, kill_at: int) -> None:
        r = self.m.run_process("sync", "--force", env={KILL_ENV: str(kill_at)})
        assert r.status in (0, 137, -9), r
        self.sync()

    def _check(self) -> None:
        snap = self.m.assert_mirrored()
        assert all(n == 1 for f in snap.values() for n in f.values()), "duplicated"
        present: list[str] = []
        for folder in FOLDERS:
            for f in self.m.files(folder):
                present.append(message_id(f.read_bytes()) or "")
        assert sorted(present) == sorted(self.live), "lost or resurrected mail"

    @invariant()
    def nothing_written_to_tmp(self) -> None:
        if self.synced:
            for folder in FOLDERS:
                assert not any((self.m.folder_dir(folder) / "tmp").iterdir())


@pytest.mark.dovecot
def test_random_edits_on_both_sides_converge(make_account: Any, tmp_path: Path) -> None:
    SyncMachine.make_account = staticmethod(make_account)
    SyncMachine.tmp = tmp_path
    run = SyncMachine.TestCase
    run.settings = settings(
        max_examples=20,
        stateful_step_count=14,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    run().runTest()
