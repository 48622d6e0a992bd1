"""The compatibility matrix: the same end-to-end scenarios, through the real CLI,
against every server the suite can start (tests/servers.py): Dovecot with all its
extensions and with some taken away, Cyrus with '/' and with '.' as separator,
Courier (every folder under `INBOX.`) and pymap.

After every step both sides must hold exactly the expected messages, each as many
times as expected (a duplicate or a loss shows as a count), with the expected flags.
Each scenario runs from a fresh first sync ("fresh") and from the steady state
("settled": synced, the settle clock advanced, synced again with no changes), where
the fast paths (unchanged folders skipped, CONDSTORE/QRESYNC deltas, the quick
check) decide; and every scenario ends by checking that a sync after it, once
settled, finds no changes.

Cases that fail because of known bugs being fixed elsewhere are marked
`xfail(strict=True)` one (scenario, server, start) at a time, so a fix shows as an
XPASS failure and its mark is then removed.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from mirrorsync.content import content_hash, to_lf
from tests.harness import Mirror, Snapshot, message

# server id -> the session fixture that starts it (tests/conftest.py)
SERVERS: dict[str, str] = {
    "dovecot": "dovecot",
    "dovecot-condstore": "dovecot_condstore",
    "dovecot-uidplus": "dovecot_uidplus",
    "dovecot-basic": "dovecot_basic",
    "cyrus-slash": "cyrus_slash",
    "cyrus-dot": "cyrus_dot",
    "courier": "courier",
    "pymap": "pymap_server",
}
STARTS = ("fresh", "settled")

# (scenario, server id, start) -> a known bug the scenario fails on there; a None
# start means both. Each is marked xfail(strict=True), so its fix shows.
KNOWN: dict[tuple[str, str, str | None], str] = {}


def matrix(scenario: str, servers: tuple[str, ...] = tuple(SERVERS)) -> list[Any]:
    """The (server, start) parameters of one scenario, each known failure marked."""
    params = []
    for server in servers:
        for start in STARTS:
            reason = KNOWN.get((scenario, server, start)) or KNOWN.get((scenario, server, None))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            params.append(pytest.param((server, start), marks=marks, id=f"{server}-{start}"))
    return params


SEEN, FLAGGED, ANSWERED = b"\\Seen", b"\\Flagged", b"\\Answered"


class World:
    """One account under test: the mirror, and what both sides must hold."""

    def __init__(self, m: Mirror, settle_clock: Any) -> None:
        self.m = m
        self.clock = settle_clock
        self.server_id = ""
        self.expected: dict[str, Counter[tuple[str, str]]] = {}

    # -- what the sides must hold

    def expect(self, folder: str, n: int | str, flags: str = "", count: int = 1) -> None:
        key = (content_hash(to_lf(message(n))), flags)
        got = self.expected.setdefault(folder, Counter())
        got[key] += count
        if got[key] == 0:
            del got[key]

    def unexpect(self, folder: str, n: int | str, flags: str = "") -> None:
        self.expect(folder, n, flags, count=-1)

    def check(self, gone: tuple[str, ...] = ()) -> Snapshot:
        """Both sides hold the same folders and, in them, exactly the expected
        messages with their flags; folders in `gone` exist on neither side."""
        server, local = self.m.server(), self.m.local()
        want = {f: c for f, c in self.expected.items() if c}
        assert {f: c for f, c in server.items() if c} == want, ("server", server, want)
        assert {f: c for f, c in local.items() if c} == want, ("local", local, want)
        # An empty parent the server made by itself (Cyrus makes A when A/B is
        # created) may reach the Maildir one sync late: a test of its own covers it.
        late = {
            f
            for f in set(server) - set(local)
            if not server[f] and any(o.startswith(f + "/") for o in server)
        }
        assert set(server) - late == set(local), (server, local)
        assert set(self.expected) <= set(server), (self.expected, server)
        for name in gone:
            assert name not in server and name not in local, (name, server, local)
        return server

    def sync(self) -> str:
        return self.m.sync().out

    def settle(self) -> None:
        """The steady state: once everything counts as settled, a sync changes
        nothing, and both sides still hold what they should."""
        self.clock.advance()
        out = self.sync()
        assert "no changes" in out, out
        self.check()

    # -- acting as the user locally

    def drop(self, folder: str, n: int | str, flags: str = "") -> Path:
        """A new local message, as a mail reader or delivery agent writes it."""
        d = self.m.folder_dir(folder)
        sub, name = (
            ("cur", f"17000000{n}.matrix.host:2,{flags}")
            if flags
            else ("new", f"17000000{n}.matrix.host")
        )
        path = d / sub / name
        path.write_bytes(to_lf(message(n)))
        self.expect(folder, n, flags)
        return path

    def local_file(self, folder: str, n: int | str) -> Path:
        want = content_hash(to_lf(message(n)))
        (path,) = [p for p in self.m.files(folder) if content_hash(p.read_bytes()) == want]
        return path

    def make_local_folder(self, folder: str) -> None:
        d = self.m.root / folder
        for sub in ("cur", "new", "tmp"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        self.expected.setdefault(folder, Counter())

    # -- acting as another client on the server

    def select(self, folder: str) -> Any:
        c = self.m.client
        c.select_folder(self.m.server_name(folder))
        return c

    def uid_of(self, folder: str, n: int | str) -> int:
        c = self.select(folder)
        (uid,) = c.search(["HEADER", "Message-ID", f"<{n}@example.org>"])
        return int(uid)

    def writable(self) -> Any:
        """The client, with INBOX selected read-write: Courier refuses APPEND (and
        CLOSE) while the selected folder is read-only, as snapshots leave it."""
        c = self.m.client
        c.select_folder("INBOX")
        return c

    def append(
        self, folder: str, n: int | str, flags: tuple[bytes, ...] = (), letters: str = ""
    ) -> None:
        self.writable().append(self.m.server_name(folder), message(n), flags=flags)
        self.expect(folder, n, letters)

    def expunge(self, folder: str, n: int | str) -> None:
        uid = self.uid_of(folder, n)
        c = self.m.client
        c.delete_messages([uid])
        if c.has_capability("UIDPLUS"):
            c.uid_expunge([uid])
        else:
            c.expunge()


@pytest.fixture
def world(request: Any, tmp_path: Path, account_on: Any, settle_clock: Any) -> Any:
    """A fresh user on the scenario's server holding INBOX (1: seen and flagged, 2:
    seen, 3: new) and Archive (4: seen), mirrored by a first sync; when the scenario
    starts "settled", also synced once more in the steady state."""
    server_id, start = request.param
    server = request.getfixturevalue(SERVERS[server_id])
    m = Mirror(account_on(server), tmp_path)
    w = World(m, settle_clock)
    w.server_id = server_id
    w.writable().create_folder(m.server_name("Archive"))
    w.append("INBOX", 1, (SEEN, FLAGGED), "FS")
    w.append("INBOX", 2, (SEEN,), "S")
    w.append("INBOX", 3)
    w.append("Archive", 4, (SEEN,), "S")
    w.sync()
    w.check()
    if start == "settled":
        w.settle()
    yield w
    m.close()


def _world(scenario: str, servers: tuple[str, ...] = tuple(SERVERS)) -> Any:
    """Run the decorated test once per (server, start) of the matrix."""
    return pytest.mark.parametrize("world", matrix(scenario, servers), indirect=True)


@_world("new_mail")
def test_new_mail_both_ways(world: World) -> None:
    world.append("INBOX", 5)
    world.append("Archive", 6, (SEEN, ANSWERED), "RS")
    world.drop("INBOX", 7)
    world.drop("Archive", 8, "S")
    world.sync()
    world.check()
    world.settle()


@_world("flags")
def test_flag_changes_both_ways(world: World) -> None:
    c = world.select("INBOX")
    c.add_flags([world.uid_of("INBOX", 2)], [FLAGGED])
    c.remove_flags([world.uid_of("INBOX", 1)], [SEEN])
    world.unexpect("INBOX", 2, "S")
    world.expect("INBOX", 2, "FS")
    world.unexpect("INBOX", 1, "FS")
    world.expect("INBOX", 1, "F")
    f = world.local_file("INBOX", 3)  # new, unseen: read and answered here
    f.rename(f.parent.parent / "cur" / (f.name.split(":2,")[0] + ":2,RS"))
    world.unexpect("INBOX", 3)
    world.expect("INBOX", 3, "RS")
    f = world.local_file("Archive", 4)
    f.rename(f.with_name(f.name.split(":2,")[0] + ":2,FS"))
    world.unexpect("Archive", 4, "S")
    world.expect("Archive", 4, "FS")
    world.sync()
    world.check()
    world.settle()


@_world("deletions")
def test_deletions_both_ways(world: World) -> None:
    world.expunge("INBOX", 1)
    world.unexpect("INBOX", 1, "FS")
    world.local_file("INBOX", 2).unlink()
    world.unexpect("INBOX", 2, "S")
    world.local_file("Archive", 4).unlink()
    world.unexpect("Archive", 4, "S")
    world.sync()
    world.check()
    world.settle()


@_world("local_move")
def test_a_local_move_into_another_folder(world: World) -> None:
    f = world.local_file("INBOX", 1)
    f.rename(world.m.folder_dir("Archive") / "cur" / f.name)
    world.unexpect("INBOX", 1, "FS")
    world.expect("Archive", 1, "FS")
    world.sync()
    world.check()
    world.settle()


@_world("server_move")
def test_a_move_by_another_client_on_the_server(world: World) -> None:
    """UID MOVE where the server offers it, else COPY, STORE \\Deleted and EXPUNGE,
    as a client without MOVE does."""
    uid = world.uid_of("INBOX", 1)
    c = world.select("INBOX")
    if c.has_capability("MOVE"):
        c.move([uid], world.m.server_name("Archive"))
    else:
        c.copy([uid], world.m.server_name("Archive"))
        c.delete_messages([uid])
        c.expunge()
    world.unexpect("INBOX", 1, "FS")
    world.expect("Archive", 1, "FS")
    world.sync()
    world.check()
    world.settle()


def _folders_made_and_removed(world: World, on_server: str, local: str) -> None:
    """Folder `on_server` made by another client, `local` in the Maildir by the user,
    each with a message; then emptied and removed on the side that made them."""
    world.writable().create_folder(world.m.server_name(on_server))
    world.append(on_server, 9, (SEEN,), "S")
    world.make_local_folder(local)
    world.drop(local, 10)
    world.sync()
    world.check()
    world.settle()
    # A folder is removed on one side once it is empty on the other (see
    # docs/sync-algorithm.md): the mail first, then the folder.
    world.expunge(on_server, 9)
    world.unexpect(on_server, 9, "S")
    world.local_file(local, 10).unlink()
    world.unexpect(local, 10)
    world.sync()
    world.check()
    world.writable().delete_folder(world.m.server_name(on_server))
    shutil.rmtree(world.m.folder_dir(local))
    del world.expected[on_server], world.expected[local]
    world.sync()
    world.check(gone=(on_server, local))
    world.settle()


@_world("folders")
def test_folders_made_and_removed_on_each_side(world: World) -> None:
    _folders_made_and_removed(world, "Projects", "Local")


@_world("nested_folders")
def test_nested_folders_made_and_removed_on_each_side(world: World) -> None:
    _folders_made_and_removed(world, "Lists/Rust", "Trips/2026")


# Dovecot's Maildir++ storage refuses '.' in any folder name ([CANNOT]); mirrorsync
# then reports the folder and keeps its mail, which other tests cover.
@_world("dotted_name", tuple(s for s in SERVERS if not s.startswith("dovecot")))
def test_a_local_folder_with_a_dot_in_its_name(world: World) -> None:
    """A dot is an ordinary character in a local folder name. Where the server's
    separator is '/', the folder's mail is on the server once and here once. Where
    it is '.', the server cannot hold that name: the folder stays on disk only, said
    once, and nothing is duplicated or lost (it never settled before)."""
    world.make_local_folder("Release 1.0")
    world.drop("Release 1.0", 13, "S")
    first = world.m.sync()
    world.sync()
    world.clock.advance()
    world.sync()
    out = world.sync()
    assert "no changes" in out, out
    kept_local = world.m.separator == "."
    assert ("stays only on disk" in first.err) == kept_local, first
    everything = sum(world.expected.values(), Counter())
    on_server = everything - world.expected["Release 1.0"] if kept_local else everything
    for side, want in ((world.m.server(), on_server), (world.m.local(), everything)):
        got: Counter[tuple[str, str]] = Counter()
        for folder in side.values():
            got.update(folder)
        assert got == want, side
    local = world.m.local()
    assert local["Release 1.0"] == world.expected["Release 1.0"], local


@_world("eight_bit")
def test_a_local_message_with_raw_8bit_headers_stays_one_message(world: World) -> None:
    """Many messages carry unencoded UTF-8 in their headers. An upload stores those
    bytes, or, where the server rewrites them (Cyrus's default munge8bit makes each
    8-bit header byte an X), the local file takes the server's copy with one warning:
    either way the two sides hold one and the same message."""
    n = "8bit"
    data = to_lf(message(n, subject="Grüße aus Köln"))
    path = world.m.folder_dir("INBOX") / "cur" / "1700000099.matrix.host:2,S"
    path.write_bytes(data)
    munges = world.server_id.startswith("cyrus")
    if munges:
        head, body = data.split(b"\n\n", 1)
        data = bytes(c if c < 0x80 else ord("X") for c in head) + b"\n\n" + body
    world.expected["INBOX"][(content_hash(data), "S")] += 1
    r = world.m.sync()
    assert ("the server changed" in r.err) == munges, r
    world.check()
    assert path.exists()  # the same file (name, flags), holding the server's bytes
    world.settle()


def test_a_folder_the_server_refuses_fails_alone(account: Any, tmp_path: Path) -> None:
    """Dovecot's Maildir++ storage refuses '.' in a name, as Courier refuses a top-level
    folder: that folder is reported, and every other folder still syncs in that run."""
    m = Mirror(account, tmp_path)
    m.client.create_folder("Projects")
    m.client.append("Projects", message(9))
    for sub in ("cur", "new", "tmp"):
        (m.root / "Release 1.0" / sub).mkdir(parents=True)
    r = m.run("sync")
    m.close()
    assert r.status == 1, r
    assert "Release 1.0" in r.err and "Projects" not in r.err, r
    assert sum(m.local()["Projects"].values()) == 1


@pytest.mark.xfail(
    strict=True,
    reason="found by the matrix: creating A/B on Cyrus makes A a real folder too; "
    "mirrorsync creates it locally only at the next sync (nothing lost, but not one sync)",
)
def test_a_parent_the_server_makes_by_itself_arrives_in_the_same_sync(
    cyrus_slash: Any, account_on: Any, tmp_path: Path
) -> None:
    m = Mirror(account_on(cyrus_slash), tmp_path)
    for sub in ("cur", "new", "tmp"):
        (m.root / "Trips" / "2026" / sub).mkdir(parents=True)
    m.sync()
    server, local = m.server(), m.local()
    m.close()
    assert set(server) == {"INBOX", "Trips", "Trips/2026"}, server
    assert set(local) == set(server), (server, local)
