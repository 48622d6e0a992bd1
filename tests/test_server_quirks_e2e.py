"""What servers do differently from the full Dovecot, end to end against a real
Dovecot: told to behave like them (UIDPLUS without MOVE, as Courier), or showing that
a check for what they do costs nothing where it finds nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mirrorsync.imap.store import ImapStore
from mirrorsync.maildir import MaildirFolder
from tests.harness import Mirror, message


def test_a_local_move_without_move_keeps_its_copyuid(uidplus_account: Any, tmp_path: Path) -> None:
    """Courier has UIDPLUS but no MOVE: the move is a UID COPY whose COPYUID comes in
    the tagged answer. The state records the moved message at once, so a flag changed
    along with the move reaches the server in the same run and the next run has
    nothing to link."""
    m = Mirror(uidplus_account, tmp_path)
    c = m.client
    c.create_folder("Archive")
    for n in range(2):
        c.append("INBOX", message(n), flags=[b"\\Seen"])
    m.sync()
    f = m.files("INBOX")[0]
    f.rename(m.folder_dir("Archive") / "cur" / (f.name.split(":2,")[0] + ":2,FS"))
    r = m.sync()
    assert "moved" in r.out, r.out
    (flags,) = m.server_uids("Archive").values()
    assert {"\\Seen", "\\Flagged"} <= flags
    snap = m.assert_mirrored()
    again = m.sync()
    assert "linked" not in again.out, again.out
    assert m.assert_mirrored() == snap
    m.close()


def test_dovecot_stores_what_is_sent_so_no_file_is_replaced(
    account: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check after an upload (see mirrorsync.stored) against a server that keeps
    messages as sent: the sizes agree, the one message with raw 8-bit header bytes is
    fetched back and found equal, and no file is rewritten or warned about."""
    replaced: list[Any] = []
    monkeypatch.setattr(MaildirFolder, "replace_contents", lambda self, *a: replaced.append(a))
    fetched: list[int] = []
    real_fetch = ImapStore.fetch

    def fetch(self: ImapStore, uids: Any) -> Any:
        fetched.extend(uids)
        return real_fetch(self, uids)

    monkeypatch.setattr(ImapStore, "fetch", fetch)
    m = Mirror(account, tmp_path)
    m.sync()
    inbox = m.folder_dir("INBOX")
    names: dict[int, str] = {}
    for n in range(3):
        extra = "X-Note: caf\u00e9\r\n" if n == 0 else ""
        names[n] = f"17000000{n}.test.host:2,S"
        data = message(f"up{n}", extra=extra).replace(b"\r\n", b"\n")
        (inbox / "cur" / names[n]).write_bytes(data)
    inodes = {p.name: p.stat().st_ino for p in m.files("INBOX")}
    r = m.sync()
    assert len(fetched) == 1  # the one with 8-bit header bytes, fetched back
    assert replaced == [] and "server changed" not in r.err
    assert {p.name: p.stat().st_ino for p in m.files("INBOX")} == inodes
    snap = m.assert_mirrored()
    assert sum(snap["INBOX"].values()) == 3
    m.close()


def test_a_file_the_upload_changes_takes_the_servers_bytes(account: Any, tmp_path: Path) -> None:
    """A real case of a stored copy that differs from the file: a bare CR, which
    imaplib (like most clients) sends as CRLF. The stored size differs from the file's,
    so the file takes the server's bytes (same name) and both sides hash alike."""
    m = Mirror(account, tmp_path)
    m.sync()
    f = m.folder_dir("INBOX") / "cur" / "1700000000.cr.host:2,S"
    f.write_bytes(message("cr").replace(b"\r\n", b"\n").replace(b"second line", b"one\rtwo"))
    r = m.sync()
    assert f.read_bytes() == message("cr").replace(b"\r\n", b"\n").replace(
        b"second line", b"one\ntwo"
    )
    assert "INBOX: the server changed message <cr@example.org>" in r.err, r.err
    snap = m.assert_mirrored()
    m.sync()
    assert m.assert_mirrored() == snap
    m.close()
