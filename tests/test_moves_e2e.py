"""Moves stay moves, both ways, against a real Dovecot (with and without MOVE/UIDPLUS):
no message is uploaded or downloaded again, and flags are kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mirrorsync.imap.store import ImapStore
from tests.harness import Mirror, message


@pytest.fixture(params=["full", "basic"])
def mirror(request: Any, tmp_path: Path) -> Any:
    account = request.getfixturevalue("account" if request.param == "full" else "basic_account")
    m = Mirror(account, tmp_path)
    c = m.client
    c.create_folder("Archive")
    for n in range(3):
        c.append("INBOX", message(n), flags=[b"\\Seen", b"\\Flagged"] if n == 0 else [b"\\Seen"])
    m.sync()
    yield m
    m.close()


@pytest.fixture
def no_uploads(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every APPEND mirrorsync makes (one by one or in bulk); a move must make none."""
    calls: list[Any] = []
    real, real_many = ImapStore.append, ImapStore.append_many

    def spy(self: Any, *args: Any, **kw: Any) -> Any:
        calls.append(args[0])
        return real(self, *args, **kw)

    def spy_many(self: Any, name: str, items: Any) -> Any:
        calls.extend(name for _item in items)
        return real_many(self, name, items)

    monkeypatch.setattr(ImapStore, "append", spy)
    monkeypatch.setattr(ImapStore, "append_many", spy_many)
    return calls


def _archive_ids(m: Mirror) -> list[int]:
    return sorted(m.server_uids("Archive"))


def test_a_rename_into_another_folder_is_a_server_move(
    mirror: Mirror, no_uploads: list[Any]
) -> None:
    f = next(p for p in mirror.files("INBOX") if p.name.endswith("FS"))
    f.rename(mirror.folder_dir("Archive") / "cur" / f.name)
    r = mirror.sync()
    assert no_uploads == []
    assert "moved" in r.out
    snap = mirror.assert_mirrored()
    assert sum(snap["INBOX"].values()) == 2 and sum(snap["Archive"].values()) == 1
    (flags,) = mirror.server_uids("Archive").values()
    assert {"\\Seen", "\\Flagged"} <= flags
    mirror.sync()  # and nothing is left to do afterwards
    assert mirror.assert_mirrored() == snap


def test_mutt_style_copy_then_delete_is_a_server_move(
    mirror: Mirror, no_uploads: list[Any]
) -> None:
    f = mirror.files("INBOX")[0]
    (mirror.folder_dir("Archive") / "cur" / "1700000000.mutt.host:2,S").write_bytes(f.read_bytes())
    f.unlink()
    mirror.sync()
    assert no_uploads == []
    snap = mirror.assert_mirrored()
    assert sum(snap["INBOX"].values()) == 2 and sum(snap["Archive"].values()) == 1


def test_a_move_on_the_server_is_a_local_rename(mirror: Mirror) -> None:
    c = mirror.client
    c.select_folder("INBOX")
    uid = min(c.search("ALL"))
    files = {p.name: p.stat().st_ino for p in mirror.files("INBOX")}
    if c.has_capability("MOVE"):
        c.move([uid], "Archive")
    else:
        c.copy([uid], "Archive")
        c.delete_messages([uid])
        c.expunge()
    mirror.sync()
    snap = mirror.assert_mirrored()
    assert sum(snap["INBOX"].values()) == 2 and sum(snap["Archive"].values()) == 1
    (moved,) = mirror.files("Archive")
    # The same file (same inode), renamed into the other folder: not a new download.
    assert files.get(moved.name) == moved.stat().st_ino


def _server_move(m: Mirror, uid: int, src: str, dst: str) -> None:
    c = m.client
    c.select_folder(src)
    if c.has_capability("MOVE"):
        c.move([uid], dst)
    else:
        c.copy([uid], dst)
        c.delete_messages([uid])
        c.expunge()


def test_the_same_move_made_on_both_sides_is_one_message(
    mirror: Mirror, no_uploads: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader moved a message here while another client moved it there too: both
    sides lost it from INBOX and gained it in Archive. The two arrivals are linked by
    content; neither is copied to the other side (which would make two)."""
    downloads: list[int] = []
    real_fetch = ImapStore.fetch

    def spy(self: Any, uids: Any) -> Any:
        for item in real_fetch(self, uids):
            downloads.append(item[0])
            yield item

    monkeypatch.setattr(ImapStore, "fetch", spy)
    f = next(p for p in mirror.files("INBOX") if p.name.endswith("FS"))
    f.rename(mirror.folder_dir("Archive") / "cur" / f.name)
    (uid,) = [u for u, fl in mirror.server_uids("INBOX").items() if "\\Flagged" in fl]
    _server_move(mirror, uid, "INBOX", "Archive")
    r = mirror.sync()
    assert "linked" in r.out and no_uploads == []
    snap = mirror.assert_mirrored()
    assert sum(snap["INBOX"].values()) == 2 and sum(snap["Archive"].values()) == 1
    assert all(n == 1 for n in snap["Archive"].values())


def test_a_message_deleted_here_and_moved_there_survives_where_it_was_moved(
    mirror: Mirror,
) -> None:
    """Deleting and moving the same message are conflicting intents; mirrorsync keeps
    it (in the folder it was moved to) rather than delete what someone just filed."""
    f = next(p for p in mirror.files("INBOX") if p.name.endswith("FS"))
    f.unlink()
    (uid,) = [u for u, fl in mirror.server_uids("INBOX").items() if "\\Flagged" in fl]
    _server_move(mirror, uid, "INBOX", "Archive")
    mirror.sync()
    snap = mirror.assert_mirrored()
    assert sum(snap["INBOX"].values()) == 2 and sum(snap["Archive"].values()) == 1


def test_a_message_moved_to_different_folders_on_each_side_is_kept_in_both(
    mirror: Mirror,
) -> None:
    """A reader filed it here, another client there: the two intents conflict, and
    mirrorsync keeps the message in both folders rather than undo either move."""
    mirror.client.create_folder("Other")
    mirror.sync()
    f = next(p for p in mirror.files("INBOX") if p.name.endswith("FS"))
    f.rename(mirror.folder_dir("Archive") / "cur" / f.name)
    (uid,) = [u for u, fl in mirror.server_uids("INBOX").items() if "\\Flagged" in fl]
    _server_move(mirror, uid, "INBOX", "Other")
    mirror.sync()
    snap = mirror.assert_mirrored()
    assert sum(snap["INBOX"].values()) == 2
    assert snap["Archive"] == snap["Other"] and sum(snap["Other"].values()) == 1


def test_a_burst_of_moves_and_their_reverse(mirror: Mirror, no_uploads: list[Any]) -> None:
    for f in mirror.files("INBOX"):
        f.rename(mirror.folder_dir("Archive") / "cur" / f.name)
    mirror.sync()
    for f in mirror.files("Archive"):
        f.rename(mirror.folder_dir("INBOX") / "cur" / f.name)
    mirror.sync()
    assert no_uploads == []
    snap = mirror.assert_mirrored()
    assert sum(snap["INBOX"].values()) == 3 and snap["Archive"] == {}
