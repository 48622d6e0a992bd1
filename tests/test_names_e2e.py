"""Folder names end to end, against real Dovecots shaped like other servers: names a
Maildir must escape (cur/new/tmp, a leading ".", "." in maildir++), a server whose
separator is "." (Cyrus with unixhierarchysep: no), and Courier's personal namespace
"INBOX.". Each syncs down and back up with nothing duplicated and a quiet second run."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools.devserver import Dovecot
from mirrorsync import flags as flagmod
from mirrorsync import maildir as maildir_mod
from mirrorsync.content import content_hash
from mirrorsync.imap.notify import NotifySession
from mirrorsync.layout import folder_path, list_folders
from mirrorsync.names import PREFIX_META
from tests.conftest import Account, SettleClock
from tests.harness import Mirror, QuickRuns, Snapshot, message
from tests.test_daemon import run_daemon as run_daemon  # a fixture


def _server(**options: Any) -> Iterator[Dovecot]:
    server = Dovecot(**options).start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def dovecot_fs() -> Iterator[Dovecot]:
    """Dovecot's LAYOUT=fs: "." and a leading "." are allowed in names (not cur/new/tmp)."""
    yield from _server(layout_fs=True)


@pytest.fixture(scope="module")
def dovecot_dot() -> Iterator[Dovecot]:
    """The "." separator, as Cyrus with unixhierarchysep: no."""
    yield from _server(separator=".")


@pytest.fixture(scope="module")
def dovecot_courier() -> Iterator[Dovecot]:
    """Courier's naming: separator ".", every personal folder under "INBOX."."""
    yield from _server(separator=".", prefix="INBOX.")


_users = iter(range(1, 10**6))


def _account(server: Dovecot) -> Account:
    user = f"n{next(_users)}"
    server.add_user(user, "pw-" + user)
    return Account(server, user, "pw-" + user)


def local_by_name(m: Mirror, layout: str) -> Snapshot:
    """The Maildir by folder name (as mirrorsync reads the directories back)."""
    snap: Snapshot = {}
    for name in list_folders(m.root, layout):
        folder = folder_path(m.root, layout, name)
        got: Counter[tuple[str, str]] = Counter()
        for sub in ("cur", "new"):
            for f in (folder / sub).iterdir():
                letters = f.name.split(":2,", 1)[1] if ":2," in f.name else ""
                flags = flagmod.to_letters(flagmod.from_letters(letters))
                got[(content_hash(f.read_bytes()), flags)] += 1
        snap[name] = got
    return snap


def _quiet(m: Mirror) -> None:
    """A sync that finds nothing to do, finished by the quick check (the steady
    state costs what changed: nothing), after a full one that agrees."""
    full = m.sync()
    assert "no changes" in full.out and not full.err, full
    with pytest.MonkeyPatch.context() as mp:
        runs = QuickRuns(mp)
        again = m.sync()
    assert "no changes" in again.out and not again.err, again
    assert runs.finished == 1, "the quick check did not finish the run"


def _fill(m: Mirror, names: list[str]) -> None:
    for i, name in enumerate(names):
        m.client.create_folder(name)
        m.client.append(name, message(f"down-{i}"), flags=[b"\\Seen"])


def _round_trip(m: Mirror, layout: str, server_names: list[str], settle: SettleClock) -> None:
    """Down, a local change in each folder, up, and a second sync that does nothing."""
    first = m.sync()
    assert "FAILED" not in first.out + first.err, first
    local = local_by_name(m, layout)
    for name in server_names:
        assert sum(local[name].values()) == 1, (name, local)
    for i, name in enumerate(server_names):
        folder = folder_path(m.root, layout, name)
        (folder / "cur" / f"up{i}.host:2,S").write_bytes(message(f"up-{i}").replace(b"\r\n", b"\n"))
    m.sync()
    server, local = m.server(), local_by_name(m, layout)
    assert server == local, (server, local)
    for name in server_names:
        assert sum(server[name].values()) == 2 and set(server[name].values()) == {1}
    settle.advance()
    _quiet(m)
    assert m.server() == local_by_name(m, layout) == server


@pytest.mark.parametrize("layout", ["nested", "maildir++"])
def test_maildir_words_sync_down_and_up(
    account: Account, tmp_path: Path, settle_clock: SettleClock, layout: str
) -> None:
    """`Projects/New` and `cur` were refused in the nested layout (`New` even on a
    case-sensitive file system): now they are stored escaped, and map back."""
    m = Mirror(account, tmp_path, layout=layout)
    names = ["Projects/New", "cur", "Lists/tmp", "100%", "%41"]
    _fill(m, names)
    _round_trip(m, layout, names, settle_clock)
    if layout == "nested":
        assert (m.root / "Projects" / "%4Eew" / "cur").is_dir()
        assert (m.root / "%63ur" / "cur").is_dir()
    m.close()


@pytest.mark.parametrize("layout", ["nested", "maildir++"])
def test_dots_sync_down_and_up(
    dovecot_fs: Dovecot, tmp_path: Path, settle_clock: SettleClock, layout: str
) -> None:
    """A leading "." and (in maildir++) every "." are escaped; "lists.debian.org" was
    refused in maildir++, ".hidden" in the nested layout."""
    m = Mirror(_account(dovecot_fs), tmp_path, layout=layout)
    names = ["lists.debian.org", ".hidden", "Mr. Smith/a.b", "Projects/New"]
    if layout == "nested":  # 257 bytes once escaped: it goes on in a subdirectory
        names.append("." + "L" * 254)
    _fill(m, names)
    _round_trip(m, layout, names, settle_clock)
    if layout == "maildir++":
        assert (m.root / ".lists%2Edebian%2Eorg" / "cur").is_dir()
    else:
        assert (m.root / "%2Ehidden" / "cur").is_dir()
    m.close()


def test_a_folder_the_file_system_refuses_fails_alone_once(
    dovecot_fs: Dovecot, tmp_path: Path
) -> None:
    """A name too long for a maildir++ directory once escaped (".": "%2E") fails with
    one line, and the other folders sync."""
    m = Mirror(_account(dovecot_fs), tmp_path, layout="maildir++")
    long_name = "." + "L" * 252
    _fill(m, ["Fine", long_name])
    r = m.run("sync")
    assert r.status == 1
    lines = [line for line in (r.out + r.err).splitlines() if long_name[:40] in line]
    assert len(lines) == 1, r
    assert "longer than 255" in lines[0]
    assert sum(local_by_name(m, "maildir++")["Fine"].values()) == 1
    m.close()


def test_a_directory_the_file_system_refuses_fails_alone_once(
    account: Account, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mkdir refused (EINVAL, as vfat says to a ':'): that folder fails with one line
    naming it, the others sync, and the next run tries again, once."""
    m = Mirror(account, tmp_path)
    _fill(m, ["Fine", "Odd:Name"])
    real = os.mkdir

    def mkdir(path: Any, mode: int = 0o777) -> None:
        if "Odd:Name" in os.fspath(path):
            raise OSError(errno.EINVAL, "Invalid argument", os.fspath(path))
        real(path, mode)

    monkeypatch.setattr(maildir_mod.os, "mkdir", mkdir)
    for _ in range(2):
        r = m.run("sync")
        assert r.status == 1, r
        lines = [line for line in (r.out + r.err).splitlines() if "Odd:Name" in line]
        assert len(lines) == 1 and "Invalid argument" in lines[0], r
        assert "1 folders FAILED" in r.out or "1 folder FAILED" in r.out, r
    assert sum(local_by_name(m, "nested")["Fine"].values()) == 1
    m.close()


def _configure(m: Mirror, **remote: Any) -> None:
    doc = yaml.safe_load(m.config.read_text())
    doc["accounts"]["test"]["remote"].update(remote)
    m.config.write_text(yaml.safe_dump(doc, allow_unicode=True))


def _write_local(m: Mirror, layout: str, name: str, n: str) -> None:
    folder = folder_path(m.root, layout, name)
    for sub in ("cur", "new", "tmp"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    (folder / "cur" / f"{n}.host:2,S").write_bytes(message(n).replace(b"\r\n", b"\n"))


def _server_names(m: Mirror) -> set[str]:
    return {name for _attrs, _delim, name in m.client.list_folders()}


@pytest.mark.parametrize("layout", ["nested", "maildir++"])
def test_separator_in_a_local_name_stays_local_and_settles(
    dovecot_dot: Dovecot, tmp_path: Path, settle_clock: SettleClock, layout: str
) -> None:
    """Bug: on a "." server a local "Release.1" became "Release" and "Release.1" there,
    and every sync downloaded another copy into Release/1. Now it stays local, with one
    warning naming the folder and the fix, and the next sync says nothing."""
    m = Mirror(_account(dovecot_dot), tmp_path, layout=layout)
    _fill(m, ["Lists.Debian"])  # a server folder with a child: "Lists/Debian" locally
    _write_local(m, layout, "Release.1", "kept")
    _write_local(m, layout, "Work", "up")
    first = m.sync()
    assert "'Release.1'" in first.err and "local_only" in first.err, first
    assert len(first.err.strip().splitlines()) == 1, first
    assert not {"Release", "Release.1"} & _server_names(m)
    assert "Work" in _server_names(m)
    settle_clock.advance()
    _quiet(m)
    local = local_by_name(m, layout)
    assert set(local) == {"INBOX", "Lists/Debian", "Release.1", "Work"}
    assert sum(local["Release.1"].values()) == 1
    assert m.server()["Work"] == local["Work"]
    status = m.run("status")
    assert "Release.1" not in status.out and "0 local changes pending" in status.out, status
    m.close()


def test_courier_namespace_is_left_out_of_names(
    dovecot_courier: Dovecot, tmp_path: Path, settle_clock: SettleClock
) -> None:
    """Bug: with Courier's "INBOX." namespace the whole tree sat under INBOX/ locally
    and a new local top-level folder could not be created ("Invalid mailbox name")."""
    m = Mirror(_account(dovecot_courier), tmp_path)
    _fill(m, ["INBOX.Work", "INBOX.Work.Sub"])
    m.client.append("INBOX", message("inbox"))
    m.sync()
    local = local_by_name(m, "nested")
    assert set(local) == {"INBOX", "Work", "Work/Sub"}
    assert (m.root / "Work" / "Sub" / "cur").is_dir()
    _write_local(m, "nested", "Projects", "up")
    r = m.sync()
    assert not r.err, r
    assert _server_names(m) == {"INBOX", "INBOX.Work", "INBOX.Work.Sub", "INBOX.Projects"}
    server = m.server()  # named the local way by the harness
    local = local_by_name(m, "nested")
    assert server["Projects"] == local["Projects"]
    assert server["INBOX"] == local["INBOX"] and sum(local["INBOX"].values()) == 1
    settle_clock.advance()
    _quiet(m)
    m.close()


def test_courier_capabilities_with_its_namespace(tmp_path: Path) -> None:
    """Courier's capabilities (no LIST-STATUS, CONDSTORE, MOVE): the STATUS of each
    folder is asked by its server name, INBOX.Work, and read back as Work."""
    server = Dovecot(
        separator=".",
        prefix="INBOX.",
        capabilities="IMAP4rev1 LITERAL+ UIDPLUS IDLE NAMESPACE ENABLE UTF8=ACCEPT",
    ).start()
    try:
        m = Mirror(_account(server), tmp_path)
        _fill(m, ["INBOX.Work", "INBOX.Work.Sub"])
        m.sync()
        _write_local(m, "nested", "Projects", "up")
        r = m.sync()
        assert not r.err, r
        local = local_by_name(m, "nested")
        assert set(local) == {"INBOX", "Work", "Work/Sub", "Projects"}
        names = {"INBOX", "INBOX.Work", "INBOX.Work.Sub", "INBOX.Projects"}
        assert _server_names(m) == names
        assert m.server()["Projects"] == local["Projects"]
        again = m.sync()
        assert "no changes" in again.out and not again.err, again
        m.close()
    finally:
        server.cleanup()


def test_a_prefix_without_the_separator_is_refused(
    dovecot_courier: Dovecot, tmp_path: Path
) -> None:
    m = Mirror(_account(dovecot_courier), tmp_path)
    _configure(m, namespace_prefix="INBOX")
    r = m.run("sync")
    assert r.status == 2 and "'INBOX.'" in r.err, r
    assert not m.root.exists() or not any(m.root.iterdir())
    m.close()


def test_namespace_prefix_none_keeps_the_server_names(
    dovecot_courier: Dovecot, tmp_path: Path
) -> None:
    m = Mirror(_account(dovecot_courier), tmp_path)
    _configure(m, namespace_prefix="none")
    _fill(m, ["INBOX.Work"])
    m.sync()
    assert set(local_by_name(m, "nested")) == {"INBOX", "INBOX/Work"}
    m.close()


def test_an_account_synced_before_keeps_its_names(
    dovecot_courier: Dovecot, tmp_path: Path, settle_clock: SettleClock
) -> None:
    """A state from before namespaces were used (no prefix recorded) holds INBOX/Work:
    switching it to "Work" would make every folder look deleted on one side and new on
    the other, so auto keeps the old names and says so once; an explicit prefix that
    contradicts the state is refused before anything is changed."""
    m = Mirror(_account(dovecot_courier), tmp_path)
    _configure(m, namespace_prefix="none")
    _fill(m, ["INBOX.Work"])
    m.sync()
    db = sqlite3.connect(m.state_dir / "state.sqlite3")
    with db:
        db.execute("DELETE FROM meta WHERE key = ?", (PREFIX_META,))
    db.close()
    _configure(m, namespace_prefix="auto")
    r = m.sync()
    assert "namespace 'INBOX.'" in r.err and "'INBOX/Work'" in r.err, r
    assert "no changes" in r.out, r
    settle_clock.advance()
    _quiet(m)
    _configure(m, namespace_prefix="INBOX.")
    refused = m.run("sync")
    assert refused.status == 2 and "namespace_prefix" in refused.err, refused
    assert set(local_by_name(m, "nested")) == {"INBOX", "INBOX/Work"}
    assert _server_names(m) == {"INBOX", "INBOX.Work"}
    m.close()


def test_quota_and_archive_name_folders_as_the_sync_does(tmp_path: Path) -> None:
    """`mirrorsync quota` and `archive` connect on their own; they must use the
    account's prefix too, or a rule for "Work" would find no folder."""
    server = Dovecot(separator=".", prefix="INBOX.", quota=True).start()
    try:
        m = Mirror(_account(server), tmp_path, local={"path": str(tmp_path / "Mail"),
                   "layout": "nested", "local_only": ["Archive", "Archive/*"]})  # fmt: skip
        _fill(m, ["INBOX.Work"])
        r = m.run("quota", "--json")
        assert r.status == 0, r
        names = {f["name"] for f in yaml.safe_load(r.out)["accounts"]["test"]["folders"]}
        assert names == {"INBOX", "Work"}, r
        m.sync()
        r = m.run("archive", "--folder", "Work", "--larger-than", "1", "--to", "Archive/Work")
        assert r.status == 0 and "archived 1 message" in r.out, r
        assert _server_names(m) == {"INBOX", "INBOX.Work"}
        assert sum(local_by_name(m, "nested")["Archive/Work"].values()) == 1
        m.close()
    finally:
        server.cleanup()


def test_notify_names_folders_as_the_sync_does() -> None:
    """Push hears "INBOX.Work" changed: that is the folder "Work" to sync."""
    from tests.test_daemon import Recorder, parse_line

    rec = Recorder()
    session = NotifySession(rec, lambda name: True, refresh=60)
    session.delimiter, session._prefix = ".", "INBOX."
    for line in (b'* STATUS "INBOX.Work" (MESSAGES 1)', b"* STATUS INBOX (MESSAGES 2)"):
        session.handle(parse_line((line,)))
    assert rec.folders == ["Work", "INBOX"]


def test_daemon_push_on_a_courier_namespace(
    dovecot_courier: Dovecot, tmp_path: Path, run_daemon: Any
) -> None:
    from tests.test_daemon import FAST, _files

    m = Mirror(_account(dovecot_courier), tmp_path, daemon=FAST)
    _fill(m, ["INBOX.Work"])
    d = run_daemon(m)
    d.ready()
    m.client.append("INBOX.Work", message("pushed"))
    d.wait_for(lambda: len(_files(m.root / "Work")) == 2, 3, "server APPEND -> Maildir")
    d.settle()
    assert [t for t in d.triggers() if "Work" in t], d.triggers()
    assert d.stop() == 0
    assert not (m.root / "INBOX" / "Work").exists()


@pytest.mark.parametrize("first", ["none", "auto"])
def test_a_state_moved_aside_keeps_the_names_the_maildir_has(
    dovecot_courier: Dovecot, tmp_path: Path, first: str
) -> None:
    """The state is gone (moved aside after damage, as the errors advise): the Maildir
    tells which names the account used, "INBOX/Work" or "Work", and that is kept, so
    content matching finds every message where it was and nothing is copied twice."""
    m = Mirror(_account(dovecot_courier), tmp_path)
    _configure(m, namespace_prefix=first)
    _fill(m, ["INBOX.Work"])
    m.sync()
    names = set(local_by_name(m, "nested"))
    assert names == ({"INBOX", "INBOX/Work"} if first == "none" else {"INBOX", "Work"})
    shutil.rmtree(m.state_dir)
    _configure(m, namespace_prefix="auto")
    r = m.sync()
    assert "FAILED" not in r.out, r
    local = local_by_name(m, "nested")
    assert set(local) == names
    assert all(sum(c.values()) == 1 for n, c in local.items() if n != "INBOX"), local
    assert _server_names(m) == {"INBOX", "INBOX.Work"}
    assert sum(m.server()["Work"].values()) == 1  # the harness names it the local way
    m.close()
