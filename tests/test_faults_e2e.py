"""The fault-injection suite: a sync with work in both directions, cut by
tests/faultproxy.py before or after each command, after so many bytes either way,
or stalled; each faulted run must end in exit 3 and one line, and a plain rerun
must reach the state a fault-free run reaches (nothing lost, nothing duplicated,
the same flags on both sides).

CI runs a deterministic sample of the faults. The whole sweep (every command
before and after, byte cuts at many offsets, several stalls) runs with
``MIRRORSYNC_FAULT_SWEEP=full`` (see README.md, "Testing"); it prints its figures."""

from __future__ import annotations

import itertools
import os
import random
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.faultproxy import Fault, FaultProxy, proxied_mirror
from tests.harness import Mirror, Snapshot, message

FULL = os.environ.get("MIRRORSYNC_FAULT_SWEEP", "") == "full"


@pytest.fixture(autouse=True)
def _no_oracle(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan oracle reads on a connection of its own, which would go through the
    proxy too and take its faults and rewritten answers: what these tests judge is
    the run, so the oracle stays out of them."""
    monkeypatch.delenv("MIRRORSYNC_PLAN_ORACLE", raising=False)


def _file_of(m: Mirror, folder: str, mid: str) -> Path:
    (found,) = [f for f in m.files(folder) if f"<{mid}@example.org>".encode() in f.read_bytes()]
    return found


def work_in_both_directions(m: Mirror) -> None:
    """A first sync, then on each side: new mail, a flag change, a deletion and a
    move, so the next sync downloads, uploads, stores flags, expunges, deletes
    files and moves on both sides."""
    c = m.client
    c.create_folder("Archive")
    for n in range(6):
        c.append("INBOX", message(f"i{n}"), flags=[b"\\Seen"] if n % 2 else [])
    for n in range(2):
        c.append("Archive", message(f"a{n}"), flags=[b"\\Seen"])
    m.sync()
    # the server, as another client
    c.select_folder("INBOX")
    uids = {
        d[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"].split(b"<")[1].split(b"@")[0].decode(): u
        for u, d in c.fetch(c.search("ALL"), ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"]).items()
    }
    c.append("INBOX", message("s-new"))
    c.append("Archive", message("s-new-archive"), flags=[b"\\Flagged"])
    c.add_flags(uids["i0"], [b"\\Flagged"])
    if c.has_capability("MOVE"):
        c.move(uids["i2"], "Archive")
    else:
        c.copy(uids["i2"], "Archive")
        c.delete_messages(uids["i2"])
    c.delete_messages(uids["i1"])
    c.close_folder()  # expunges the deleted
    # the reader, on the Maildir
    inbox = m.folder_dir("INBOX")
    (inbox / "new" / "1800000000.M1P1.reader").write_bytes(message("l-new").replace(b"\r\n", b"\n"))
    f3 = _file_of(m, "INBOX", "i3")
    f3.rename(f3.with_name(f3.name.split(":2,")[0] + ":2,FS"))
    _file_of(m, "INBOX", "i4").unlink()
    f5 = _file_of(m, "INBOX", "i5")
    f5.rename(m.folder_dir("Archive") / "cur" / f5.name)


@dataclass
class Sweep:
    runs: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)


def _differences(want: Snapshot, got: Snapshot, side: str) -> list[str]:
    out = []
    for folder in sorted(set(want) | set(got)):
        w, g = want.get(folder, Counter()), got.get(folder, Counter())
        for item in sorted(set(w) | set(g)):
            if w[item] != g[item]:
                what = "duplicated" if g[item] > w[item] else "lost"
                out.append(f"{side} {folder}: {what} {item[0][:8]} flags {item[1]!r}")
    return out


def _one_run(account: Any, proxy: FaultProxy, tmp: Path, fault: Fault, want: Snapshot) -> str:
    """One faulted sync and its rerun; returns the outcome, raises on a problem."""
    m = proxied_mirror(account, proxy, tmp)
    try:
        proxy.arm(None)
        work_in_both_directions(m)
        proxy.arm(fault)
        r = m.run("sync")
        commands = list(proxy.commands)
        fired, fired_in, connections = proxy.fired, proxy.fired_in, proxy.connections
        proxy.arm(None)
        lines = r.err.strip().splitlines()
        by_command = fault.kind not in ("up", "down") and fault.at <= len(commands)
        where = f"{fault} ({commands[fault.at - 1] if by_command else '-'})"
        if not fired:
            outcome = "not reached"
            assert r.status == 0, (where, r)
        elif r.status == 0:
            # Only two faults may pass unnoticed: one in the quick check's connection
            # (the first of two: it gives up silently and the full path does the
            # work), and a cut at LOGOUT, after the work
            if fired_in == 1 and connections > 1:
                outcome = "exit 0 (hit the quick check, which gave up)"
            else:
                hit = commands[fault.at - 1] if by_command else commands[-1]
                assert hit == "LOGOUT", (where, r)
                outcome = "exit 0 (at LOGOUT, after the work)"
        else:
            assert r.status == 3, (where, r)
            assert len(lines) == 1, (where, r.err)
            assert "Traceback" not in r.err and "internal error" not in r.err, (where, r.err)
            outcome = "exit 3, one line"
        again = m.run("sync")
        assert again.status == 0, (where, again)
        problems = _differences(want, m.server(), "server") + _differences(want, m.local(), "local")
        assert not problems, (where, problems)
        return outcome
    finally:
        m.close()


def _faults(commands: int, up: int, down: int) -> list[Fault]:
    """Every fault of the full sweep; CI draws a deterministic sample of them."""
    every = [Fault(kind, k) for k in range(1, commands + 1) for kind in ("before", "after")]
    every += [Fault("up", n) for n in range(0, up, max(1, up // 40))]
    every += [Fault("down", n) for n in range(0, down, max(1, down // 60))]
    stalls = [Fault("stall", k) for k in range(1, commands + 1, max(1, commands // 6))]
    if FULL:
        return every + stalls
    rng = random.Random(11)
    sample = [
        fault
        for kind, n in (("before", 6), ("after", 6), ("up", 3), ("down", 3))
        for fault in sorted(rng.sample([f for f in every if f.kind == kind], n), key=str)
    ]
    return sample + stalls[len(stalls) // 2 :][:1]


@pytest.fixture(params=["dovecot", "dovecot_basic"])
def sweep_server(request: pytest.FixtureRequest) -> Iterator[tuple[FaultProxy, Any]]:
    """A proxy in front of Dovecot with its extensions, and of one with none (no
    MOVE, UIDPLUS, CONDSTORE or QRESYNC: moves are COPY and EXPUNGE, new UIDs are
    looked for, so a lost answer leaves more to guess); and how to add a user."""
    server = request.getfixturevalue(request.param)
    proxy = FaultProxy(server.host, server.port)
    users = itertools.count(1)

    def make_account() -> Any:
        user = f"sweep-{request.param}-{next(users)}"
        server.add_user(user, "pw-" + user)
        return SimpleNamespace(
            server=server,
            user=user,
            password="pw-" + user,
            host=server.host,
            port=server.port,
            client=lambda: _client(server, user),
        )

    yield proxy, make_account
    proxy.close()


def proxy_server(m: Mirror) -> Any:
    return m.account.account.server


def _client(server: Any, user: str) -> Any:
    import imapclient

    c = imapclient.IMAPClient(server.host, server.port, ssl=False, timeout=30)
    c.login(user, "pw-" + user)
    return c


def test_fault_sweep_a_sync_cut_anywhere_ends_in_one_line_and_converges(
    sweep_server: tuple[FaultProxy, Any], tmp_path: Path
) -> None:
    proxy, make_account = sweep_server
    base = proxied_mirror(make_account(), proxy, tmp_path / "base")
    proxy.arm(None)
    work_in_both_directions(base)
    proxy.arm(None)
    base.sync()
    commands, up, down = list(proxy.commands), proxy.up, proxy.down
    want = base.assert_mirrored()
    base.close()
    # the scenario does what it says: each kind of work happened in this sync
    assert {"APPEND", "UID STORE", "UID FETCH"} <= set(commands)
    assert {"UID MOVE", "UID EXPUNGE"} <= set(commands) or "UID COPY" in commands

    kind = "no extensions" if proxy_server(base).capabilities else "its extensions"
    sweep = Sweep()
    for i, fault in enumerate(_faults(len(commands), up, down)):
        sweep.runs += 1
        try:
            outcome = _one_run(make_account(), proxy, tmp_path / f"r{i}", fault, want)
            sweep.outcomes[f"{fault.kind}: {outcome}"] += 1
        except AssertionError as e:
            sweep.problems.append(f"{fault}: {e}")
    print(
        f"\nfault sweep ({'full' if FULL else 'sample'}, Dovecot with {kind}): "
        f"{len(commands)} commands, "
        f"{up} bytes up, {down} bytes down in a fault-free sync; {sweep.runs} faulted "
        f"runs; {len(sweep.problems)} problems\n  commands: {' '.join(commands)}"
    )
    for what, n in sorted(sweep.outcomes.items()):
        print(f"  {what}: {n}")
    for p in sweep.problems:
        print("  " + p)
    assert not sweep.problems, sweep.problems


def _reader(root: Path, stop: threading.Event, deleted: set[str], rng: random.Random) -> int:
    """A mail reader at work on the Maildir: renames (flag changes), new/ -> cur/
    moves and deletions, until `stop`; records the Message-IDs it deleted; returns
    how many operations it made (a vanished file is simply another race)."""
    done = 0
    letters = ["", "S", "FS", "RS", "F", "DS"]
    while not stop.is_set():
        files = [p for sub in ("new", "cur") for p in (root / "INBOX" / sub).iterdir()]
        if not files:
            continue
        f = rng.choice(files)
        base = f.name.split(":2,")[0]
        try:
            what = rng.random()
            if what < 0.08 and len(deleted) < 8:
                mid = f.read_bytes().split(b"Message-ID: <", 1)[1].split(b">", 1)[0]
                f.unlink()
                deleted.add(mid.decode())
            elif f.parent.name == "new":
                f.rename(root / "INBOX" / "cur" / f"{base}:2,{rng.choice(letters)}")
            else:
                f.rename(f.with_name(f"{base}:2,{rng.choice(letters)}"))
            done += 1
        except (FileNotFoundError, IndexError):
            pass
    return done


def test_a_reader_at_work_during_syncs_converges(
    account: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Renames, new/ -> cur/ moves and deletions in a loop in a thread while syncs
    run (with new mail and flag changes from the server); after the reader stops, a
    quiet sync leaves both sides equal, each message the reader kept exactly once.
    The plan oracle is off: it lists the folders after the sync's own gather, so a
    reader at work shows it another Maildir than the sync saw (not a fast path's
    fault); convergence is what this test checks."""
    monkeypatch.delenv("MIRRORSYNC_PLAN_ORACLE", raising=False)
    m = Mirror(account, tmp_path)
    c = m.client
    for n in range(30):
        c.append("INBOX", message(n), flags=[b"\\Seen"] if n % 2 else [])
    m.sync()
    deleted: set[str] = set()
    rng = random.Random(5)
    operations = 0
    for round_ in range(3):
        c.select_folder("INBOX")
        uids = c.search("ALL")
        c.add_flags(uids[round_::5], [b"\\Flagged"])
        for n in range(10):
            c.append("INBOX", message(f"r{round_}-{n}"))
        stop = threading.Event()
        with ThreadPoolExecutor(1) as pool:
            work = pool.submit(_reader, m.root, stop, deleted, rng)
            r = m.run("sync")
            stop.set()
            operations += work.result()
        assert r.status in (0, 1), r  # a file renamed under a flag change: left for later
        assert "internal error" not in r.err and "Traceback" not in r.err, r
    assert operations > 0
    print(f"reader: {operations} operations, {len(deleted)} deletions")
    m.sync()  # quiet: the reader has stopped
    m.sync()
    snap = m.assert_mirrored()
    kept = 30 + 30 - len(deleted)
    assert sum(snap["INBOX"].values()) == kept, (kept, snap)
    assert len({h for h, _ in snap["INBOX"]}) == kept  # no message twice
    c.select_folder("INBOX", readonly=True)
    mids = {
        d[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"].split(b"<")[1].split(b"@")[0].decode()
        for d in c.fetch(c.search("ALL"), ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"]).values()
    }
    assert not mids & {d.split("@")[0] for d in deleted}
    m.close()
