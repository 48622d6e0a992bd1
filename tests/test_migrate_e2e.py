"""Switching from mbsync or offlineimap, against Dovecot with the real tools: the
suite runs them to make the Maildir (non-ASCII folders, duplicate bodies, a message
without Message-ID), changes both sides behind their back, then `mirrorsync
migrate` and a sync must apply each change exactly once."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from mirrorsync import adopt
from mirrorsync import flags as flagmod
from mirrorsync.content import content_hash, to_lf
from mirrorsync.migrate import strip_tracking
from mirrorsync.state import State
from tests.harness import Mirror, message

pytestmark = pytest.mark.skipif(
    not (shutil.which("mbsync") and shutil.which("offlineimap")),
    reason="mbsync (isync) and offlineimap (offlineimap3) are installed by scripts/setup",
)

CAFE = "Café & Crème"
CAFE_UTF7 = "Caf&AOk- &- Cr&AOg-me"
NO_ID = (
    b"From: Carol <carol@example.org>\r\nSubject: no message-id\r\n"
    b"Date: Mon, 02 Nov 2026 10:00:00 +0000\r\n\r\nbody without an id\r\n"
)

Snap = dict[str, Counter[tuple[str, str]]]


def populate(m: Mirror, inbox: int = 4) -> None:
    """INBOX, a non-ASCII folder, a nested one; a body twice in the same folder and
    once elsewhere; a message without Message-ID."""
    c = m.client
    for name in (CAFE, "Archive", "Archive/2024"):
        c.create_folder(name)
    for n in range(inbox):
        c.append("INBOX", message(n), flags=[b"\\Seen"] if n % 2 else [])
    c.append("INBOX", NO_ID)
    c.append(CAFE, message("dup"))
    c.append(CAFE, message("dup"))
    c.append(CAFE, message("c1"), flags=[b"\\Flagged"])
    c.append("Archive", message("a1"), flags=[b"\\Seen"])
    c.append("Archive/2024", message("dup"))


def run_mbsync(m: Mirror, tmp: Path, subfolders: str = "Verbatim", sync_state: str = "*") -> None:
    """mbsync's state in each folder (``SyncState *``), or in a directory given as
    the global setting (``global``, named as mbsync's default ~/.mbsync/ is) or in
    the Channel (``channel``)."""
    root = m.root
    if subfolders == "Maildir++":
        paths = f"Inbox {root}\nSubFolders Maildir++"
    elif subfolders == "Flatten":
        paths = f"Path {root}/\nInbox {root}/INBOX\nFlatten ."
    else:
        paths = f"Path {root}/\nInbox {root}/INBOX\nSubFolders {subfolders}"
    root.mkdir(parents=True, exist_ok=True)
    rc = tmp / "mbsyncrc"
    where = str(tmp / "mbsync-state") + "/"
    top = f"SyncState {where}\n\n" if sync_state == "global" else ""
    channel = "SyncState *" if sync_state == "*" else ""
    if sync_state == "channel":
        channel = f"SyncState {where}"
    (tmp / "mbsync-state").mkdir(exist_ok=True)
    rc.write_text(
        f"{top}IMAPAccount acc\nHost {m.account.host}\nPort {m.account.port}\n"
        f"User {m.account.user}\nPass {m.account.password}\nSSLType None\nAuthMechs LOGIN\n\n"
        "IMAPStore remote\nAccount acc\n\n"
        f"MaildirStore local\n{paths}\n\n"
        "Channel ch\nFar :remote:\nNear :local:\nPatterns *\nCreate Near\n"
        + (f"{channel}\n" if channel else "")
        + "Expunge Both\n"
    )
    p = subprocess.run(["mbsync", "-c", str(rc), "-a"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def run_offlineimap(m: Mirror, tmp: Path, sep: str = ".") -> Path:
    meta = tmp / "offlineimap"
    rc = tmp / "offlineimaprc"
    rc.write_text(
        f"[general]\naccounts = acc\nmetadata = {meta}\n\n"
        "[Account acc]\nlocalrepository = L\nremoterepository = R\n\n"
        f"[Repository L]\ntype = Maildir\nlocalfolders = {m.root}\nsep = {sep}\n\n"
        f"[Repository R]\ntype = IMAP\nremotehost = {m.account.host}\n"
        f"remoteport = {m.account.port}\nremoteuser = {m.account.user}\n"
        f"remotepass = {m.account.password}\nssl = no\nstarttls = no\n"
    )
    m.root.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(
        ["offlineimap", "-c", str(rc), "-u", "quiet"], capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr
    return meta


def _letters(name: str) -> str:
    info = re.split(r"[:!]2,", name, maxsplit=1)
    return flagmod.to_letters(flagmod.from_letters(info[1] if len(info) > 1 else ""))


def local(m: Mirror) -> Snap:
    """Like `Mirror.local`, with mbsync's X-TUID taken out of each file (it is
    mbsync's mark on its copies, no difference in the mail)."""
    snap: Snap = {}
    for cur in sorted(m.root.rglob("cur")):
        folder = cur.parent
        got: Counter[tuple[str, str]] = Counter()
        for sub in ("cur", "new"):
            for f in (folder / sub).iterdir():
                h = content_hash(strip_tracking(to_lf(f.read_bytes())))
                got[(h, _letters(f.name))] += 1
        snap[folder.relative_to(m.root).as_posix()] = got
    return snap


def mirrored(m: Mirror) -> Snap:
    server, disk = m.server(), local(m)
    assert server == disk, (server, disk)
    return server


def total(snap: Snap) -> int:
    return sum(sum(c.values()) for c in snap.values())


def file_of(m: Mirror, folder: str, subject: str) -> Path:
    for f in m.files(folder):
        if f"Subject: {subject}\n".encode() in f.read_bytes():
            return f
    raise AssertionError(f"no {subject!r} in {folder}")


def uid_of(m: Mirror, folder: str, subject: str) -> int:
    m.client.select_folder(folder)
    (uid,) = m.client.search(["HEADER", "Subject", subject])
    return int(uid)


def counts(out: str) -> Counter[str]:
    """The totals line of a sync ('test: 4 folders, 3 downloaded, 1 moved in (0.2s)')
    as a Counter."""
    line = next(x for x in out.splitlines() if x.startswith("test: "))
    got: Counter[str] = Counter()
    for part in re.sub(r" \([0-9.]+s\)$", "", line).split(", ")[1:]:
        n, _, what = part.partition(" ")
        if n.isdigit():
            got[what] += int(n)
    return got


def change_both_sides(m: Mirror) -> None:
    """What happens between the old tool's last run and `migrate`: one of each."""
    c = m.client
    # a local deletion
    file_of(m, "INBOX", "message 3").unlink()
    # a server expunge
    c.select_folder(CAFE)
    c.delete_messages([uid_of(m, CAFE, "message c1")])
    c.expunge()
    # flags changed on each side
    f = file_of(m, "INBOX", "message 2")
    f.rename(f.parent.parent / "cur" / (re.split(r"[:!]2,", f.name)[0] + ":2,FS"))
    c.select_folder("Archive")
    c.add_flags([uid_of(m, "Archive", "message a1")], [b"\\Answered"])
    # a local move (a rename, as notmuch and aerc do): the file keeps its name, with
    # the ,U=1 of INBOX, which Archive's own first message has too
    f = file_of(m, "INBOX", "message 0")
    assert ",U=1" in f.name
    f.rename(m.folder_dir("Archive") / "cur" / f.name)
    # another client's move on the server
    c.select_folder("INBOX")
    c.move([uid_of(m, "INBOX", "message 1")], CAFE)
    # new mail on each side
    c.append("Archive/2024", message("new-on-server"))
    (m.folder_dir("INBOX") / "new" / "1700000000.M1P1.newlocal").write_bytes(
        to_lf(message("new-locally"))
    )


def expected_after_changes(before: Snap) -> Snap:
    """`before` (the server as the old tool left it) with each change applied once."""
    want = {k: Counter(v) for k, v in before.items()}

    inbox, cafe, archive = want["INBOX"], want[CAFE], want["Archive"]
    inbox[(h(message(3)), "S")] -= 1
    cafe[(h(message("c1")), "F")] -= 1
    inbox[(h(message(2)), "")] -= 1
    inbox[(h(message(2)), "FS")] += 1
    archive[(h(message("a1")), "S")] -= 1
    archive[(h(message("a1")), "RS")] += 1
    inbox[(h(message(0)), "")] -= 1
    archive[(h(message(0)), "")] += 1
    inbox[(h(message(1)), "S")] -= 1
    cafe[(h(message(1)), "S")] += 1
    want["Archive/2024"][(h(message("new-on-server")), "")] += 1
    inbox[(h(message("new-locally")), "")] += 1
    return {k: +v for k, v in want.items()}


@pytest.mark.parametrize("tool", ["mbsync", "offlineimap"])
def test_migrate_applies_each_change_since_the_tools_last_run_once(
    account: Any, tmp_path: Path, tool: str
) -> None:
    m = Mirror(account, tmp_path)
    populate(m)
    meta = run_mbsync(m, tmp_path) if tool == "mbsync" else run_offlineimap(m, tmp_path)
    before = m.server()
    assert total(before) == 10
    state_arg = [] if meta is None else ["--state", str(meta)]
    change_both_sides(m)
    tool_files = sorted(
        p.read_bytes()
        for p in [*m.root.rglob(".mbsyncstate"), *(meta.rglob("*") if meta else [])]
        if p.is_file()
    )

    plan = m.run("migrate", "test", "--from", tool, *state_arg)
    assert plan.status == 0, plan
    assert m.run("migrate", "test", "--from", tool, *state_arg, "--dry-run").out == plan.out
    assert (
        not (tmp_path / "state" / "state.db").exists()
        or not State.open(tmp_path / "state").folders()
    )
    assert (m.root / CAFE_UTF7).is_dir()  # not renamed yet
    assert f"rename {m.root / CAFE_UTF7} -> {m.root / CAFE}" in plan.out
    assert "1 deleted locally (to expunge on the server)" in plan.out
    assert "1 expunged on the server (to delete locally)" in plan.out
    assert "1 moved locally to another folder" in plan.out
    assert "INBOX: 5 messages known" in plan.out
    assert "1 moved on the server to another folder (to move locally)" in plan.out

    done = m.run("migrate", "test", "--from", tool, *state_arg, "--yes")
    assert done.status == 0, done
    assert (m.root / CAFE).is_dir() and not (m.root / CAFE_UTF7).exists()
    again = m.run("migrate", "test", "--from", tool, *state_arg, "--yes")
    assert again.status == 2 and "already has a state" in again.err

    r = m.sync()
    assert counts(r.out) == Counter(
        {
            "deleted on server": 1,
            "deleted locally": 1,
            "flags": 2,
            "moved out": 1,
            "moved in": 1,
            "downloaded": 1,
            "uploaded": 1,
        }
    ), r.out
    after = mirrored(m)
    assert after == expected_after_changes(before)
    assert "no changes" in m.sync().out
    # the tool's own files are as it left them (a folder's .mbsyncstate moved with
    # its directory): the user can go back
    assert tool_files == sorted(
        p.read_bytes()
        for p in [*m.root.rglob(".mbsyncstate"), *(meta.rglob("*") if meta else [])]
        if p.is_file()
    )
    m.close()


def _recreate(m: Mirror, folder: str) -> None:
    """Give `folder` a new UIDVALIDITY with the same messages (and flags)."""
    c = m.client
    c.select_folder(folder)
    got = c.fetch(c.search("ALL"), ["BODY.PEEK[]", "FLAGS"])
    c.unselect_folder()
    c.delete_folder(folder)
    c.create_folder(folder)
    for d in got.values():
        c.append(folder, d[b"BODY[]"], flags=[f for f in d[b"FLAGS"] if f != b"\\Recent"])


def test_a_uidvalidity_change_since_the_tools_last_run_falls_back_to_content(
    account: Any, tmp_path: Path
) -> None:
    m = Mirror(account, tmp_path)
    populate(m)
    meta = run_offlineimap(m, tmp_path)
    before = m.server()
    _recreate(m, CAFE)
    plan = m.run("migrate", "test", "--from", "offlineimap", "--state", str(meta))
    assert plan.status == 0, plan
    assert f"{CAFE}: the server's UIDVALIDITY changed" in plan.out
    assert m.run("migrate", "test", "--from", "offlineimap", "--state", str(meta), "--yes")
    st = State.open(tmp_path / "state")
    folders = st.folders()
    assert folders[CAFE].needs_match and not st.pairs(CAFE)
    assert not folders["INBOX"].needs_match and len(st.pairs("INBOX")) == 5
    st.close()
    r = m.sync()
    assert counts(r.out) == Counter({"linked": 3}), r.out
    assert mirrored(m) == before


def test_mbsync_uidvalidity_change_marks_the_folder_for_matching(
    account: Any, tmp_path: Path
) -> None:
    m = Mirror(account, tmp_path)
    populate(m)
    run_mbsync(m, tmp_path)
    _recreate(m, "Archive")
    assert m.run("migrate", "test", "--from", "mbsync", "--yes").status == 0
    st = State.open(tmp_path / "state")
    assert st.folders()["Archive"].needs_match and not st.pairs("Archive")
    assert len(st.pairs(CAFE)) == 3
    st.close()


@pytest.mark.parametrize("sep", [".", "/"])
def test_first_sync_over_an_offlineimap_maildir_links_everything(
    account: Any, tmp_path: Path, sep: str
) -> None:
    m = Mirror(account, tmp_path)
    populate(m)
    run_offlineimap(m, tmp_path, sep)
    before = m.server()
    dry = m.run("sync", "--dry-run")
    assert f"rename {m.root / CAFE_UTF7} -> {m.root / CAFE}" in dry.out
    if sep == ".":
        assert f"rename {m.root / 'Archive.2024'} -> {m.root / 'Archive' / '2024'}" in dry.out
    assert not re.search(r": (upload|download) ", dry.out), dry.out
    assert dry.out.count(": link UID") == 10
    assert (m.root / CAFE_UTF7).is_dir()  # a dry run renames nothing
    r = m.sync()
    assert counts(r.out) == Counter({"linked": 10}), r.out
    assert mirrored(m) == before


@pytest.mark.parametrize(
    ("subfolders", "sync_state"),
    [
        ("Verbatim", "*"),
        ("Legacy", "*"),
        ("Maildir++", "*"),
        ("Flatten", "*"),
        ("Verbatim", "global"),
        ("Verbatim", "channel"),
    ],
)
def test_migrate_from_each_mbsync_layout_changes_nothing(
    account: Any, tmp_path: Path, subfolders: str, sync_state: str
) -> None:
    layout = "maildir++" if subfolders == "Maildir++" else "nested"
    m = Mirror(account, tmp_path, layout=layout)
    populate(m)
    run_mbsync(m, tmp_path, subfolders, sync_state)
    written = {
        "Verbatim": "Archive/2024",
        "Legacy": "Archive/.2024",
        "Maildir++": ".Archive.2024",
        "Flatten": "Archive.2024",
    }[subfolders]
    assert (m.root / written / "cur").is_dir()
    before = m.server()
    state = [] if sync_state == "*" else ["--state", str(tmp_path / "mbsync-state")]
    done = m.run("migrate", "test", "--from", "mbsync", "--yes", *state)
    assert done.status == 0, done
    assert "state written: 4 folders, 10 messages" in done.out
    assert "matched by content" not in done.out
    r = m.sync()
    assert "no changes" in r.out, r.out
    assert m.server() == before


def test_first_sync_over_an_mbsync_maildir_without_migrate_links_everything(
    account: Any, tmp_path: Path
) -> None:
    m = Mirror(account, tmp_path)
    populate(m)
    run_mbsync(m, tmp_path)
    before = m.server()
    r = m.sync()
    assert counts(r.out) == Counter({"linked": 10}), r.out
    assert m.server() == before


def test_first_sync_guard_stops_unmatched_uploads(account: Any, tmp_path: Path) -> None:
    """Files that match nothing on the server (here: the server lost them) are not
    uploaded by a first sync beyond guard_min without --force."""
    m = Mirror(account, tmp_path)
    populate(m, inbox=8)
    run_offlineimap(m, tmp_path)
    c = m.client
    c.select_folder("INBOX")
    c.delete_messages(c.search("ALL"))
    c.expunge()
    r = m.run("sync")
    assert r.status == 1, r
    assert "first sync of 'INBOX' would upload 9 local messages" in r.err
    assert "mirrorsync migrate" in r.err
    assert "INBOX: first sync: 0 matched, 9 to upload, 0 to download" in r.out
    assert m.server_uids("INBOX") == {}
    assert len(m.files("INBOX")) == 9
    # the other folders went ahead, linked
    assert counts(r.out)["linked"] == 5
    # still careful on the next run, until --force
    assert m.run("sync").status == 1
    forced = m.sync("--force")
    assert counts(forced.out)["uploaded"] == 9
    mirrored(m)


def test_modified_utf7_names_kept_for_the_old_tool_beside(account: Any, tmp_path: Path) -> None:
    """local.folder_names: modified-utf-7 keeps the directories as mbsync named them,
    and a folder new on the server gets a directory mbsync would find."""
    local_cfg = {"path": str(tmp_path / "Mail"), "folder_names": "modified-utf-7"}
    m = Mirror(account, tmp_path, local=local_cfg)
    populate(m)
    run_mbsync(m, tmp_path)
    before = m.server()
    done = m.run("migrate", "test", "--from", "mbsync", "--yes")
    assert done.status == 0, done
    assert "rename" not in done.out
    assert "no changes" in m.sync().out
    # mbsync, run again, finds its directories and state where it left them
    run_mbsync(m, tmp_path)
    assert m.server() == before
    m.client.create_folder("Über")
    m.client.append("Über", message("u1"))
    r = m.sync()
    assert counts(r.out) == Counter({"downloaded": 1}), r.out
    assert (m.root / "&ANw-ber" / "cur").is_dir() and (m.root / CAFE_UTF7).is_dir()
    assert not (m.root / CAFE).exists() and not (m.root / "Über").exists()
    assert mirrored_utf7(m) == {**before, "Über": Counter({(h(message("u1")), ""): 1})}


def h(data: bytes) -> str:
    return content_hash(to_lf(data))


def mirrored_utf7(m: Mirror) -> Snap:
    server = m.server()
    disk = {adopt.decode_name(k) or k: v for k, v in local(m).items()}
    assert server == disk, (server, disk)
    return server


@pytest.mark.parametrize("tool", ["mbsync", "offlineimap"])
def test_a_file_moved_in_with_the_number_of_a_message_expunged_meanwhile(
    account: Any, tmp_path: Path, tool: str
) -> None:
    """Archive's own ,U=1 was expunged on the server while INBOX's ,U=1 was moved
    into Archive: the expunge is applied and the move stays a move."""
    m = Mirror(account, tmp_path)
    populate(m)
    meta = run_mbsync(m, tmp_path) if tool == "mbsync" else run_offlineimap(m, tmp_path)
    state_arg = [] if meta is None else ["--state", str(meta)]
    before = m.server()
    f = file_of(m, "INBOX", "message 0")
    assert ",U=1" in f.name and ",U=1" in file_of(m, "Archive", "message a1").name
    f.rename(m.folder_dir("Archive") / "cur" / f.name)
    c = m.client
    c.select_folder("Archive")
    c.delete_messages([uid_of(m, "Archive", "message a1")])
    c.expunge()
    assert m.run("migrate", "test", "--from", tool, *state_arg, "--yes").status == 0
    r = m.sync()
    assert counts(r.out) == Counter({"moved out": 1, "moved in": 1, "deleted locally": 1}), r.out
    want = {k: Counter(v) for k, v in before.items()}
    want["INBOX"][(h(message(0)), "")] -= 1
    want["Archive"] = Counter({(h(message(0)), ""): 1})
    assert mirrored(m) == {k: +v for k, v in want.items()}
