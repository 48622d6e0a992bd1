"""The Maildir store: scan parsing, durable delivery, flag renames, removal, folders."""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mirrorsync import maildir as maildir_mod
from mirrorsync.errors import LocalStoreError
from mirrorsync.flags import SYNCED_FLAGS, normalize
from mirrorsync.layout import MAILDIRPP, NESTED
from mirrorsync.maildir import (
    Maildir,
    MaildirFolder,
    MessageExists,
    MessageVanished,
    display_path,
    new_key,
    split_filename,
)
from mirrorsync.model import NO_FLAGS, Flags, LocalMessage
from tests.conftest import SettleClock

SEEN = "\\Seen"
FLAGGED = "\\Flagged"
ANSWERED = "\\Answered"
ALL = frozenset(SYNCED_FLAGS)


@pytest.fixture
def store(tmp_path: Path) -> Maildir:
    return Maildir(tmp_path / "Mail", NESTED)


@pytest.fixture
def inbox(store: Maildir) -> MaildirFolder:
    return store.create_folder("INBOX")


def files(folder: MaildirFolder) -> dict[str, list[str]]:
    return {sub: sorted(os.listdir(folder.path / sub)) for sub in ("cur", "new", "tmp")}


def put(folder: MaildirFolder, relpath: str, data: bytes = b"x") -> None:
    (folder.path / relpath).write_bytes(data)


# --- file names ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "parts"),
    [
        ("k", ("k", "", "")),
        ("k:2,FS", ("k", ":", "FS")),
        ("k!2,S", ("k", "!", "S")),
        ("k:2,", ("k", ":", "")),
        ("k:1,experimental", ("k:1,experimental", "", "")),
        ("a,U=12,FMD5=ff:2,S", ("a,U=12,FMD5=ff", ":", "S")),
    ],
)
def test_split_filename(filename: str, parts: tuple[str, str, str]) -> None:
    assert split_filename(filename) == parts


# --- scan ---------------------------------------------------------------------------

# (file in the folder, expected key or None when ignored, expected flags)
SCAN_CASES: list[tuple[str, str | None, Flags]] = [
    ("cur/k1:2,FS", "k1", frozenset({FLAGGED, SEEN})),
    ("cur/k2!2,S", "k2", frozenset({SEEN})),
    ("new/k3", "k3", NO_FLAGS),
    ("cur/k4:2,Sab", "k4", frozenset({SEEN})),  # keyword letters are not flags
    ("cur/k5:2,", "k5", NO_FLAGS),
    ("cur/k6:2,DFPRST", "k6", ALL),
    ("new/k7:2,S", "k7", frozenset({SEEN})),  # some tools put info on new/ files
    ("cur/k8:2,SZ", "k8", frozenset({SEEN})),  # unknown uppercase letter
    ("cur/1.M2P3.h,U=9:2,R", "1.M2P3.h,U=9", frozenset({ANSWERED})),
    ("cur/.hidden:2,S", None, NO_FLAGS),
    ("new/.lock", None, NO_FLAGS),
    ("cur/:2,S", None, NO_FLAGS),  # no unique part
]


@pytest.mark.parametrize(("relpath", "key", "flags"), SCAN_CASES)
def test_scan_parses_names(
    inbox: MaildirFolder, relpath: str, key: str | None, flags: Flags
) -> None:
    put(inbox, relpath)
    scanned = inbox.scan()
    if key is None:
        assert scanned == {}
        return
    subdir, filename = relpath.split("/")
    assert scanned == {key: LocalMessage(key, flags, subdir, filename)}
    assert scanned[key].filename == filename


def test_scan_ignores_directories_and_never_opens_files(
    inbox: MaildirFolder, monkeypatch: pytest.MonkeyPatch
) -> None:
    put(inbox, "cur/a:2,S")
    put(inbox, "new/b")
    (inbox.path / "cur" / "subdir").mkdir()

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("scan opened a file")

    monkeypatch.setattr("builtins.open", forbidden)
    monkeypatch.setattr(os, "open", forbidden)
    assert sorted(inbox.scan()) == ["a", "b"]


@pytest.mark.parametrize(
    ("first", "second", "kept"),
    [
        ("new/k", "cur/k:2,S", "cur/k:2,S"),  # a reader copied instead of moved
        ("cur/k:2,S", "cur/k:2,F", "cur/k:2,F"),  # deterministic: smaller name
        ("cur/k:2,S", "cur/k!2,S", "cur/k!2,S"),
    ],
)
def test_scan_duplicate_keys_keep_one_and_warn(
    inbox: MaildirFolder, caplog: pytest.LogCaptureFixture, first: str, second: str, kept: str
) -> None:
    put(inbox, first)
    put(inbox, second)
    with caplog.at_level(logging.WARNING):
        scanned = inbox.scan()
    assert [m.relpath for m in scanned.values()] == [kept]
    assert "two files with the key k" in caplog.text


def test_scan_unreadable_is_an_error(inbox: MaildirFolder, monkeypatch: pytest.MonkeyPatch) -> None:
    def scandir(path: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(LocalStoreError, match="permission denied scanning") as info:
        inbox.scan()
    assert "INBOX/new" in info.value.message


def test_scan_missing_subdir_is_an_error_not_an_empty_folder(inbox: MaildirFolder) -> None:
    put(inbox, "new/k")
    os.rmdir(inbox.path / "cur")
    with pytest.raises(LocalStoreError, match="cur/ is missing"):
        inbox.scan()


# --- keys ---------------------------------------------------------------------------

KEY_RE = re.compile(r"^\d+\.M\d{1,6}P\d+Q\d+R[0-9a-f]{16}\.\S+$")


def test_new_key_shape_and_uniqueness() -> None:
    keys = {new_key() for _ in range(2000)}
    assert len(keys) == 2000
    for key in list(keys)[:20]:
        assert KEY_RE.match(key), key
        assert split_filename(key) == (key, "", "")


def test_new_key_escapes_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = os.uname_result(("Linux", "a/b:c!d", "6", "#1", "x86_64"))
    monkeypatch.setattr(maildir_mod.os, "uname", lambda: fake)
    monkeypatch.setattr(maildir_mod, "_host", None)  # looked up once per process
    key = new_key()
    assert key.endswith(r".a\057b\072c\041d")
    assert "/" not in key and ":" not in key


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_new_key_unique_across_fork() -> None:
    """A forked child inherits the counter; pid and random bits keep keys apart."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.write(w, new_key().encode())
        os._exit(0)
    os.close(w)
    mine = new_key()
    with os.fdopen(r, "rb") as f:
        theirs = f.read().decode()
    os.waitpid(pid, 0)
    assert theirs and theirs != mine


# --- deliver ------------------------------------------------------------------------

# (flags, expected subdir, expected info suffix)
DELIVER_CASES: list[tuple[Flags, str, str]] = [
    (NO_FLAGS, "new", ""),
    (frozenset({"$Junk"}), "new", ""),  # nothing mappable: still new mail
    (frozenset({SEEN}), "cur", ":2,S"),
    (frozenset({SEEN, FLAGGED}), "cur", ":2,FS"),
    (frozenset({FLAGGED}), "cur", ":2,F"),  # flagged but unread is not "new"
    (frozenset({SEEN, "$Junk", "\\Recent"}), "cur", ":2,S"),
    (ALL, "cur", ":2,DFPRST"),
    (frozenset({"\\seen", "\\FLAGGED"}), "cur", ":2,FS"),  # IMAP flags ignore case
]


@pytest.mark.parametrize(("flags", "subdir", "suffix"), DELIVER_CASES)
def test_deliver(inbox: MaildirFolder, flags: Flags, subdir: str, suffix: str) -> None:
    key = inbox.new_key()
    data = b"Subject: hi\n\nbody\r\nwith CRLF kept \x00\xff as given\n"
    msg = inbox.deliver(key, data, flags, mtime=1_000_000_000.5)
    assert msg == LocalMessage(key, normalize(flags), subdir, key + suffix)
    assert msg.filename == key + suffix
    path = inbox.path / subdir / (key + suffix)
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_mtime == pytest.approx(1_000_000_000.5, abs=1e-3)
    assert files(inbox)["tmp"] == []
    assert inbox.scan() == {key: msg}
    assert inbox.read(msg) == data


def test_deliver_without_mtime_is_now(inbox: MaildirFolder) -> None:
    msg = inbox.deliver(inbox.new_key(), b"x", NO_FLAGS)
    assert abs(inbox.path_of(msg).stat().st_mtime - time.time()) < 60


def test_deliver_bang_separator(tmp_path: Path) -> None:
    folder = Maildir(tmp_path, NESTED, info_sep="!").create_folder("INBOX")
    msg = folder.deliver("k1", b"x", frozenset({SEEN}))
    assert msg.filename == "k1!2,S"
    assert folder.scan() == {"k1": msg}


def count_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


def test_deliver_fsyncs_file_and_directory(
    inbox: MaildirFolder, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced_dirs: list[Path] = []
    fsyncs = count_fsyncs(monkeypatch)
    monkeypatch.setattr(maildir_mod, "fsync_dir", synced_dirs.append)
    inbox.deliver("k1", b"x", frozenset({SEEN}))
    assert len(fsyncs) == 1
    assert synced_dirs == [inbox.path / "cur"]


def test_deliver_many_group_commit(inbox: MaildirFolder, monkeypatch: pytest.MonkeyPatch) -> None:
    synced_dirs: list[Path] = []
    fsyncs = count_fsyncs(monkeypatch)
    monkeypatch.setattr(maildir_mod, "fsync_dir", synced_dirs.append)
    items = [
        (f"k{i}", f"message {i}".encode(), frozenset({SEEN}) if i % 2 else NO_FLAGS, None)
        for i in range(10)
    ]
    msgs = inbox.deliver_many(iter(items))
    assert [m.key for m in msgs] == [f"k{i}" for i in range(10)]
    assert len(fsyncs) == 10  # every file
    assert sorted(synced_dirs) == [inbox.path / "cur", inbox.path / "new"]  # once each
    assert inbox.scan() == {m.key: m for m in msgs}
    for m, (_k, data, _f, _t) in zip(msgs, items, strict=True):
        assert inbox.read(m) == data
    assert files(inbox)["tmp"] == []


@pytest.fixture
def syncfs_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """syncfs(2) as the kernel has it, counted; skipped where it is not used."""
    real = maildir_mod._syncfs()
    if real is None:
        pytest.skip("syncfs(2) is not used on this system")
    calls: list[str] = []

    def counted(path: str) -> None:
        calls.append(path)
        real(path)

    monkeypatch.setattr(maildir_mod, "_syncfs_fn", counted)
    return calls


def _batch(n: int) -> list[tuple[str, bytes, Flags, float | None]]:
    return [
        (f"k{i}", f"message {i}".encode(), frozenset({SEEN}) if i % 2 else NO_FLAGS, 1e9 + i)
        for i in range(n)
    ]


def test_a_large_batch_is_made_durable_by_one_syncfs(
    inbox: MaildirFolder, monkeypatch: pytest.MonkeyPatch, syncfs_calls: list[str]
) -> None:
    synced_dirs: list[Path] = []
    fsyncs = count_fsyncs(monkeypatch)
    monkeypatch.setattr(maildir_mod, "fsync_dir", synced_dirs.append)
    items = _batch(maildir_mod.SYNCFS_MIN_FILES)
    msgs = inbox.deliver_many(items)
    assert fsyncs == []  # no file is fsynced on its own...
    assert syncfs_calls == [str(inbox.path / "tmp")]  # ...one syncfs covers them all
    assert sorted(synced_dirs) == [inbox.path / "cur", inbox.path / "new"]
    for m, (_k, data, _f, mtime) in zip(msgs, items, strict=True):
        assert inbox.read(m) == data
        assert inbox.path_of(m).stat().st_mtime == mtime
    assert files(inbox)["tmp"] == []


def test_without_syncfs_a_large_batch_fsyncs_every_file(
    inbox: MaildirFolder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(maildir_mod, "_syncfs_fn", None)
    fsyncs = count_fsyncs(monkeypatch)
    msgs = inbox.deliver_many(_batch(maildir_mod.SYNCFS_MIN_FILES))
    assert len(msgs) == maildir_mod.SYNCFS_MIN_FILES
    assert len(fsyncs) == len(msgs) + 2  # every file, then cur/ and new/


def test_a_failed_syncfs_places_nothing(
    inbox: MaildirFolder, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(path: str) -> None:
        raise OSError(errno.EIO, "Input/output error", path)

    monkeypatch.setattr(maildir_mod, "_syncfs_fn", failing)
    with pytest.raises(LocalStoreError) as info:
        inbox.deliver_many(_batch(maildir_mod.SYNCFS_MIN_FILES))
    assert "Input/output error" in info.value.message
    assert files(inbox) == {"cur": [], "new": [], "tmp": []}


@pytest.mark.parametrize("n", [3, maildir_mod.SYNCFS_MIN_FILES])
def test_a_started_delivery_is_placed_by_finish_or_removed_by_abandon(
    inbox: MaildirFolder, n: int
) -> None:
    inbox.deliver_start(_batch(n)).abandon()
    assert files(inbox) == {"cur": [], "new": [], "tmp": []}
    msgs = inbox.deliver_start(_batch(n)).finish()
    assert inbox.scan() == {m.key: m for m in msgs}
    assert files(inbox)["tmp"] == []


def test_syncfs_is_not_trusted_before_linux_5_8(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(maildir_mod, "_syncfs_fn", False)
    monkeypatch.setattr(os, "uname", lambda: os.uname_result(("Linux", "h", "5.4.0", "", "")))
    assert maildir_mod._syncfs() is None


def test_deliver_never_overwrites(inbox: MaildirFolder) -> None:
    inbox.deliver("k1", b"original", NO_FLAGS)
    with pytest.raises(MessageExists) as info:
        inbox.deliver("k1", b"replacement", NO_FLAGS)
    assert "k1" in str(info.value)
    assert (inbox.path / "new" / "k1").read_bytes() == b"original"
    assert files(inbox) == {"cur": [], "new": ["k1"], "tmp": []}


def test_deliver_many_is_all_or_nothing_on_a_clash(inbox: MaildirFolder) -> None:
    inbox.deliver("k2", b"original", NO_FLAGS)
    items = [("k1", b"a", NO_FLAGS, None), ("k2", b"b", NO_FLAGS, None)]
    with pytest.raises(MessageExists):
        inbox.deliver_many(items)
    assert files(inbox) == {"cur": [], "new": ["k2"], "tmp": []}
    assert (inbox.path / "new" / "k2").read_bytes() == b"original"


@pytest.mark.parametrize("key", ["", ".hidden", "a/b", "k:2,S", "k!2,", "a\0b", "x" * 250])
def test_deliver_rejects_bad_keys(inbox: MaildirFolder, key: str) -> None:
    with pytest.raises(ValueError):
        inbox.deliver(key, b"x", NO_FLAGS)
    assert files(inbox) == {"cur": [], "new": [], "tmp": []}


def test_deliver_hard_links_unsupported_falls_back_to_rename(
    inbox: MaildirFolder, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_link(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    msg = inbox.deliver("k1", b"data", frozenset({SEEN}))
    assert inbox.read(msg) == b"data"
    assert files(inbox) == {"cur": ["k1:2,S"], "new": [], "tmp": []}
    with pytest.raises(MessageExists):
        inbox.deliver("k1", b"other", frozenset({SEEN}))
    assert inbox.read(msg) == b"data"
    assert files(inbox)["tmp"] == []


# --- delivery failures --------------------------------------------------------------


def _enospc(*args: object) -> int:
    raise OSError(errno.ENOSPC, "No space left on device")


def _half_then_enospc() -> object:
    real = os.write
    calls = {"n": 0}

    def write(fd: int, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real(fd, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    return write


def _eacces_link(src: object, dst: object) -> None:
    raise PermissionError(errno.EACCES, "Permission denied", str(src), None, str(dst))


def _eio_dir_fsync(path: Path) -> None:
    raise OSError(errno.EIO, "Input/output error", str(path))


# (what to break, replacement, words in the message, words in the hint)
FAILURES = [
    ("os.write", _enospc, "disk full writing to", "free space and re-run; nothing was lost"),
    ("os.write", _half_then_enospc(), "disk full writing to", "free space"),
    ("os.fsync", _enospc, "disk full writing to", "free space"),
    ("os.link", _eacces_link, "permission denied writing to", "permissions"),
    ("fsync_dir", _eio_dir_fsync, "Input/output error", "nothing was lost"),
]


@pytest.mark.parametrize(("target", "replacement", "words", "hint"), FAILURES)
@pytest.mark.parametrize("batch", [1, 3, maildir_mod.SYNCFS_MIN_FILES])
def test_delivery_failure_leaves_nothing_behind(
    inbox: MaildirFolder,
    monkeypatch: pytest.MonkeyPatch,
    target: str,
    replacement: object,
    words: str,
    hint: str,
    batch: int,
) -> None:
    inbox.deliver("old", b"kept", NO_FLAGS)
    if target == "fsync_dir":
        monkeypatch.setattr(maildir_mod, "fsync_dir", replacement)
    else:
        monkeypatch.setattr(os, target.split(".")[1], replacement)
    items = [
        (f"k{i}", b"x" * 100, frozenset({SEEN}) if i else NO_FLAGS, None) for i in range(batch)
    ]
    with pytest.raises(LocalStoreError) as info:
        inbox.deliver_many(items)
    monkeypatch.undo()
    err = info.value
    assert words in err.message
    assert display_path(inbox.path) in err.message  # names the folder
    assert hint in err.hint
    assert files(inbox) == {"cur": [], "new": ["old"], "tmp": []}


def test_delivery_failure_message_wording(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    folder = Maildir(tmp_path / "Mail", NESTED).create_folder("INBOX")
    monkeypatch.setattr(os, "write", _enospc)
    with pytest.raises(LocalStoreError) as info:
        folder.deliver("k", b"x", NO_FLAGS)
    assert str(info.value) == (
        "disk full writing to ~/Mail/INBOX (No space left on device); "
        "free space and re-run; nothing was lost"
    )


def test_delivery_failure_from_the_source_iterable_cleans_up(inbox: MaildirFolder) -> None:
    def items() -> Iterator[tuple[str, bytes, Flags, float | None]]:
        yield ("k1", b"a", NO_FLAGS, None)
        raise ConnectionError("server went away")

    with pytest.raises(ConnectionError):
        inbox.deliver_many(items())
    assert files(inbox) == {"cur": [], "new": [], "tmp": []}


def test_read_only_directory(inbox: MaildirFolder) -> None:
    os.chmod(inbox.path / "new", 0o500)
    try:
        if os.access(inbox.path / "new", os.W_OK):
            pytest.skip("directory permissions are not enforced for this user (root)")
        with pytest.raises(LocalStoreError, match="permission denied"):
            inbox.deliver("k", b"x", NO_FLAGS)
    finally:
        os.chmod(inbox.path / "new", 0o700)
    assert files(inbox) == {"cur": [], "new": [], "tmp": []}


# --- read, set_flags, remove --------------------------------------------------------


def test_read_vanished(inbox: MaildirFolder) -> None:
    msg = inbox.deliver("k", b"x", NO_FLAGS)
    os.unlink(inbox.path_of(msg))
    with pytest.raises(MessageVanished) as info:
        inbox.read(msg)
    assert isinstance(info.value, LocalStoreError)
    assert str(inbox.path_of(msg).name) in str(info.value)
    assert info.value.path == inbox.path_of(msg)


def test_path_of_message_without_file_name(inbox: MaildirFolder) -> None:
    """A message rebuilt from the state may not carry its file name."""
    assert inbox.path_of(LocalMessage("k", NO_FLAGS, "new")) == inbox.path / "new" / "k"
    assert inbox.path_of(LocalMessage("k", frozenset({SEEN}), "cur")) == (
        inbox.path / "cur" / "k:2,S"
    )


# (file before, new flags, file after)
SET_FLAGS_CASES: list[tuple[str, Flags, str]] = [
    ("new/k", frozenset({SEEN}), "cur/k:2,S"),
    ("new/k", NO_FLAGS, "new/k"),  # no change: stays new mail
    ("new/k", frozenset({"$Junk"}), "new/k"),  # nothing mappable changes
    ("cur/k:2,S", frozenset({SEEN}), "cur/k:2,S"),
    ("cur/k:2,S", NO_FLAGS, "cur/k:2,"),
    ("cur/k:2,", frozenset({FLAGGED}), "cur/k:2,F"),
    ("cur/k:2,Sab", frozenset({FLAGGED}), "cur/k:2,Fab"),
    ("cur/k:2,Sab", frozenset({FLAGGED, SEEN}), "cur/k:2,FSab"),
    ("cur/k:2,ba", frozenset({SEEN}), "cur/k:2,Sab"),  # merged and sorted
    ("cur/k:2,SZ", NO_FLAGS, "cur/k:2,Z"),  # unknown uppercase letter kept
    ("cur/k!2,S", frozenset({ANSWERED}), "cur/k!2,R"),  # separator kept
    ("new/k:2,a", frozenset({SEEN}), "cur/k:2,Sa"),
    ("cur/k:2,S", ALL, "cur/k:2,DFPRST"),
    ("cur/k:2,S", frozenset({"\\seen"}), "cur/k:2,S"),  # IMAP flags ignore case
    ("cur/k:2,", frozenset({"\\FLAGGED"}), "cur/k:2,F"),
]


@pytest.mark.parametrize(("before", "flags", "after"), SET_FLAGS_CASES)
def test_set_flags(inbox: MaildirFolder, before: str, flags: Flags, after: str) -> None:
    put(inbox, before, b"content")
    (msg,) = inbox.scan().values()
    new = inbox.set_flags(msg, flags)
    subdir, filename = after.split("/")
    assert (new.subdir, new.filename, new.key) == (subdir, filename, "k")
    assert new.flags == normalize(flags)
    assert inbox.scan() == {"k": new}
    assert inbox.read(new) == b"content"
    assert sum(len(v) for v in files(inbox).values()) == 1


def test_set_flags_fsyncs_both_directories_on_move(
    inbox: MaildirFolder, monkeypatch: pytest.MonkeyPatch
) -> None:
    msg = inbox.deliver("k", b"x", NO_FLAGS)
    synced: list[Path] = []
    monkeypatch.setattr(maildir_mod, "fsync_dir", synced.append)
    inbox.set_flags(msg, frozenset({SEEN}))
    assert synced == [inbox.path / "cur", inbox.path / "new"]
    synced.clear()
    inbox.set_flags(LocalMessage("k", NO_FLAGS, "new", "k"), NO_FLAGS)  # no-op
    assert synced == []


def test_set_flags_vanished(inbox: MaildirFolder) -> None:
    msg = inbox.deliver("k", b"x", frozenset({SEEN}))
    os.rename(inbox.path_of(msg), inbox.path / "cur" / "k:2,RS")  # a reader replied
    with pytest.raises(MessageVanished) as info:
        inbox.set_flags(msg, frozenset({SEEN, FLAGGED}))
    assert "k:2,S" in str(info.value)
    assert files(inbox)["cur"] == ["k:2,RS"]


def test_set_flags_already_done_by_a_reader(inbox: MaildirFolder) -> None:
    msg = inbox.deliver("k", b"x", NO_FLAGS)
    os.rename(inbox.path_of(msg), inbox.path / "cur" / "k:2,S")
    new = inbox.set_flags(msg, frozenset({SEEN}))
    assert new == LocalMessage("k", frozenset({SEEN}), "cur", "k:2,S")


def test_set_flags_does_not_overwrite_a_duplicate(inbox: MaildirFolder) -> None:
    put(inbox, "cur/k:2,S", b"one")
    put(inbox, "cur/k:2,F", b"two")
    msg = LocalMessage("k", frozenset({SEEN}), "cur", "k:2,S")
    with pytest.raises(LocalStoreError, match="already exists"):
        inbox.set_flags(msg, frozenset({FLAGGED}))
    assert (inbox.path / "cur" / "k:2,S").read_bytes() == b"one"
    assert (inbox.path / "cur" / "k:2,F").read_bytes() == b"two"


def test_remove(inbox: MaildirFolder) -> None:
    keep = inbox.deliver("a", b"x", NO_FLAGS)
    msg = inbox.deliver("b", b"x", frozenset({SEEN}))
    inbox.remove(msg)
    assert inbox.scan() == {"a": keep}
    inbox.remove(msg)  # already gone: fine


# --- folders ------------------------------------------------------------------------


@pytest.mark.parametrize("layout", [NESTED, MAILDIRPP])
def test_create_and_list_folders(tmp_path: Path, layout: str) -> None:
    store = Maildir(tmp_path / "Mail", layout)
    assert not store.exists()
    names = ["INBOX", "A/B", "Entwürfe", "日本語/子"]
    for name in names:
        folder = store.create_folder(name)
        assert folder.exists()
        for sub in ("cur", "new", "tmp"):
            assert stat.S_IMODE((folder.path / sub).stat().st_mode) == 0o700
    store.create_folder("A/B")  # idempotent
    assert store.exists()
    assert store.list_folders() == sorted(names)
    if layout == MAILDIRPP:
        assert (tmp_path / "Mail" / ".A.B" / "maildirfolder").is_file()
        assert not (tmp_path / "Mail" / "maildirfolder").exists()
    else:
        assert stat.S_IMODE((tmp_path / "Mail" / "A").stat().st_mode) == 0o700


def test_create_folder_fsyncs_parents(store: Maildir, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[Path] = []
    monkeypatch.setattr(maildir_mod, "fsync_dir", synced.append)
    store.create_folder("A/B")
    root = store.root
    assert synced == [root / "A" / "B", root / "A", root, root.parent]


def test_create_folder_completes_a_partial_maildir(store: Maildir) -> None:
    (store.root / "X" / "cur").mkdir(parents=True)
    assert store.list_folders() == []
    store.create_folder("X")
    assert store.list_folders() == ["X"]


def test_create_folder_blocked_by_a_file(store: Maildir) -> None:
    store.root.mkdir()
    (store.root / "X").write_text("")
    with pytest.raises(LocalStoreError, match="creating folder"):
        store.create_folder("X/Y")


def test_delete_empty_folder(store: Maildir) -> None:
    store.create_folder("INBOX")
    folder = store.create_folder("A/B")
    put(folder, "tmp/aborted-delivery")
    store.delete_folder("A/B")
    assert not (store.root / "A").exists()  # the parent was only a parent
    assert store.list_folders() == ["INBOX"]
    store.delete_folder("A/B")  # already gone: fine


@pytest.mark.parametrize("relpath", ["cur/k:2,S", "new/k", "cur/.dotfile"])
def test_delete_folder_refuses_when_not_empty(store: Maildir, relpath: str) -> None:
    folder = store.create_folder("A")
    put(folder, relpath, b"mail")
    with pytest.raises(LocalStoreError, match="still holds 1 file") as info:
        store.delete_folder("A")
    assert "'A'" in info.value.message
    assert (folder.path / relpath).read_bytes() == b"mail"
    assert store.list_folders() == ["A"]


def test_delete_folder_keeps_children_in_nested_layout(store: Maildir) -> None:
    store.create_folder("A")
    store.create_folder("A/B")
    store.delete_folder("A")
    assert store.list_folders() == ["A/B"]
    assert sorted(os.listdir(store.root / "A")) == ["B"]


def test_delete_folder_leaves_foreign_files(
    store: Maildir, caplog: pytest.LogCaptureFixture
) -> None:
    folder = store.create_folder("A")
    put(folder, "dovecot-uidlist")
    with caplog.at_level(logging.WARNING):
        store.delete_folder("A")
    assert store.list_folders() == []
    assert os.listdir(folder.path) == ["dovecot-uidlist"]
    assert "dovecot-uidlist" in caplog.text


def test_delete_folder_maildirpp(tmp_path: Path) -> None:
    store = Maildir(tmp_path, MAILDIRPP)
    store.create_folder("INBOX")
    store.create_folder("A")
    store.create_folder("A/B")
    store.delete_folder("A")
    assert not (tmp_path / ".A").exists()
    assert store.list_folders() == ["A/B", "INBOX"]


@pytest.mark.parametrize("layout", [NESTED, MAILDIRPP])
def test_delete_inbox_refused(tmp_path: Path, layout: str) -> None:
    store = Maildir(tmp_path, layout)
    store.create_folder("INBOX")
    with pytest.raises(LocalStoreError, match="INBOX"):
        store.delete_folder("inbox")
    assert store.list_folders() == ["INBOX"]


def test_delete_folder_race_restores_subdirs(
    store: Maildir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message arriving in cur/ after the emptiness check makes rmdir fail; new/
    (already removed) comes back so the folder and its message stay visible."""
    folder = store.create_folder("A")
    real_rmdir = os.rmdir

    def rmdir(path: object) -> None:
        if Path(str(path)).name == "cur":
            put(folder, "cur/late:2,S")
        real_rmdir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "rmdir", rmdir)
    with pytest.raises(LocalStoreError, match="no message was deleted"):
        store.delete_folder("A")
    monkeypatch.undo()
    assert store.list_folders() == ["A"]
    assert list(folder.scan()) == ["late"]


# --- property -----------------------------------------------------------------------


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    flags=st.frozensets(st.sampled_from(sorted(SYNCED_FLAGS))),
    extra=st.frozensets(st.sampled_from(["$Junk", "\\Recent", "Work"])),
    data=st.binary(max_size=200),
    sep=st.sampled_from([":", "!"]),
)
def test_deliver_then_scan_round_trips(
    tmp_path: Path, flags: Flags, extra: Flags, data: bytes, sep: str
) -> None:
    folder = Maildir(tmp_path / sep, NESTED, info_sep=sep).create_folder("INBOX")
    key = folder.new_key()
    msg = folder.deliver(key, data, flags | extra)
    scanned = folder.scan()[key]
    assert (scanned.key, scanned.flags) == (key, flags)
    assert scanned == msg and scanned.filename == msg.filename
    assert folder.read(scanned) == data
    flipped = ALL - flags
    renamed = folder.set_flags(scanned, flipped)
    assert folder.scan()[key].flags == flipped == renamed.flags


@pytest.mark.parametrize(
    ("fine", "age", "settled"),
    [
        (True, 0.01, False),  # within a clock tick: a change now could keep the mtime
        (True, 0.2, True),
        (False, 1.5, False),  # whole-second mtimes: the same second is ambiguous
        (False, 2.5, True),
    ],
)
def test_a_stamp_is_trusted_only_when_clearly_older_than_its_taking(
    fine: bool, age: float, settled: bool
) -> None:
    assert maildir_mod.Stamp("v", newest=100.0, taken=100.0 + age, fine=fine).settled is settled


def test_stamp_changes_with_every_rename(tmp_path: Path) -> None:
    folder = Maildir(tmp_path, "nested").create_folder("INBOX")
    msg = folder.deliver(new_key(), b"x\n", frozenset())
    before = folder.stamp()
    folder.set_flags(msg, frozenset({"\\Seen"}))
    after = folder.stamp()
    assert before is not None and after is not None and before.value != after.value


def test_locate_finds_a_message_by_its_likely_name_or_says_it_cannot(tmp_path: Path) -> None:
    folder = Maildir(tmp_path, "nested").create_folder("INBOX")
    unseen = folder.deliver(new_key(), b"a\n", frozenset())
    seen = folder.deliver(new_key(), b"b\n", frozenset({"\\Seen", "\\Flagged"}))
    assert folder.locate(unseen.key, frozenset()) == unseen
    assert folder.locate(seen.key, frozenset({"\\Seen", "\\Flagged"})) == seen
    # A reader changed its flags meanwhile: not under the expected name.
    assert folder.locate(seen.key, frozenset({"\\Seen"})) is None
    assert folder.locate("no-such-key", frozenset()) is None


def test_settle_clock_makes_a_fresh_stamp_settled(
    tmp_path: Path, settle_clock: SettleClock
) -> None:
    folder = Maildir(tmp_path / "m", "nested").folder("INBOX")
    folder.path.mkdir(parents=True)
    for sub in ("cur", "new", "tmp"):
        (folder.path / sub).mkdir()
    stamp = folder.stamp()
    assert stamp is not None and not stamp.settled  # just written: same clock tick
    settle_clock.advance()
    later = folder.stamp()
    assert later is not None and later.settled and later.value == stamp.value


def test_a_delivery_removes_our_own_abandoned_tmp_files_only(tmp_path: Path) -> None:
    """What killed runs left in tmp/ goes once it is older than 36 h, judged by the
    time in its name (a tmp file's mtime is the message's date); files of other
    writers, and our own recent ones (a delivery may be under way), stay."""
    md = Maildir(tmp_path / "m", "nested")
    folder = md.create_folder("INBOX")
    tmp = folder.path / "tmp"
    now = time.time()
    old, recent = int(now - 40 * 3600), int(now - 3600)
    ours_old = f"{old}.M1P2Q3R0123456789abcdef.host"
    ours_recent = f"{recent}.M1P2Q4R0123456789abcdef.host"
    theirs_old = f"{old}.M1P2Q3.host"  # the stdlib's, Dovecot's: not ours to judge
    for name in (ours_old, ours_recent, theirs_old):
        (tmp / name).write_bytes(b"partial")
    maildir_mod._tmp_cleaned.clear()
    folder.deliver(folder.new_key(), b"one", NO_FLAGS)
    assert sorted(os.listdir(tmp)) == sorted([ours_recent, theirs_old])
    # A second delivery within the hour does not list tmp/ again.
    (tmp / ours_old).write_bytes(b"partial")
    folder.deliver(folder.new_key(), b"two", NO_FLAGS)
    assert ours_old in os.listdir(tmp)


# --- replacing a file's bytes (a copy matched apart from a tool's tracking fields) ---


def test_replace_contents_keeps_name_and_mtime_and_leaves_nothing_behind(
    inbox: MaildirFolder,
) -> None:
    msg = inbox.deliver(new_key(), b"Subject: x\nX-TUID: abc\n\nbody\n", frozenset({SEEN}), 1e9)
    path = inbox.path_of(msg)
    before = path.stat()
    assert inbox.replace_contents([(msg, b"Subject: x\n\nbody\n")]) == [msg]
    after = path.stat()
    assert path.read_bytes() == b"Subject: x\n\nbody\n"
    assert after.st_ino != before.st_ino  # a new file swapped in, never written in place
    assert after.st_mtime == 1e9 and stat.S_IMODE(after.st_mode) == 0o600
    assert files(inbox) == {"cur": [path.name], "new": [], "tmp": []}


def test_replace_contents_is_an_atomic_exchange_here(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"A")
    b.write_bytes(b"B")
    assert maildir_mod._exchange(a, b) is True
    assert (a.read_bytes(), b.read_bytes()) == (b"B", b"A")
    assert maildir_mod._exchange(a, tmp_path / "gone") is False


def test_replace_contents_leaves_a_file_a_reader_renamed_meanwhile_alone(
    inbox: MaildirFolder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader changes the flags (renames the file) while the new bytes are being
    written: the exchange finds nothing under the old name, so no second file with
    that key is made, and the reader's file keeps its bytes."""
    msg = inbox.deliver(new_key(), b"old\n", frozenset())
    renamed = inbox.path / "cur" / f"{msg.key}:2,S"
    real = maildir_mod._write_synced

    def reader_renames(job: tuple[str, bytes, float | None]) -> None:
        real(job)
        os.rename(inbox.path_of(msg), renamed)

    monkeypatch.setattr(maildir_mod, "_write_synced", reader_renames)
    assert inbox.replace_contents([(msg, b"new\n")]) == []
    assert renamed.read_bytes() == b"old\n"
    assert files(inbox) == {"cur": [renamed.name], "new": [], "tmp": []}


def test_replace_contents_skips_a_file_already_gone(inbox: MaildirFolder) -> None:
    msg = inbox.deliver(new_key(), b"old\n", frozenset())
    inbox.remove(msg)
    assert inbox.replace_contents([(msg, b"new\n")]) == []
    assert files(inbox) == {"cur": [], "new": [], "tmp": []}


def test_replace_contents_renames_over_where_names_cannot_be_exchanged(
    inbox: MaildirFolder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(maildir_mod, "_exchange", lambda a, b: None)
    msg = inbox.deliver(new_key(), b"old\n", frozenset({SEEN}))
    assert inbox.replace_contents([(msg, b"new\n")]) == [msg]
    assert inbox.read(msg) == b"new\n"
    assert files(inbox) == {"cur": [inbox.path_of(msg).name], "new": [], "tmp": []}
