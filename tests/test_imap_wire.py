"""Table tests for the IMAP wire (`mirrorsync.imap.wire`): modified UTF-7, quoting,
capabilities, UID sets, the tokenizer and the response reader, fed literal server
text. No server."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from imapclient import imap_utf7

from mirrorsync.imap.wire import (
    LineTooLong,
    LiteralRefused,
    capability_set,
    decode_mutf7,
    decode_mutf7_strict,
    encode_mutf7,
    is_atom,
    literal_size,
    parse_line,
    parse_parts,
    parse_uid_set,
    quoted,
    response_code_capabilities,
    split_response,
    uid_list,
    uid_set,
    uid_set_chunks,
)

# -- modified UTF-7 -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"INBOX", "INBOX"),
        (b"Entw&APw-rfe", "Entwürfe"),
        (b"&ZeVnLIqe-/&W1A-", "日本語/子"),
        (b"Sent &- Drafts", "Sent & Drafts"),
        (b"&-", "&"),
        (b"~peter/mail/&U,BTFw-/&ZeVnLIqe-", "~peter/mail/台北/日本語"),
        (b"&2D3eAQ-", "\U0001f601"),  # a surrogate pair
        # not canonical, or not modified UTF-7 at all: no reading is vouched for
        (b"&AGE-", None),  # base64 for a printable "a"
        (b"&APw", None),  # no end of shift
        (b"&APx-", None),  # stray bits after the last character
        (b"&APw-&APw-", None),  # two shifts where one would do
        (b"Entw\xc3\xbcrfe", None),  # raw UTF-8
        (b"tab\there", None),
        (b"&2D0-", None),  # a lone surrogate
    ],
)
def test_modified_utf7_table(raw: bytes, text: str | None) -> None:
    assert decode_mutf7_strict(raw) == text
    if text is not None:
        assert imap_utf7.decode(raw) == text  # imapclient, as the full path decodes
        assert encode_mutf7(text) == imap_utf7.encode(text) == raw


@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=30))
def test_modified_utf7_agrees_with_imapclient(text: str) -> None:
    raw = imap_utf7.encode(text)
    assert encode_mutf7(text) == raw
    assert decode_mutf7_strict(raw) == decode_mutf7(raw) == imap_utf7.decode(raw) == text


@pytest.mark.parametrize(
    "raw",
    [b"Entw\xc3\xbcrfe", b"&APw", b"&AGE-", b"tab\there", b"a&-b&ZeVnLIqe-"],
)
def test_lenient_decoding_is_imapclients(raw: bytes) -> None:
    """What the store and push make of a name that is not canonical: imapclient's
    reading, as the store's own LIST (through imapclient) makes of it."""
    assert decode_mutf7(raw) == imap_utf7.decode(raw)


# -- the tokenizer ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        (
            [b"a NIL 007 (b (c)) \"q\\\\\" ''"],
            [b"a", None, b"007", (b"b", (b"c",)), b"q\\", b"''"],
        ),
        ([(b"x {3}", b"a b"), b" y"], [b"x", b"a b", b"y"]),
        ([b'"NIL" ""'], [b"NIL", b""]),  # a quoted NIL is a string
        ([b"[Gmail]/All  Mail"], [b"[Gmail]/All", b"Mail"]),
        ([b'"a\\"b"'], [b'a"b']),  # the two quoted pairs there are
        ([b"BODY[HEADER.FIELDS (MESSAGE-ID)] {2}"], None),  # literal announced, missing
        ([b'"odd\\escape"'], None),  # not a quoted pair (RFC 3501)
        ([b"(a"], None),
        ([b"a)"], None),
        ([b'"unterminated'], None),
    ],
)
def test_parse_parts(parts: list[Any], expected: list[Any] | None) -> None:
    if expected is None:
        with pytest.raises(ValueError):
            parse_parts(parts)
    else:
        assert parse_parts(parts) == expected


# -- reading a socket's buffer ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "parts", "used"),
    [
        (b"* 3 EXISTS\r\nrest", (b"* 3 EXISTS",), 12),
        (b"* 3 EXI", None, 0),
        (b"* STATUS {5}\r\nW\xc3\xb6rk (MESSAGES 1)\r\n", (
            (b"* STATUS {5}", b"W\xc3\xb6rk"), b" (MESSAGES 1)"), 34),
        (b"* STATUS {5}\r\nW\xc3", None, 0),  # the literal is not complete yet
        (b"* STATUS {5}\r\nW\xc3\xb6rk (MESS", None, 0),
        (b"* LIST () \"/\" {2+}\r\nab\r\n", ((b'* LIST () "/" {2+}', b"ab"), b""), 24),
    ],
)  # fmt: skip
def test_split_response(data: bytes, parts: Any, used: int) -> None:
    found = split_response(data)
    if parts is None:
        assert found is None
    else:
        assert found == (parts, used)


def test_split_response_refuses_unbounded_lines_and_literals() -> None:
    with pytest.raises(LineTooLong):
        split_response(b"* " + b"x" * 70_000, max_line=64 * 1024)
    with pytest.raises(LineTooLong):
        split_response(b"* " + b"x" * 70_000 + b"\r\n", max_line=64 * 1024)
    with pytest.raises(LiteralRefused):
        split_response(b"* STATUS {99999999}\r\n")
    with pytest.raises(LiteralRefused):  # the quick check reads no literal at all
        split_response(b"* STATUS {0}\r\n\r\n", max_literal=-1)


def test_parse_line() -> None:
    r = parse_line((b"* 12 EXPUNGE",))
    assert (r.tag, r.kind, r.number) == ("*", "EXPUNGE", 12)
    r = parse_line((b"M3 NO [NONEXISTENT] Mailbox doesn't exist: Foo",))
    assert (r.tag, r.kind, r.code) == ("M3", "NO", "NONEXISTENT")
    r = parse_line((b"* OK [NOTIFICATIONOVERFLOW] too much",))
    assert r.code == "NOTIFICATIONOVERFLOW"
    r = parse_line((b"+ idling",))
    assert (r.tag, r.text) == ("+", "idling")
    r = parse_line(((b"* STATUS {5}", b"W\xc3\xb6rk"), b" (MESSAGES 1)"))
    assert r.kind == "STATUS"
    assert r.values() == (b"W\xc3\xb6rk", (b"MESSAGES", b"1"))
    r = parse_line((b'* LIST (\\HasNoChildren) "/" Work2 ("OLDNAME" (Work))',))
    assert r.values()[1:3] == (b"/", b"Work2")


# -- capabilities, atoms, strings ------------------------------------------------------------


def test_capabilities_as_imapclient_normalises_them() -> None:
    assert capability_set(b"IMAP4rev1 LITERAL+  idle") == {"IMAP4REV1", "LITERAL+", "IDLE"}
    code = b"[CAPABILITY IMAP4rev1 AUTH=PLAIN] Dovecot ready."
    assert response_code_capabilities(code) == {"IMAP4REV1", "AUTH=PLAIN"}
    assert response_code_capabilities(b"Dovecot ready.") is None


@pytest.mark.parametrize(
    ("name", "atom"),
    [("alice", True), ("alice@example.com", True), ("a b", False), ('a"b', False), ("", False)],
)
def test_login_name_must_be_an_atom(name: str, atom: bool) -> None:
    assert is_atom(name) is atom


def test_password_is_quoted_as_imaplib_quotes_it() -> None:
    import imaplib

    for pw in ("secret", 'q"uote', "back\\slash", " spaced "):
        assert quoted(pw) == imaplib.IMAP4._quote(None, pw).encode()  # type: ignore[arg-type]
    assert quoted("pässword") is None
    assert quoted("new\nline") is None


def test_quoted_takes_bytes_too() -> None:
    assert quoted(b'a"b\\c') == b'"a\\"b\\\\c"'
    assert quoted("a\tb") is None  # a tab: sent as a literal instead


# -- UID sets --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uids", "expected"),
    [
        ([], ""),
        ([5], "5"),
        ([3, 1, 2, 5, 7, 8, 2], "1:3,5,7:8"),
        ([10, 12, 14], "10,12,14"),
    ],
)
def test_uid_set(uids: list[int], expected: str) -> None:
    assert uid_set(uids) == expected


def test_uid_set_chunks_keep_lines_short() -> None:
    uids = list(range(1, 20000, 2))  # nothing contiguous: the worst case
    chunks = uid_set_chunks(uids, max_len=100)
    assert all(len(c) <= 100 for c in chunks)
    back = [int(x) for c in chunks for x in c.split(",")]
    assert back == uids
    assert uid_set_chunks(range(1, 100001)) == ["1:100000"]
    assert uid_set_chunks([]) == []


@pytest.mark.parametrize(
    ("text", "maximum", "expected"),
    [
        (b"1:3,7,9:8", None, {1, 2, 3, 7, 8, 9}),
        ("42", None, {42}),
        (b"", None, set()),
        (b"5:*", 7, {5, 6, 7}),
        (b"1:4294967295", 3, {1, 2, 3}),  # clipped: no four-billion-element sets
    ],
)
def test_parse_uid_set(text: bytes | str, maximum: int | None, expected: set[int]) -> None:
    assert parse_uid_set(text, maximum) == expected


def test_parse_uid_set_star_needs_maximum() -> None:
    with pytest.raises(ValueError):
        parse_uid_set(b"1:*")


@pytest.mark.parametrize(
    ("text", "expected"),
    [(b"3:5", [3, 4, 5]), (b"9:7,1", [9, 8, 7, 1]), (b"4", [4])],
)
def test_uid_list_keeps_the_written_order(text: bytes, expected: list[int]) -> None:
    assert uid_list(text) == expected


@pytest.mark.parametrize(
    ("line", "size"),
    [
        (b'* LIST () "/" {2+}', 2),
        (b"* 1 FETCH (BODY[] {12}", 12),
        (b"* OK {}", None),
        (b"* OK {+}", None),
        (b"* OK x}", None),
        (b"* OK {1a}", None),
        (b"* OK {12} more", None),  # only at the end of a line
    ],
)
def test_literal_size(line: bytes, size: int | None) -> None:
    assert literal_size(line) == size
