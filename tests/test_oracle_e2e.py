"""The plan oracle (mirrorsync.sync.oracle), against a real Dovecot: each fast path broken on
purpose is caught before its plan is carried out; the oracle itself changes nothing;
off, it is never imported. And a divergence it found in the engine."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mirrorsync import configcache, quick
from mirrorsync.maildir import MaildirFolder
from mirrorsync.model import LocalMessage
from mirrorsync.sync import gather, plan
from mirrorsync.sync.base import SyncOptions
from mirrorsync.sync.engine import AccountSync
from tests.conftest import SettleClock
from tests.harness import Mirror, QuickRuns, Result, message

SEEN = b"\\Seen"


@pytest.fixture
def steady(account: Any, tmp_path: Path, settle_clock: SettleClock) -> Iterator[Mirror]:
    """Folders A (5 messages) and B (2), mirrored, their stamps recorded and settled:
    the next sync takes every fast path (skip, QRESYNC delta, quick check)."""
    m = make_steady(account, tmp_path, settle_clock)
    yield m
    m.close()


def make_steady(account: Any, tmp_path: Path, settle_clock: SettleClock, **config: Any) -> Mirror:
    m = Mirror(account, tmp_path, **config)
    c = m.client
    for folder, n in (("A", 5), ("B", 2)):
        c.create_folder(folder)
        for i in range(n):
            c.append(folder, message(f"{folder}{i}"), flags=[SEEN])
    m.sync()
    settle_clock.advance()
    m.sync()  # records the settled stamps
    settle_clock.advance()
    return m


def caught(r: Result) -> str:
    """The oracle's report of a run it stopped: an internal error naming both plans."""
    assert r.status == 4 and "PlanMismatch: plan oracle:" in r.err, r
    return r.err


def flagged_on_server(m: Mirror, folder: str) -> int:
    return sum(1 for f in m.server_uids(folder).values() if "\\Flagged" in f)


def test_the_steady_fixture_takes_the_fast_paths(
    steady: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the tests below break is really taken: the quick check finishes a no-op,
    and a server change is gathered as a delta with the local side from the state."""
    runs = QuickRuns(monkeypatch)
    steady.sync()
    assert runs.finished == 1
    seen: list[bool] = []
    real = AccountSync.gather

    def spy(self: AccountSync, name: str) -> Any:
        got = real(self, name)
        if got is not None:
            seen.append(got.local.listed)
        return got

    monkeypatch.setattr(AccountSync, "gather", spy)
    c = steady.client
    c.select_folder("A")
    c.add_flags(min(c.search("ALL")), [b"\\Flagged"])
    steady.sync()
    assert seen == [False]  # one folder gathered, from the delta alone


def test_a_dropped_differing_row_is_caught_before_anything_is_done(
    steady: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = gather._differing

    def dropping(rows: Any, server: Any, listing: Any) -> Any:
        keep, remote, local = real(rows, server, listing)
        # the first changed message's pair forgotten, as if it were steady
        return keep[1:], {u: f for u, f in remote.items() if u != keep[0][0]}, local

    monkeypatch.setattr(gather, "_differing", dropping)
    f = steady.files("A")[0]
    f.rename(f.with_name(f.name.replace(":2,S", ":2,FS")))
    err = caught(steady.run("sync"))
    assert "only in the full plan:\n    flags UID" in err and "server +F" in err
    assert flagged_on_server(steady, "A") == 0  # checked before the plan was carried out


def test_a_wrong_server_delta_is_caught(steady: Mirror, monkeypatch: pytest.MonkeyPatch) -> None:
    real = gather._server_view

    def stale(known: Any, changes: Any) -> Any:
        return real(known, dataclasses.replace(changes, changed={}))  # the flags lost

    monkeypatch.setattr(gather, "_server_view", stale)
    c = steady.client
    c.select_folder("A")
    c.add_flags(min(c.search("ALL")), [b"\\Flagged"])
    err = caught(steady.run("sync"))
    assert "local [FS]" in err
    assert not any("F" in flags for (_h, flags) in steady.local()["A"])


def test_a_changed_folder_skipped_is_caught(
    steady: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(AccountSync, "gather", lambda self, name: None)
    monkeypatch.setattr(quick, "try_quick", lambda argv, env: quick.Outcome())
    steady.client.append("B", message("B-new"), flags=[])
    err = caught(steady.run("sync"))
    assert "B (skipped as unchanged)" in err and "download UID 3" in err


def test_a_file_located_under_a_wrong_name_is_caught(
    steady: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    def wrong(self: MaildirFolder, key: str, flags: Any) -> LocalMessage:
        return LocalMessage(key, flags, "new", key)  # not where the file is

    monkeypatch.setattr(MaildirFolder, "locate", wrong)
    c = steady.client
    c.select_folder("A")
    c.add_flags(min(c.search("ALL")), [b"\\Flagged"])
    err = caught(steady.run("sync"))
    assert "locate found" in err
    assert not any("F" in flags for (_h, flags) in steady.local()["A"])


def test_a_move_not_looked_for_is_caught(steady: Mirror, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plan, "may_move", lambda *views: False)
    f = steady.files("A")[0]
    f.rename(steady.folder_dir("B") / "cur" / f.name)
    err = caught(steady.run("sync"))
    assert "the moves of A (not held for moves)" in err and " A -> B (moved locally)" in err
    assert len(steady.server_uids("A")) == 5  # nothing deleted, nothing moved


def test_a_wrong_quick_no_op_is_caught(steady: Mirror, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quick, "_check_unchanged", lambda made, db, session: None)
    steady.client.append("B", message("B-new"), flags=[])
    err = caught(steady.run("sync"))
    assert "B (quick check: no-op)" in err and "download UID 3" in err


def test_a_stale_config_digest_is_caught(steady: Mirror, monkeypatch: pytest.MonkeyPatch) -> None:
    real = configcache.load

    def stale(*args: Any) -> Any:
        entries = real(*args)
        assert entries  # the fixture's runs left it there
        return [{**e, "password_from": ("/elsewhere", "")} for e in entries]

    monkeypatch.setattr(configcache, "load", stale)
    err = caught(steady.run("sync"))
    assert "the digest's entry of test differs" in err and "/elsewhere" in err


def test_a_proof_that_is_not_the_states_is_caught(
    steady: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The oracle holds the proof the quick check went by against the state: a state
    changed behind the proof's back (no session voided it) is caught."""
    import sqlite3

    with sqlite3.connect(steady.state_dir / "state.sqlite3") as db:
        db.execute("UPDATE folders SET uidnext = uidnext + 1 WHERE name = 'B'")
    monkeypatch.setattr(quick, "_check_unchanged", lambda made, db, session: None)
    err = caught(steady.run("sync"))
    assert "the no-op proof in" in err and "is not the state's" in err


def test_the_oracle_changes_nothing(steady: Mirror) -> None:
    """The full path read in every way it reads (content matching of an unseen server
    message against a new file, hashes for a move): no flag, position, file or state
    row moved."""
    from mirrorsync import config
    from mirrorsync.imap.store import ImapStore
    from mirrorsync.maildir import Maildir
    from mirrorsync.state import State
    from mirrorsync.sync.oracle import Oracle

    c = steady.client
    c.append("B", message("both"), flags=[])  # unseen: a body fetch must not see it
    (steady.folder_dir("B") / "new" / "1700.both.host").write_bytes(
        message("both").replace(b"\r\n", b"\n")
    )
    gone = steady.files("A")[0]
    gone.rename(steady.folder_dir("B") / "cur" / gone.name)

    def world() -> tuple[object, ...]:
        numbers = {f: c.folder_status(f, ["UIDNEXT", "HIGHESTMODSEQ"]) for f in ("A", "B")}
        files = sorted(
            (str(p), p.stat().st_mtime_ns) for p in steady.root.rglob("*") if p.is_file()
        )
        dirs = sorted((str(p), p.stat().st_mtime_ns) for p in steady.root.rglob("*") if p.is_dir())
        with sqlite3.connect(steady.state_dir / "state.sqlite3") as db:
            rows = list(db.iterdump())
        return numbers, steady.server_uids("B"), files, dirs, rows

    before = world()
    account = config.load(steady.config, {}).accounts["test"]
    store = ImapStore.connect(account.remote, account.remote.password or "")
    state = State.open(account.state_dir)
    try:
        maildir = Maildir(account.local.path, account.local.layout)
        sync = AccountSync(account, store, maildir, state, SyncOptions(), print)
        sync.prior = state.folders()
        oracle = Oracle(sync)
        folders, plans, moves = oracle.account()
        assert {type(a).__name__ for a in folders} == {"SyncFolder"}
        oracle.close()
    finally:
        state.close()
        store.close()
    assert [(type(a).__name__, a.src, a.dst) for a in moves] == [("MoveOnServer", "A", "B")]
    # "both" matched by content; the moved file is an upload until the move is made
    assert sorted(type(a).__name__ for a in plans["B"]) == ["Link", "Upload"]
    assert world() == before


def test_off_the_oracle_is_never_imported(steady: Mirror) -> None:
    def imported(r: Result) -> set[str]:
        return {
            line.rsplit("|", 1)[1].strip()
            for line in r.err.splitlines()
            if line.startswith("import time:")
        }

    steady.client.append("B", message("B-new"), flags=[])
    r = steady.run_process("sync", env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert r.status == 0 and "mirrorsync.sync.oracle" in imported(r), r  # on, as in every test
    steady.client.append("B", message("B-newer"), flags=[])
    off = {"PYTHONPROFILEIMPORTTIME": "1", "MIRRORSYNC_PLAN_ORACLE": ""}
    r = steady.run_process("sync", env=off)
    assert r.status == 0 and "1 downloaded" in r.out, r
    assert "mirrorsync.sync.oracle" not in imported(r)


@pytest.mark.parametrize("how", ["move", "copy-expunge"])
def test_another_clients_move_in_steady_state_uploads_nothing(steady: Mirror, how: str) -> None:
    c = steady.client
    c.select_folder("A")
    uid = min(c.search("ALL"))
    if how == "move":
        c.move([uid], "B")
    else:
        c.copy([uid], "B")
        c.delete_messages([uid])
        c.expunge()
    r = steady.run("-v", "sync")  # -v: a PlanMismatch is raised, not turned into words
    assert r.status == 0, r
    assert "uploaded" not in r.out, r
    snap = steady.assert_mirrored()
    assert sum(snap["A"].values()) == 4 and sum(snap["B"].values()) == 3


def _server_flag(m: Mirror) -> None:
    m.client.select_folder("A")
    m.client.add_flags(min(m.client.search("ALL")), [b"\\Flagged"])


def _server_unflag(m: Mirror) -> None:
    m.client.select_folder("A")
    m.client.remove_flags(m.client.search("ALL")[:2], [SEEN])


def _server_expunge(m: Mirror) -> None:
    m.client.select_folder("A")
    m.client.delete_messages(m.client.search("ALL")[1:3])
    m.client.expunge()


def _server_new(m: Mirror) -> None:
    m.client.append("B", message("new"), flags=[b"\\Answered"])


def _local_flag(m: Mirror) -> None:
    f = m.files("A")[2]
    f.rename(f.with_name(f.name.replace(":2,S", ":2,FS")))


def _local_unseen(m: Mirror) -> None:
    f = m.files("A")[1]
    f.rename(f.parent.parent / "new" / f.name.split(":2,")[0])


def _local_delete(m: Mirror) -> None:
    m.files("A")[0].unlink()


def _local_new(m: Mirror) -> None:
    (m.folder_dir("B") / "new" / "1700.local.host").write_bytes(
        message("local").replace(b"\r\n", b"\n")
    )


def _local_rename_move(m: Mirror) -> None:
    f = m.files("A")[0]
    f.rename(m.folder_dir("B") / "cur" / f.name)


def _local_copy_move(m: Mirror) -> None:
    f = m.files("A")[0]
    (m.folder_dir("B") / "cur" / "1800.copy.host:2,S").write_bytes(f.read_bytes())
    f.unlink()


def _both_flag_same(m: Mirror) -> None:
    _server_flag(m)
    f = m.files("A")[0]
    f.rename(f.with_name(f.name.replace(":2,S", ":2,RS")))


def _expunged_and_flagged(m: Mirror) -> None:
    f = m.files("A")[1]
    f.rename(f.with_name(f.name.replace(":2,S", ":2,FS")))
    _server_expunge(m)


def _server_folder(m: Mirror) -> None:
    m.client.create_folder("C")
    m.client.append("C", message("c"), flags=[])


def _local_folder(m: Mirror) -> None:
    for sub in ("cur", "new", "tmp"):
        (m.root / "D" / sub).mkdir(parents=True)
    (m.root / "D" / "cur" / "1700.d.host:2,S").write_bytes(message("d").replace(b"\r\n", b"\n"))


STEADY_CHANGES = {
    f.__name__.lstrip("_"): f
    for f in (
        _server_flag,
        _server_unflag,
        _server_expunge,
        _server_new,
        _local_flag,
        _local_unseen,
        _local_delete,
        _local_new,
        _local_rename_move,
        _local_copy_move,
        _both_flag_same,
        _expunged_and_flagged,
        _server_folder,
        _local_folder,
    )
}


@pytest.mark.parametrize("delta", ["qresync", "condstore"])
@pytest.mark.parametrize("change", list(STEADY_CHANGES))
def test_every_change_in_steady_state_plans_as_the_full_path(
    steady: Mirror,
    settle_clock: SettleClock,
    monkeypatch: pytest.MonkeyPatch,
    change: str,
    delta: str,
) -> None:
    """Each kind of change, made when every fast path is taken: the oracle checks the
    sync that picks it up, and the quick no-op that follows once it settled. The
    server's changes come as a QRESYNC delta, or as a CONDSTORE one (CHANGEDSINCE and
    a UID SEARCH for expunges)."""
    capabilities: list[frozenset[str]] = []
    if delta == "condstore":
        from mirrorsync.imap.store import ImapStore

        real = ImapStore.connect.__func__  # type: ignore[attr-defined]

        def connect(cls: Any, remote: Any, password: str, *, disable: Any = (), **kw: Any) -> Any:
            store = real(cls, remote, password, disable=(*disable, "QRESYNC"), **kw)
            capabilities.append(store.capabilities)
            return store

        monkeypatch.setattr(ImapStore, "connect", classmethod(connect))
    STEADY_CHANGES[change](steady)
    r = steady.run("-v", "sync")  # -v: a PlanMismatch is raised, not turned into words
    assert r.status == 0, r
    if delta == "condstore":
        engine_caps = capabilities[0]  # the oracle's own connection, opened after, has neither
        assert "CONDSTORE" in engine_caps and "QRESYNC" not in engine_caps
    steady.assert_mirrored()
    runs = QuickRuns(monkeypatch)
    for _ in range(3):
        settle_clock.advance()
        steady.sync()
    assert runs.finished > 0  # the oracle verified a quick no-op too
    steady.assert_mirrored()


def test_another_clients_move_of_an_unflagged_file_in_new_is_a_move(
    steady: Mirror, settle_clock: SettleClock
) -> None:
    (steady.folder_dir("A") / "new" / "1700.unread.host").write_bytes(
        message("unread").replace(b"\r\n", b"\n")
    )
    steady.sync()  # uploaded; the file stays in new/
    for _ in range(2):
        settle_clock.advance()
        steady.sync()
    c = steady.client
    c.select_folder("A")
    (uid,) = c.search(["HEADER", "Message-ID", "<unread@example.org>"])
    c.move([uid], "B")
    r = steady.run("-v", "sync")  # -v: a PlanMismatch is raised, not turned into words
    assert r.status == 0 and "moved in" in r.out, r
    assert [p.name for p in steady.files("B") if "unread" in p.name] == ["1700.unread.host"]
    steady.assert_mirrored()


@pytest.mark.parametrize("mode", ["pull", "backup"])
@pytest.mark.parametrize(
    "change", [c for c in STEADY_CHANGES if c not in ("server_folder", "local_folder")]
)
def test_every_change_in_steady_state_plans_as_the_full_path_one_way(
    account: Any, tmp_path: Path, settle_clock: SettleClock, mode: str, change: str
) -> None:
    m = make_steady(account, tmp_path, settle_clock, sync={"mode": mode})
    try:
        STEADY_CHANGES[change](m)
        for _ in range(3):
            r = m.run("-v", "sync")  # -v: a PlanMismatch is raised, not turned into words
            assert r.status == 0, r
            settle_clock.advance()
    finally:
        m.close()
