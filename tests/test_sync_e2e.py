"""End to end through the CLI against a real Dovecot: each behaviour the issue names."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Mirror, message

SEEN, FLAGGED, ANSWERED, DRAFT, DELETED = (
    b"\\Seen",
    b"\\Flagged",
    b"\\Answered",
    b"\\Draft",
    b"\\Deleted",
)


@pytest.fixture(params=["full", "basic"])
def mirror(request: Any, tmp_path: Path) -> Any:
    """Each end-to-end case runs against a Dovecot with every extension (QRESYNC,
    CONDSTORE, UIDPLUS, MOVE, LIST-STATUS) and against one that advertises none, so
    the fallbacks are exercised by the same cases."""
    account = request.getfixturevalue("account" if request.param == "full" else "basic_account")
    m = Mirror(account, tmp_path)
    yield m
    m.close()


def fill_server(m: Mirror) -> None:
    c = m.client
    for name in ("Work", "Work/Projects", "Entwürfe", "日本語/子"):
        c.create_folder(name)
    c.append("INBOX", message(1), flags=[SEEN])
    c.append("INBOX", message(2), flags=[])
    c.append("INBOX", message(3), flags=[SEEN, FLAGGED, ANSWERED])
    c.append("INBOX", message(4), flags=[SEEN, b"$Forwarded", b"Junk"])
    c.append("INBOX", message(5), flags=[DRAFT, DELETED])
    c.append("Work/Projects", message(6), flags=[SEEN])
    c.append("Entwürfe", message(7, subject="Grüße"), flags=[DRAFT])
    c.append("日本語/子", message(8), flags=[])


def drop_local(m: Mirror, folder: str, name: str, data: bytes, sub: str = "new") -> Path:
    path = m.folder_dir(folder) / sub / name
    path.write_bytes(data.replace(b"\r\n", b"\n"))
    return path


def test_initial_mirror_of_nested_and_non_ascii_folders_with_all_flags(mirror: Mirror) -> None:
    fill_server(mirror)
    r = mirror.sync()
    snap = mirror.assert_mirrored()
    assert set(snap) == {"INBOX", "Work", "Work/Projects", "Entwürfe", "日本語/子"}
    assert sorted(f for _h, f in snap["INBOX"]) == ["", "DT", "FRS", "PS", "S"]
    # Non-ASCII names are UTF-8 directories; unseen mail without flags sits in new/.
    assert (mirror.root / "日本語" / "子" / "new").is_dir()
    inbox_new = list((mirror.root / "INBOX" / "new").iterdir())
    assert len(inbox_new) == 1 and ":2," not in inbox_new[0].name
    # The file is the server's bytes with LF line ends, nothing added.
    assert inbox_new[0].read_bytes() == message(2).replace(b"\r\n", b"\n")
    assert "8 downloaded" in r.out
    # The server keyword that Maildir cannot hold is untouched.
    assert any(
        f == b"Junk" or f == "Junk" for fl in mirror.server_uids("INBOX").values() for f in fl
    )


def test_second_sync_changes_nothing(mirror: Mirror) -> None:
    fill_server(mirror)
    mirror.sync()
    before_server = {f: mirror.server_uids(f) for f in ("INBOX", "Entwürfe")}
    before_local = sorted(p.name for p in mirror.root.rglob("*") if p.is_file())
    r = mirror.sync()
    assert "no changes" in r.out
    assert {f: mirror.server_uids(f) for f in ("INBOX", "Entwürfe")} == before_server
    assert sorted(p.name for p in mirror.root.rglob("*") if p.is_file()) == before_local


def test_local_changes_reach_the_server(mirror: Mirror) -> None:
    fill_server(mirror)
    mirror.sync()
    # flag change: mark the unseen one seen+flagged (a reader moves it to cur/)
    new = next((mirror.root / "INBOX" / "new").iterdir())
    new.rename(mirror.root / "INBOX" / "cur" / (new.name + ":2,FS"))
    # deletion
    victim = next(p for p in mirror.files("Work/Projects"))
    victim.unlink()
    # a new file
    drop_local(mirror, "INBOX", "1700000000.local1.host", message("L1"))
    drop_local(mirror, "Entwürfe", "1700000000.local2.host:2,DS", message("L2"), sub="cur")
    mirror.sync()
    snap = mirror.assert_mirrored()
    assert snap["Work/Projects"] == {}
    assert sum(snap["INBOX"].values()) == 6
    assert any(f == "FS" for _h, f in snap["INBOX"])
    assert any(f == "DS" for _h, f in snap["Entwürfe"])


def test_server_changes_reach_the_maildir(mirror: Mirror) -> None:
    fill_server(mirror)
    mirror.sync()
    c = mirror.client
    c.select_folder("INBOX")
    uids = sorted(c.search("ALL"))
    c.add_flags(uids[1], [FLAGGED])
    c.remove_flags(uids[0], [SEEN])
    c.delete_messages(uids[2])
    if c.has_capability("UIDPLUS"):
        c.uid_expunge([uids[2]])
    else:
        c.expunge()  # also removes message 5, which carries \Deleted
    c.append("INBOX", message(9), flags=[ANSWERED])
    c.create_folder("Neu/Ordner")
    c.append("Neu/Ordner", message(10), flags=[SEEN])
    mirror.sync()
    snap = mirror.assert_mirrored()
    assert (mirror.root / "Neu" / "Ordner" / "cur").is_dir()
    assert sum(snap["INBOX"].values()) == (5 if c.has_capability("UIDPLUS") else 4)


def test_flag_changes_on_both_sides_merge(mirror: Mirror) -> None:
    mirror.client.append("INBOX", message(1), flags=[SEEN])
    mirror.sync()
    # server: add \Flagged; local: add \Answered (R). Both must survive.
    c = mirror.client
    c.select_folder("INBOX")
    (uid,) = c.search("ALL")
    c.add_flags(uid, [FLAGGED])
    (f,) = mirror.files("INBOX")
    f.rename(f.with_name(f.name.replace(":2,S", ":2,RS")))
    mirror.sync()
    (f,) = mirror.files("INBOX")
    assert f.name.endswith(":2,FRS")
    assert {"\\Seen", "\\Flagged", "\\Answered"} <= mirror.server_uids("INBOX")[uid]
    mirror.assert_mirrored()


def test_uidvalidity_change_keeps_unsent_local_mail_and_duplicates_nothing(mirror: Mirror) -> None:
    c = mirror.client
    c.create_folder("Work")
    for n in (1, 2, 3):
        c.append("Work", message(n), flags=[SEEN])
    mirror.sync()
    old = c.folder_status("Work", ["UIDVALIDITY"])[b"UIDVALIDITY"]
    # A local message not yet uploaded when the server resets the folder.
    drop_local(mirror, "Work", "1700000001.unsent.host", message("unsent"))
    # The server loses the folder and rebuilds it from a backup: new UIDVALIDITY,
    # two of the three old messages.
    for _ in range(30):
        c.delete_folder("Work")
        c.create_folder("Work")
        if c.folder_status("Work", ["UIDVALIDITY"])[b"UIDVALIDITY"] != old:
            break
        time.sleep(0.2)
    for n in (1, 2):
        c.append("Work", message(n), flags=[SEEN])
    r = mirror.run("sync")
    assert r.status == 0, r
    assert "UIDVALIDITY" in r.err
    snap = mirror.assert_mirrored()
    # 1 and 2 linked (not duplicated), 3 kept locally and uploaded back, unsent uploaded.
    assert sum(snap["Work"].values()) == 4
    assert all(n == 1 for n in snap["Work"].values())
    mirror.sync()
    assert mirror.assert_mirrored() == snap


def test_vanished_local_root_is_not_read_as_deleting_everything(mirror: Mirror) -> None:
    fill_server(mirror)
    mirror.sync()
    before = mirror.server()
    shutil.rmtree(mirror.root)
    r = mirror.run("sync")
    assert r.status == 1
    assert "missing" in r.err and "nothing was changed" in r.err
    assert "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1
    assert mirror.server() == before


def test_vanished_local_folder_is_downloaded_again(mirror: Mirror) -> None:
    fill_server(mirror)
    mirror.sync()
    before = mirror.server()
    shutil.rmtree(mirror.root / "Work" / "Projects")  # it holds mail on the server
    r = mirror.run("sync")
    assert r.status == 0, r
    assert mirror.server() == before
    assert mirror.assert_mirrored() == before


def test_emptied_folder_trips_the_guard_unless_forced(mirror: Mirror) -> None:
    c = mirror.client
    for n in range(8):
        c.append("INBOX", message(n), flags=[SEEN])
    mirror.sync()
    for f in mirror.files("INBOX"):
        f.unlink()
    r = mirror.run("sync")
    assert r.status == 1
    assert "INBOX" in r.err and "--force" in r.err
    assert sum(mirror.server()["INBOX"].values()) == 8
    r = mirror.run("sync", "--force")
    assert r.status == 0, r
    assert mirror.server()["INBOX"] == {}


def test_folder_deleted_locally_when_empty_is_deleted_on_server(mirror: Mirror) -> None:
    mirror.client.create_folder("Old")
    mirror.sync()
    shutil.rmtree(mirror.root / "Old")
    mirror.sync()
    assert "Old" not in mirror.server()


def test_dry_run_prints_the_plan_and_changes_nothing(mirror: Mirror) -> None:
    fill_server(mirror)
    r = mirror.run("sync", "--dry-run")
    assert r.status == 0, r
    assert "download UID" in r.out and "create local folder Work/Projects" in r.out
    assert not mirror.root.exists() or not any(mirror.root.rglob("cur"))


def test_wrong_password_is_one_clear_line(mirror: Mirror, tmp_path: Path) -> None:
    text = mirror.config.read_text().replace(mirror.account.password, "not-the-password")
    mirror.config.write_text(text)
    r = mirror.run("sync")
    assert r.status == 3
    assert "login" in r.err.lower() and "Traceback" not in r.err
    assert len(r.err.strip().splitlines()) == 1


def test_bad_config_is_one_clear_line(mirror: Mirror) -> None:
    mirror.config.write_text(mirror.config.read_text().replace("layout:", "layuot:"))
    r = mirror.run("sync")
    assert r.status == 2
    assert "layuot" in r.err and str(mirror.config) in r.err and "Traceback" not in r.err


def test_maildirpp_layout(account: Any, tmp_path: Path) -> None:
    m = Mirror(account, tmp_path, layout="maildir++")
    fill_server(m)
    m.sync()
    assert (m.root / "cur").is_dir() and (m.root / ".Work.Projects" / "cur").is_dir()
    assert sum(len(list((m.root / s).iterdir())) for s in ("cur", "new")) == 5
    m.close()


def test_status_shows_counts_and_pending_changes(mirror: Mirror) -> None:
    fill_server(mirror)
    mirror.sync()
    drop_local(mirror, "INBOX", "1700000002.pending.host", message("P"))
    r = mirror.run("status")
    assert r.status == 0, r
    line = next(ln for ln in r.out.splitlines() if ln.startswith("INBOX"))
    assert line.split()[1:5] == ["6", "5", "1", "0"]
    assert "1 local change pending" in r.out


def _kill_scenario(m: Mirror) -> None:
    """A synced account with pending work of every kind on both sides."""
    c = m.client
    c.create_folder("Work")
    for n in range(5):
        c.append("INBOX", message(n), flags=[SEEN] if n % 2 else [])
        c.append("Work", message(f"w{n}"), flags=[FLAGGED])
    m.sync()
    c.select_folder("INBOX")
    uids = sorted(c.search("ALL"))
    c.add_flags(uids[0], [ANSWERED])
    c.delete_messages(uids[1])
    c.uid_expunge([uids[1]])
    for n in range(5, 8):
        c.append("INBOX", message(n))
    c.create_folder("Fresh")
    c.append("Fresh", message("f1"), flags=[SEEN])
    for n in range(3):
        drop_local(m, "Work", f"17000000{n}.new{n}.host", message(f"local{n}"))
    m.files("Work")[0].unlink()
    f = m.files("Work")[0]
    f.rename(f.with_name(f.name.split(":2,")[0] + ":2,FS"))
    moved = next(p for p in m.files("INBOX") if ":2," in p.name)  # a move: Work gets it
    moved.rename(m.folder_dir("Work") / "cur" / moved.name)


def test_killed_before_each_commit_then_resumed_loses_and_duplicates_nothing(
    make_account: Any, tmp_path: Path
) -> None:
    """mbsync's discipline: for each state commit in turn, set up the same pending work,
    die just before that commit (after its change was made), re-run, and check that the
    outcome is the one an uninterrupted run gives: nothing lost, nothing duplicated."""
    outcomes = {}
    kill_at = 1
    while True:
        m = Mirror(make_account(), tmp_path / f"k{kill_at}")
        _kill_scenario(m)
        killed = m.run_killed("sync", kill_at)
        snap = m.assert_mirrored()
        assert all(n == 1 for f in snap.values() for n in f.values()), f"duplicate at {kill_at}"
        outcomes[kill_at] = snap
        m.close()
        if not killed:
            break
        kill_at += 1
        assert kill_at < 60, "a sync that never finishes"
    assert kill_at > 5, "the scenario should pass through several commits"
    final = outcomes[kill_at]
    for k, snap in outcomes.items():
        assert snap == final, f"killing before commit {k} changed the outcome"
