"""Moves out of a folder in steady state, against a real Dovecot (with QRESYNC, with
CONDSTORE only, and with no extensions): the sync gathers only what changed there,
and a move must still be one move, never a copy of the rest of the folder. Also what
`--dry-run` prints for a move: exactly what the real run then does."""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.devserver import Dovecot
from mirrorsync.maildir import MaildirFolder
from tests.conftest import Account, SettleClock, _new_account
from tests.harness import Mirror, message

SIZE = 50


@pytest.fixture(scope="module")
def dovecot_condstore() -> Iterator[Dovecot]:
    """A Dovecot with CONDSTORE but not QRESYNC: changes come as a delta of flags and
    a UID listing, the path between QRESYNC's VANISHED and a full listing."""
    server = Dovecot(
        capabilities="IMAP4rev1 LITERAL+ SASL-IR LOGIN-REFERRALS IDLE CONDSTORE MOVE UIDPLUS"
    ).start()
    yield server
    server.cleanup()


def _account(request: Any, kind: str) -> Account:
    if kind == "condstore":
        return _new_account(request.getfixturevalue("dovecot_condstore"))
    return request.getfixturevalue({"qresync": "account", "basic": "basic_account"}[kind])


def _steady(m: Mirror, clock: SettleClock) -> None:
    """Sync until both folders are in steady state: their Maildir stamps settled and
    recorded, so the next sync gathers only what changed on the server."""
    m.sync()
    clock.advance()
    m.sync()
    clock.advance()
    assert "no changes" in m.sync().out


@contextlib.contextmanager
def _listings(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The folders listed (every scan comes down to `listing`) while inside."""
    listed: list[str] = []
    real = MaildirFolder.listing

    def counted(self: MaildirFolder) -> Any:
        listed.append(self.name)
        return real(self)

    monkeypatch.setattr(MaildirFolder, "listing", counted)
    try:
        yield listed
    finally:
        monkeypatch.setattr(MaildirFolder, "listing", real)


def _counts(out: str) -> Counter[str]:
    """The summary line's counts: '1 moved in, 2 uploaded' -> {moved in: 1, ...}."""
    line = next(ln for ln in out.splitlines() if re.match(r"\w+: \d+ folders?, ", ln))
    body = re.split(r" folders?, ", line, maxsplit=1)[1].rsplit(" (", 1)[0]
    got: Counter[str] = Counter()
    if body != "no changes":
        for part in body.split(", "):
            n, what = part.split(" ", 1)
            got[what] += int(n)
    return got


def _sizes(m: Mirror) -> tuple[dict[str, int], dict[str, int]]:
    server = {n: sum(c.values()) for n, c in m.server().items()}
    local = {n: sum(c.values()) for n, c in m.local().items()}
    return server, local


def _server_move(m: Mirror, how: str, uid: int, src: str, dst: str) -> None:
    c = m.client
    c.select_folder(src)
    if how == "move":
        c.move([uid], dst)
    else:
        c.copy([uid], dst)
        c.delete_messages([uid])
        c.expunge()


def _inodes(m: Mirror, folder: str) -> dict[str, int]:
    return {p.name: p.stat().st_ino for p in m.files(folder)}


@pytest.mark.parametrize(
    "kind,how",
    [
        ("qresync", "move"),
        ("qresync", "copy"),
        ("condstore", "move"),
        ("condstore", "copy"),
        ("basic", "copy"),
    ],
)
def test_another_clients_move_out_of_a_steady_folder_is_one_move(
    request: Any,
    tmp_path: Path,
    settle_clock: SettleClock,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    how: str,
) -> None:
    m = Mirror(_account(request, kind), tmp_path)
    try:
        c = m.client
        c.create_folder("A")
        c.create_folder("B")
        for n in range(SIZE):
            c.append("A", message(f"a{n}"), flags=[b"\\Seen"])
        _steady(m, settle_clock)
        before = _inodes(m, "A")
        c.select_folder("A")
        uid = sorted(c.search("ALL"))[SIZE // 2]
        _server_move(m, how, uid, "A", "B")

        with _listings(monkeypatch) as listed:
            r = m.sync()
        assert _counts(r.out) == {"moved in": 1, "moved out": 1}, r.out
        assert listed == []  # the moved file is found by its name: cost follows the change
        expected = {"INBOX": 0, "A": SIZE - 1, "B": 1}
        assert _sizes(m) == (expected, expected)
        (moved,) = m.files("B")
        assert before[moved.name] == moved.stat().st_ino  # renamed, not downloaded
        m.assert_mirrored()

        for _ in range(2):  # nothing is left over, with or without a settled stamp
            r = m.sync()
            assert "no changes" in r.out, r.out
            assert _sizes(m) == (expected, expected)
            settle_clock.advance()
    finally:
        m.close()


@pytest.mark.parametrize("kind", ["qresync", "basic"])
def test_moved_files_under_unusual_names_cost_one_listing_of_the_folder(
    request: Any,
    tmp_path: Path,
    settle_clock: SettleClock,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    """Files whose names carry letters mirrorsync does not sync (Dovecot's keyword
    letters, `:2,Sa`) are not where the state's flags say: the folder is listed, once
    for all the moves, and still only the moved files are touched."""
    m = Mirror(_account(request, kind), tmp_path)
    try:
        c = m.client
        c.create_folder("A")
        c.create_folder("B")
        for n in range(10):
            c.append("A", message(f"k{n}"), flags=[b"\\Seen"])
        m.sync()
        for f in m.files("A")[:4]:
            f.rename(f.with_name(f.name + "a"))
        _steady(m, settle_clock)
        before = _inodes(m, "A")
        # Appended in order, so message k{n} has the n-th UID.
        uids = sorted(m.server_uids("A"))
        odd = [_number(p) for p in m.files("A") if p.name.endswith(":2,Sa")]
        assert len(odd) == 4
        for n in odd[:3]:
            _server_move(m, "copy", uids[n], "A", "B")

        with _listings(monkeypatch) as listed:
            r = m.sync()
        assert _counts(r.out) == {"moved in": 3, "moved out": 3}, r.out
        assert listed == ["A"]
        assert all(before[p.name] == p.stat().st_ino for p in m.files("B"))
        expected = {"INBOX": 0, "A": 7, "B": 3}
        assert _sizes(m) == (expected, expected)
        assert "no changes" in m.sync().out
    finally:
        m.close()


def _number(p: Path) -> int:
    """The n of the message(f"k{n}") in this file."""
    return int(p.read_text().split("Message-ID: <k", 1)[1].split("@", 1)[0])


@pytest.mark.parametrize("steady", [True, False])
@pytest.mark.parametrize("kind", ["qresync", "condstore", "basic"])
def test_an_unflagged_message_moved_on_the_server_is_renamed_not_downloaded(
    request: Any, tmp_path: Path, settle_clock: SettleClock, kind: str, steady: bool
) -> None:
    """Unflagged mail lives in new/ (no info part). Moved by another client, the file
    is renamed into the other folder, keeping its inode and its place in new/."""
    m = Mirror(_account(request, kind), tmp_path)
    try:
        c = m.client
        c.create_folder("B")
        for n in range(4):
            c.append("INBOX", message(f"u{n}"), flags=[] if n == 1 else [b"\\Seen"])
        if steady:
            _steady(m, settle_clock)
        else:
            m.sync()
        (unflagged,) = [p for p in m.files("INBOX") if p.parent.name == "new"]
        inode = unflagged.stat().st_ino
        (uid,) = [u for u, fl in m.server_uids("INBOX").items() if not fl]
        _server_move(m, "copy" if kind == "basic" else "move", uid, "INBOX", "B")

        r = m.sync()
        assert _counts(r.out) == {"moved in": 1, "moved out": 1}, r.out
        (moved,) = m.files("B")
        assert (moved.parent.name, moved.name) == ("new", unflagged.name)
        assert moved.stat().st_ino == inode
        assert _sizes(m) == ({"INBOX": 3, "B": 1}, {"INBOX": 3, "B": 1})
        m.assert_mirrored()
        assert "no changes" in m.sync().out
    finally:
        m.close()


def _dry_counts(out: str) -> Counter[str]:
    """What each dry-run line promises, in the words of the real run's summary."""
    words = [
        ("move on server ", ("moved out", "moved in")),
        ("move locally ", ("moved out", "moved in")),
        ("upload ", ("uploaded",)),
        ("download ", ("downloaded",)),
        ("delete on server ", ("deleted on server",)),
        ("delete locally ", ("deleted locally",)),
        ("flags ", ("flags",)),
        ("link ", ("linked",)),
    ]
    got: Counter[str] = Counter()
    for line in out.splitlines():
        what = re.sub(r"^\[\w+\] (\w+: )?", "", line)
        kinds = next((k for prefix, k in words if what.startswith(prefix)), None)
        assert kinds is not None, line
        got.update(kinds)
    return got


@pytest.mark.parametrize("kind", ["qresync", "basic"])
@pytest.mark.parametrize("steady", [True, False])
@pytest.mark.parametrize("side", ["local", "local-flagged", "server"])
def test_dry_run_shows_a_move_as_one_move_and_the_run_does_just_that(
    request: Any, tmp_path: Path, settle_clock: SettleClock, kind: str, steady: bool, side: str
) -> None:
    """A move is one line; a reader who also flagged the file while moving it adds
    one flag line, as the real run then stores the flag."""
    m = Mirror(_account(request, kind), tmp_path)
    try:
        c = m.client
        c.create_folder("B")
        for n in range(6):
            c.append("INBOX", message(f"d{n}"), flags=[b"\\Seen"])
        if steady:
            _steady(m, settle_clock)
        else:
            m.sync()
        if side.startswith("local"):
            f = m.files("INBOX")[2]
            name = f.name.replace(":2,S", ":2,FS") if side == "local-flagged" else f.name
            f.rename(m.folder_dir("B") / "cur" / name)
            settle_clock.advance()
        else:
            uid = sorted(m.server_uids("INBOX"))[2]
            _server_move(m, "copy", uid, "INBOX", "B")
        server, local = _sizes(m)

        dry = m.sync("--dry-run")
        lines = dry.out.splitlines()
        word = "move on server" if side.startswith("local") else "move locally"
        assert word in lines[0] and "INBOX -> B" in lines[0], dry.out
        assert len(lines) == (2 if side == "local-flagged" else 1), dry.out
        assert _sizes(m) == (server, local)  # a dry run changes nothing

        r = m.sync()
        moved = {"moved in": 1, "moved out": 1}
        assert _counts(r.out) == _dry_counts(dry.out), (dry.out, r.out)
        assert _counts(r.out) == (moved | {"flags": 1} if side == "local-flagged" else moved)
        expected = {"INBOX": 5, "B": 1}
        assert _sizes(m) == (expected, expected)
        m.assert_mirrored()
        assert m.sync("--dry-run").out == ""
    finally:
        m.close()


def test_the_daemon_keeps_another_clients_move_one_move(
    account: Account, tmp_path: Path, settle_clock: SettleClock
) -> None:
    """The same as above through `mirrorsync daemon`, woken by NOTIFY for the two
    folders: the source folder is not uploaded again."""
    from tests.test_daemon import FAST, DaemonProcess

    m = Mirror(account, tmp_path, daemon=FAST)
    c = m.client
    c.create_folder("A")
    c.create_folder("B")
    for n in range(SIZE):
        c.append("A", message(f"a{n}"), flags=[b"\\Seen"])
    _steady(m, settle_clock)
    before = _inodes(m, "A")
    settle_clock.advance(3600)  # the daemon's own stamps count as settled at once
    d = DaemonProcess(m, tmp_path)
    try:
        d.ready()
        c.select_folder("A")
        _server_move(m, "move", sorted(c.search("ALL"))[SIZE // 2], "A", "B")
        d.wait_for(lambda: len(m.files("B")) == 1, 10, "the move reaches the Maildir")
        d.settle()
        expected = {"INBOX": 0, "A": SIZE - 1, "B": 1}
        assert _sizes(m) == (expected, expected), d.dump()
        (moved,) = m.files("B")
        assert before[moved.name] == moved.stat().st_ino, d.dump()
        assert "uploaded" not in d.out and "downloaded" not in d.out, d.dump()
        assert d.stop() == 0
    finally:
        d.kill()
        m.close()
