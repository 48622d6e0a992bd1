"""Folder names <-> directories, both layouts, from tables."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mirrorsync.errors import FolderNameError, LocalStoreError
from mirrorsync.layout import (
    MAILDIRPP,
    NESTED,
    escape_component,
    folder_name_of,
    folder_path,
    list_folders,
    unescape_component,
)
from mirrorsync.names import canonical_folder
from mirrorsync.watch import folder_of

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
    # escaped: what would collide with a Maildir's own entries (see ESCAPED below)
    (NESTED, "Projects/New", "Projects/%4Eew"),
    (NESTED, "cur", "%63ur"),
    (NESTED, ".hidden", "%2Ehidden"),
    (MAILDIRPP, "lists.debian.org", ".lists%2Edebian%2Eorg"),
    (MAILDIRPP, "A/.B", ".A.%2EB"),
    # a component too long for one directory entry goes on in a subdirectory
    (NESTED, "x" * 256, "x" * 253 + "%+/xxx"),
    (NESTED, "A/" + "ü" * 128, "A/" + "ü" * 126 + "%+/üü"),  # 256 bytes in UTF-8
    (NESTED, "." + "x" * 253, "%2E" + "x" * 250 + "%+/xxx"),  # 256 bytes once escaped
    (NESTED, "x" * 253 + "new", "x" * 253 + "%+/%6Eew"),  # no level is new/
    (NESTED, "x" * 253 + ".bb", "x" * 253 + "%+/%2Ebb"),  # nor hidden
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
    (NESTED, "A\0B", "NUL"),
    (NESTED, "bad\udcff", "not valid Unicode"),
    (MAILDIRPP, "", "empty component"),
    (MAILDIRPP, "A//B", "empty component"),
    (MAILDIRPP, "A\0", "NUL"),
    (MAILDIRPP, "x" * 255, "longer than 255"),  # ".xxx…" is 256 bytes
    (MAILDIRPP, "A/" + "ü" * 127, "longer than 255"),
]


@pytest.mark.parametrize(("layout", "name", "why"), REFUSED)
def test_folder_path_refuses(layout: str, name: str, why: str) -> None:
    with pytest.raises(FolderNameError) as info:
        folder_path(ROOT, layout, name)
    err = info.value
    assert why in err.message
    assert repr(name[:40]).rstrip("'") in err.message  # names the folder
    assert layout in err.message
    assert "rename it on the server" in err.hint  # says what to do


# (layout, one name component, its directory-name spelling): the escape table of
# the README, both ways.
ESCAPED = [
    (NESTED, "cur", "%63ur"),
    (NESTED, "new", "%6Eew"),
    (NESTED, "tmp", "%74mp"),
    (NESTED, "New", "%4Eew"),  # case-insensitive file systems: New is new/
    (NESTED, "TMP", "%54MP"),
    (NESTED, "current", "current"),  # only the exact words
    (NESTED, ".hidden", "%2Ehidden"),
    (NESTED, ".", "%2E"),
    (NESTED, "..", "%2E."),
    (NESTED, "a.b", "a.b"),
    (NESTED, "Mr. Smith", "Mr. Smith"),
    (NESTED, "100%", "100%"),  # a "%" stays, unless it would read as an escape
    (NESTED, "50% off", "50% off"),
    (NESTED, "%2E", "%252E"),
    (NESTED, "%2e", "%2e"),  # escapes are capital hex only
    (NESTED, "%%41", "%%2541"),
    (NESTED, "é%C3", "é%C3"),  # only ASCII is escaped: "%C3" is no escape
    (MAILDIRPP, "lists.debian.org", "lists%2Edebian%2Eorg"),
    (MAILDIRPP, ".hidden", "%2Ehidden"),
    (MAILDIRPP, "..", "%2E%2E"),
    (MAILDIRPP, "cur", "cur"),  # a dot-directory: no clash
    (MAILDIRPP, "%.", "%%2E"),
    (MAILDIRPP, "%A.", "%A%2E"),
    (MAILDIRPP, "Mr. Smith", "Mr%2E Smith"),
    (NESTED, "a%+", "a%25+"),  # "%+" at the end would read as a continued name
    (NESTED, "a%+b", "a%+b"),
]


@pytest.mark.parametrize(("layout", "part", "entry"), ESCAPED)
def test_escape_table(layout: str, part: str, entry: str) -> None:
    assert escape_component(layout, part) == entry
    assert unescape_component(entry) == part


# Components as a server may name them: any text, weighted towards what the escapes
# are about (".", "%", hex digits, cur/new/tmp in any case).
_TRICKY = st.sampled_from([".", "%", "%2E", "%25", "2", "E", "F", "cur", "NEW", "Tmp", "é", "a"])
_COMPONENT = (
    st.lists(_TRICKY | st.text(min_size=1, max_size=3), min_size=1, max_size=6)
    .map("".join)
    .filter(
        lambda p: "/" not in p and "\0" not in p and len(p.encode("utf-8", "surrogatepass")) < 60
    )
)
_NAME = st.lists(_COMPONENT, min_size=1, max_size=3).map("/".join)


@settings(max_examples=500, deadline=None)
@given(layout=st.sampled_from([NESTED, MAILDIRPP]), name=_NAME)
def test_escape_round_trips(layout: str, name: str) -> None:
    """Every folder name maps to one directory, and that directory back to the name."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return  # not a name a server can send
    name = canonical_folder(name)
    path = folder_path(ROOT, layout, name)
    rel = path.relative_to(ROOT).parts
    assert folder_name_of(layout, rel) == name
    for entry in rel:  # never a directory a Maildir reader takes for something else
        assert entry not in ("cur", "new", "tmp", ".", "..")
        if layout == NESTED:
            assert not entry.startswith(".")
            assert entry.lower() not in ("cur", "new", "tmp")
    if layout == MAILDIRPP and name != "INBOX":
        assert len(rel) == 1 and rel[0].count(".") == name.count("/") + 1


_LONG = (
    st.lists(_TRICKY | st.text(min_size=1, max_size=40), min_size=30, max_size=120)
    .map("".join)
    .filter(lambda p: "/" not in p and "\0" not in p)
)


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(_LONG | _COMPONENT, min_size=1, max_size=3))
def test_long_names_round_trip(parts: list[str]) -> None:
    """Nested: any length, in levels of at most 255 bytes, none hidden or cur/new/tmp."""
    name = canonical_folder("/".join(parts))
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return
    rel = folder_path(ROOT, NESTED, name).relative_to(ROOT).parts
    assert folder_name_of(NESTED, rel) == name
    for entry in rel:
        assert len(entry.encode("utf-8")) <= 255
        assert not entry.startswith(".") and entry.lower() not in ("cur", "new", "tmp")


@settings(max_examples=300, deadline=None)
@given(layout=st.sampled_from([NESTED, MAILDIRPP]), a=_NAME, b=_NAME)
def test_distinct_names_distinct_directories(layout: str, a: str, b: str) -> None:
    a, b = canonical_folder(a), canonical_folder(b)
    if a != b:
        assert folder_path(ROOT, layout, a) != folder_path(ROOT, layout, b)


def test_unknown_layout() -> None:
    with pytest.raises(ValueError, match="unknown Maildir layout"):
        folder_path(ROOT, "mbox", "INBOX")


# --- listing ------------------------------------------------------------------------


def make_maildir(path: Path) -> None:
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)


NAMES = ["INBOX", "INBOX/Sub", "A/B", "Entwürfe", "日本語/子", "Sent Items"]
ESCAPED_NAMES = ["Projects/New", "cur", ".hidden", "lists.debian.org", "100%", "%41", "A/tmp/B"]


@pytest.mark.parametrize("layout", [NESTED, MAILDIRPP])
def test_list_round_trips(tmp_path: Path, layout: str) -> None:
    for name in NAMES + ESCAPED_NAMES:
        make_maildir(folder_path(tmp_path, layout, name))
    assert list_folders(tmp_path, layout) == sorted(NAMES + ESCAPED_NAMES)


def test_long_names_are_listed_and_watched(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    names = ["L" * 300, "A/" + "." + "ü" * 200, "L" * 253 + "new"]
    for name in names:
        make_maildir(folder_path(tmp_path, NESTED, name))
        assert folder_of(tmp_path, NESTED, folder_path(tmp_path, NESTED, name)) == name
    assert list_folders(tmp_path, NESTED) == sorted(names)
    assert not caplog.text


@pytest.mark.parametrize(
    ("layout", "entry", "name"),
    [
        (NESTED, "%41", "%41"),
        (NESTED, "Lists/100%7E", "Lists/100%7E"),
        (MAILDIRPP, ".a%2eb%41", "a%2eb%41"),
        (NESTED, "a%+", "a%+"),  # now "a%25+": "%+" at the end continues a long name
        (NESTED, "b%+/Sub", "b%+/Sub"),
    ],
)
def test_directory_stored_before_escaping_keeps_its_folder(
    tmp_path: Path, layout: str, entry: str, name: str
) -> None:
    """Before escaping, the folder "%41" was stored as "%41" (now "%2541"): existing
    Maildirs keep their directories, since a renamed one would look deleted."""
    make_maildir(tmp_path / entry)
    assert list_folders(tmp_path, layout) == [name]
    assert folder_path(tmp_path, layout, name) == tmp_path / entry
    assert folder_of(tmp_path, layout, tmp_path / entry) == name


def test_escaped_directory_wins_over_one_stored_before(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_maildir(tmp_path / "%2541")
    make_maildir(tmp_path / "%41")  # now spells "A", which is stored as "A"
    assert list_folders(tmp_path, NESTED) == ["%41"]
    assert folder_path(tmp_path, NESTED, "%41") == tmp_path / "%2541"
    assert "ignoring Maildir" in caplog.text and "'A'" in caplog.text


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
