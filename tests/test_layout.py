"""Folder names <-> directories, both layouts, from tables."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mirrorsync.errors import FolderNameError, LocalStoreError
from mirrorsync.layout import MAILDIRPP, NESTED, folder_path, list_folders

ROOT = Path("/mail")

# (layout, canonical or variant name, path relative to ROOT; "" is ROOT itself)
MAPPED = [
    (NESTED, "INBOX", "INBOX"),
    (NESTED, "inbox", "INBOX"),
    (NESTED, "Inbox/Sub", "INBOX/Sub"),
    (NESTED, "A/B", "A/B"),
    (NESTED, "A/B/C", "A/B/C"),
    (NESTED, "Entwürfe", "Entwürfe"),
    (NESTED, "日本語/子", "日本語/子"),
    (NESTED, "Sent Items", "Sent Items"),
    (NESTED, "a.b", "a.b"),  # dots are fine when "/" separates
    (NESTED, "Archive/inbox", "Archive/inbox"),  # only a top-level INBOX is special
    (NESTED, "x" * 255, "x" * 255),
    (MAILDIRPP, "INBOX", ""),
    (MAILDIRPP, "inbox", ""),
    (MAILDIRPP, "INBOX/Sub", ".INBOX.Sub"),
    (MAILDIRPP, "inbox/Sub", ".INBOX.Sub"),
    (MAILDIRPP, "A", ".A"),
    (MAILDIRPP, "A/B", ".A.B"),
    (MAILDIRPP, "Entwürfe", ".Entwürfe"),
    (MAILDIRPP, "日本語/子", ".日本語.子"),
    (MAILDIRPP, "Sent Items", ".Sent Items"),
    (MAILDIRPP, "cur", ".cur"),  # no clash: it is a dot-directory
    (MAILDIRPP, "x" * 254, "." + "x" * 254),
]


@pytest.mark.parametrize(("layout", "name", "rel"), MAPPED)
def test_folder_path(layout: str, name: str, rel: str) -> None:
    expected = ROOT / rel if rel else ROOT
    assert folder_path(ROOT, layout, name) == expected


# (layout, name, words the reason must contain)
REFUSED = [
    (NESTED, "", "empty component"),
    (NESTED, "A/", "empty component"),
    (NESTED, "/A", "empty component"),
    (NESTED, "A//B", "empty component"),
    (NESTED, ".", "special directory"),
    (NESTED, "A/..", "special directory"),
    (NESTED, "A\0B", "NUL"),
    (NESTED, "bad\udcff", "not valid Unicode"),
    (NESTED, "cur", "cur/"),
    (NESTED, "A/new", "new/"),
    (NESTED, "INBOX/tmp", "tmp/"),
    (NESTED, "A/Cur", "cur/"),  # case-insensitive filesystems
    (NESTED, ".hidden", "starts with '.'"),
    (NESTED, "A/.B", "starts with '.'"),
    (NESTED, "x" * 256, "longer than 255"),
    (NESTED, "ü" * 128, "longer than 255"),  # 256 bytes in UTF-8
    (MAILDIRPP, "", "empty component"),
    (MAILDIRPP, "A//B", "empty component"),
    (MAILDIRPP, "..", "special directory"),
    (MAILDIRPP, "A\0", "NUL"),
    (MAILDIRPP, "a.b", "contains '.'"),
    (MAILDIRPP, "A/b.c", "contains '.'"),
    (MAILDIRPP, "A/.B", "contains '.'"),
    (MAILDIRPP, "x" * 255, "longer than 255"),  # ".xxx…" is 256 bytes
    (MAILDIRPP, "A/" + "ü" * 127, "longer than 255"),
]


@pytest.mark.parametrize(("layout", "name", "why"), REFUSED)
def test_folder_path_refuses(layout: str, name: str, why: str) -> None:
    with pytest.raises(FolderNameError) as info:
        folder_path(ROOT, layout, name)
    err = info.value
    assert why in err.message
    assert repr(name) in err.message  # names the folder
    assert layout in err.message
    assert "rename it on the server" in err.hint  # says what to do


def test_unknown_layout() -> None:
    with pytest.raises(ValueError, match="unknown Maildir layout"):
        folder_path(ROOT, "mbox", "INBOX")


# --- listing ------------------------------------------------------------------------


def make_maildir(path: Path) -> None:
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)


NAMES = ["INBOX", "INBOX/Sub", "A/B", "Entwürfe", "日本語/子", "Sent Items"]


@pytest.mark.parametrize("layout", [NESTED, MAILDIRPP])
def test_list_round_trips(tmp_path: Path, layout: str) -> None:
    for name in NAMES:
        make_maildir(folder_path(tmp_path, layout, name))
    assert list_folders(tmp_path, layout) == sorted(NAMES)


def test_list_nested_skips_parents_noise_and_maildir_internals(tmp_path: Path) -> None:
    make_maildir(tmp_path / "INBOX")
    make_maildir(tmp_path / "A" / "B")  # A is only a parent
    (tmp_path / "Empty").mkdir()  # no cur/new: not a folder
    (tmp_path / "OnlyCur" / "cur").mkdir(parents=True)  # needs new/ as well
    make_maildir(tmp_path / ".notmuch")  # other tools' dot-directories
    make_maildir(tmp_path / ".Old")  # a maildir++ folder is not part of this layout
    make_maildir(tmp_path / "INBOX" / "cur" / "X")  # never look inside cur/new/tmp
    (tmp_path / "stray-file").write_text("x")
    make_maildir(tmp_path)  # the root itself is not INBOX in this layout
    assert list_folders(tmp_path, NESTED) == ["A/B", "INBOX"]


def test_list_maildirpp(tmp_path: Path) -> None:
    make_maildir(tmp_path)
    make_maildir(tmp_path / ".A.B")
    make_maildir(tmp_path / ".Entwürfe")
    (tmp_path / ".NoMaildir").mkdir()
    make_maildir(tmp_path / "Plain")  # not a dot-directory: not a folder here
    make_maildir(tmp_path / ".A..B")  # empty component: skipped, not renamed
    make_maildir(tmp_path / ".inbox")  # would also be INBOX, which is ROOT
    assert list_folders(tmp_path, MAILDIRPP) == ["A/B", "Entwürfe", "INBOX"]


def test_list_maildirpp_root_not_a_maildir(tmp_path: Path) -> None:
    make_maildir(tmp_path / ".Sent")
    assert list_folders(tmp_path, MAILDIRPP) == ["Sent"]


def test_list_nested_inbox_spelling_clash_is_skipped(tmp_path: Path) -> None:
    make_maildir(tmp_path / "INBOX")
    make_maildir(tmp_path / "inbox")
    make_maildir(tmp_path / "inbox" / "Sub")
    same = (tmp_path / "INBOX").stat().st_ino == (tmp_path / "inbox").stat().st_ino
    if same:
        pytest.skip("case-insensitive filesystem")
    assert list_folders(tmp_path, NESTED) == ["INBOX"]


def test_list_missing_root(tmp_path: Path) -> None:
    assert list_folders(tmp_path / "nope", NESTED) == []
    assert list_folders(tmp_path / "nope", MAILDIRPP) == []


def test_list_root_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(LocalStoreError, match="not a directory"):
        list_folders(tmp_path / "f", NESTED)


def test_list_unreadable_directory_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unreadable directory must not look empty: its folders would look deleted."""
    make_maildir(tmp_path / "A" / "B")
    real = os.listdir

    def listdir(path: object) -> list[str]:
        if Path(str(path)) == tmp_path / "A":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)  # type: ignore[call-overload]

    monkeypatch.setattr(os, "listdir", listdir)
    with pytest.raises(LocalStoreError, match="Permission denied") as info:
        list_folders(tmp_path, NESTED)
    assert str(tmp_path / "A") in str(info.value)


# --- symlinks -----------------------------------------------------------------------


def test_symlink_loops_are_not_followed(tmp_path: Path) -> None:
    make_maildir(tmp_path / "A" / "B")
    (tmp_path / "A" / "B" / "up").symlink_to(tmp_path / "A")
    (tmp_path / "A" / "root").symlink_to(tmp_path)
    (tmp_path / "A" / "self").symlink_to(".")
    assert list_folders(tmp_path, NESTED) == ["A/B"]


def test_symlink_to_outside_maildir_is_followed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    make_maildir(tmp_path / "elsewhere" / "Work")
    make_maildir(tmp_path / "elsewhere" / "Work" / "Sub")
    (root / "Work").symlink_to(tmp_path / "elsewhere" / "Work")
    (root / "Dangling").symlink_to(tmp_path / "missing")
    assert list_folders(root, NESTED) == ["Work", "Work/Sub"]


@pytest.mark.parametrize(
    ("layout", "real", "alias"),
    [(NESTED, "Real", "Alias"), (NESTED, "Zed", "Alias"), (MAILDIRPP, ".Real", ".Alias")],
)
def test_same_directory_under_two_names_is_listed_once(
    tmp_path: Path, layout: str, real: str, alias: str
) -> None:
    """The real directory wins over the symlink, whatever the alphabet says."""
    make_maildir(tmp_path / real)
    (tmp_path / alias).symlink_to(tmp_path / real)
    assert list_folders(tmp_path, layout) == [real.lstrip(".")]


def test_maildirpp_symlink_to_root_is_not_a_second_inbox(tmp_path: Path) -> None:
    make_maildir(tmp_path)
    (tmp_path / ".Loop").symlink_to(tmp_path)
    assert list_folders(tmp_path, MAILDIRPP) == ["INBOX"]
