"""Folder names end to end, against real Dovecots shaped like other servers: names a
Maildir must escape (cur/new/tmp, a leading ".", "." in maildir++), a server whose
separator is "." (Cyrus with unixhierarchysep: no), and Courier's personal namespace
"INBOX.". Each syncs down and back up with nothing duplicated and a quiet second run."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mirrorsync import flags as flagmod
from mirrorsync.content import content_hash
from mirrorsync.devserver import Dovecot
from mirrorsync.layout import folder_path, list_folders
from tests.conftest import Account, SettleClock
from tests.harness import Mirror, Snapshot, message


def _server(**options: Any) -> Iterator[Dovecot]:
    server = Dovecot(**options).start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def dovecot_fs() -> Iterator[Dovecot]:
    """Dovecot's LAYOUT=fs: "." and a leading "." are allowed in names (not cur/new/tmp)."""
    yield from _server(layout_fs=True)


@pytest.fixture(scope="module")
def dovecot_dot() -> Iterator[Dovecot]:
    """The "." separator, as Cyrus with unixhierarchysep: no."""
    yield from _server(separator=".")


@pytest.fixture(scope="module")
def dovecot_courier() -> Iterator[Dovecot]:
    """Courier's naming: separator ".", every personal folder under "INBOX."."""
    yield from _server(separator=".", prefix="INBOX.")


_users = iter(range(1, 10**6))


def _account(server: Dovecot) -> Account:
    user = f"n{next(_users)}"
    server.add_user(user, "pw-" + user)
    return Account(server, user, "pw-" + user)


def local_by_name(m: Mirror, layout: str) -> Snapshot:
    """The Maildir by folder name (as mirrorsync reads the directories back)."""
    snap: Snapshot = {}
    for name in list_folders(m.root, layout):
        folder = folder_path(m.root, layout, name)
        got: Counter[tuple[str, str]] = Counter()
        for sub in ("cur", "new"):
            for f in (folder / sub).iterdir():
                letters = f.name.split(":2,", 1)[1] if ":2," in f.name else ""
                flags = flagmod.to_letters(flagmod.from_letters(letters))
                got[(content_hash(f.read_bytes()), flags)] += 1
        snap[name] = got
    return snap


def _fill(m: Mirror, names: list[str]) -> None:
    for i, name in enumerate(names):
        m.client.create_folder(name)
        m.client.append(name, message(f"down-{i}"), flags=[b"\\Seen"])


def _round_trip(m: Mirror, layout: str, server_names: list[str], settle: SettleClock) -> None:
    """Down, a local change in each folder, up, and a second sync that does nothing."""
    first = m.sync()
    assert "FAILED" not in first.out + first.err, first
    local = local_by_name(m, layout)
    for name in server_names:
        assert sum(local[name].values()) == 1, (name, local)
    for i, name in enumerate(server_names):
        folder = folder_path(m.root, layout, name)
        (folder / "cur" / f"up{i}.host:2,S").write_bytes(message(f"up-{i}").replace(b"\r\n", b"\n"))
    m.sync()
    server, local = m.server(), local_by_name(m, layout)
    assert server == local, (server, local)
    for name in server_names:
        assert sum(server[name].values()) == 2 and set(server[name].values()) == {1}
    settle.advance()
    again = m.sync()
    assert "no changes" in again.out, again
    assert not again.err, again
    assert m.server() == local_by_name(m, layout) == server


@pytest.mark.parametrize("layout", ["nested", "maildir++"])
def test_maildir_words_sync_down_and_up(
    account: Account, tmp_path: Path, settle_clock: SettleClock, layout: str
) -> None:
    """`Projects/New` and `cur` were refused in the nested layout (`New` even on a
    case-sensitive file system): now they are stored escaped, and map back."""
    m = Mirror(account, tmp_path, layout=layout)
    names = ["Projects/New", "cur", "Lists/tmp", "100%", "%41"]
    _fill(m, names)
    _round_trip(m, layout, names, settle_clock)
    if layout == "nested":
        assert (m.root / "Projects" / "%4Eew" / "cur").is_dir()
        assert (m.root / "%63ur" / "cur").is_dir()
    m.close()


@pytest.mark.parametrize("layout", ["nested", "maildir++"])
def test_dots_sync_down_and_up(
    dovecot_fs: Dovecot, tmp_path: Path, settle_clock: SettleClock, layout: str
) -> None:
    """A leading "." and (in maildir++) every "." are escaped; "lists.debian.org" was
    refused in maildir++, ".hidden" in the nested layout."""
    m = Mirror(_account(dovecot_fs), tmp_path, layout=layout)
    names = ["lists.debian.org", ".hidden", "Mr. Smith/a.b", "Projects/New"]
    _fill(m, names)
    _round_trip(m, layout, names, settle_clock)
    if layout == "maildir++":
        assert (m.root / ".lists%2Edebian%2Eorg" / "cur").is_dir()
    else:
        assert (m.root / "%2Ehidden" / "cur").is_dir()
    m.close()


def test_a_folder_the_file_system_refuses_fails_alone_once(
    dovecot_fs: Dovecot, tmp_path: Path
) -> None:
    """A name too long for a directory once escaped (".": "%2E") fails with one line,
    and the other folders sync."""
    m = Mirror(_account(dovecot_fs), tmp_path)
    long_name = "." + "L" * 254
    _fill(m, ["Fine", long_name])
    r = m.run("sync")
    assert r.status == 1
    lines = [line for line in (r.out + r.err).splitlines() if long_name[:40] in line]
    assert len(lines) == 1, r
    assert "longer than 255" in lines[0]
    assert sum(local_by_name(m, "nested")["Fine"].values()) == 1
    m.close()
