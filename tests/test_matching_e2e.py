"""Content matching sees through the fields other tools add to their copy of a message
(mbsync's X-TUID, mutt's Content-Length/Lines/Status), against a real Dovecot: such a
copy is linked or moved, never uploaded and downloaded, and then holds the server's
bytes."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from mirrorsync import flags as flagmod
from mirrorsync.content import to_lf
from mirrorsync.imap.store import ImapStore
from tests.harness import Mirror, message

LONG_AGO = datetime(2020, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def _totals(out: str) -> dict[str, int]:
    """The counts of the summary line ("test: 2 folders, 3 linked, 1 uploaded (0.1s)")."""
    line = next(x for x in out.splitlines() if x.startswith("test: "))
    return {k: int(n) for n, k in re.findall(r"(\d+) ([a-z][a-z ()]*?)(?=, | \(\d)", line)}


def _with_fields(lf: bytes, fields: bytes) -> bytes:
    """The message with `fields` added at the end of its header block, where mbsync
    puts X-TUID and mutt its Content-Length and Status."""
    end = lf.index(b"\n\n") + 1
    return lf[:end] + fields + lf[end:]


@pytest.fixture
def no_uploads(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
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


def _server_bodies(m: Mirror, folder: str) -> dict[int, tuple[bytes, str, Any]]:
    """UID -> (LF bytes, flag letters, INTERNALDATE) of every message in `folder`."""
    c = m.client
    c.select_folder(folder, readonly=True)
    uids = c.search("ALL")
    rows = c.fetch(uids, ["BODY.PEEK[]", "FLAGS", "INTERNALDATE"]) if uids else {}
    return {
        u: (
            to_lf(r[b"BODY[]"]),
            flagmod.to_letters(flagmod.normalize(r[b"FLAGS"])),
            r[b"INTERNALDATE"],
        )
        for u, r in rows.items()
    }


def test_an_mbsync_maildir_with_x_tuid_is_linked_and_takes_the_servers_bytes(
    account: Any, tmp_path: Path, no_uploads: list[Any]
) -> None:
    m = Mirror(account, tmp_path)
    c = m.client
    c.create_folder("Archive")
    for n in range(4):
        c.append("INBOX", message(n), flags=[b"\\Seen"] if n % 2 else [])
    c.append("Archive", message("a", body="X-TUID: in the body is content"), flags=[b"\\Flagged"])
    # No Message-ID: found by size, which the X-TUID line changes.
    c.append("Archive", b"From: a@example.org\r\nSubject: no id\r\n\r\nbody\r\n")
    # The same Message-ID as a server message, another body: a different message.
    different = _with_fields(to_lf(message(1, body="edited locally")), b"X-TUID: zzzzzzzzzzzz\n")
    # The Maildir as mbsync 1.4 leaves it: the server's bytes plus one X-TUID line.
    names: dict[Path, bytes] = {}
    for folder in ("INBOX", "Archive"):
        for sub in ("cur", "new", "tmp"):
            (m.folder_dir(folder) / sub).mkdir(parents=True)
        for uid, (lf, letters, _date) in _server_bodies(m, folder).items():
            tuid = f"X-TUID: {uid:04d}abcdefgh\n".encode()
            name = f"17000000{uid:02d}.mbsync.host,U={uid}:2,{letters}"
            path = m.folder_dir(folder) / "cur" / name
            path.write_bytes(_with_fields(lf, tuid))
            os.utime(path, (1700000000, 1700000000 + uid))
            names[path] = lf
    extra = m.folder_dir("INBOX") / "cur" / "1700000099.mbsync.host,U=99:2,S"
    extra.write_bytes(different)

    dry = m.run("sync", "--dry-run")
    assert dry.status == 0, dry
    assert dry.out.count("(same content, taking the server's bytes)") == 6
    assert dry.out.count("upload ") == 1 and "download " not in dry.out
    assert all(path.read_bytes() != lf for path, lf in names.items())  # nothing changed

    r = m.sync()

    # Every mbsync copy linked; only the genuinely different message is uploaded.
    assert _totals(r.out) == {"folders": 2, "linked": 6, "uploaded": 1}
    assert len(no_uploads) == 1
    for path, lf in names.items():
        assert path.read_bytes() == lf  # same name (key, flags), the server's bytes
        assert path.stat().st_mtime == 1700000000 + int(path.name.split("U=")[1].split(":")[0])
    assert extra.read_bytes() == different  # never touched: it is not the server's message
    snap = m.assert_mirrored()
    assert sum(snap["INBOX"].values()) == 5 and sum(snap["Archive"].values()) == 2
    assert not any(b"X-TUID: 00" in lf for lf, _l, _d in _server_bodies(m, "INBOX").values())
    assert _totals(m.sync().out) == {"folders": 2}  # nothing left to do
    m.close()


@pytest.fixture(params=["full", "basic"])
def mirror(request: Any, tmp_path: Path) -> Any:
    account = request.getfixturevalue("account" if request.param == "full" else "basic_account")
    m = Mirror(account, tmp_path)
    c = m.client
    c.create_folder("Archive")
    for n in range(3):
        c.append("INBOX", message(n), flags=[b"\\Seen"], msg_time=LONG_AGO)
    m.sync()
    yield m
    m.close()


def test_a_mutt_save_to_another_folder_is_a_server_move(
    mirror: Mirror, no_uploads: list[Any]
) -> None:
    before = _server_bodies(mirror, "INBOX")
    f = next(p for p in mirror.files("INBOX") if to_lf(message(1)) == p.read_bytes())
    (uid,) = [u for u, (lf, _l, _d) in before.items() if lf == f.read_bytes()]
    # mutt's save: a new file in the other folder with its length and status fields
    # added, then the original deleted.
    saved = mirror.folder_dir("Archive") / "cur" / "1700000000.R1.mutt:2,S"
    saved.write_bytes(_with_fields(f.read_bytes(), b"Status: RO\nContent-Length: 25\nLines: 2\n"))
    f.unlink()

    r = mirror.sync()

    assert no_uploads == []
    assert _totals(r.out) == {"folders": 2, "moved out": 1, "moved in": 1}
    inbox, archive = _server_bodies(mirror, "INBOX"), _server_bodies(mirror, "Archive")
    assert uid not in inbox and len(inbox) == 2
    ((lf, letters, date),) = archive.values()
    assert lf == before[uid][0] and letters == "S"
    assert date == before[uid][2]  # moved, not uploaded: the INTERNALDATE is kept
    assert saved.read_bytes() == lf  # the same file name, now the server's bytes
    snap = mirror.assert_mirrored()
    assert sum(snap["INBOX"].values()) == 2 and sum(snap["Archive"].values()) == 1
    assert _totals(mirror.sync().out) == {"folders": 2}


def _mbsync_maildir(m: Mirror) -> None:
    """Server mail in two folders, and the Maildir mbsync would have left of it
    (one message not yet fetched)."""
    c = m.client
    c.create_folder("Archive")
    for n in range(4):
        c.append("INBOX" if n < 3 else "Archive", message(n), flags=[b"\\Seen"])
    c.append("INBOX", message("late"))
    for folder in ("INBOX", "Archive"):
        for sub in ("cur", "new", "tmp"):
            (m.folder_dir(folder) / sub).mkdir(parents=True)
        for uid, (lf, letters, _d) in _server_bodies(m, folder).items():
            if b"late@" in lf:
                continue
            name = f"17000000{uid:02d}.{folder}.host,U={uid}:2,{letters}"
            path = m.folder_dir(folder) / "cur" / name
            path.write_bytes(_with_fields(lf, f"X-TUID: {uid:012d}\n".encode()))


def _mutt_save(m: Mirror) -> None:
    c = m.client
    c.create_folder("Archive")
    for n in range(3):
        c.append("INBOX", message(n), flags=[b"\\Seen"], msg_time=LONG_AGO)
    m.sync()
    f = m.files("INBOX")[1]
    saved = m.folder_dir("Archive") / "cur" / "1700000000.R1.mutt:2,S"
    saved.write_bytes(_with_fields(f.read_bytes(), b"Status: RO\nContent-Length: 25\n"))
    f.unlink()


@pytest.mark.parametrize(
    ("scenario", "counts"),
    [(_mbsync_maildir, {"INBOX": 4, "Archive": 1}), (_mutt_save, {"INBOX": 2, "Archive": 1})],
)
def test_a_kill_before_any_state_commit_neither_duplicates_nor_keeps_the_fields(
    make_account: Any, tmp_path: Path, scenario: Any, counts: dict[str, int]
) -> None:
    outcomes = {}
    kill_at = 1
    while True:
        m = Mirror(make_account(), tmp_path / f"k{kill_at}")
        scenario(m)
        killed = m.run_killed("sync", kill_at)
        # assert_mirrored compares bytes: every local file is the server's, no field left
        snap = m.assert_mirrored()
        assert all(n == 1 for f in snap.values() for n in f.values()), f"duplicate at {kill_at}"
        outcomes[kill_at] = snap
        m.close()
        if not killed:
            break
        kill_at += 1
        assert kill_at < 30, "a sync that never finishes"
    assert kill_at > 2, "the scenario should pass through several commits"
    final = outcomes[kill_at]
    assert {f: sum(c.values()) for f, c in final.items()} == counts
    for k, snap in outcomes.items():
        assert snap == final, f"killing before commit {k} changed the outcome"


class _Tmux:
    """A terminal program in a private tmux server, driven by keystrokes."""

    def __init__(self, tmp: Path, command: list[str]) -> None:
        self.base = ["tmux", "-L", f"mirrorsync-{os.getpid()}-{id(self)}", "-f", "/dev/null"]
        env = {**os.environ, "TERM": "xterm", "HOME": str(tmp)}
        subprocess.run(
            [*self.base, "new-session", "-d", "-x", "120", "-y", "30", shlex.join(command)],
            check=True,
            env=env,
        )

    def screen(self) -> str:
        p = subprocess.run([*self.base, "capture-pane", "-p"], capture_output=True, text=True)
        return p.stdout

    def wait_for(self, text: str, timeout: float = 20.0) -> None:
        """Poll the screen until `text` shows (a terminal program answers when it is
        ready, not after a fixed time)."""
        deadline = time.monotonic() + timeout
        while text not in self.screen():
            assert time.monotonic() < deadline, f"{text!r} never appeared:\n{self.screen()}"
            time.sleep(0.05)

    def keys(self, *keys: str) -> None:
        subprocess.run([*self.base, "send-keys", *keys], check=True)

    def wait_exit(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while subprocess.run([*self.base, "has-session"], capture_output=True).returncode == 0:
            assert time.monotonic() < deadline, f"still running:\n{self.screen()}"
            time.sleep(0.05)

    def close(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True)


@pytest.mark.skipif(
    not (shutil.which("neomutt") and shutil.which("tmux")),
    reason="needs neomutt and tmux (apt-get install -y neomutt tmux)",
)
def test_a_save_made_by_real_neomutt_is_a_server_move(
    account: Any, tmp_path: Path, no_uploads: list[Any]
) -> None:
    m = Mirror(account, tmp_path)
    c = m.client
    c.create_folder("Archive")
    for n in range(3):
        c.append("INBOX", message(n), flags=[b"\\Seen"], msg_time=LONG_AGO)
    m.sync()
    before = _server_bodies(m, "INBOX")
    muttrc = tmp_path / "muttrc"
    muttrc.write_text(
        f'set folder="{m.root}"\nset spoolfile=+INBOX\nset mbox_type=Maildir\n'
        "set confirmappend=no\nset delete=yes\nset move=no\nset quit=yes\n"
        'set header_cache=""\nset wait_key=no\n'
    )
    neomutt = _Tmux(tmp_path, ["neomutt", "-n", "-F", str(muttrc)])
    try:
        neomutt.wait_for("NeoMutt: =INBOX")
        neomutt.keys("s")  # save the message under the cursor ...
        neomutt.wait_for("Save to mailbox")
        neomutt.keys("C-u", "=Archive", "Enter")  # ... to the Archive folder
        neomutt.wait_for("Del:1")  # the original is marked deleted
        neomutt.keys("$")  # and purged
        neomutt.wait_for("Msgs:2")
        neomutt.keys("q")
        neomutt.wait_exit()
    finally:
        neomutt.close()
    (saved,) = m.files("Archive")
    assert len(m.files("INBOX")) == 2
    # What this test is about: neomutt's copy is not the server's bytes.
    assert saved.read_bytes() not in {lf for lf, _l, _d in before.values()}

    r = m.sync()

    assert no_uploads == []
    assert _totals(r.out) == {"folders": 2, "moved out": 1, "moved in": 1}
    ((lf, _letters, date),) = _server_bodies(m, "Archive").values()
    (uid,) = [u for u, (body, _l, _d) in before.items() if body == lf]
    assert uid not in _server_bodies(m, "INBOX") and date == before[uid][2]
    assert saved.read_bytes() == lf
    m.assert_mirrored()
    m.close()


def test_a_mutt_save_into_a_local_only_folder_frees_the_server_without_the_guard(
    account: Any, tmp_path: Path
) -> None:
    """Saving 8 of 12 messages with mutt into a local-only archive folder is no mass
    deletion: the saved copies (with mutt's fields) prove the mail is safe on disk."""
    m = Mirror(account, tmp_path)
    doc = yaml.safe_load(m.config.read_text())
    doc["accounts"]["test"]["local"]["local_only"] = ["Archive"]
    m.config.write_text(yaml.safe_dump(doc))
    for n in range(12):
        m.client.append("INBOX", message(n), flags=[b"\\Seen"])
    m.sync()
    archive = m.root / "Archive"
    for sub in ("cur", "new", "tmp"):
        (archive / sub).mkdir(parents=True)
    saved = {}
    for i, f in enumerate(m.files("INBOX")[:8]):
        copy = archive / "cur" / f"1800000000.save{i}.host:2,S"
        copy.write_bytes(_with_fields(f.read_bytes(), b"Status: RO\nContent-Length: 20\n"))
        saved[copy] = copy.read_bytes()
        f.unlink()
    r = m.run("sync")
    assert r.status == 0, r  # not read as a mass deletion: before, the guard stopped it
    assert _totals(r.out) == {"folder": 1, "freed on server (archived locally)": 8}
    assert len(_server_bodies(m, "INBOX")) == 4
    assert {p: p.read_bytes() for p in saved} == saved  # a local-only file is never touched
    m.close()


@pytest.mark.skipif(
    not (shutil.which("neomutt") and shutil.which("tmux")),
    reason="needs neomutt and tmux (apt-get install -y neomutt tmux)",
)
def test_a_neomutt_session_arrives_on_the_server(
    account: Any, tmp_path: Path, no_uploads: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user's afternoon in neomutt on the synced Maildir: read one message, flag one,
    delete one and sync the mailbox ($), save one to another folder. One sync later
    the server has the seen flag, the flag, the deletion, and the save as a MOVE."""
    moves: list[tuple[list[int], str]] = []
    real_move = ImapStore.move

    def spy(self: Any, uids: Any, name: str) -> Any:
        moves.append((sorted(uids), name))
        return real_move(self, uids, name)

    monkeypatch.setattr(ImapStore, "move", spy)
    m = Mirror(account, tmp_path)
    m.client.create_folder("Archive")
    for n in range(4):
        m.client.append("INBOX", message(n, subject=f"message {n}"), msg_time=LONG_AGO)
    m.sync()
    before = _server_bodies(m, "INBOX")
    uid_of = {
        lf.split(b"Subject: ")[1].split(b"\n")[0].decode(): u for u, (lf, _l, _d) in before.items()
    }
    muttrc = tmp_path / "muttrc"
    muttrc.write_text(
        f'set folder="{m.root}"\nset spoolfile=+INBOX\nset mbox_type=Maildir\n'
        "set confirmappend=no\nset delete=yes\nset move=no\nset quit=yes\n"
        'set header_cache=""\nset wait_key=no\nset sort=subject\nset resolve=no\n'
        "set mark_old=no\nset pager_stop=yes\n"
    )
    neomutt = _Tmux(tmp_path, ["neomutt", "-n", "-F", str(muttrc)])
    try:
        neomutt.wait_for("NeoMutt: =INBOX")
        neomutt.wait_for("New:4")
        neomutt.keys("Enter")  # read "message 0"
        neomutt.wait_for("body of 0")
        neomutt.keys("i")  # back to the index
        neomutt.wait_for("New:3")
        neomutt.keys("j", "F")  # flag "message 1"
        neomutt.wait_for("Flag:1")
        neomutt.keys("j", "d")  # delete "message 2"
        neomutt.wait_for("Del:1")
        neomutt.keys("j", "s")  # save "message 3" ...
        neomutt.wait_for("Save to mailbox")
        neomutt.keys("C-u", "=Archive", "Enter")  # ... to Archive (which marks it deleted)
        neomutt.wait_for("Del:2")
        neomutt.keys("$")  # and sync the mailbox: the deleted ones go
        neomutt.wait_for("Msgs:2")
        neomutt.keys("q")
        neomutt.wait_exit()
    finally:
        neomutt.close()
    assert len(m.files("INBOX")) == 2 and len(m.files("Archive")) == 1

    r = m.sync()

    assert no_uploads == []
    assert moves == [([uid_of["message 3"]], "Archive")]  # UID MOVE: Dovecot has MOVE
    inbox = _server_bodies(m, "INBOX")
    assert {u: letters for u, (_b, letters, _d) in inbox.items()} == {
        uid_of["message 0"]: "S",
        uid_of["message 1"]: "F",
    }, r
    ((lf, _letters, date),) = _server_bodies(m, "Archive").values()
    assert lf == before[uid_of["message 3"]][0] and date == before[uid_of["message 3"]][2]
    m.assert_mirrored()
    m.close()


@pytest.mark.skipif(not shutil.which("notmuch"), reason="needs notmuch (apt-get install notmuch)")
def test_notmuch_tags_arrive_on_the_server(account: Any, tmp_path: Path) -> None:
    """notmuch with synchronize_flags renames the files when tags change; the next
    sync carries them to the server."""
    m = Mirror(account, tmp_path)
    for n in range(3):
        m.client.append("INBOX", message(n))
    m.client.create_folder("Lists")
    m.client.append("Lists", message("l"))
    m.sync()
    config = tmp_path / "notmuch-config"
    config.write_text(
        f"[database]\npath={m.root}\n[maildir]\nsynchronize_flags=true\n"
        "[new]\ntags=unread;inbox;\nignore=.mirrorsync\n"
    )
    env = {**os.environ, "NOTMUCH_CONFIG": str(config), "HOME": str(tmp_path)}

    def notmuch(*args: str) -> str:
        p = subprocess.run(["notmuch", *args], env=env, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        return p.stdout

    notmuch("new")
    assert notmuch("count", "tag:unread").strip() == "4"
    notmuch("tag", "-unread", "--", "id:0@example.org")
    notmuch("tag", "+flagged", "--", "id:1@example.org")
    notmuch("tag", "-unread", "+replied", "--", "id:l@example.org")

    r = m.sync()

    assert _totals(r.out)["flags"] == 3, r.out
    flags = {lf.split(b"Message-ID: ")[1].split(b"\n")[0]: letters
             for folder in ("INBOX", "Lists")
             for lf, letters, _d in _server_bodies(m, folder).values()}  # fmt: skip
    assert flags == {b"<0@example.org>": "S", b"<1@example.org>": "F",
                     b"<2@example.org>": "", b"<l@example.org>": "RS"}  # fmt: skip
    m.assert_mirrored()
    m.close()
