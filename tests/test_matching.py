"""Matching by content against the in-memory fake: exact first, then apart from the
fields tools add to their copy, and never two different messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from mirrorsync.content import content_hash, to_lf
from mirrorsync.layout import NESTED
from mirrorsync.maildir import Maildir, MaildirFolder, new_key
from mirrorsync.matching import match_by_content, take_server_bytes
from mirrorsync.model import LocalMessage
from mirrorsync.sync.plan import Match
from tests.fakeremote import FakeRemoteStore

TUID = b"X-TUID: abcdefghijkl\r\n"


def msg(n: int, body: str = "", msgid: bool = True, fields: bytes = b"") -> bytes:
    mid = f"Message-ID: <{n}@x>\r\n" if msgid else ""
    return (
        f"From: a@x\r\nSubject: {n}\r\n{mid}".encode()
        + fields
        + f"\r\n{body or f'body {n}'}\r\n".encode()
    )


@pytest.fixture
def setup(tmp_path: Path) -> tuple[FakeRemoteStore, MaildirFolder]:
    remote = FakeRemoteStore()
    remote.select("INBOX")
    return remote, Maildir(tmp_path / "Mail", NESTED).create_folder("INBOX")


def put(folder: MaildirFolder, data: bytes) -> LocalMessage:
    return folder.deliver(new_key(), to_lf(data), frozenset())


def test_exact_first_then_apart_from_tracking_fields(
    setup: tuple[FakeRemoteStore, MaildirFolder],
) -> None:
    remote, folder = setup
    u1 = remote.inject("INBOX", msg(1))
    u2 = remote.inject("INBOX", msg(2, msgid=False))  # found by size without the field
    u3 = remote.inject("INBOX", msg(3))
    u3b = remote.inject("INBOX", msg(3))  # the same message twice on the server
    exact = put(folder, msg(3))
    tuid1 = put(folder, msg(1, fields=TUID))
    tuid2 = put(folder, msg(2, msgid=False, fields=b"Status: RO\r\nLines: 1\r\n"))
    tuid3 = put(folder, msg(3, fields=TUID))
    got = match_by_content(remote, folder, [u1, u2, u3, u3b], [tuid3, tuid2, tuid1, exact])
    h = {u: content_hash(to_lf(remote.message("INBOX", u).data)) for u in (u1, u2, u3)}
    assert sorted(got, key=lambda m: m.uid) == [
        Match(u1, tuid1.key, h[u1], replace=True),
        Match(u2, tuid2.key, h[u2], replace=True),
        # the byte-for-byte copy takes the first of the two, the other the second
        Match(u3, exact.key, h[u3], replace=False),
        Match(u3b, tuid3.key, h[u3], replace=True),
    ]


@pytest.mark.parametrize(
    "local",
    [
        msg(1, body="edited", fields=TUID),  # same Message-ID, another body
        msg(1, fields=b"X-Keywords: work\r\n"),  # a field that is the user's data
        msg(1, fields=TUID).replace(b"Subject: 1", b"Subject: one"),  # another header
    ],
)
def test_a_different_message_is_never_linked(
    setup: tuple[FakeRemoteStore, MaildirFolder], local: bytes
) -> None:
    remote, folder = setup
    uid = remote.inject("INBOX", msg(1))
    assert match_by_content(remote, folder, [uid], [put(folder, local)]) == []


def test_the_server_copy_may_carry_the_field_instead(
    setup: tuple[FakeRemoteStore, MaildirFolder],
) -> None:
    """offlineimap's upload marker is on the server copy: the local file takes it."""
    remote, folder = setup
    uid = remote.inject("INBOX", msg(1, fields=b"X-OfflineIMAP: 123-456\r\n"))
    lm = put(folder, msg(1))
    (m,) = match_by_content(remote, folder, [uid], [lm])
    assert m.replace
    assert take_server_bytes(remote, folder, {lm.key: lm}, [(m.uid, m.key, m.hash)]) == {lm.key}
    assert folder.read(lm) == to_lf(msg(1, fields=b"X-OfflineIMAP: 123-456\r\n"))


def test_take_server_bytes_leaves_a_file_that_changed_since_the_match(
    setup: tuple[FakeRemoteStore, MaildirFolder],
) -> None:
    remote, folder = setup
    uid = remote.inject("INBOX", msg(1))
    lm = put(folder, msg(1, fields=TUID))
    (m,) = match_by_content(remote, folder, [uid], [lm])
    path = folder.path_of(lm)
    path.write_bytes(to_lf(msg(1, body="rewritten", fields=TUID)))
    assert take_server_bytes(remote, folder, {lm.key: lm}, [(m.uid, m.key, m.hash)]) == set()
    assert b"rewritten" in path.read_bytes()
