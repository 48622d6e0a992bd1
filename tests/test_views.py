"""The local view of a folder: it answers where a file is, listing only on a miss."""

from __future__ import annotations

from pathlib import Path

import pytest

from mirrorsync.maildir import Maildir, MaildirFolder, MessageVanished
from mirrorsync.model import LocalMessage
from mirrorsync.sync.views import LocalView

SEEN = frozenset({"\\Seen"})


def from_state(msg: LocalMessage) -> LocalMessage:
    """The message as the state knows it: key and flags, no file name."""
    return LocalMessage(msg.key, msg.flags, "cur")


def counting(folder: MaildirFolder, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    scans: list[int] = []
    real = MaildirFolder.scan

    def scan(self: MaildirFolder) -> dict[str, LocalMessage]:
        scans.append(1)
        return real(self)

    monkeypatch.setattr(MaildirFolder, "scan", scan)
    return scans


def test_a_file_under_its_likely_name_is_found_without_a_listing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = Maildir(tmp_path, "nested").create_folder("INBOX")
    a = folder.deliver("1.a.host", b"a\n", SEEN)
    view = LocalView(folder, {a.key: from_state(a)}, listed=False)
    scans = counting(folder, monkeypatch)
    assert view.file(a.key) == a and not scans
    assert view.files([a.key]) == {a.key: a}


def test_a_renamed_file_is_found_by_one_listing_that_adds_no_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = Maildir(tmp_path, "nested").create_folder("INBOX")
    a = folder.deliver("1.a.host", b"a\n", SEEN)
    b = folder.deliver("2.b.host", b"b\n", SEEN)
    folder.deliver("3.new.host", b"c\n", frozenset())  # no pair loaded: not in the view
    flagged = folder.set_flags(a, SEEN | {"\\Flagged"})
    view = LocalView(folder, {a.key: from_state(a), b.key: from_state(b)}, listed=False)
    scans = counting(folder, monkeypatch)
    assert view.file(a.key) == flagged and len(scans) == 1
    assert set(view) == {a.key, b.key}
    assert view.file(b.key) == b and len(scans) == 1  # told by the same listing


def test_a_file_gone_is_said_to_be_gone(tmp_path: Path) -> None:
    folder = Maildir(tmp_path, "nested").create_folder("INBOX")
    a = folder.deliver("1.a.host", b"a\n", SEEN)
    folder.remove(a)
    view = LocalView(folder, {a.key: from_state(a)}, listed=False)
    with pytest.raises(MessageVanished):
        view.file(a.key)
    assert view.files([a.key]) == {}


def test_a_listed_folder_answers_from_its_listing(tmp_path: Path) -> None:
    folder = Maildir(tmp_path, "nested").create_folder("INBOX")
    a = folder.deliver("1.a.host", b"a\n", SEEN)
    view = LocalView(folder, folder.scan(), listed=True)
    assert view.file(a.key) == a and view.files([]) is view and view.listed
