"""Table tests for ImapStore's raw layer: the lean response parsers, fed literal
server responses exactly as imaplib files them, and the raw commands (LIST-STATUS,
SELECT with QRESYNC, conditional STORE, pipelined SEARCH) against a scripted server
that answers with canned text, for shapes Dovecot never produces (names as literals,
responses before [CLOSED], NO [MODIFIED], a STATUS left out)."""

from __future__ import annotations

import imaplib
import io
import socket
import threading
from collections.abc import Iterator
from datetime import timezone
from typing import Any

import pytest
from imapclient.datetime_util import parse_to_datetime

from mirrorsync.config import RemoteConfig
from mirrorsync.errors import ConnectionFailed, ServerError
from mirrorsync.imap.parse import (
    ListedFolder,
    _fast_fetch_row,
    append_crlf,
    appended_uids,
    aware,
    parse_fetch,
    parse_list_status,
    parse_listing,
    parse_search,
    parse_vanished,
)
from mirrorsync.imap.store import ImapStore
from mirrorsync.imap.wire import split_responses
from mirrorsync.model import FolderStatus, RemoteMessage

# -- the wire as imaplib sees it --------------------------------------------------------


class _Replay(imaplib.IMAP4):
    """imaplib reading canned server text instead of a socket."""

    def open(self, host: str = "", port: int = 143, timeout: float | None = None) -> None:
        self.file: Any = io.BytesIO(b"* OK [CAPABILITY IMAP4rev1] canned\r\n")

    def _get_capabilities(self) -> None:
        self.capabilities = ("IMAP4REV1",)

    def shutdown(self) -> None:
        pass


def untagged(wire: bytes) -> dict[str, list[Any]]:
    """Run server text through imaplib's own response reader: the data shapes the
    parsers get are then exactly imaplib's, literals included."""
    imap = _Replay()
    imap.untagged_responses = {}
    imap.file = io.BytesIO(wire)
    while imap.file.tell() < len(wire):
        imap._get_response()  # type: ignore[attr-defined]
    return dict(imap.untagged_responses)


def fetched(wire: bytes) -> dict[int, dict[bytes, Any]]:
    return parse_fetch(untagged(wire).get("FETCH", []))


# -- FETCH ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (
            b"* 1 FETCH (UID 7 FLAGS (\\Seen $Forwarded) RFC822.SIZE 512)\r\n",
            {7: {b"UID": 7, b"FLAGS": (b"\\Seen", b"$Forwarded"), b"RFC822.SIZE": 512}},
        ),
        (  # item order is the server's; names case-insensitive; empty flags
            b"* 2 FETCH (rfc822.size 9 flags () uid 8)\r\n",
            {8: {b"UID": 8, b"FLAGS": (), b"RFC822.SIZE": 9}},
        ),
        (  # QRESYNC: MODSEQ comes along, also in unsolicited responses
            b"* 3 FETCH (UID 9 FLAGS (\\Flagged \\Recent) MODSEQ (12345678901))\r\n",
            {9: {b"UID": 9, b"FLAGS": (b"\\Flagged", b"\\Recent"), b"MODSEQ": 12345678901}},
        ),
        (  # without a UID (unsolicited, no QRESYNC): dropped, never keyed by seq number
            b"* 4 FETCH (FLAGS (\\Seen))\r\n* 5 FETCH (UID 11 FLAGS ())\r\n",
            {11: {b"UID": 11, b"FLAGS": ()}},
        ),
        (  # two responses for one UID merge, the later winning
            b"* 5 FETCH (UID 11 FLAGS (\\Seen))\r\n* 5 FETCH (UID 11 RFC822.SIZE 3 FLAGS ())\r\n",
            {11: {b"UID": 11, b"FLAGS": (), b"RFC822.SIZE": 3}},
        ),
        (  # a body literal with CRLF, parens and a "{3}" inside; items after it
            b'* 6 FETCH (UID 12 FLAGS (\\Seen) INTERNALDATE "04-Mar-2021 05:06:07 +0200" '
            b"BODY[] {20}\r\nSubject: (x) {3}\r\n\r\n FLAGS (\\Seen \\Answered))\r\n",
            {
                12: {
                    b"UID": 12,
                    b"FLAGS": (b"\\Seen", b"\\Answered"),
                    b"INTERNALDATE": b"04-Mar-2021 05:06:07 +0200",
                    b"BODY[]": b"Subject: (x) {3}\r\n\r\n",
                }
            },
        ),
        (  # a partial body, as fetch_to_file asks for it
            b"* 6 FETCH (UID 12 BODY[]<1048576> {4}\r\nabcd)\r\n",
            {12: {b"UID": 12, b"BODY[]<1048576>": b"abcd"}},
        ),
        (  # the header-field section (spaces and parens inside brackets), and NIL
            b"* 7 FETCH (UID 13 RFC822.SIZE 40 BODY[HEADER.FIELDS (MESSAGE-ID)] "
            b"{21}\r\nMessage-ID: <a@b>\r\n\r\n)\r\n"
            b"* 8 FETCH (UID 14 RFC822.SIZE 2 BODY[HEADER.FIELDS (MESSAGE-ID)] NIL)\r\n",
            {
                13: {
                    b"UID": 13,
                    b"RFC822.SIZE": 40,
                    b"BODY[HEADER.FIELDS (MESSAGE-ID)]": b"Message-ID: <a@b>\r\n\r\n",
                },
                14: {b"UID": 14, b"RFC822.SIZE": 2, b"BODY[HEADER.FIELDS (MESSAGE-ID)]": None},
            },
        ),
        (  # an empty literal (a partial beyond the end)
            b"* 2 FETCH (UID 3 BODY[]<200> {0}\r\n)\r\n",
            {3: {b"UID": 3, b"BODY[]<200>": b""}},
        ),
        (  # a quoted string with escapes, outside the fast path
            b'* 9 FETCH (UID 15 X-NOTE "say \\"hi\\" \\\\o/" FLAGS (\\Draft))\r\n',
            {15: {b"UID": 15, b"X-NOTE": b'say "hi" \\o/', b"FLAGS": (b"\\Draft",)}},
        ),
    ],
)
def test_parse_fetch(wire: bytes, expected: dict[int, dict[bytes, Any]]) -> None:
    assert fetched(wire) == expected


def test_parse_fetch_falls_back_to_imapclient_for_odd_atoms() -> None:
    # "[" in a flag is legal (atom) but outside what the lean lexer handles
    got = fetched(b"* 1 FETCH (UID 4 FLAGS (a[b \\Seen))\r\n")
    assert got[4][b"UID"] == 4
    assert set(got[4][b"FLAGS"]) == {b"a[b", b"\\Seen"}


@pytest.mark.parametrize(
    "wire",
    [
        b"* 1 FETCH (UID 4 FLAGS (\\Seen)\r\n",  # unbalanced
        b"* 1 FETCH (UID)\r\n",  # odd item list
        b"* 1 FETCH UID 4\r\n",
    ],
)
def test_parse_fetch_rejects_garbage(wire: bytes) -> None:
    with pytest.raises(ValueError):
        fetched(wire)


# -- UID sets, VANISHED, SEARCH ---------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "earlier", "now"),
    [
        (b"* VANISHED (EARLIER) 2,5:6\r\n", {2, 5, 6}, set()),
        (b"* VANISHED 3\r\n* VANISHED (EARLIER) 1\r\n", {1}, {3}),
        (b"* VANISHED (earlier) 4:3\r\n", {3, 4}, set()),
    ],
)
def test_parse_vanished(wire: bytes, earlier: set[int], now: set[int]) -> None:
    assert parse_vanished(untagged(wire)["VANISHED"]) == (earlier, now)


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (b"* SEARCH 1 2 3 10\r\n", {1, 2, 3, 10}),
        (b"* SEARCH\r\n", set()),
        (b'* ESEARCH (TAG "T3") UID ALL 1,3:4\r\n', {1, 3, 4}),
        (b'* ESEARCH (TAG "T3") UID ALL 9\r\n', {9}),
        (b'* ESEARCH (TAG "T3") UID\r\n', set()),  # nothing found: no ALL at all
        (b'* ESEARCH (TAG "T3") UID ALL 1:2\r\n* ESEARCH (TAG "T4") UID ALL 7\r\n', {1, 2, 7}),
    ],
)
def test_parse_search(wire: bytes, expected: set[int]) -> None:
    got = untagged(wire)
    assert parse_search(got.get("SEARCH", []), got.get("ESEARCH", [])) == expected


# -- LIST-STATUS ---------------------------------------------------------------------------

_LIST_STATUS = (
    b'* LIST (\\HasNoChildren) "/" INBOX\r\n'
    b"* STATUS INBOX (MESSAGES 3 UIDNEXT 4 UIDVALIDITY 17 HIGHESTMODSEQ 9)\r\n"
    b'* LIST (\\HasNoChildren) "/" "Sent &- Drafts"\r\n'
    b'* STATUS "Sent &- Drafts" (MESSAGES 0 UIDNEXT 1 UIDVALIDITY 18 HIGHESTMODSEQ 1)\r\n'
    b'* LIST (\\HasNoChildren) "/" &ZeVnLIqe-\r\n'
    b"* STATUS &ZeVnLIqe- (MESSAGES 1 UIDNEXT 2 UIDVALIDITY 19 HIGHESTMODSEQ 2)\r\n"
    b'* LIST (\\NonExistent \\HasChildren) "/" Work\r\n'
    b'* LIST (\\Noselect \\HasChildren) "/" Lists\r\n'
    b'* LIST (\\HasNoChildren) "/" {9}\r\nWe"ird\\na\r\n'
    b'* STATUS {9}\r\nWe"ird\\na (MESSAGES 2 UIDNEXT 5 UIDVALIDITY 20 HIGHESTMODSEQ 3)\r\n'
    b'* LIST (\\HasNoChildren) "/" "Work/Q\\"uote\\\\d"\r\n'
    b'* STATUS "Work/Q\\"uote\\\\d" (MESSAGES 0 UIDNEXT 1 UIDVALIDITY 21 HIGHESTMODSEQ 1)\r\n'
    b"* LIST (\\HasNoChildren) NIL Flat\r\n"
    b'* LIST (\\HasNoChildren) "/" 2024\r\n'
    b"* STATUS 2024 (messages 5 uidnext 6 uidvalidity 22)\r\n"
    b'* LIST (\\HasNoChildren) "/" Hidden ("CHILDINFO" ("SUBSCRIBED"))\r\n'
)


def test_parse_list_status() -> None:
    got = untagged(_LIST_STATUS)
    listed = parse_list_status(got["LIST"], got["STATUS"])
    status = {f.name: f.status for f in listed}
    attrs = {f.name: f.attributes for f in listed}
    assert [f.name for f in listed] == [
        b"INBOX",
        b"Sent &- Drafts",
        b"&ZeVnLIqe-",
        b"Work",
        b"Lists",
        b'We"ird\\na',
        b'Work/Q"uote\\d',
        b"Flat",
        b"2024",
        b"Hidden",
    ]
    assert status[b"INBOX"] == {
        b"MESSAGES": 3,
        b"UIDNEXT": 4,
        b"UIDVALIDITY": 17,
        b"HIGHESTMODSEQ": 9,
    }
    assert status[b'We"ird\\na'] == {
        b"MESSAGES": 2,
        b"UIDNEXT": 5,
        b"UIDVALIDITY": 20,
        b"HIGHESTMODSEQ": 3,
    }
    assert status[b"2024"] == {b"MESSAGES": 5, b"UIDNEXT": 6, b"UIDVALIDITY": 22}
    assert status[b"Work"] is None and status[b"Lists"] is None and status[b"Hidden"] is None
    # \NonExistent implies \Noselect (RFC 5258)
    assert attrs[b"Work"] == {"\\NonExistent", "\\HasChildren", "\\Noselect"}
    assert attrs[b"Lists"] == {"\\Noselect", "\\HasChildren"}
    assert next(f for f in listed if f.name == b"Flat").delimiter is None
    assert listed[0] == ListedFolder(
        frozenset({"\\HasNoChildren"}), "/", b"INBOX", status[b"INBOX"]
    )


# -- the raw commands, against a scripted server -------------------------------------------

_CAPS = b"IMAP4rev1 LITERAL+ ENABLE UIDPLUS CONDSTORE QRESYNC ESEARCH LIST-EXTENDED LIST-STATUS"


class ScriptedServer:
    """One connection; LOGIN, CAPABILITY, ENABLE and LOGOUT are answered as a server
    would, every other command with the canned answer of the first script entry
    whose key starts the command (after the tag); "{tag}" stands for the tag."""

    def __init__(self, script: list[tuple[bytes, bytes]], caps: bytes = _CAPS) -> None:
        self.script = list(script)
        self.caps = caps
        self.commands: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn, conn.makefile("rb") as reader:
            conn.sendall(b"* OK [CAPABILITY " + self.caps + b"] scripted\r\n")
            for line in reader:
                tag, _, command = line.rstrip(b"\r\n").partition(b" ")
                verb = command.split(b" ", 1)[0].upper()
                if verb == b"LOGIN":
                    answer = b"{tag} OK [CAPABILITY " + self.caps + b"] in\r\n"
                elif verb == b"CAPABILITY":
                    answer = b"* CAPABILITY " + self.caps + b"\r\n{tag} OK done\r\n"
                elif verb == b"ENABLE":
                    answer = b"* ENABLED QRESYNC\r\n{tag} OK enabled\r\n"
                elif verb == b"LOGOUT":
                    conn.sendall(b"* BYE bye\r\n" + tag + b" OK out\r\n")
                    return
                else:
                    self.commands.append(command)
                    index = next(
                        (i for i, (key, _) in enumerate(self.script) if command.startswith(key)),
                        None,
                    )
                    if index is None:
                        answer = b"{tag} BAD unexpected command\r\n"
                    else:
                        answer = self.script.pop(index)[1]
                conn.sendall(answer.replace(b"{tag}", tag))


@pytest.fixture
def scripted() -> Iterator[Any]:
    stores: list[ImapStore] = []

    def connect(script: list[tuple[bytes, bytes]], caps: bytes = _CAPS) -> Any:
        server = ScriptedServer(script, caps)
        remote = RemoteConfig(
            host="127.0.0.1", username="u", port=server.port, tls="none", timeout=5
        )
        store = ImapStore.connect(remote, "pw")
        stores.append(store)
        return store, server

    yield connect
    for store in stores:
        store.close()


_SELECT_INBOX = (
    b"* FLAGS (\\Seen)\r\n* 3 EXISTS\r\n* OK [UIDVALIDITY 17] v\r\n* OK [UIDNEXT 9] n\r\n"
    b"* OK [HIGHESTMODSEQ 40] h\r\n{tag} OK [READ-WRITE] selected\r\n"
)


def test_statuses_in_one_command_with_literal_names(scripted: Any) -> None:
    def status(name: bytes, numbers: bytes) -> tuple[bytes, bytes]:
        answer = b"* STATUS " + name + b" (" + numbers + b")\r\n{tag} OK done\r\n"
        return b'STATUS "' + name + b'"', answer

    store, server = scripted(
        [
            (b"LIST ", _LIST_STATUS + b"{tag} OK listed\r\n"),
            status(b"Flat", b"MESSAGES 1 UIDNEXT 2 UIDVALIDITY 30 HIGHESTMODSEQ 7"),
            status(b"2024", b"MESSAGES 5 UIDNEXT 6 UIDVALIDITY 22 HIGHESTMODSEQ 8"),
            status(b"Hidden", b"MESSAGES 0 UIDNEXT 1 UIDVALIDITY 31 HIGHESTMODSEQ 1"),
        ]
    )
    got = store.statuses()
    assert server.commands[0] == (
        b'LIST "" "*" RETURN (CHILDREN STATUS (MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ))'
    )
    # one STATUS each for the folders the LIST-STATUS answer left without (all of it)
    assert sorted(server.commands[1:]) == [
        b'STATUS "2024" (MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ)',
        b'STATUS "Flat" (MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ)',
        b'STATUS "Hidden" (MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ)',
    ]
    assert got == {
        "INBOX": FolderStatus(17, 4, 3, 9),
        "Sent & Drafts": FolderStatus(18, 1, 0, 1),
        "日本語": FolderStatus(19, 2, 1, 2),
        'We"ird\\na': FolderStatus(20, 5, 2, 3),
        'Work/Q"uote\\d': FolderStatus(21, 1, 0, 1),
        "2024": FolderStatus(22, 6, 5, 8),
        "Flat": FolderStatus(30, 2, 1, 7),
        "Hidden": FolderStatus(31, 1, 0, 1),
    }
    assert not {"Work", "Lists"} & set(got)


def test_statuses_asks_for_a_missing_status(scripted: Any) -> None:
    wire = (
        b'* LIST (\\HasNoChildren) "/" INBOX\r\n'
        b"* STATUS INBOX (MESSAGES 3 UIDNEXT 4 UIDVALIDITY 17 HIGHESTMODSEQ 9)\r\n"
        b'* LIST (\\HasNoChildren) "/" Locked\r\n'
        b'* LIST (\\NonExistent \\HasChildren) "/" Work\r\n'
        b'* LIST (\\HasNoChildren) "/" Work/Sub\r\n'
        b"* STATUS Work/Sub (MESSAGES 0 UIDNEXT 1 UIDVALIDITY 18 HIGHESTMODSEQ 1)\r\n"
        b"{tag} OK listed\r\n"
    )
    store, server = scripted(
        [
            (b"LIST ", wire),
            (
                b'STATUS "Locked"',
                b"* STATUS Locked (MESSAGES 1 UIDNEXT 2 UIDVALIDITY 19 HIGHESTMODSEQ 5)\r\n"
                b"{tag} OK done\r\n",
            ),
        ]
    )
    assert store.statuses() == {
        "INBOX": FolderStatus(17, 4, 3, 9),
        "Locked": FolderStatus(19, 2, 1, 5),
        "Work/Sub": FolderStatus(18, 1, 0, 1),
    }
    folders = store.list_folders()  # from the kept listing: no LIST sent
    assert [c.split(b" ")[0] for c in server.commands] == [b"LIST", b"STATUS"]
    assert [(f.name, f.selectable) for f in folders] == [
        ("INBOX", True),
        ("Locked", True),
        ("Work", False),
        ("Work/Sub", True),
    ]


def test_a_refused_status_is_that_folders_failure_alone(scripted: Any) -> None:
    """LIST-STATUS leaves out Locked (RFC 5819 allows it) and its own STATUS is
    refused: the other folders' numbers come back, Locked is named with the
    server's words, never taken for a folder that is not there."""
    wire = (
        b'* LIST (\\HasNoChildren) "/" INBOX\r\n'
        b"* STATUS INBOX (MESSAGES 3 UIDNEXT 4 UIDVALIDITY 17 HIGHESTMODSEQ 9)\r\n"
        b'* LIST (\\HasNoChildren) "/" Locked\r\n'
        b"{tag} OK listed\r\n"
    )
    store, _server = scripted(
        [
            (b"LIST ", wire),
            (b'STATUS "Locked"', b"{tag} NO [SERVERBUG] Internal error occurred\r\n"),
        ]
    )
    assert store.statuses() == {"INBOX": FolderStatus(17, 4, 3, 9)}
    (why,) = store.status_failures().values()
    assert "Locked" in store.status_failures() and "SERVERBUG" in why
    assert [f.name for f in store.list_folders()] == ["INBOX", "Locked"]


def test_statuses_failure_is_a_server_error(scripted: Any) -> None:
    store, _server = scripted([(b"LIST ", b"{tag} NO [UNAVAILABLE] try later\r\n")])
    with pytest.raises(ServerError, match="list folders with status"):
        store.statuses()


def test_select_changes_qresync_drops_what_came_before_closed(scripted: Any) -> None:
    select_qresync = (
        # about the previously selected folder: not ours
        b"* VANISHED 2\r\n* 1 FETCH (UID 1 FLAGS (\\Deleted) MODSEQ (39))\r\n"
        b"* OK [CLOSED] previous closed\r\n"
        b"* FLAGS (\\Seen \\Flagged)\r\n* 4 EXISTS\r\n"
        b"* OK [UIDVALIDITY 17] v\r\n* OK [UIDNEXT 12] n\r\n* OK [HIGHESTMODSEQ 50] h\r\n"
        b"* VANISHED (EARLIER) 3,5:6\r\n"
        b"* 1 FETCH (UID 4 FLAGS (\\Seen \\Flagged) MODSEQ (45))\r\n"
        b"* 4 FETCH (UID 11 FLAGS () MODSEQ (50))\r\n"
        b"{tag} OK [READ-WRITE] selected\r\n"
    )
    store, server = scripted(
        [
            (b'SELECT "INBOX"', _SELECT_INBOX),
            (b'SELECT "Box" (QRESYNC (17 30))', select_qresync),
        ]
    )
    store.select("INBOX")
    ch = store.select_changes("Box", 17, 30, [1, 2, 3, 4, 5])
    assert server.commands[-1] == b'SELECT "Box" (QRESYNC (17 30))'
    assert ch.status == FolderStatus(17, 12, 4, 50)
    assert not ch.full
    assert ch.vanished == {3, 5}  # what the caller knew of 3,5:6
    assert ch.changed == {
        4: RemoteMessage(4, frozenset({"\\Seen", "\\Flagged"})),
        11: RemoteMessage(11, frozenset()),
    }


def test_select_changes_nomodseq_folder_is_full(scripted: Any) -> None:
    select_nomodseq = (
        b"* 1 EXISTS\r\n* OK [UIDVALIDITY 17] v\r\n* OK [UIDNEXT 3] n\r\n"
        b"* OK [NOMODSEQ] no modseqs here\r\n{tag} OK [READ-WRITE] selected\r\n"
    )
    store, _server = scripted(
        [
            (b'SELECT "Box" (QRESYNC (17 30))', select_nomodseq),
            (
                b"UID FETCH 1:* (UID FLAGS RFC822.SIZE)",
                b"* 1 FETCH (UID 2 FLAGS () RFC822.SIZE 5)\r\n{tag} OK done\r\n",
            ),
        ]
    )
    ch = store.select_changes("Box", 17, 30, [1, 2])
    assert ch.full and ch.status == FolderStatus(17, 3, 1, 0)
    assert ch.changed == {2: RemoteMessage(2, frozenset(), 5)} and ch.vanished == {1}


def test_select_changes_condstore_searches_known_range_in_windows(scripted: Any) -> None:
    caps = _CAPS.replace(b" QRESYNC", b"")
    select_condstore = _SELECT_INBOX.replace(b"[HIGHESTMODSEQ 40]", b"[HIGHESTMODSEQ 50]")
    store, _server = scripted(
        [
            (b'SELECT "INBOX" (CONDSTORE)', select_condstore),
            (
                b"UID FETCH 1:* (UID FLAGS) (CHANGEDSINCE 30)",
                b"* 2 FETCH (UID 8 FLAGS (\\Seen) MODSEQ (44))\r\n{tag} OK done\r\n",
            ),
            (
                b"UID SEARCH RETURN (ALL) UID 1:90000",
                b'* ESEARCH (TAG "x") UID ALL 1,8\r\n{tag} OK done\r\n',
            ),
            (
                b"UID SEARCH RETURN (ALL) UID 90001:150000",
                b'* ESEARCH (TAG "y") UID ALL 150000\r\n{tag} OK done\r\n',
            ),
        ],
        caps,
    )
    assert "QRESYNC" not in store.capabilities
    ch = store.select_changes("INBOX", 17, 30, [1, 5, 150000])
    assert not ch.full and ch.vanished == {5}
    assert ch.changed == {8: RemoteMessage(8, frozenset({"\\Seen"}))}
    assert ch.status.highestmodseq == 50


def test_conditional_store_refusals(scripted: Any) -> None:
    store, server = scripted(
        [
            (b'SELECT "INBOX"', _SELECT_INBOX),
            (
                b"UID STORE 1:3 (UNCHANGEDSINCE 40) +FLAGS.SILENT (\\Flagged)",
                # UID 1 refused; 2 and 3 changed; an unsolicited change by another
                # client comes along and changes nothing here
                b"* 2 FETCH (UID 2 MODSEQ (41))\r\n* 3 FETCH (UID 3 MODSEQ (42))\r\n"
                b"* 3 FETCH (UID 3 FLAGS (\\Flagged $X) MODSEQ (60))\r\n"
                b"{tag} OK [MODIFIED 1] conditional store failed\r\n",
            ),
            (
                b"UID STORE 2:3 (UNCHANGEDSINCE 40) -FLAGS.SILENT (\\Seen)",
                b"{tag} NO [MODIFIED 3] all failed\r\n",
            ),
        ]
    )
    store.select("INBOX")
    assert store.store_flags([1, 2, 3], frozenset({"\\Flagged"}), frozenset(), 40) == {1}
    assert store.store_flags([2, 3], frozenset(), frozenset({"\\Seen"}), 40) == {3}
    assert server.commands[-1].startswith(b"UID STORE 2:3 (UNCHANGEDSINCE 40)")


def test_adding_and_removing_is_one_store_of_the_whole_list(scripted: Any) -> None:
    """Each message is stored once, with the list it had (read first) changed: its
    keywords kept, \\Recent left to the server. One that vanished needs nothing;
    one with a flag that cannot be written back is refused for the caller to
    re-read; so is one the server refuses as modified."""
    store, server = scripted(
        [
            (b'SELECT "INBOX"', _SELECT_INBOX),
            (
                b"UID FETCH 1:5 (FLAGS)",
                b"* 1 FETCH (UID 1 FLAGS (\\Seen $Label1 \\Recent))\r\n"
                b"* 2 FETCH (UID 2 FLAGS (\\Seen))\r\n"
                b"* 3 FETCH (UID 3 FLAGS (\\Answered \\Seen))\r\n"
                b"* 5 FETCH (UID 5 FLAGS (\\Seen \\Odd\\))\r\n"
                b"{tag} OK done\r\n",
            ),
            (
                b"UID STORE 1 (UNCHANGEDSINCE 40) FLAGS.SILENT ($Label1 \\Flagged)",
                b"* 1 FETCH (UID 1 MODSEQ (41))\r\n{tag} OK stored\r\n",
            ),
            (
                b"UID STORE 2 (UNCHANGEDSINCE 40) FLAGS.SILENT (\\Flagged)",
                b"{tag} OK [MODIFIED 2] conditional store failed\r\n",
            ),
            (
                b"UID STORE 3 (UNCHANGEDSINCE 40) FLAGS.SILENT (\\Answered \\Flagged)",
                b"* 3 FETCH (UID 3 MODSEQ (42))\r\n{tag} OK stored\r\n",
            ),
        ]
    )
    store.select("INBOX")
    got = store.store_flags([1, 2, 3, 4, 5], frozenset({"\\Flagged"}), frozenset({"\\Seen"}), 40)
    assert got == {2, 5}
    assert len(server.commands) == 5  # SELECT, FETCH and three STOREs: nothing for 4 or 5


def test_conditional_store_error_is_a_server_error(scripted: Any) -> None:
    store, _server = scripted(
        [
            (b'SELECT "INBOX"', _SELECT_INBOX),
            (b"UID STORE", b"{tag} NO [CANNOT] read-only flags\r\n"),
        ]
    )
    store.select("INBOX")
    with pytest.raises(ServerError, match="CANNOT"):
        store.store_flags([1], frozenset({"\\Seen"}), frozenset(), 40)


# -- the hot paths stay hot, and agree with the general parser -------------------------------


@pytest.mark.parametrize(
    "wire",
    [
        b"* 1 FETCH (UID 7 FLAGS (\\Seen $Forwarded) RFC822.SIZE 512)\r\n",
        b"* 1 FETCH (UID 7 RFC822.SIZE 512)\r\n",
        b"* 1 FETCH (UID 7 FLAGS () MODSEQ (99))\r\n",
        b'* 1 FETCH (UID 7 FLAGS (\\Seen) INTERNALDATE " 4-Mar-2021 05:06:07 +0200" '
        b"BODY[] {3}\r\nabc)\r\n",
        b"* 1 FETCH (UID 7 BODY[]<4194304> {3}\r\nabc)\r\n",
    ],
)
def test_hot_shapes_take_the_fast_path(wire: bytes) -> None:
    (parts,) = split_responses(untagged(wire)["FETCH"])
    assert _fast_fetch_row(parts) is not None


@pytest.mark.parametrize(
    "wire",
    [
        b"* 1 FETCH (UID 7 FLAGS (\\Seen $Forwarded) RFC822.SIZE 512)\r\n"
        b"* 2 FETCH (UID 9 FLAGS () RFC822.SIZE 3)\r\n",
        # other orders, a MODSEQ, an unsolicited flag change that must win, a row
        # without size (left out) and one without flags (none)
        b"* 1 FETCH (RFC822.SIZE 5 UID 7 FLAGS (\\Seen))\r\n"
        b"* 2 FETCH (UID 9 FLAGS (\\Seen) RFC822.SIZE 3 MODSEQ (4))\r\n"
        b"* 2 FETCH (UID 9 FLAGS (\\Flagged) MODSEQ (5))\r\n"
        b"* 3 FETCH (UID 10 FLAGS (\\Seen))\r\n"
        b"* 4 FETCH (UID 11 RFC822.SIZE 8)\r\n"
        b"* 5 FETCH (FLAGS (\\Deleted))\r\n",
        # a literal where an atom would do: legal, and slow, but the same
        b"* 1 FETCH (UID 7 FLAGS (\\Seen) RFC822.SIZE 512 X-ODD {2}\r\nhi)\r\n",
    ],
)
def test_parse_listing_agrees_with_parse_fetch(wire: bytes) -> None:
    data = untagged(wire)["FETCH"]
    rows = parse_fetch(data)
    expected = {
        uid: RemoteMessage(
            uid, frozenset(f.decode() for f in row.get(b"FLAGS", ())), row[b"RFC822.SIZE"]
        )
        for uid, row in sorted(rows.items())
        if b"RFC822.SIZE" in row
    }
    assert parse_listing(data) == expected


@pytest.mark.parametrize(
    "text",
    [
        b"04-Mar-2021 05:06:07 +0200",
        b" 4-Mar-2021 05:06:07 +0200",
        b"31-dec-1999 23:59:59 -0930",
        b"01-Jan-2024 00:00:00 +0000",
        b"29-Feb-2023 10:00:00 +0100",  # no such day: imapclient's parser decides
        b"Mon, 04 Mar 2021 05:06:07 +0200",  # not RFC 3501's form at all
    ],
)
def test_internaldate_fast_parser_agrees_with_imapclient(text: bytes) -> None:
    try:
        reference = parse_to_datetime(text, normalise=False)
    except ValueError:
        with pytest.raises(ValueError):
            aware(text)
        return
    got = aware(text)
    assert got == reference and got is not None
    assert got.utcoffset() == reference.utcoffset()
    assert type(got.tzinfo) is timezone  # a plain timezone, not imapclient's FixedOffset


def test_fetch_reader_with_other_responses_and_tricky_literals(scripted: Any) -> None:
    """The FETCH reader hands every non-FETCH line to imaplib; a literal's bytes
    are never taken for responses, even when they look like one."""
    body = b"Subject: x\r\n\r\n* 9 FETCH (UID 99 FLAGS ())\r\n{tag} OK fake\r\n) {5}\r\n"
    store, _server = scripted(
        [
            (b'SELECT "INBOX"', _SELECT_INBOX),
            (
                b"UID FETCH 1:* (UID FLAGS INTERNALDATE BODY.PEEK[])",
                b"* 4 EXISTS\r\n"
                b'* 1 FETCH (UID 5 FLAGS (\\Seen) INTERNALDATE "04-Mar-2021 05:06:07 +0200" '
                b"BODY[] {" + str(len(body)).encode() + b"}\r\n" + body + b")\r\n"
                b"* VANISHED 6\r\n"
                b"* 2 FETCH (UID 7 BODY[] {0}\r\n FLAGS (\\Answered))\r\n"
                b"* 3 FETCH (FLAGS (\\Seen))\r\n"
                b"{tag} OK fetched\r\n",
            ),
            (b"UID FETCH 1:* (UID FLAGS RFC822.SIZE)", b"* BYE shutting down\r\n"),
        ]
    )
    store.select("INBOX")
    rows = store._uid_fetch("1:*", "(UID FLAGS INTERNALDATE BODY.PEEK[])")
    got = rows[5][b"BODY[]"]
    # the scripted server put the command's real tag into the literal
    tagged_lookalike = got.split(b"\r\n")[3]
    assert tagged_lookalike.endswith(b" OK fake") and tagged_lookalike[:1].isalpha()
    assert len(got) == len(body) and got.replace(tagged_lookalike[:-8], b"{tag}") == body
    assert set(rows) == {5, 7}
    assert rows[7] == {b"UID": 7, b"BODY[]": b"", b"FLAGS": (b"\\Answered",)}
    imap = store._client._imap
    assert imap.untagged_responses["EXISTS"][-1] == b"4"
    assert imap.untagged_responses["VANISHED"] == [b"6"]
    with pytest.raises(ConnectionFailed, match="shutting down"):
        store.list_messages()


# -- APPEND ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "count", "expected"),
    [
        (b"[APPENDUID 38505 3955] APPEND completed", 1, [3955]),
        (b"[APPENDUID 1795838092 1:3] Append completed (0.002 + 0.000 secs).", 3, [1, 2, 3]),
        (b"[appenduid 7 9:7] done", 3, [7, 8, 9]),  # a range either way round
        (b"[APPENDUID 7 4,9,12:13] done", 4, [4, 9, 12, 13]),  # a list keeps its order
        (b"[APPENDUID 7 12,4] done", 2, [12, 4]),
        (b"[APPENDUID 7 1:3] done", 2, [None, None]),  # one UID per message, or none
        (b"[APPENDUID 7 5] done", 2, [None, None]),
        (b"[APPENDUID 7 1:4294967295] done", 2, [None, None]),  # never expanded
        (b"[UIDNOTSTICKY] Append completed", 2, [None, None]),
        (b"Append completed", 1, [None]),
    ],
)
def testappended_uids(text: bytes, count: int, expected: list[int | None]) -> None:
    assert appended_uids(text, count) == expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"a\r\nb\r\n", b"a\r\nb\r\n"),
        (b"a\nb\n", b"a\r\nb\r\n"),
        (b"a\rb\r\n", b"a\r\nb\r\n"),
        (b"a\r\r\nb\n\r", b"a\r\n\r\nb\r\n\r\n"),
        (b"\n\r", b"\r\n\r\n"),
        (b"", b""),
    ],
)
def test_append_crlf_is_what_imaplib_sends(data: bytes, expected: bytes) -> None:
    assert append_crlf(data) == expected == imaplib.MapCRLF.sub(b"\r\n", data)
