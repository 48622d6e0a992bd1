"""The sync state machine in process, against the in-memory fake server, once per
capability set: random edits on both sides (another client on the server: append,
flags, expunge, MOVE or COPY+EXPUNGE, COPY, a UIDVALIDITY change; a mail reader on
disk: new file, flag rename, delete, rename into another folder, copy then delete),
syncs in steady state, and syncs killed before a state commit then resumed.

After every completed sync the copies of each message (by Message-ID) in each folder,
on the server and on disk, are exactly what the rules say (one more is a duplicate,
one fewer a loss), the state pairs every message once with agreeing flags, a flag
changed on one side and kept on both reached the other, and the next sync plans
nothing. The same machine against a real Dovecot, slower: test_sync_machine.py.

The rules, per folder and Message-ID, from both sides as they are just before the
sync and the pairs of the last completed one:

- a message still where it was synced on both sides stays (its flags merged);
- deleted on either side, it goes; moved away on either side, it leaves the folder;
- the arrivals (new, copied or moved in) of the server and of the disk are linked by
  content, so a folder gets max(server arrivals, local arrivals) copies: a message
  moved into a folder on both sides is there once, a message moved on one side and
  deleted or moved elsewhere on the other survives where it was moved (and in both
  folders when moved to different ones);
- a folder whose UIDVALIDITY changed has no pairs to go by: every message of either
  side is kept, identical ones linked: max(server copies, local copies).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fakeremote import (
    BASIC_CAPABILITIES,
    CONDSTORE_CAPABILITIES,
    FULL_CAPABILITIES,
    FakeRemoteStore,
)
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from mirrorsync import flags as flagmod
from mirrorsync.config import AccountConfig, LocalConfig, RemoteConfig
from mirrorsync.content import message_id
from mirrorsync.dirstamp import CLOCK_SKEW_ENV
from mirrorsync.maildir import Maildir
from mirrorsync.model import Flags
from mirrorsync.state import State
from mirrorsync.sync import plan as planner
from mirrorsync.sync.base import AccountReport, SyncOptions
from mirrorsync.sync.engine import AccountSync

# Courier: UIDPLUS, but neither MOVE nor any of the fast paths.
COURIER_CAPABILITIES = FULL_CAPABILITIES - {
    "MOVE",
    "CONDSTORE",
    "QRESYNC",
    "LIST-STATUS",
    "MULTIAPPEND",
}
CAPABILITY_SETS = {
    "full": FULL_CAPABILITIES,
    "condstore": CONDSTORE_CAPABILITIES,
    "uidplus-no-move": COURIER_CAPABILITIES,
    "basic": BASIC_CAPABILITIES,
}
FOLDERS = ["INBOX", "Work", "Ärger/Alt"]
FLAGS = sorted(flagmod.SYNCED_FLAGS - {"\\Deleted"})
MUTATING = {
    "append",
    "append_many",
    "move",
    "expunge",
    "store_flags",
    "create_folder",
    "delete_folder",
}
# Known bugs that still trip the machine, by capability set (see the report of each):
# such a set is expected to fail (xfail, not strict) and is not shrunk, to keep CI
# short. Remove an entry when its fix lands.
KNOWN_BUGS: dict[str, list[str]] = {}
# Examples per capability set; CI derandomizes them (HYPOTHESIS_PROFILE=ci).
EXAMPLES = int(os.environ.get("MIRRORSYNC_MACHINE_EXAMPLES", "2000"))
STEPS = int(os.environ.get("MIRRORSYNC_MACHINE_STEPS", "12"))

folders = st.sampled_from(FOLDERS)
# one draw per flag set (a bit mask), not one per flag: draws are much of the cost
flag_sets = st.integers(0, 2 ** len(FLAGS) - 1).map(
    lambda mask: frozenset(f for i, f in enumerate(FLAGS) if mask >> i & 1)
)
picks = st.integers(0, 15)  # index into the folder's messages, modulo their number
Where = tuple[str, str]  # (folder, Message-ID)


class Killed(BaseException):
    """Stands for kill -9 just before a state commit (see state.KILL_ENV): not an
    Exception, so nothing in the engine handles it."""


class DyingState(State):
    """The state of one run, which dies before its `die_at`-th commit (0: never)."""

    die_at = 0
    commits = 0

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with super().transaction():
            yield
            self.commits += 1
            if self.commits == self.die_at:
                raise Killed  # the transaction is rolled back: never committed


# Non-empty plans made during a run the machine watches (see `_watch_plans`).
planned: list[object] = []


def message(n: int) -> bytes:
    return f"Message-ID: <{n}@machine.test>\r\nSubject: {n}\r\n\r\nbody {n}\r\n".encode()


def _quiet(line: str) -> None:
    """Where a dry run would print its plan: the machine never asks for one."""


@functools.lru_cache(maxsize=4096)
def _mid(data: bytes) -> str:
    return message_id(data) or ""


class FakeSyncMachine(RuleBasedStateMachine):
    capabilities: frozenset[str] = FULL_CAPABILITIES
    root: Path = Path()

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(dir=self.root))
        self.remote = FakeRemoteStore(self.capabilities)
        for f in FOLDERS[1:]:
            self.remote.create_folder(f)
        self.maildir = Maildir(self.dir / "Mail")
        self.dirs = {f: self.maildir.folder(f).path for f in FOLDERS}
        self.mids: dict[str, str] = {}  # Maildir key -> Message-ID
        self.account = AccountConfig(
            name="machine",
            remote=RemoteConfig(host="fake.invalid", username="u", port=143),
            local=LocalConfig(self.dir / "Mail"),
            state_dir=self.dir / "state",
        )
        self.state = DyingState.open(self.account.state_dir)
        self.serial = itertools.count()
        # Directory mtimes a reader's edits leave: strictly increasing and in the past,
        # so each edit changes its folder's stamp as it would after time had passed
        # (the settle clock, set by the test, counts every stamp as settled).
        self.clock_ns = (int(time.time()) - 10**6) * 10**9
        # As of the last completed sync: per folder, (uid, key) -> the flags of a pair.
        self.pairs: dict[str, dict[tuple[int, str], Flags]] = {f: {} for f in FOLDERS}
        self.reset: set[str] = set()  # folders whose UIDVALIDITY changed since then

    def teardown(self) -> None:
        self.state.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- both sides as they are ---------------------------------------------------

    def server(self, folder: str) -> dict[int, tuple[str, Flags]]:
        f = self.remote.folders[folder]
        return {u: (_mid(m.data), flagmod.normalize(m.flags)) for u, m in f.messages.items()}

    def folder_dir(self, folder: str) -> Path:
        return self.dirs[folder]

    def files(self, folder: str) -> dict[str, Path]:
        """key -> path of every message file in the folder, sorted by key."""
        out = {}
        for sub in ("new", "cur"):
            d = self.dirs[folder] / sub
            for name in os.listdir(d):
                out[name.split(":2,")[0]] = d / name
        return dict(sorted(out.items()))

    def local(self, folder: str) -> dict[str, tuple[str, Flags]]:
        out = {}
        for sub in ("new", "cur"):
            d = os.path.join(self.dirs[folder], sub)
            for name in os.listdir(d):
                key, _, letters = name.partition(":2,")
                mid = self.mids.get(key)
                if mid is None:  # a key always names the same content
                    with open(os.path.join(d, name), "rb") as f:
                        mid = self.mids[key] = _mid(f.read())
                out[key] = (mid, flagmod.from_letters(letters))
        return out

    def _touched(self, *names: str) -> None:
        for folder in names:
            self.clock_ns += 10**9
            for sub in ("cur", "new"):
                os.utime(self.folder_dir(folder) / sub, ns=(self.clock_ns, self.clock_ns))

    def _new_id(self) -> int:
        return next(self.serial)

    # -- the start: some mail on either side, synced ----------------------------

    @initialize(
        seed=st.lists(st.tuples(folders, st.booleans(), flag_sets), max_size=4),
    )
    def start(self, seed: list[tuple[str, bool, Flags]]) -> None:
        for folder in FOLDERS:
            self.maildir.create_folder(folder)
        for folder, on_server, flags in seed:
            if on_server:
                self.remote.inject(folder, message(self._new_id()), flags)
            else:
                self._write(folder, message(self._new_id()), flags)
        self.sync()

    # -- the server, edited by another client -----------------------------------

    @rule(folder=folders, flags=flag_sets)
    def server_append(self, folder: str, flags: Flags) -> None:
        self.remote.inject(folder, message(self._new_id()), flags)

    def _pick_uid(self, folder: str, pick: int) -> int | None:
        uids = sorted(self.remote.folders[folder].messages)
        return uids[pick % len(uids)] if uids else None

    @rule(folder=folders, pick=picks, flags=flag_sets)
    def server_flags(self, folder: str, pick: int, flags: Flags) -> None:
        uid = self._pick_uid(folder, pick)
        if uid is not None:
            self.remote.set_flags(folder, uid, flags)

    @rule(folder=folders, pick=picks)
    def server_expunge(self, folder: str, pick: int) -> None:
        uid = self._pick_uid(folder, pick)
        if uid is not None:
            self.remote.expunge_external(folder, [uid])

    def _copy(self, src: str, uid: int, dst: str) -> None:
        m = self.remote.folders[src].messages[uid]
        self.remote.inject(dst, m.data, m.flags, m.internaldate)

    @rule(src=folders, dst=folders, pick=picks)
    def server_move(self, src: str, dst: str, pick: int) -> None:
        """UID MOVE where the server has it, else what a client does instead: COPY,
        STORE \\Deleted, EXPUNGE (into the same folder too: a new UID)."""
        uid = self._pick_uid(src, pick)
        if uid is None:
            return
        self._copy(src, uid, dst)
        if "MOVE" not in self.capabilities:
            flags = self.remote.folders[src].messages[uid].flags
            self.remote.set_flags(src, uid, flags | {"\\Deleted"})
        self.remote.expunge_external(src, [uid])

    @rule(src=folders, dst=folders, pick=picks)
    def server_copy(self, src: str, dst: str, pick: int) -> None:
        uid = self._pick_uid(src, pick)
        if uid is not None:
            self._copy(src, uid, dst)

    @rule(folder=folders)
    def server_uidvalidity(self, folder: str) -> None:
        """The server lost its UID database: new UIDVALIDITY, messages renumbered."""
        f = self.remote.folders[folder]
        self.remote.set_uidvalidity(folder, f.uidvalidity + 1000)
        self.reset.add(folder)

    # -- the Maildir, edited by a mail reader ------------------------------------

    def _write(self, folder: str, data: bytes, flags: Flags) -> None:
        letters = flagmod.to_letters(flags)
        key = f"1700.R{self._new_id()}.reader"
        sub, name = ("cur", f"{key}:2,{letters}") if letters else ("new", key)
        (self.folder_dir(folder) / sub / name).write_bytes(data.replace(b"\r\n", b"\n"))
        self._touched(folder)

    def _pick_file(self, folder: str, pick: int) -> Path | None:
        files = list(self.files(folder).values())
        return files[pick % len(files)] if files else None

    @rule(folder=folders, flags=flag_sets)
    def local_add(self, folder: str, flags: Flags) -> None:
        self._write(folder, message(self._new_id()), flags)

    @rule(folder=folders, pick=picks, flags=flag_sets)
    def local_flags(self, folder: str, pick: int, flags: Flags) -> None:
        path = self._pick_file(folder, pick)
        if path is not None:
            key = path.name.split(":2,")[0]
            path.rename(self.folder_dir(folder) / "cur" / f"{key}:2,{flagmod.to_letters(flags)}")
            self._touched(folder)

    @rule(folder=folders, pick=picks)
    def local_delete(self, folder: str, pick: int) -> None:
        path = self._pick_file(folder, pick)
        if path is not None:
            path.unlink()
            self._touched(folder)

    @rule(src=folders, dst=folders, pick=picks, copy=st.booleans())
    def local_move(self, src: str, dst: str, pick: int, copy: bool) -> None:
        """A rename into another folder (notmuch, aerc), or a copy under a new name
        then the original removed (mutt; into the same folder too)."""
        path = self._pick_file(src, pick)
        if path is None or (src == dst and not copy):
            return
        if copy:
            name = f"1800.C{self._new_id()}.reader"
            if ":2," in path.name:
                name += ":2," + path.name.split(":2,")[1]
            (self.folder_dir(dst) / path.parent.name / name).write_bytes(path.read_bytes())
            path.unlink()
        else:
            path.rename(self.folder_dir(dst) / path.parent.name / path.name)
        self._touched(src, dst)

    # -- syncing --------------------------------------------------------------------

    def run(self, die_at: int = 0) -> AccountReport | None:
        """One sync as a fresh process would run it (a new connection, the state
        reopened after a kill); None when it died."""
        self.remote.selected = None
        self.state.commits, self.state.die_at = 0, die_at
        try:
            return AccountSync(
                self.account, self.remote, self.maildir, self.state, SyncOptions(force=True), _quiet
            ).run()
        except Killed:
            self.state.close()  # what was not committed is gone with the process
            self.state = DyingState.open(self.account.state_dir)
            return None

    def expect(self) -> tuple[Counter[Where], dict[tuple[str, int, str], Flags]]:
        """The copies of each message per folder after the next sync, and the flags
        of each message kept on both sides (by folder, UID, key)."""
        copies: Counter[Where] = Counter()
        flags: dict[tuple[str, int, str], Flags] = {}
        for folder in FOLDERS:
            server, local = self.server(folder), self.local(folder)
            s = Counter(mid for mid, _ in server.values())
            d = Counter(mid for mid, _ in local.values())
            if folder in self.reset:
                copies.update({(folder, mid): n for mid, n in (s | d).items()})
                continue
            kept: Counter[str] = Counter()
            for (uid, key), base in self.pairs[folder].items():
                there, here = server.get(uid), local.get(key)
                if there:
                    s[there[0]] -= 1
                if here:
                    d[here[0]] -= 1
                if there and here:
                    kept[there[0]] += 1
                    # a three-way merge: each side's changes since the last sync
                    merged = (there[1] | (here[1] - base)) - (base - here[1])
                    flags[(folder, uid, key)] = merged
            copies.update({(folder, mid): n for mid, n in (kept + (s | d)).items()})
        return copies, flags

    def _completed(self, report: AccountReport | None) -> None:
        assert report is not None
        assert not report.failed, [f.summary() for f in report.failed]

    @rule()
    def sync(self) -> None:
        copies, flags = self.expect()
        self._completed(self.run())
        self._check(copies, flags)

    @rule(die_at=st.integers(1, 12))
    def sync_killed(self, die_at: int) -> None:
        """Killed before its `die_at`-th state commit, then run again."""
        copies, flags = self.expect()
        report = self.run(die_at)
        if report is None:
            report = self.run()
        self._completed(report)
        self._check(copies, flags)

    def _check(self, copies: Counter[Where], flags: dict[tuple[str, int, str], Flags]) -> None:
        server = {f: self.server(f) for f in FOLDERS}
        local = {f: self.local(f) for f in FOLDERS}
        on_server = Counter((f, mid) for f in FOLDERS for mid, _ in server[f].values())
        on_disk = Counter((f, mid) for f in FOLDERS for mid, _ in local[f].values())
        # exactly as many copies as the rules say: one more is a duplicate, one
        # fewer a loss
        assert on_server == copies, "server: lost or duplicated mail"
        assert on_disk == copies, "Maildir: lost or duplicated mail"
        for (folder, uid, key), want in flags.items():
            assert server[folder][uid][1] == want, f"{folder} UID {uid}: flags not merged"
            assert local[folder][key][1] == want, f"{folder} {key}: flags not merged"
        for folder in FOLDERS:
            assert not os.listdir(self.folder_dir(folder) / "tmp")
            # every message paired once, with the same content and flags on both sides
            pairs = {}
            for uid, key, remote_letters, local_letters in self.state.pair_rows(folder):
                assert server[folder][uid] == local[folder][key], (folder, uid, key)
                # the base of the next merge: what both sides hold now
                flags = server[folder][uid][1]
                assert flagmod.from_letters(remote_letters) == flags, (folder, uid, key)
                assert flagmod.from_letters(local_letters) == flags, (folder, uid, key)
                pairs[(uid, key)] = flags
            assert sorted(u for u, _ in pairs) == sorted(server[folder]), folder
            assert sorted(k for _, k in pairs) == sorted(local[folder]), folder
            self.pairs[folder] = pairs
        self.reset.clear()
        self._steady()

    def _steady(self) -> None:
        """A sync right after a sync plans nothing and changes nothing; the one after
        that (with CONDSTORE) does not even select a folder."""
        del planned[:]
        self.remote.calls.clear()
        report = self.run()
        self._completed(report)
        assert report is not None
        assert not planned, f"a sync after a sync planned {planned}"
        assert not [f.summary() for f in report.folders if any(f.counts.values())]
        assert not MUTATING & set(self.remote.calls), self.remote.calls
        if "CONDSTORE" in self.capabilities:
            self.remote.calls.clear()
            self._completed(self.run())
            assert self.remote.calls == ["statuses"], "an unchanged account was not skipped"


@contextlib.contextmanager
def _watch_plans(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Note every non-empty plan the engine makes (it imports the planner's functions
    when it needs them, so patching the module reaches it)."""
    for name in ("plan_messages", "plan_moves", "plan_folders"):
        original = getattr(planner, name)

        def watched(*args: Any, __original: Any = original, **kwargs: Any) -> Any:
            plan = __original(*args, **kwargs)
            if plan:
                planned.append(plan)
            return plan

        monkeypatch.setattr(planner, name, watched)
    yield


def _machine_class(caps: frozenset[str], root: Path) -> type[FakeSyncMachine]:
    return type("FakeSyncMachine", (FakeSyncMachine,), {"capabilities": caps, "root": root})


@pytest.fixture
def machine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> Iterator[Callable[[frozenset[str]], FakeSyncMachine]]:
    """One machine, for a sequence of steps the random runs found."""
    monkeypatch.setenv(CLOCK_SKEW_ENV, "60")
    caplog.set_level(logging.ERROR, logger="mirrorsync")  # UIDVALIDITY changes are expected
    made: list[FakeSyncMachine] = []

    def make(caps: frozenset[str]) -> FakeSyncMachine:
        made.append(_machine_class(caps, tmp_path)())
        return made[-1]

    with _watch_plans(monkeypatch):
        yield make
    for m in made:
        m.teardown()


@pytest.mark.parametrize(
    ("name", "caps"),
    [
        pytest.param(
            name,
            caps,
            id=name,
            marks=[pytest.mark.xfail(reason="; ".join(KNOWN_BUGS[name]), strict=False)]
            if KNOWN_BUGS.get(name)
            else [],
        )
        for name, caps in CAPABILITY_SETS.items()
    ],
)
def test_random_edits_on_both_sides_never_lose_or_duplicate(
    name: str,
    caps: frozenset[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Every stamp counts as settled at once, as if time had passed since (see dirstamp).
    monkeypatch.setenv(CLOCK_SKEW_ENV, "60")
    # thousands of expected warnings (UIDVALIDITY changed), neither kept nor printed
    caplog.set_level(logging.ERROR, logger="mirrorsync")
    shm = Path("/dev/shm")
    # tmpfs where there is one: fsync is free there, and a run makes thousands
    base = Path(tempfile.mkdtemp(dir=shm if os.access(shm, os.W_OK) else None))
    run = _machine_class(caps, base).TestCase
    run.settings = settings(
        max_examples=EXAMPLES,
        stateful_step_count=STEPS,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        # a known bug's failure is not shrunk: that would cost minutes for nothing
        phases=[Phase.explicit, Phase.reuse, Phase.generate]
        if KNOWN_BUGS.get(name)
        else list(Phase),
        report_multiple_bugs=not KNOWN_BUGS.get(name),
    )
    try:
        with _watch_plans(monkeypatch):
            run().runTest()
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- what the random runs found, step by step ----------------------------------------

SEEN: Flags = frozenset({"\\Seen"})
FLAGGED: Flags = frozenset({"\\Flagged"})
NONE: Flags = frozenset()


def test_a_flag_set_on_both_sides_is_remembered(
    machine: Callable[[frozenset[str]], FakeSyncMachine],
) -> None:
    """The same flag set on each side is no change to make, but the pair must learn it:
    with the old base, removing it later on one side was undone by the other."""
    m = machine(BASIC_CAPABILITIES)
    m.start(seed=[("INBOX", True, NONE)])
    m.server_flags(folder="INBOX", pick=0, flags=FLAGGED)
    m.local_flags(folder="INBOX", pick=0, flags=FLAGGED)
    m.sync()
    m.server_flags(folder="INBOX", pick=0, flags=NONE)
    m.sync()  # before: \Flagged set on the server again


@pytest.mark.parametrize("die_at", range(1, 7))
def test_killed_between_a_move_and_its_flag_merge(
    machine: Callable[[frozenset[str]], FakeSyncMachine], die_at: int
) -> None:
    """Another client flags a message and moves it: the moved file's pair is recorded
    with each side's flags, merged later in the run. A kill in between left a pair
    that looked steady, and the two sides' flags apart for good."""
    m = machine(FULL_CAPABILITIES)
    m.start(seed=[("INBOX", False, SEEN)])
    m.server_flags(folder="INBOX", pick=0, flags=SEEN | FLAGGED)
    m.server_move(src="INBOX", dst="Work", pick=0)
    m.sync_killed(die_at=die_at)


def test_a_move_into_a_folder_whose_uidvalidity_changed_stays_paired(
    machine: Callable[[frozenset[str]], FakeSyncMachine],
) -> None:
    """The pair a move made in a folder whose UIDVALIDITY changed was wiped with the
    folder's stale pairs, so the next run linked the message again."""
    m = machine(BASIC_CAPABILITIES)
    m.start(seed=[("Work", False, SEEN)])
    m.server_move(src="Work", dst="INBOX", pick=0)
    m.server_uidvalidity(folder="INBOX")
    m.sync()


@pytest.mark.parametrize("die_at", [2, 3])  # the move's two commits
def test_killed_after_a_move_into_a_folder_whose_uidvalidity_changed(
    machine: Callable[[frozenset[str]], FakeSyncMachine], die_at: int
) -> None:
    """The move writes the folder's new UIDVALIDITY before its old pairs are dropped:
    killed in between, the next run takes old UIDs for new ones (here UID 1 was b and
    is c after the renumbering), and duplicates c or pairs it with the wrong flags."""
    m = machine(FULL_CAPABILITIES)
    m.start(seed=[("INBOX", False, SEEN), ("Work", True, NONE), ("Work", True, NONE)])
    m.server_expunge(folder="Work", pick=0)
    m.server_uidvalidity(folder="Work")
    m.local_move(src="INBOX", dst="Work", pick=0, copy=False)
    m.sync_killed(die_at=die_at)


def test_a_flag_set_while_another_client_moved_the_message_is_kept(
    machine: Callable[[frozenset[str]], FakeSyncMachine],
) -> None:
    m = machine(FULL_CAPABILITIES)
    m.start(seed=[("INBOX", False, SEEN)])
    m.local_flags(folder="INBOX", pick=0, flags=SEEN | FLAGGED)
    m.server_move(src="INBOX", dst="Work", pick=0)
    m.sync()
    assert [flags for _mid, flags in m.local("Work").values()] == [SEEN | FLAGGED]
    assert [flags for _mid, flags in m.server("Work").values()] == [SEEN | FLAGGED]
