"""A state lost with changes pending on both sides, against Dovecot: what each
`sync --recover` reading makes of moves, copies and deletions made since the last
sync, checked message by message on both sides; and the warning said first."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from mirrorsync.content import content_hash, to_lf
from mirrorsync.state import DB_NAME
from tests.harness import Mirror, Snapshot, message

N = 8
SEEN = [b"\\Seen"]

# Where each message is on both sides after the run, by --recover choice (None: not
# given). Since the last sync: 1 was moved INBOX -> Archive in the Maildir, 2 INBOX ->
# Work on the server; 3 was deleted in the Maildir, 4 on the server; 5 was copied to
# Work in the Maildir, 6 to Archive on the server; 7 and 8 are as they were.
KEPT = {1: ["Archive", "INBOX"], 2: ["INBOX", "Work"], 5: ["INBOX", "Work"]}
KEPT |= {6: ["Archive", "INBOX"]}
EXPECTED: dict[str | None, dict[int, list[str]]] = {
    None: KEPT,
    "keep": KEPT,
    "local": {1: ["Archive"], 2: ["INBOX"], 5: ["INBOX", "Work"], 6: ["INBOX"]},
    "server": {1: ["INBOX"], 2: ["Work"], 5: ["INBOX"], 6: ["Archive", "INBOX"]},
}


def _hash(n: int) -> str:
    return content_hash(to_lf(message(n)))


def _where(snap: Snapshot) -> dict[int, list[str]]:
    """Message number -> the folders holding it (a folder twice if it holds two)."""
    number = {_hash(n): n for n in range(1, N + 1)}
    out: dict[int, list[str]] = {}
    for folder, got in snap.items():
        for (h, flags), count in got.items():
            assert flags == "S", (folder, flags)
            out.setdefault(number[h], []).extend([folder] * count)
    return {n: sorted(f) for n, f in sorted(out.items())}


def _file(m: Mirror, folder: str, n: int) -> Path:
    (found,) = [f for f in m.files(folder) if content_hash(f.read_bytes()) == _hash(n)]
    return found


def _uid(m: Mirror, folder: str, n: int) -> int:
    m.client.select_folder(m.server_name(folder))
    (uid,) = m.client.search(["HEADER", "Message-ID", f"<{n}@example.org>"])
    return int(uid)


def _changes_then_loss(m: Mirror, loss: str) -> None:
    c = m.client
    for name in ("Archive", "Work"):
        c.create_folder(m.server_name(name))
    for n in range(1, N + 1):
        c.append("INBOX", message(n), flags=SEEN)
    m.sync()
    f1 = _file(m, "INBOX", 1)
    f1.rename(m.folder_dir("Archive") / "cur" / f1.name)
    c.move([_uid(m, "INBOX", 2)], m.server_name("Work"))
    _file(m, "INBOX", 3).unlink()
    c.delete_messages([_uid(m, "INBOX", 4)])
    c.expunge()
    shutil.copy(_file(m, "INBOX", 5), m.folder_dir("Work") / "cur" / "1800000000.M5P5.reader:2,S")
    c.copy([_uid(m, "INBOX", 6)], m.server_name("Archive"))
    if loss == "missing":
        shutil.rmtree(m.state_dir)
    else:
        db = m.state_dir / DB_NAME
        db.write_bytes(b"garbage" * 1000)
        for p in m.state_dir.glob(f"{DB_NAME}-*"):
            p.unlink()


@pytest.mark.parametrize("choice", [None, "keep", "local", "server"])
def test_a_lost_state_is_recovered_as_chosen(
    account: Any, tmp_path: Path, choice: str | None
) -> None:
    m = Mirror(account, tmp_path)
    _changes_then_loss(m, "damaged" if choice is None else "missing")
    args = [] if choice is None else [f"--recover={choice}"]
    before = (m.server(), m.local())
    if choice == "local":
        # a dry run says the same and prints the moves, changing nothing
        r = m.run("sync", "--dry-run", *args)
        assert r.status == 0, r
        assert "recover: move server message INBOX UID" in r.out and "to Archive" in r.out, r
        assert "recover: remove server message Archive UID" in r.out, r
        assert (m.server(), m.local()) == before
    r = m.run("sync", *args)
    assert r.status == 0, r
    (warning,) = [line for line in r.err.splitlines() if "no sync state" in line]
    assert "Maildir (8 messages) and the server (8)" in warning, warning
    assert "2 in one folder here and another on the server" in warning, warning
    assert "2 in more folders on one side than on the other" in warning, warning
    assert "2 on one side only" in warning, warning
    assert {
        None: "no --recover given",
        "keep": "keeping every copy (--recover=keep)",
        "local": "Maildir's folders (--recover=local): moving or removing 3 copies on the server",
        "server": "server's folders (--recover=server): moving or removing 3 copies in the Maildir",
    }[choice] in warning, warning
    assert "nothing is lost or duplicated" not in r.err
    if choice is None:
        assert "moved it to" in r.err  # the damaged state was moved aside first
    where = _where(m.assert_mirrored())
    expected = {n: ["INBOX"] for n in range(1, N + 1)} | EXPECTED[choice]
    assert where == expected
    # The state is there now: the next run is a plain one, with nothing to do.
    r = m.run("sync", *args)
    assert r.status == 0 and "no changes" in r.out, r
    assert "no sync state" not in r.err
    if choice is not None:
        assert f"--recover={choice} has nothing to do" in r.err, r
    assert _where(m.assert_mirrored()) == expected
    m.close()


def test_without_doubt_nothing_is_moved_and_one_sided_mail_is_copied(
    account: Any, tmp_path: Path
) -> None:
    """A lost state where nothing was moved or copied since: even --recover=local
    removes nothing, and a message on one side only (here, deleted locally since
    the last sync) is copied back: without a state it may be new mail."""
    m = Mirror(account, tmp_path)
    for n in (1, 2, 3):
        m.client.append("INBOX", message(n), flags=SEEN)
    m.sync()
    _file(m, "INBOX", 3).unlink()
    shutil.rmtree(m.state_dir)
    r = m.run("sync", "--recover=local")
    assert r.status == 0, r
    (warning,) = [line for line in r.err.splitlines() if "no sync state" in line]
    assert "1 on one side only" in warning and "a deleted one comes back" in warning, warning
    assert "--recover=local" not in warning  # it changes nothing here
    snap = m.assert_mirrored()
    assert Counter(_where(snap)) == Counter({1: ["INBOX"], 2: ["INBOX"], 3: ["INBOX"]})
    m.close()


def test_a_first_sync_of_new_mail_on_both_sides_is_no_recovery(
    account: Any, tmp_path: Path
) -> None:
    """A Maildir mirrorsync never synced (no file has its naming) next to a server
    with other mail: all of it is new, nothing is in doubt, so no warning (-v says
    what was found). With a message in different folders on the two sides there is
    doubt, and the warning comes."""
    m = Mirror(account, tmp_path)
    m.client.create_folder(m.server_name("Work"))
    m.client.append("INBOX", message(1), flags=SEEN)
    m.client.append("Work", message(3), flags=SEEN)
    for folder in ("INBOX", "Archive"):
        for sub in ("cur", "new", "tmp"):
            (m.root / folder / sub).mkdir(parents=True, exist_ok=True)
    (m.root / "INBOX" / "cur" / "mine.host:2,S").write_bytes(to_lf(message(2)))
    r = m.run("sync")
    assert r.status == 0, r
    assert "no sync state" not in r.err, r
    assert _where(m.assert_mirrored()) == {1: ["INBOX"], 2: ["INBOX"], 3: ["Work"]}
    m2 = Mirror(account, tmp_path / "again")
    m2.root.mkdir(parents=True)
    for sub in ("cur", "new", "tmp"):
        (m2.root / "Archive" / sub).mkdir(parents=True, exist_ok=True)
    (m2.root / "Archive" / "cur" / "mine.host:2,S").write_bytes(to_lf(message(3)))
    r = m2.run("sync")
    assert r.status == 0, r
    assert "1 in one folder here and another on the server" in r.err, r
    assert "no --recover given" in r.err, r
    m.close()
    m2.close()
