"""The pure recovery planner (`recovery.plan_recovery`) from tables, its invariants
over random layouts, and the words of its warning."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
from fakeremote import FakeRemoteStore

from mirrorsync.errors import RecoveryNotice, ServerError
from mirrorsync.maildir import Maildir
from mirrorsync.recovery import (
    CHOICES,
    DropLocalCopy,
    DropServerCopy,
    MoveLocalCopy,
    MoveServerCopy,
    RecoveryAction,
    plan_recovery,
    recover,
)

Local = dict[str, dict[str, str]]
Remote = dict[str, dict[int, str]]

# name: (local folder -> key -> hash, server folder -> UID -> hash,
#        {choice: actions}, (elsewhere, extra, one_side))
CASES: dict[str, tuple[Local, Remote, dict[str, list[RecoveryAction]], tuple[int, int, int]]] = {
    "same folders": ({"INBOX": {"k": "h"}}, {"INBOX": {1: "h"}}, {}, (0, 0, 0)),
    "moved (on one side)": (
        {"Archive": {"k": "h"}},
        {"INBOX": {1: "h"}},
        {
            "local": [MoveServerCopy("INBOX", 1, "Archive")],
            "server": [MoveLocalCopy("Archive", "k", "INBOX")],
        },
        (1, 0, 0),
    ),
    "copied on the server (or deleted here)": (
        {"INBOX": {"k": "h"}},
        {"INBOX": {1: "h"}, "Archive": {2: "h"}},
        {"local": [DropServerCopy("Archive", 2)]},
        (0, 1, 0),
    ),
    "copied here (or deleted on the server)": (
        {"INBOX": {"k": "h"}, "Work": {"k2": "h"}},
        {"INBOX": {1: "h"}},
        {"server": [DropLocalCopy("Work", "k2")]},
        (0, 1, 0),
    ),
    "twice in one folder here": (
        {"INBOX": {"k1": "h", "k2": "h"}},
        {"INBOX": {1: "h"}},
        {"server": [DropLocalCopy("INBOX", "k2")]},
        (0, 1, 0),
    ),
    "in two other folders on the server": (
        {"G": {"k": "h"}},
        {"F": {1: "h"}, "H": {2: "h"}},
        {
            "local": [MoveServerCopy("F", 1, "G"), DropServerCopy("H", 2)],
            "server": [MoveLocalCopy("G", "k", "F")],
        },
        (1, 0, 0),
    ),
    "only here (new, or deleted on the server)": (
        {"INBOX": {"k": "h"}},
        {"INBOX": {1: "other"}},
        {},
        (0, 0, 2),
    ),
    "only on the server, twice": ({}, {"INBOX": {1: "h"}, "Work": {2: "h"}}, {}, (0, 0, 2)),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
@pytest.mark.parametrize("choice", CHOICES)
def test_plan_recovery(case: str, choice: str) -> None:
    local, remote, actions, (elsewhere, extra, one_side) = CASES[case]
    planned, found = plan_recovery(local, remote, choice)
    assert planned == actions.get(choice, [])
    assert (found.elsewhere, found.extra, found.one_side) == (elsewhere, extra, one_side)


def _apply(
    local: Local, remote: Remote, actions: list[RecoveryAction]
) -> tuple[dict[str, Counter[str]], dict[str, Counter[str]]]:
    """hash -> Counter of folders on each side, after the actions."""
    to: dict[tuple[str, object], str | None] = {}  # (folder, key or UID) -> folder, None: gone
    for a in actions:
        if isinstance(a, (MoveLocalCopy, MoveServerCopy)):
            to[(a.src, a.key if isinstance(a, MoveLocalCopy) else a.uid)] = a.dst
        else:
            to[(a.folder, a.key if isinstance(a, DropLocalCopy) else a.uid)] = None
    sides: list[dict[str, Counter[str]]] = [{}, {}]
    for side, layout in zip(sides, (local, remote), strict=True):
        for folder, copies in layout.items():
            for which, h in copies.items():
                dst = to.get((folder, which), folder)
                side.setdefault(h, Counter())
                if dst is not None:
                    side[h][dst] += 1
    return sides[0], sides[1]


@pytest.mark.parametrize("seed", range(300))
def test_no_message_loses_its_last_copy_and_the_trusted_side_wins(seed: int) -> None:
    """Random layouts of a few messages in a few folders: under any choice a message
    keeps at least one copy on each side that had one, a message on one side only
    is never touched, and after `local` (`server`) the other side holds no copy in
    a folder where the trusted side has none of that message."""
    rng = random.Random(seed)
    folders = ["INBOX", "A", "B"]
    local: Local = {}
    remote: Remote = {}
    uid = 0
    for n in range(rng.randint(1, 5)):
        h = f"h{n}"
        for _ in range(rng.randint(0, 3)):
            local.setdefault(rng.choice(folders), {})[f"k{n}.{rng.random()}"] = h
        for _ in range(rng.randint(0, 3)):
            uid += 1
            remote.setdefault(rng.choice(folders), {})[uid] = h
    before_here, before_there = _apply(local, remote, [])
    for choice in CHOICES:
        actions, _found = plan_recovery(local, remote, choice)
        here, there = _apply(local, remote, actions)
        assert here.keys() == before_here.keys() and there.keys() == before_there.keys()
        for h in before_here.keys() ^ before_there.keys():  # one side only: untouched
            assert here.get(h) == before_here.get(h) and there.get(h) == before_there.get(h)
        for h in before_here.keys() & before_there.keys():
            if choice == "keep":
                assert (here[h], there[h]) == (before_here[h], before_there[h])
            elif choice == "local":
                assert here[h] == before_here[h] and not there[h] - here[h], (local, remote)
            else:
                assert there[h] == before_there[h] and not here[h] - there[h], (local, remote)


@pytest.mark.parametrize(
    ("facts", "words"),
    [
        ((2, 1, 3, None, 0), "keeping every copy (no --recover given)"),
        ((2, 1, 3, None, 0), "--recover=local follows the Maildir's folders instead"),
        ((2, 0, 0, "keep", 0), "keeping every copy (--recover=keep)"),
        ((1, 1, 0, "local", 3), "--recover=local): moving or removing 3 copies on the server"),
        ((1, 0, 0, "server", 1), "--recover=server): moving or removing 1 copy in the Maildir"),
        ((0, 0, 4, "local", 0), "4 on one side only (new there, or deleted on the other)"),
        ((0, 0, 4, None, 0), "a deleted one comes back"),
        ((0, 0, 0, None, 0), "each in the same folders on both sides; nothing is in doubt"),
    ],
)
def test_the_warning_says_what_is_in_doubt_and_what_is_done(
    facts: tuple[int, int, int, str | None, int], words: str
) -> None:
    elsewhere, extra, one_side, choice, actions = facts
    text = str(RecoveryNotice("acct", 10, 9, elsewhere, extra, one_side, choice, actions))
    assert words in text, text
    assert text.startswith("[acct] no sync state") and "nothing is lost" not in text
    if not (elsewhere or extra):
        assert "--recover" not in text  # no choice would change anything


def _world(tmp_path: Path) -> tuple[FakeRemoteStore, Maildir]:
    """Message A in INBOX and Work on both sides, as synced before the state was lost."""
    remote = FakeRemoteStore()
    remote.create_folder("Work")
    maildir = Maildir(tmp_path / "Mail")
    maildir.root.mkdir(parents=True)
    data = b"Message-ID: <a@rec.test>\nSubject: a\n\nbody\n"
    for name in ("INBOX", "Work"):
        remote.inject(name, data.replace(b"\n", b"\r\n"), ["\\Seen"])
        folder = maildir.create_folder(name)
        folder.deliver(folder.new_key(), data, frozenset({"\\Seen"}), 1_600_000_000)
    return remote, maildir


def _files(maildir: Maildir) -> dict[str, int]:
    return {n: len(maildir.folder(n).scan()) for n in ("INBOX", "Work")}


@pytest.mark.parametrize("choice", ["local", "server"])
def test_a_side_not_read_in_full_makes_the_run_keep_every_copy(
    tmp_path: Path, choice: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The server would not list INBOX: its copy of A unseen, the Maildir's would
    look like an extra one (and the server's copy in Work, under `local`, one the
    Maildir lacks), and be removed although the message is there. So a survey that
    could not read everything moves and removes nothing."""
    remote, maildir = _world(tmp_path)
    remote.fail("identities", ServerError("INBOX: no (injected)"))
    recover("acct", remote, maildir, ["INBOX", "Work"], ["INBOX", "Work"], choice, False, print)
    assert _files(maildir) == {"INBOX": 1, "Work": 1}
    assert {n: len(f.messages) for n, f in remote.folders.items()} == {"INBOX": 1, "Work": 1}
    assert f"--recover={choice}: 1 failures to read" in caplog.text
    assert "keeping every copy instead" in caplog.text


def test_nothing_in_doubt_means_nothing_done(tmp_path: Path) -> None:
    remote, maildir = _world(tmp_path)
    for choice in CHOICES:
        assert (
            recover(
                "acct", remote, maildir, ["INBOX", "Work"], ["INBOX", "Work"], choice, False, print
            )
            == {}
        )
    assert _files(maildir) == {"INBOX": 1, "Work": 1}
    assert {n: len(f.messages) for n, f in remote.folders.items()} == {"INBOX": 1, "Work": 1}
