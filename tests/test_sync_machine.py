"""A Hypothesis state machine against the real Dovecot: random edits on both sides,
syncs (some of them killed before a random state commit), and after every completed
sync both sides must hold the same messages with the same flags, and exactly the
messages that were created and not deleted: nothing lost, nothing duplicated."""

from __future__ import annotations

import itertools
from collections import Counter
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
        # Message-ID -> how many copies must exist after a sync
        self.live: Counter[str] = Counter()
        # Since the last completed sync, per side: messages moved (to which folder)
        # and deleted. Conflicting intents keep mail, never drop it: a message deleted
        # on one side while moved on the other survives where it was moved, and one
        # moved on both sides to different folders is in both afterwards (to the same
        # folder, it is one message).
        self.moved: dict[str, dict[str, str]] = {"server": {}, "local": {}}
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
        self.live[f"<{mid}@example.org>"] += 1

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
        self.live[f"<{mid}@example.org>"] += 1

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
        self._moved("local", message_id(f.read_bytes()) or "", dst)
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
        header = c.fetch(uid, ["BODY.PEEK[HEADER]"])[uid][b"BODY[HEADER]"]
        self._moved("server", message_id(header) or "", dst)
        c.move([uid], dst)

    def _deleted(self, side: str, mid: str) -> None:
        other = "local" if side == "server" else "server"
        self.deleted[side].add(mid)
        if mid not in self.moved[other] and self.live[mid] > 0:
            self.live[mid] -= 1

    def _moved(self, side: str, mid: str, dst: str) -> None:
        other = "local" if side == "server" else "server"
        self.moved[side][mid] = dst
        if mid in self.deleted[other]:
            self.live[mid] += 1  # deleted there before, moved here: it survives

    def _resolve_moves_on_both_sides(self) -> None:
        """Before a sync: a message moved on both sides since the last one ends up in
        each folder it was moved to where it still is (once, if that is one folder)."""
        for mid in sorted(self.moved["server"].keys() & self.moved["local"].keys()):
            on_server = self.moved["server"].pop(mid)
            on_disk = self.moved["local"].pop(mid)
            there = self._on_server(on_server, mid)
            here = any(message_id(f.read_bytes()) == mid for f in self.m.files(on_disk))
            copies = int(there or here) if on_server == on_disk else int(there) + int(here)
            self.live[mid] = max(0, self.live[mid] + copies - 1)

    def _on_server(self, folder: str, mid: str) -> bool:
        c = self.m.client
        c.select_folder(folder, readonly=True)
        return bool(c.search(["HEADER", "Message-ID", mid]))

    # -- syncing

    @rule()
    def sync(self) -> None:
        self._resolve_moves_on_both_sides()
        r = self.m.run("sync", "--force")
        assert r.status == 0, r
        self.synced = True
        self._check()
        for changes in (*self.moved.values(), *self.deleted.values()):
            changes.clear()

    @precondition(lambda self: self.synced)
    @rule(kill_at=st.integers(1, 4))
    def sync_killed_then_resumed(self, kill_at: int) -> None:
        self._resolve_moves_on_both_sides()
        r = self.m.run_process("sync", "--force", env={KILL_ENV: str(kill_at)})
        assert r.status in (0, 137, -9), r
        self.sync()

    def _check(self) -> None:
        self.m.assert_mirrored()
        present = Counter(
            message_id(f.read_bytes()) or "" for folder in FOLDERS for f in self.m.files(folder)
        )
        # exactly as many copies of each message as the model says: one more is a
        # duplicate, one fewer a loss
        assert present == +self.live, "lost, resurrected or duplicated mail"

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
