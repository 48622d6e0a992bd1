"""A folder that changed costs what changed in it: only the messages that differ
from the state are planned (and held while moves are looked for), a Maildir is
listed once unless it changed again meanwhile, and many local renames or removals
are made durable together. Against a real Dovecot, with and without extensions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mirrorsync import maildir as maildir_mod
from mirrorsync.maildir import MaildirFolder
from mirrorsync.sync import plan as planner
from mirrorsync.sync import transfer
from tests.harness import Mirror, message


@pytest.fixture(params=["full", "basic"])
def mirror(request: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    account = request.getfixturevalue("account" if request.param == "full" else "basic_account")
    monkeypatch.setattr(maildir_mod.Stamp, "SETTLE_FINE", -1.0)  # trust stamps at once
    monkeypatch.setattr(maildir_mod.Stamp, "SETTLE_COARSE", -1.0)
    m = Mirror(account, tmp_path)
    m.client.create_folder("A")
    for n in range(20):
        m.client.append("A", message(f"a{n}"), flags=[b"\\Seen"])
    m.sync()
    m.sync()
    yield m
    m.close()


def _planned(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many pairs each plan_messages call was given."""
    sizes: list[int] = []
    real = planner.plan_messages

    def spy(pairs: Any, *a: Any, **kw: Any) -> Any:
        sizes.append(len(pairs))
        return real(pairs, *a, **kw)

    monkeypatch.setattr(planner, "plan_messages", spy)
    return sizes


def test_only_the_messages_that_changed_are_planned(
    mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = mirror.files("A")
    files[0].rename(files[0].with_name(files[0].name.replace(":2,S", ":2,FS")))
    files[1].unlink()
    sizes = _planned(monkeypatch)
    mirror.sync()
    assert sorted(sizes)[-1] == 2 and sum(sizes) == 2  # not the folder's 20
    snap = mirror.assert_mirrored()
    assert sum(snap["A"].values()) == 19


def test_the_guard_still_counts_the_whole_folder(
    mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    for f in mirror.files("A")[:12]:  # 12 of 20: more than half
        f.unlink()
    r = mirror.run("sync")
    assert r.status != 0 and "would delete 12 of 20 messages on the server" in r.err
    assert sum(mirror.server()["A"].values()) == 20


def test_an_unchanged_directory_is_not_listed_again_before_expunging(
    mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    scans: list[str] = []
    real = MaildirFolder.listing  # what every scan of a folder comes down to

    def counted(self: MaildirFolder) -> Any:
        scans.append(self.name)
        return real(self)

    monkeypatch.setattr(MaildirFolder, "listing", counted)
    mirror.files("A")[0].unlink()
    mirror.sync()
    assert scans.count("A") == 1
    assert sum(mirror.assert_mirrored()["A"].values()) == 19


def test_a_file_renamed_by_a_reader_during_the_scan_is_not_expunged(
    mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listing missed a file that a reader was renaming (new flags) at that very
    moment. The rename moved the directory's mtime, so the folder is listed again
    before anything is expunged, and the message survives on both sides.

    The plan made from that listing is wrong on purpose (the executor's second look
    corrects it), and the plan oracle, which lists the folder again afterwards, sees
    another folder than the sync did: it cannot judge a change made during the
    sync, so it is off here."""
    monkeypatch.delenv("MIRRORSYNC_PLAN_ORACLE")
    victim = mirror.files("A")[3]
    real = MaildirFolder.listing
    missed: list[str] = []

    def racing(self: MaildirFolder) -> Any:
        out = real(self)
        if self.name == "A" and not missed:
            key = victim.name.split(":2,")[0]
            missed.append(key)
            out.pop(key)
            victim.rename(victim.with_name(victim.name.replace(":2,S", ":2,RS")))
        return out

    monkeypatch.setattr(MaildirFolder, "listing", racing)
    mirror.files("A")[0].unlink()  # a real deletion, so expunging is under way
    mirror.sync()
    monkeypatch.setattr(MaildirFolder, "listing", real)
    assert sum(mirror.server()["A"].values()) == 19  # only the real deletion
    mirror.sync()
    snap = mirror.assert_mirrored()
    assert sum(snap["A"].values()) == 19


def test_many_flag_renames_share_one_directory_fsync(
    mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = mirror.client
    c.select_folder("A")
    c.add_flags(c.search("ALL"), [b"\\Flagged"])
    synced: list[Path] = []
    real = maildir_mod.fsync_dir

    def counted(path: Path) -> None:
        synced.append(Path(path))
        real(path)

    monkeypatch.setattr(maildir_mod, "fsync_dir", counted)
    mirror.sync()
    assert synced.count(mirror.folder_dir("A") / "cur") == 1  # 20 renames, one fsync
    snap = mirror.assert_mirrored()
    assert all("F" in letters for (_h, letters) in snap["A"])


def test_downloads_are_fetched_while_the_previous_batch_is_written(
    mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transfer, "DOWNLOAD_BATCH", 3)
    for n in range(10):
        mirror.client.append("A", message(f"new{n}"))
    mirror.sync()
    snap = mirror.assert_mirrored()
    assert sum(snap["A"].values()) == 30
