"""`RemoteStore` against a real IMAP server, on top of imapclient.

imapclient does the connection, TLS, login, quoting and modified UTF-7; this module adds
what the engine needs on top and papers over what imapclient 4.1.0 lacks:

* ``UID FETCH`` with a UID *set* ("1:*", "3:9,12"). imapclient's `fetch` int()s the ids
  it was given to drop unsolicited responses, so it rejects sets; `_uid_fetch` sends the
  command through the client's imaplib object instead (see its docstring).
* APPENDUID, read from the tagged APPEND response text; without UIDPLUS the new UID is
  found by UIDNEXT, Message-ID and size. COPYUID, of a MOVE (untagged) or a COPY
  (tagged, where imapclient drops it), is read from imaplib's table (`_response_codes`).
* MULTIAPPEND, many messages in one APPEND: imaplib sends one literal per command, and
  imapclient's `multiappend` takes a refused literal for a lost connection, so
  `_send_append` writes the command itself.
* Exact expunge without UIDPLUS (only when no other client's \\Deleted messages would go).
* The fast paths, so that a sync costs what changed: LIST-STATUS (one command for the
  numbers of every folder), SELECT with QRESYNC (changes and VANISHED come with the
  SELECT), CONDSTORE's CHANGEDSINCE and UNCHANGEDSINCE, partial body fetches. imapclient
  can send none of them, so `_run`, `_select_with`, `_pipeline` and `_complete_fetch`
  drive its imaplib object directly, and the lean parsers below read the answers
  (table-tested in tests/test_imap_parsing.py on literal server responses).
* Bounded reads (`_ReadGuard`): imaplib reads a literal as large as the server
  announces and times out per socket read only; each command here gets a deadline
  that grows with the bytes received, and a literal larger than the command can
  expect is refused unread.
* One error vocabulary: every imapclient, imaplib, socket and ssl exception leaves this
  module as a `mirrorsync.errors` type with a one-line message naming host:port, the
  operation and the folder. After a `ConnectionFailed` the store is unusable: close it.

The connection is not thread-safe (imapclient is not); use one store per thread.
"""

from __future__ import annotations

import imaplib
import logging
import re
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import imapclient
from imapclient.datetime_util import datetime_to_INTERNALDATE, parse_to_datetime
from imapclient.response_parser import parse_response

from mirrorsync import quickimap
from mirrorsync.config import RemoteConfig
from mirrorsync.content import message_id
from mirrorsync.errors import (
    ConnectionFailed,
    FolderNameError,
    MirrorsyncError,
    ServerError,
)
from mirrorsync.imap.connection import (
    LoginLost,
    LoginRefused,
    LoginUnavailable,
    Refused,
    check_tls_setting,
    connect_error,
    enable,
    login,
    personal_prefix_of,
    server_text,
    sync_extension,
)
from mirrorsync.imap.wire import (
    LINE_MAX,
    LITERAL_MAX,
    MIN_RATE,
    LiteralRefused,
    Overdue,
    decode_mutf7,
    literal_refused,
    parse_parts,
    parse_uid_set,
    split_responses,
    uid_list,
    uid_set,
    uid_set_chunks,
)
from mirrorsync.model import (
    NO_FLAGS,
    SEP,
    Flags,
    FolderChanges,
    FolderStatus,
    QuotaResource,
    RemoteFolder,
    RemoteIdentity,
    RemoteMessage,
    canonical_folder,
)

# In the import-light `names`, shared with `mirrorsync.quick`'s LIST-STATUS reader.
from mirrorsync.names import server_spelling
from mirrorsync.names import server_to_canonical as server_to_canonical
from mirrorsync.remote import FETCH_CHUNK, ByteSink, append_each, append_refused, batches

log = logging.getLogger(__name__)

# Commands in flight at once when pipelining (STATUS per folder, SEARCH windows).
_PIPELINE_DEPTH = 64

# A MULTIAPPEND with LITERAL+ goes out in writes of about this size: small messages
# share one, so that a command is a few writes, not two per message.
_SEND_CHUNK = 256 * 1024

# `ImapStore._existing` searches UIDs in windows this wide, so that no answer line can
# reach imaplib's 1 MB line limit (at most 10 bytes per UID).
_SEARCH_WINDOW = 90_000

# \Recent is a session flag that only the server sets; APPEND/STORE with it are errors.
_RECENT = "\\recent"
# A flag is an atom, optionally preceded by a backslash (RFC 3501 flag / flag-keyword);
# checked here so that a bad name becomes a ServerError instead of a broken command line.
_FLAG_RE = re.compile(r'^\\?[^\x00-\x20\x7f-\U0010ffff(){%*"\\\]]+$')
# uid-set: one UID per message appended; a MULTIAPPEND lists them in the messages'
# order (RFC 4315), e.g. "7:9" or "7,9,12:13"
_APPENDUID_RE = re.compile(rb"\[APPENDUID\s+(\d+)\s+([\d:,]+)\]", re.IGNORECASE)
# The data of a COPYUID response code as imaplib files it: "uidvalidity old-set new-set",
# possibly followed by the rest of the line when the text holds another "]".
_COPYUID_RE = re.compile(rb"(\d+)\s+([\d:,]+)\s+([\d:,]+)")
# imaplib turns bare CR or LF in an APPEND literal into CRLF; the size the server will
# report is that of the converted message.
_LINE_END_RE = re.compile(rb"\r\n|\r(?!\n)|\n")
# One search key or argument: an atom, a number, a date or a sequence set ("1:*").
# Anything else (spaces, quotes, parentheses, literals) would change the command line.
_SEARCH_TOKEN_RE = re.compile(r'[^\x00-\x20\x7f()"{\\]+')
# What a connection attempt can raise besides our own errors: socket and ssl errors are
# OSErrors, imaplib's error/abort cover IMAP-level trouble, EOFError a vanished peer.
_TRANSPORT_ERRORS = (OSError, EOFError, imaplib.IMAP4.error)
_RESPONSE_CODE_HINTS = {
    "NONEXISTENT": "the folder does not exist on the server",
    "TRYCREATE": "the folder does not exist on the server",
    "OVERQUOTA": "the mailbox is over quota; free space on the server",
    "NOPERM": "the server does not allow this for this user",
    "LIMIT": "the server refused because of one of its limits",
    "INUSE": "the folder is in use; try again later",
    "CANNOT": "the server cannot do this for this folder",
}


# -- the reading guard: a bound on literals and a deadline per command -----------------


class _ReadGuard:
    """Every read of one imaplib connection, bounded in size and in time.

    imaplib reads a literal whole (``read(size)`` with the size the server announced)
    and applies the timeout to each socket read, so memory followed the announced
    size (2 GiB for a 140-byte message) and a trickling server kept a run busy
    indefinitely. imaplib documents `send`, `read` and `readline` as meant to be
    overridden; they are replaced on the instance here, the one place this module
    changes imaplib's behaviour (it still reads ``imap.file``/``imap.sock``, as
    imaplib and imapclient's STARTTLS set them).

    * Each command gets a deadline when it is sent: the timeout, plus one second per
      `MIN_RATE` bytes received for it, checked between socket reads.
    * A literal larger than `limit` (set by the caller for what it asked: bodies of
      known RFC822.SIZE, a piece of a given size; else `LITERAL_MAX`) is refused
      before any of it is read: the connection is shut, since the answer cannot be
      skipped, and the store fails with a clear line."""

    def __init__(self, imap: Any, timeout: float) -> None:
        self.imap = imap
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.limit = LITERAL_MAX
        self.expected = ""  # words for the error: what the limit comes from
        self._short = False  # the socket's timeout is below `timeout` (near the deadline)
        if imap is not None:  # None: a stand-in client of a test, with no connection
            self._send = imap.send
            imap.send, imap.read, imap.readline = self.send, self.read, self.readline

    @contextmanager
    def expecting(self, limit: int, expected: str) -> Iterator[None]:
        """Accept literals up to `limit` bytes in the commands run inside."""
        self.limit, self.expected = limit, expected
        try:
            yield
        finally:
            self.limit, self.expected = LITERAL_MAX, ""

    def send(self, data: bytes) -> None:
        self.deadline = time.monotonic() + self.timeout  # a command goes out
        self._send(data)

    def _overdue(self) -> Overdue:
        return Overdue(
            f"the answer came slower than {MIN_RATE // 1024} KiB/s after {self.timeout:g}s"
        )

    def _arm(self) -> None:
        """Check the deadline and, once it is near, let the next socket read wait no
        longer than it. (Only then: a settimeout per read cost a system call each,
        which made fetching small bodies half again as slow.)"""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self._overdue()
        if left < self.timeout / 2:
            self.imap.sock.settimeout(left)
            self._short = True
        elif self._short:
            self.imap.sock.settimeout(self.timeout)
            self._short = False

    def _piece(self, read: Callable[[int], bytes], n: int) -> bytes:
        """One buffered read; a socket timeout cut short by `_arm` is the deadline's."""
        try:
            return read(n)
        except TimeoutError as e:
            if self._short:
                raise self._overdue() from e
            raise

    def readline(self) -> bytes:
        f = self.imap.file
        self._arm()
        pieces: list[bytes] = []
        size = 0
        while True:
            buffered = self._piece(f.peek, 1)  # what is buffered, or one socket read
            if not buffered:
                break  # EOF: the caller sees a line without CRLF
            end = buffered.find(b"\n")
            piece = f.read(end + 1 if end >= 0 else len(buffered))
            pieces.append(piece)
            size += len(piece)
            self.deadline += len(piece) / MIN_RATE
            if end >= 0:
                break
            if size > LINE_MAX:
                raise imaplib.IMAP4.error(f"got more than {LINE_MAX} bytes")
            self._arm()
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def read(self, size: int) -> bytes:
        if size > self.limit:
            with suppress(OSError):
                self.imap.sock.shutdown(socket.SHUT_RDWR)
            raise literal_refused(size, self.limit, self.expected)
        f = self.imap.file
        pieces: list[bytes] = []
        got = 0
        while got < size:
            self._arm()
            piece = self._piece(f.read1, min(size - got, 1 << 20))
            if not piece:
                break  # EOF: the caller sees a short literal
            pieces.append(piece)
            got += len(piece)
            self.deadline += len(piece) / MIN_RATE
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)


# -- pure helpers (tested from tables) -----------------------------------------------


def canonical_to_server(name: str, delimiter: str | None, prefix: str = "") -> str:
    """The server's spelling of a canonical name (see `names.server_spelling`), or
    FolderNameError when the server cannot hold it."""
    try:
        return server_spelling(name, delimiter, prefix)
    except ValueError as e:
        raise FolderNameError(
            f"folder {canonical_folder(name)!r} cannot be created on the server: {e}",
            hint="rename it, or list it in local.local_only",
        ) from None


def _text(value: object) -> str:
    """Atoms come back as bytes, but the parser turns numeric-looking ones into ints."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


# A folder has few distinct flag sets; sharing one frozenset per set saves building
# one per message (and memory) on 10^5-message listings. Cleared when it grows.
_FLAG_SETS: dict[object, Flags] = {}
_FLAG_SETS_MAX = 4096


def _flags_of(value: object) -> Flags:
    """The flags of a FETCH's FLAGS item. A value that is not a list (NIL, an atom)
    raises ValueError: read as "no flags" it would take every flag away from the
    message on the other side. Callers check that the item is there first."""
    if not isinstance(value, tuple):
        raise ValueError(f"FLAGS {_text(value)!r:.40} is not a list")
    flags = _FLAG_SETS.get(value)
    if flags is None:
        if len(_FLAG_SETS) >= _FLAG_SETS_MAX:
            _FLAG_SETS.clear()
        flags = _FLAG_SETS[value] = frozenset(_text(f) for f in value)
    return flags


def _flags_in(text: bytes) -> Flags:
    """`_flags_of` for the inside of a FLAGS list, as the listing regex captures it."""
    flags = _FLAG_SETS.get(text)
    if flags is None:
        if len(_FLAG_SETS) >= _FLAG_SETS_MAX:
            _FLAG_SETS.clear()
        flags = _FLAG_SETS[text] = frozenset(f.decode("utf-8", "replace") for f in text.split())
    return flags


_INTERNALDATE_RE = re.compile(
    rb" ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)\Z"
)
_MONTHS = {
    m.encode(): i
    for i, m in enumerate(
        ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"],
        start=1,
    )
}
_ZONES: dict[int, timezone] = {}


def _aware(value: object) -> datetime | None:
    """INTERNALDATE as an aware datetime with a plain `timezone` (not imapclient's
    FixedOffset), so it compares and pickles like any other. The RFC 3501 form is
    parsed here (imapclient's parser cost a sixth of a small-message FETCH); anything
    else goes to imapclient's."""
    if not isinstance(value, bytes):
        return None
    m = _INTERNALDATE_RE.match(value)
    month = _MONTHS.get(m.group(2).upper()) if m is not None else None
    if m is not None and month is not None:
        minutes = int(m.group(8)) * 60 + int(m.group(9))
        if m.group(7) == b"-":
            minutes = -minutes
        zone = _ZONES.get(minutes)
        if zone is None:
            zone = _ZONES[minutes] = timezone(timedelta(minutes=minutes))
        try:
            return datetime(
                int(m.group(3)),
                month,
                int(m.group(1)),
                int(m.group(4)),
                int(m.group(5)),
                int(m.group(6)),
                tzinfo=zone,
            )
        except ValueError:
            pass  # 31-Feb and the like: imapclient's parser says what it makes of it
    dt = parse_to_datetime(value, normalise=False)
    offset = dt.utcoffset()
    return dt.replace(tzinfo=timezone(offset)) if offset is not None else dt


def _code_hint(text: str) -> str:
    m = re.search(r"\[([A-Z-]+)", text)
    if m and m.group(1) in _RESPONSE_CODE_HINTS:
        return _RESPONSE_CODE_HINTS[m.group(1)]
    if re.search(r"(doesn't|does not|not) exist", text, re.IGNORECASE):
        return _RESPONSE_CODE_HINTS["NONEXISTENT"]
    return ""


# -- the wire: lean parsers for what imapclient cannot parse, or parses too slowly -----
#
# imaplib hands over each untagged response as its text after "* TYPE " (or, for
# "* n FETCH", "n (...)"), split where literals came: a response with literals is a
# run of (text-before-literal, literal) tuples followed by the text after the last
# one; one without is a single bytes item. The functions below take that shape as it
# is, so they can be table-tested on literal server responses.
#
# Why not imapclient's `parse_response`: it lexes byte by byte in Python, about 25 µs
# per message of a ``UID FETCH 1:* (UID FLAGS RFC822.SIZE)``: 0.5 s of the 0.66 s a
# 20 000-message `list_messages()` took against Dovecot. The hot shapes (see
# `_fast_fetch_row`, `parse_listing`) cost one regular expression per item or per
# message instead, anything else one per token (`parse_parts`), and what that does not
# understand goes to imapclient's parser: odd but valid responses still parse (slowly),
# garbage still raises ValueError. The same listing now takes 0.09 s.
# A FETCH response of simple items only (numbers, lists of atoms, plain quoted strings):
# what list_messages and select_changes read by the hundred thousand.
_FETCH_ITEM = rb'[A-Za-z0-9.-]+ (?:\d+|\([^()"{}\x00-\x1f]*\)|"[^"\\\x00-\x1f]*")'
_FETCH_LINE_RE = re.compile(rb"\d+ \(((?:" + _FETCH_ITEM + rb"(?: (?=[A-Za-z])|(?=\))))*)\)\Z")
_FETCH_HEAD_RE = re.compile(
    rb"\d+ \(((?:" + _FETCH_ITEM + rb" )*)(BODY\[[A-Za-z0-9.]*\](?:<\d+>)?) \{\d+\}\Z"
)
_FETCH_TAIL_RE = re.compile(rb"((?: " + _FETCH_ITEM + rb")*)\)\Z")
# list_messages' answer in the order asked (Dovecot's, and most servers')
_LISTING_RE = re.compile(
    rb'(\d+) \(UID (\d+) FLAGS \(([^()"{}\x00-\x1f]*)\) RFC822\.SIZE (\d+)\)\Z'
)
_FETCH_START_RE = re.compile(rb"\* (\d+) FETCH ")
_LITERAL_END_RE = re.compile(rb"\{(\d+)\}\Z")
_FETCH_ITEM_RE = re.compile(
    rb'([A-Za-z0-9.-]+) (?:(\d+)|\(([^()"{}\x00-\x1f]*)\)|"([^"\\\x00-\x1f]*)")'
)

Part = bytes | tuple[bytes, bytes]


def _parse_one(parts: list[Part]) -> list[Any]:
    """`parse_parts`, or imapclient's slower parser for what ours does not know."""
    try:
        return parse_parts(parts)
    except ValueError:
        pass
    try:
        return list(parse_response(list(parts)))
    except imaplib.IMAP4.error as exc:  # imapclient's ProtocolError
        raise ValueError(str(exc)) from exc


def parse_fetch(data: Iterable[Any]) -> dict[int, dict[bytes, Any]]:
    """``* n FETCH (...)`` responses -> UID -> {ITEM-NAME: value}. Item names are
    upper-cased bytes ("BODY[]", "RFC822.SIZE"); UID, RFC822.SIZE and MODSEQ become
    ints, FLAGS a tuple of bytes, literals bytes. Responses without a UID are dropped:
    unsolicited FETCH (another client changed flags) carry only a sequence number
    unless QRESYNC is on, and keying them by that number would attach them to the
    wrong message. Several responses for one UID are merged, later ones winning."""
    rows: dict[int, dict[bytes, Any]] = {}
    for row in iter_fetch(data):
        known = rows.get(row[b"UID"])
        if known is None:
            rows[row[b"UID"]] = row
        else:
            known.update(row)
    return rows


def iter_fetch(data: Iterable[Any]) -> Iterator[dict[bytes, Any]]:
    """The rows of `parse_fetch` one response at a time, unmerged (and those without
    UID dropped), for when which response said what matters."""
    for parts in split_responses(data):
        row = _fast_fetch_row(parts)
        if row is None:
            parsed = _parse_one(parts)
            if len(parsed) != 2 or not isinstance(parsed[1], tuple) or len(parsed[1]) % 2:
                raise ValueError(f"malformed FETCH response {parts[0]!r:.80}")
            attrs = parsed[1]
            row = {_as_bytes(attrs[j]).upper(): attrs[j + 1] for j in range(0, len(attrs), 2)}
        uid = row.get(b"UID")
        if uid is None:
            continue
        row[b"UID"] = int(uid)
        size = row.get(b"RFC822.SIZE")
        if size is not None:
            row[b"RFC822.SIZE"] = int(size)
        modseq = row.get(b"MODSEQ")
        if isinstance(modseq, tuple) and modseq:
            row[b"MODSEQ"] = int(modseq[0])
        yield row


def _fast_fetch_row(parts: list[Part]) -> dict[bytes, Any] | None:
    """The hot shapes, "n (UID 7 FLAGS (\\Seen) RFC822.SIZE 512)" and the same with
    one body literal ("n (UID 7 BODY[] {2048}" + literal + ")"): one regular
    expression per item instead of one per token. None for any other shape."""
    if len(parts) == 1:
        line = parts[0]
        m = _FETCH_LINE_RE.match(line) if isinstance(line, bytes) else None
        return None if m is None else _fetch_items(m.group(1), {})
    if len(parts) != 2:
        return None
    first, tail = parts
    if not isinstance(first, tuple) or not isinstance(tail, bytes):
        return None
    head, literal = first
    h = _FETCH_HEAD_RE.match(head)
    t = _FETCH_TAIL_RE.match(tail)
    if h is None or t is None:
        return None
    row = _fetch_items(h.group(1), {})
    row[h.group(2).upper()] = literal
    return _fetch_items(t.group(1), row)


def _fetch_items(text: bytes, row: dict[bytes, Any]) -> dict[bytes, Any]:
    for item in _FETCH_ITEM_RE.finditer(text):
        kind = item.lastindex or 0
        value = item.group(kind)
        row[item.group(1).upper()] = tuple(value.split()) if kind == 3 else value
    return row


def parse_listing(data: Iterable[Any]) -> dict[int, RemoteMessage]:
    """The answer to ``UID FETCH 1:* (UID FLAGS RFC822.SIZE)`` as `list_messages`
    returns it: what `parse_fetch` would give, reduced to flags and size (messages
    without a size left out), but a response in the usual shape and order costs one
    regular expression, not a dict per message. Unsolicited responses (a flag
    change while the command ran) merge in order, as in `parse_fetch`."""
    flags: dict[int, Flags] = {}
    sizes: dict[int, int] = {}
    # message sequence number of each UID's size: a UID listed (with its size) at two
    # sequence numbers is two messages claiming one UID, and which one the UID means
    # cannot be told; ValueError then, so the folder fails rather than sync either
    seqs: dict[int, int] = {}
    match = _LISTING_RE.match

    def sized(uid: int, seq: int, size: int) -> None:
        if seqs.setdefault(uid, seq) != seq:
            raise ValueError(f"UID {uid} is listed for two messages ({seqs[uid]} and {seq})")
        sizes[uid] = size

    pending: list[Part] = []
    for item in data:
        if item is None:
            continue
        if not pending and isinstance(item, bytes):
            m = match(item)
            if m is not None:
                uid = int(m.group(2))
                flags[uid] = _flags_in(m.group(3))
                sized(uid, int(m.group(1)), int(m.group(4)))
                continue
        pending.append(item)
        if isinstance(item, tuple):
            continue
        first = pending[0][0] if isinstance(pending[0], tuple) else pending[0]
        seq = int(first.split(b" ", 1)[0])
        for row in iter_fetch(pending):
            uid = row[b"UID"]
            if b"FLAGS" in row:
                flags[uid] = _flags_of(row[b"FLAGS"])
            if b"RFC822.SIZE" in row:
                sized(uid, seq, int(row[b"RFC822.SIZE"]))
        pending = []
    return {
        uid: RemoteMessage(uid, flags.get(uid, NO_FLAGS), size)
        for uid, size in sorted(sizes.items())
    }


def parse_vanished(data: Iterable[Any], maximum: int | None = None) -> tuple[set[int], set[int]]:
    """``* VANISHED [(EARLIER)] uid-set`` responses -> (earlier, now): the EARLIER
    ones answer a QRESYNC SELECT or a CHANGEDSINCE ... VANISHED fetch, the others
    report expunges as they happen (QRESYNC's replacement for ``* n EXPUNGE``)."""
    earlier: set[int] = set()
    now: set[int] = set()
    for parts in split_responses(data):
        tokens = parse_parts(parts)
        target = now
        if tokens and isinstance(tokens[0], tuple):
            if any(_as_bytes(t).upper() == b"EARLIER" for t in tokens[0]):
                target = earlier
            tokens = tokens[1:]
        if len(tokens) != 1 or not isinstance(tokens[0], bytes):
            raise ValueError(f"malformed VANISHED response {parts[0]!r:.80}")
        target |= parse_uid_set(tokens[0], maximum)
    return earlier, now


def parse_search(
    search: Iterable[Any], esearch: Iterable[Any], maximum: int | None = None
) -> set[int]:
    """The UIDs of ``* SEARCH 1 2 3`` and of ESEARCH's ``* ESEARCH (TAG "x") UID ALL
    1:3,5`` (an empty result has no ALL at all); `maximum` as in `parse_uid_set`."""
    out: set[int] = set()
    for parts in split_responses(search):
        out.update(int(t) for t in parse_parts(parts) if t is not None)
    for parts in split_responses(esearch):
        tokens = parse_parts(parts)
        for i, token in enumerate(tokens[:-1]):
            if isinstance(token, bytes) and token.upper() == b"ALL":
                out |= parse_uid_set(tokens[i + 1], maximum)
    return out


@dataclass(frozen=True)
class ListedFolder:
    """One ``* LIST`` response (name still in the server's modified UTF-7 form), with
    the items of the ``* STATUS`` response for the same name when one came."""

    attributes: frozenset[str]
    delimiter: str | None
    name: bytes
    status: dict[bytes, int] | None = None


def parse_list(data: Iterable[Any]) -> list[ListedFolder]:
    """``* LIST (attrs) delim name [extended-data]`` responses. RFC 5258's
    \\NonExistent (how Dovecot marks implied parents in an extended LIST) implies
    \\Noselect, which is added so that the folder reads as it does in a plain LIST."""
    out: list[ListedFolder] = []
    for parts in split_responses(data):
        tokens = _parse_one(parts)
        if len(tokens) < 3 or not isinstance(tokens[0], tuple):
            raise ValueError(f"malformed LIST response {parts[0]!r:.80}")
        attrs = {_text(a) for a in tokens[0]}
        if any(a.lower() == "\\nonexistent" for a in attrs) and not any(
            a.lower() == "\\noselect" for a in attrs
        ):
            attrs.add("\\Noselect")
        delim = None if tokens[1] is None else _text(tokens[1])
        out.append(ListedFolder(frozenset(attrs), delim, _as_bytes(tokens[2])))
    return out


def parse_status(data: Iterable[Any]) -> dict[bytes, dict[bytes, int]]:
    """``* STATUS name (ITEM n ...)`` responses -> raw name -> {ITEM: n}."""
    out: dict[bytes, dict[bytes, int]] = {}
    for parts in split_responses(data):
        tokens = _parse_one(parts)
        if len(tokens) != 2 or not isinstance(tokens[1], tuple) or len(tokens[1]) % 2:
            raise ValueError(f"malformed STATUS response {parts[0]!r:.80}")
        items = tokens[1]
        out[_as_bytes(tokens[0])] = {
            _as_bytes(items[i]).upper(): int(items[i + 1]) for i in range(0, len(items), 2)
        }
    return out


def parse_list_status(list_data: Iterable[Any], status_data: Iterable[Any]) -> list[ListedFolder]:
    """The answer to ``LIST ... RETURN (STATUS (...))`` (RFC 5819): each LIST with
    its STATUS. The two come interleaved but imaplib files them by type, so they are
    matched by name, which each STATUS repeats; a folder without STATUS (not
    selectable, or the server could not tell) gets None."""
    statuses = parse_status(status_data)
    return [
        ListedFolder(f.attributes, f.delimiter, f.name, statuses.get(f.name))
        for f in parse_list(list_data)
    ]


# -- the store --------------------------------------------------------------------------


class ImapStore:
    """One logged-in IMAP connection. Create with `ImapStore.connect`."""

    # Bounds for one FETCH of bodies: messages per command and their summed
    # RFC822.SIZE. The bytes bound memory (a whole answer is held); the count keeps
    # the UID set of one command line short (500 scattered UIDs: about 5 KB, under
    # RFC 7162's 8 KB advice). 50 cost a round trip per 50 small messages, which on a
    # 30 ms link caps small-message throughput near 3 MB/s; 500 makes that 30 MB/s.
    fetch_batch_count: int = 500
    fetch_batch_bytes: int = 8 * 1024 * 1024
    # Bounds for one MULTIAPPEND command. RFC 3502 makes it atomic, so the server
    # stages every message of it before committing any; the bytes bound that (and
    # what a refused command costs to send again one by one), the count what one
    # refused message takes down with it.
    append_batch_count: int = 50
    append_batch_bytes: int = 8 * 1024 * 1024

    def __init__(
        self, client: Any, address: str, capabilities: frozenset[str], timeout: float
    ) -> None:
        self._client = client
        self._address = address
        self._capabilities = capabilities
        self._timeout = timeout
        self._guard = _ReadGuard(getattr(client, "_imap", None), timeout)
        self._delimiter: str | None = None
        self._delimiter_known = False
        # The personal namespace's prefix that canonical names leave out (Courier's
        # "INBOX."); "" until the sync sets it (`use_namespace_prefix`).
        self._prefix = ""
        self._personal: str | None = None  # the NAMESPACE answer, asked once
        self._selected: str | None = None
        # UIDNEXT as of the last SELECT: where `search` ends its UID windows.
        self._selected_uidnext = 1
        # Bumped on every change of selection, so a lazy `fetch` notices that its
        # UIDs would now be read from another folder.
        self._generation = 0
        self._closed = False
        # The folder listing `statuses()` got along with the numbers, kept for the one
        # `list_folders()` that usually follows, to save it a round trip.
        self._listing: list[RemoteFolder] | None = None
        # The folders the last `statuses()` listed but got no numbers for: name -> why.
        self._status_failures: dict[str, str] = {}

    # -- connecting ---------------------------------------------------------------

    @classmethod
    def connect(
        cls, remote: RemoteConfig, password: str, *, disable: Iterable[str] = ()
    ) -> ImapStore:
        """Connect, secure, log in and ENABLE QRESYNC (or CONDSTORE) when offered.

        `disable` names extensions not to use even when the server offers them (as
        "QRESYNC", "ESEARCH"): a way around a server's broken implementation, and how
        the tests run the CONDSTORE-only paths against a server that has QRESYNC."""
        context = check_tls_setting(remote)
        timeout = imapclient.SocketTimeout(connect=remote.timeout, read=remote.timeout)
        try:
            waited = quickimap.timed_out.get((remote.host, remote.port))
            if waited is not None:
                raise waited  # the quick check just waited for it in vain: once is enough
            client = imapclient.IMAPClient(
                remote.host,
                remote.port,
                ssl=remote.tls == "imaps",
                ssl_context=context,
                timeout=timeout,
            )
        except _TRANSPORT_ERRORS as exc:
            raise connect_error(exc, remote) from exc
        try:
            return cls._login(client, remote, password, context, frozenset(disable))
        except BaseException:
            _shutdown(client)
            raise

    @classmethod
    def _login(
        cls,
        client: Any,
        remote: RemoteConfig,
        password: str,
        context: ssl.SSLContext | None,
        disable: frozenset[str] = frozenset(),
    ) -> ImapStore:
        session = _ClientSession(client, remote)
        if not logging.getLogger("imapclient.imaplib").isEnabledFor(logging.DEBUG):
            # imapclient sets imaplib's debug level to 5 so that its logger sees the
            # traffic; at that level imaplib formats a repr of every line, match and
            # literal whether or not anything is logged, which halved FETCH throughput
            # and made a transient copy of every message body.
            client._imap.debug = 0
        try:
            offered = login(session, remote, password, context)
            unwanted = {d.upper() for d in disable}
            if "CONDSTORE" in unwanted:
                unwanted.add("QRESYNC")  # QRESYNC is CONDSTORE and more
            usable = offered - unwanted
            caps = enable(session, usable, sync_extension(usable))
        except _TRANSPORT_ERRORS as exc:
            raise connect_error(exc, remote) from exc
        return cls(client, session.address, caps, remote.timeout)

    # -- protocol: folders --------------------------------------------------------

    @property
    def capabilities(self) -> frozenset[str]:
        return self._capabilities

    def list_folders(self) -> list[RemoteFolder]:
        """LIST "" "*". Right after `statuses()` (no folder created or deleted
        through this store in between) its listing is returned instead, once: the
        engine asks for both at the start of a run, and that saves a round trip."""
        if self._listing is not None:
            folders, self._listing = self._listing, None
            return folders
        return self._list_folders()

    def personal_prefix(self) -> str:
        """The prefix of the server's (first) personal namespace (RFC 2342), "" when
        it has none or no NAMESPACE: Courier answers "INBOX.", where every folder of
        the user is "INBOX.Name" and a top-level "Name" cannot be created."""
        if self._personal is None:
            self._personal = ""
            if "NAMESPACE" in self._capabilities:
                with self._translate("read the namespaces"):
                    self._personal = personal_prefix_of(self._client.namespace().personal)
        return self._personal

    def use_namespace_prefix(self, prefix: str) -> None:
        """Leave `prefix` out of canonical names from now on: server "INBOX.Work" is
        then "Work", and a new "Work" is created as "INBOX.Work". INBOX stays INBOX."""
        if prefix != self._prefix:
            self._prefix = prefix
            self._listing = None

    def unrepresentable(self, name: str) -> str | None:
        """Why the server cannot hold a folder of canonical `name`, None if it can."""
        try:
            self._server_name(name)
        except FolderNameError as e:
            return str(e)
        return None

    def delimiter(self) -> str | None:
        """The server's hierarchy delimiter; None for a flat server."""
        self._learn_delimiter()
        return self._delimiter

    def _list_folders(self) -> list[RemoteFolder]:
        with self._translate("list folders"):
            rows = self._client.list_folders()
        folders: list[RemoteFolder] = []
        names: list[tuple[str, str]] = []
        for attrs, delim, name in rows:
            delimiter = _text(delim) if delim is not None else None
            canonical = self._canonical(_text(name), delimiter)
            if canonical is not None:
                folders.append(RemoteFolder(canonical, frozenset(_text(a) for a in attrs)))
                if folders[-1].selectable:
                    names.append((_text(name), canonical))
        self._note_collisions(names)
        return folders

    def _note_collisions(self, names: list[tuple[str, str]]) -> None:
        """Two selectable server folders whose names map to one canonical name
        (``a.b`` under delimiter '.' and ``a/b`` under '/', in two namespaces) cannot
        both be that folder, and syncing either would mix them up: the name is named
        in `status_failures()`, for the caller to skip."""
        by_name: dict[str, list[str]] = {}
        for server, canonical in names:
            by_name.setdefault(canonical, []).append(server)
        for canonical, servers in by_name.items():
            if len(servers) > 1:
                self._status_failures[canonical] = (
                    f"folder {canonical!r} on {self._address}: the server lists "
                    f"{' and '.join(repr(n) for n in servers)}, which all map to this name; "
                    "none of them is synced; rename all but one on the server"
                )

    def _canonical(self, server_name: str, delimiter: str | None) -> str | None:
        """The canonical name of a listed folder (learning the delimiter on the way),
        or None, with a warning, for a name that has none."""
        if not self._delimiter_known and delimiter:
            self._delimiter, self._delimiter_known = delimiter, True
        canonical = server_to_canonical(server_name, delimiter, self._prefix)
        if canonical is None:
            if self._prefix and not server_name.startswith(self._prefix):
                why = f"it is outside the personal namespace {self._prefix!r}"
            else:
                why = f"a component contains {SEP!r} or is empty, or it would not map back"
            log.warning("skipping server folder %r on %s: %s", server_name, self._address, why)
        return canonical

    def statuses(self) -> dict[str, FolderStatus]:
        """With LIST-STATUS (RFC 5819) one ``LIST "" "*" RETURN (STATUS (...))`` for
        the whole account, about 110 bytes per folder; without it LIST and a STATUS
        per selectable folder, pipelined. The listing is kept for the next
        `list_folders()`. A folder whose STATUS the server refused is left out and
        named in `status_failures()`."""
        items = self._status_items()
        self._status_failures = {}
        if "LIST-STATUS" not in self._capabilities:
            folders = self._list_folders()
            found = self._status_many(
                [f.name for f in folders if f.selectable and f.name not in self._status_failures]
            )
            self._listing = folders
            return found
        options = f"STATUS ({' '.join(items)})"
        if "LIST-EXTENDED" in self._capabilities:
            # the \HasChildren/\HasNoChildren a plain LIST gives, so the listing
            # kept for list_folders() reads the same
            options = "CHILDREN " + options
        imap = self._client._imap
        with self._translate("list folders with status"):
            for stale in ("LIST", "STATUS"):
                imap.untagged_responses.pop(stale, None)
            typ, data = self._run("LIST", '""', '"*"', f"RETURN ({options})")
            listed = parse_list_status(
                imap.untagged_responses.pop("LIST", []), imap.untagged_responses.pop("STATUS", [])
            )
            if typ != "OK":
                raise imaplib.IMAP4.error(_text(data[0]) if data and data[0] else typ)
        folders = []
        numbers: dict[str, FolderStatus | None] = {}
        names: list[tuple[str, str]] = []
        for entry in listed:
            server_name = decode_mutf7(entry.name) if self._client.folder_encode else entry.name
            canonical = self._canonical(_text(server_name), entry.delimiter)
            if canonical is None:
                continue
            folder = RemoteFolder(canonical, entry.attributes)
            folders.append(folder)
            if not folder.selectable:
                continue
            names.append((_text(server_name), canonical))
            numbers[canonical] = _folder_status(entry.status or {}, items)
        self._note_collisions(names)
        for name in self._status_failures:
            numbers.pop(name, None)
        # RFC 5819 lets a server leave out the STATUS of a folder it could not open;
        # asking for it alone either answers or says why not
        missing = [name for name, st in numbers.items() if st is None]
        found = self._status_many(missing) if missing else {}
        self._listing = folders
        return {name: st or found[name] for name, st in numbers.items() if st or name in found}

    def status_failures(self) -> dict[str, str]:
        return dict(self._status_failures)

    def _status_items(self) -> list[str]:
        items = ["MESSAGES", "UIDNEXT", "UIDVALIDITY"]
        if "CONDSTORE" in self._capabilities:
            items.append("HIGHESTMODSEQ")
        return items

    def _status_many(self, names: list[str]) -> dict[str, FolderStatus]:
        """STATUS of each folder, pipelined (see `_status_numbers`)."""
        items = self._status_items()
        out: dict[str, FolderStatus] = {}
        for name, numbers in self._status_numbers(names, items).items():
            try:
                with self._translate("status", name):
                    status = _folder_status(numbers, items)
                    if status is None:
                        raise ValueError("the STATUS response is missing or incomplete")
            except ServerError as e:
                self._status_failures[name] = str(e)
                continue
            out[name] = status
        return out

    def _status_numbers(self, names: list[str], items: list[str]) -> dict[str, dict[bytes, int]]:
        """``STATUS name (items)`` of each folder, pipelined: a server without
        LIST-STATUS (Outlook) then costs a round trip per `_PIPELINE_DEPTH` folders,
        not one per folder. The answers are matched by the name each STATUS response
        repeats; a folder whose STATUS failed is left out and named, with the
        server's words, in `status_failures()`."""
        imap = self._client._imap
        servers = [self._server_name(name) for name in names]
        with self._translate("status"):
            imap.untagged_responses.pop("STATUS", None)
            what = f"({' '.join(items)})"
            results = self._pipeline(
                [("STATUS", self._client._normalise_folder(server), what) for server in servers]
            )
            got = parse_status(imap.untagged_responses.pop("STATUS", []))
        decode = self._client.folder_encode
        by_name = {
            canonical_folder(_text(decode_mutf7(raw) if decode else raw)): numbers
            for raw, numbers in got.items()
        }
        out: dict[str, dict[bytes, int]] = {}
        for name, server, (typ, data) in zip(names, servers, results, strict=True):
            try:
                with self._translate("status", name):
                    if typ != "OK":
                        raise imaplib.IMAP4.error(_text(data[0]) if data and data[0] else typ)
            except ServerError as e:
                self._status_failures[name] = str(e)
                continue
            out[name] = by_name.get(canonical_folder(server), {})
        return out

    def create_folder(self, name: str) -> None:
        """Creates missing parents only when the server refuses the folder itself:
        most servers (Dovecot too) create them implicitly, and each extra CREATE
        would make a real folder where the server would have kept a mere parent."""
        server = self._server_name(name)
        self._listing = None
        with self._translate("create folder", name):
            try:
                self._client.create_folder(server)
                return
            except imaplib.IMAP4.abort:
                raise
            except imaplib.IMAP4.error as exc:
                if "ALREADYEXISTS" in str(exc).upper() or self._exists(server):
                    return
                parents = name.split(SEP)[:-1]
                if not parents:
                    raise
            for i in range(1, len(parents) + 1):
                parent = self._server_name(SEP.join(parents[:i]))
                if self._exists(parent):
                    continue
                try:
                    self._client.create_folder(parent)
                except imaplib.IMAP4.abort:
                    raise
                except imaplib.IMAP4.error:
                    if not self._exists(parent):
                        raise
            self._client.create_folder(server)

    def delete_folder(self, name: str) -> None:
        """Leaves the folder first if it is selected: Dovecot answers a DELETE of the
        selected folder with BYE and drops the connection."""
        server = self._server_name(name)
        self._listing = None
        with self._translate("delete folder", name):
            if self._selected is not None and canonical_folder(name) == self._selected:
                self._unselect(server)
            self._client.delete_folder(server)

    def status(self, name: str) -> FolderStatus:
        server = self._server_name(name)
        items = ["MESSAGES", "UIDNEXT", "UIDVALIDITY"]
        if "CONDSTORE" in self._capabilities:
            items.append("HIGHESTMODSEQ")
        with self._translate("status", name):
            data = self._client.folder_status(server, items)
            return FolderStatus(
                uidvalidity=int(data[b"UIDVALIDITY"]),
                uidnext=int(data[b"UIDNEXT"]),
                messages=int(data[b"MESSAGES"]),
                highestmodseq=int(data.get(b"HIGHESTMODSEQ", 0)),
            )

    def select(self, name: str) -> FolderStatus:
        server = self._server_name(name)
        with self._translate("select", name):
            # A failed SELECT leaves no folder selected (RFC 3501 6.3.1).
            self._selected = None
            self._generation += 1
            data = self._client.select_folder(server)
            uidnext = data.get(b"UIDNEXT")
            if uidnext is None:  # optional before IMAP4rev2; ask for it
                uidnext = self._client.folder_status(server, ["UIDNEXT"])[b"UIDNEXT"]
            result = FolderStatus(
                uidvalidity=int(data[b"UIDVALIDITY"]),
                uidnext=int(uidnext),
                messages=int(data[b"EXISTS"]),
                highestmodseq=int(data.get(b"HIGHESTMODSEQ", 0)),
            )
        self._selected = canonical_folder(name)
        self._selected_uidnext = result.uidnext
        return result

    def select_changes(
        self,
        name: str,
        uidvalidity: int,
        modseq: int,
        known_uids: Sequence[int] | None = None,
    ) -> FolderChanges:
        """QRESYNC: ``SELECT name (QRESYNC (uidvalidity modseq))``; the server sends
        ``VANISHED (EARLIER)`` and a FETCH (UID FLAGS MODSEQ) per new or changed
        message along with the SELECT: one round trip, about 400 bytes when nothing
        changed, whatever the folder's size. No known-UIDs are sent: Dovecot then
        leaves out the FETCH of new messages too.

        CONDSTORE only: ``SELECT name (CONDSTORE)`` and ``UID FETCH 1:* (UID FLAGS)
        (CHANGEDSINCE modseq)``; vanished UIDs are `known_uids` minus those a
        ``UID SEARCH`` still finds. Without `known_uids` nothing tells which UIDs
        vanished, and `vanished` is empty: pass them when expunges matter.

        Otherwise a plain SELECT and a full `list_messages()` (`full`), also when the
        server's UIDVALIDITY is not `uidvalidity`, when the folder has no modseqs
        (NOMODSEQ), or when `modseq` is above the folder's HIGHESTMODSEQ (the server
        lost state, e.g. restored from a backup: nothing it says since is trustworthy).
        With `full` and the same UIDVALIDITY, `vanished` is `known_uids` minus the
        listing. `status.highestmodseq` is always as of the SELECT."""
        caps = self._capabilities
        if modseq > 0 and uidvalidity > 0 and "CONDSTORE" in caps:
            qresync = "QRESYNC" in caps
            params = f"(QRESYNC ({uidvalidity} {modseq}))" if qresync else "(CONDSTORE)"
            with self._translate("select", name):
                status, untagged = self._select_with(name, params)
                if status.uidvalidity == uidvalidity and 0 < modseq <= status.highestmodseq:
                    if qresync:
                        return self._qresync_changes(status, untagged, known_uids)
                    return self._condstore_changes(status, modseq, known_uids)
        else:
            status = self.select(name)
        listing = self.list_messages()
        vanished: frozenset[int] = frozenset()
        if known_uids is not None and status.uidvalidity == uidvalidity:
            vanished = frozenset(set(known_uids) - listing.keys())
        return FolderChanges(status, listing, vanished, full=True)

    def _qresync_changes(
        self,
        status: FolderStatus,
        untagged: dict[str, list[Any]],
        known_uids: Sequence[int] | None,
    ) -> FolderChanges:
        rows = parse_fetch(untagged.get("FETCH", []))
        earlier, now = parse_vanished(untagged.get("VANISHED", []), status.uidnext - 1)
        vanished = earlier | now
        if known_uids is not None:  # the rest the caller cannot care about
            vanished &= set(known_uids)
        flagless = [uid for uid, row in rows.items() if b"FLAGS" not in row]
        if flagless:  # RFC 7162 says FLAGS come along; do not rely on it
            for chunk in uid_set_chunks(flagless):
                for uid, row in self._uid_fetch(chunk, "(UID FLAGS)").items():
                    if uid in rows:
                        rows[uid].update(row)
        changed = {
            uid: RemoteMessage(uid, _flags_of(row[b"FLAGS"]))
            for uid, row in sorted(rows.items())
            if uid not in vanished and b"FLAGS" in row
        }
        return FolderChanges(status, changed, frozenset(vanished), full=False)

    def _condstore_changes(
        self, status: FolderStatus, modseq: int, known_uids: Sequence[int] | None
    ) -> FolderChanges:
        rows = self._uid_fetch("1:*", "(UID FLAGS)", f"(CHANGEDSINCE {modseq})")
        vanished: set[int] = set()
        if known_uids is not None and known_uids:
            known = set(known_uids)
            vanished = known - self._existing(min(known), max(known))
        changed = {
            uid: RemoteMessage(uid, _flags_of(row[b"FLAGS"]))
            for uid, row in sorted(rows.items())
            if uid not in vanished and b"FLAGS" in row
        }
        return FolderChanges(status, changed, frozenset(vanished), full=False)

    def _existing(self, low: int, high: int) -> set[int]:
        """The UIDs from `low` to `high` in the selected folder (see `_search_windows`)."""
        return self._search_windows([], low, high)

    def _search_windows(self, criteria: Sequence[str], low: int, high: int | None) -> set[int]:
        """The UIDs from `low` to `high` (None: to the end of the folder) in the selected
        folder that match `criteria`, by ``UID SEARCH [RETURN (ALL)] UID low:high
        criteria`` (ESEARCH answers in compact ranges).

        imaplib refuses lines over 1 MB, and a plain SEARCH answer is one line of
        up to 10 bytes per UID (an ESEARCH one too, when no two UIDs are adjacent), so
        the range goes in windows of `_SEARCH_WINDOW` UIDs; without `high` the windows
        reach UIDNEXT as of the SELECT and the last one ends in "*", so that mail that
        arrived since is searched too. The commands are pipelined (all sent, then all
        answers read): SEARCH changes nothing, the answers merge into one set, and a
        10^6-UID folder costs one round trip, not twelve."""
        imap = self._client._imap
        for stale in ("SEARCH", "ESEARCH"):
            imap.untagged_responses.pop(stale, None)
        ret = ("RETURN", "(ALL)") if "ESEARCH" in self._capabilities else ()
        top = high if high is not None else max(low, self._selected_uidnext - 1)
        windows = []
        for start in range(low, top + 1, _SEARCH_WINDOW):
            end = start + _SEARCH_WINDOW - 1
            last = end >= top
            windows.append(f"{start}:{'*' if last and high is None else min(end, top)}")
        results = self._pipeline(
            [("UID", "SEARCH", *ret, f"UID {window}", *criteria) for window in windows]
        )
        found = parse_search(
            imap.untagged_responses.pop("SEARCH", []),
            imap.untagged_responses.pop("ESEARCH", []),
            # clips a range that claims more than could exist; a single UID is kept
            maximum=high if high is not None else top + _SEARCH_WINDOW,
        )
        for typ, data in results:
            if typ != "OK":
                raise imaplib.IMAP4.error(_text(data[0]) if data and data[0] else typ)
        return {uid for uid in found if uid >= low and (high is None or uid <= high)}

    # -- protocol: messages -------------------------------------------------------

    def list_messages(self) -> dict[int, RemoteMessage]:
        """One ``UID FETCH 1:* (UID FLAGS RFC822.SIZE)``: a single round trip whatever
        the folder's size (imapclient's `fetch` cannot send "1:*", see `_uid_fetch`).
        Flags are all the server's, \\Recent included: the engine normalizes."""
        folder = self._require_selected("list messages")
        with self._translate("list messages", folder):
            return parse_listing(self._uid_fetch_data("1:*", "(UID FLAGS RFC822.SIZE)"))

    def identities(self, uids: Sequence[int]) -> dict[int, RemoteIdentity]:
        folder = self._require_selected("read message identities")
        wanted = set(uids)
        out: dict[int, RemoteIdentity] = {}
        with self._translate("read message identities", folder):
            for chunk in uid_set_chunks(wanted):
                rows = self._uid_fetch(chunk, _IDENTITY_ITEMS)
                out.update(_identities(rows, wanted))
        return out

    def fetch(self, uids: Sequence[int]) -> Iterator[tuple[int, bytes, Flags, datetime | None]]:
        """Sizes first (cheap), then bodies in batches bounded by `fetch_batch_count`
        and `fetch_batch_bytes`, so that one huge message travels alone and many small
        ones share a round trip. Bodies are BODY.PEEK[], which leaves \\Seen alone.
        Raises ServerError if the selection changes while the iterator is consumed,
        and, after yielding every message answered right, if the server answered
        some wrongly (without a body, twice, FLAGS not a list, UIDs not asked for):
        those are not yielded, since what they hold cannot be trusted."""
        folder = self._require_selected("fetch")
        generation = self._generation
        sizes = self.sizes(uids)
        wrong: list[str] = []  # what the server answered wrongly, for the error
        bad: set[int] = set()
        for batch in batches(sorted(sizes), sizes, self.fetch_batch_count, self.fetch_batch_bytes):
            if self._generation != generation:
                raise ServerError(
                    f"fetch from folder {folder!r} on {self._address} was interrupted by "
                    "selecting another folder",
                    hint="this is a bug in mirrorsync; please report it",
                )
            wanted = set(batch)
            rows: dict[int, dict[bytes, Any]] = {}
            largest = max(sizes[u] for u in batch)
            # RFC822.SIZE is the size of BODY[]; some servers' are approximate, so a
            # body may be somewhat larger, never many times so
            expecting = self._guard.expecting(
                2 * largest + 64 * 1024, f"the largest RFC822.SIZE asked for is {largest}"
            )
            with self._translate("fetch", folder), expecting:
                data = self._uid_fetch_data(uid_set(batch), "(UID FLAGS INTERNALDATE BODY.PEEK[])")
                for row in iter_fetch(data):
                    uid = row[b"UID"]
                    if uid not in wanted:
                        wrong.append(f"UID {uid}, not asked for")
                    elif b"BODY[]" in row and b"BODY[]" in rows.get(uid, {}):
                        wrong.append(f"two bodies for UID {uid}")
                        bad.add(uid)
                    rows.setdefault(uid, {}).update(row)
            for uid in batch:
                got = rows.get(uid)
                if got is None or uid in bad:
                    continue  # expunged meanwhile (or answered twice: noted)
                body = got.get(b"BODY[]")
                flags = got.get(b"FLAGS", ())  # absent: none (asked for, though)
                if not isinstance(body, bytes):
                    wrong.append(f"UID {uid} without its body")
                elif not isinstance(flags, tuple):
                    wrong.append(f"UID {uid} with FLAGS that are not a list")
                else:
                    yield uid, body, _flags_of(flags), _aware(got.get(b"INTERNALDATE"))
        if wrong:
            # after the messages answered right (the caller keeps them), so that one
            # misanswered message does not hold the folder's others back every run
            raise ServerError(
                f"fetch {folder!r} on {self._address}: the server answered wrongly "
                f"({', '.join(wrong[:3])}{', ...' if len(wrong) > 3 else ''}); "
                f"{len(wrong)} not downloaded",
                hint="the server misbehaves (report it to its administrator); "
                "the rest of the folder was synced",
            )

    def sizes(self, uids: Sequence[int]) -> dict[int, int]:
        """``UID FETCH set (UID RFC822.SIZE)``, in compact sets of bounded length."""
        folder = self._require_selected("read message sizes")
        wanted = set(uids)
        out: dict[int, int] = {}
        with self._translate("read message sizes", folder):
            for chunk in uid_set_chunks(wanted):
                for uid, row in self._uid_fetch(chunk, "(UID RFC822.SIZE)").items():
                    size = row.get(b"RFC822.SIZE")
                    if uid in wanted and size is not None:
                        out[uid] = int(size)
        return out

    def fetch_to_file(self, uid: int, size: int, out: ByteSink, chunk: int = FETCH_CHUNK) -> bool:
        """``UID FETCH uid (BODY.PEEK[]<offset.chunk>)`` until a piece comes back
        shorter than asked or `size` bytes are written: memory holds one piece (imaplib
        reads a literal whole), and a dropped connection costs one piece, not the
        message. A message whose size is a multiple of `chunk` ends without the extra
        empty round trip thanks to `size`; a wrong `size` costs at most that trip."""
        if chunk <= 0:
            raise ValueError("chunk must be positive")
        folder = self._require_selected("fetch")
        offset = 0
        expecting = self._guard.expecting(chunk, f"a piece of at most {chunk} bytes")
        with self._translate("fetch", folder), expecting:
            while True:
                rows = self._uid_fetch(str(uid), f"(UID BODY.PEEK[]<{offset}.{chunk}>)")
                row = rows.get(uid, {})
                piece = row.get(f"BODY[]<{offset}>".encode())
                if piece is None:  # a server that names the section otherwise
                    piece = next((v for k, v in row.items() if k.startswith(b"BODY[]")), None)
                if not isinstance(piece, bytes):
                    return False  # expunged (before or meanwhile)
                out.write(piece)
                offset += len(piece)
                if len(piece) < chunk or offset == size:
                    return True

    def append(
        self, name: str, data: bytes, flags: Flags, date: datetime | None = None
    ) -> int | None:
        """With UIDPLUS the UID comes from ``[APPENDUID v uid]``. Without it: UIDNEXT
        is read (STATUS) before the APPEND, and afterwards the messages with UIDs from
        that UIDNEXT on are examined; the one whose Message-ID and RFC822.SIZE match
        `data` is ours (the highest such UID if another client appended the same
        message meanwhile). If none matches, None. Looking costs an EXAMINE of the
        folder and a re-SELECT of the previously selected one, unless it is the
        selected folder."""
        server = self._server_name(name)
        flag_list = _flag_args(flags, "append to", name, self._address)
        with self._translate("append to", name):
            if "UIDPLUS" in self._capabilities:
                response = self._client.append(server, data, flag_list, date)
                (uid,) = _appended_uids(_as_bytes(response), 1)
                return uid
            before = int(self._client.folder_status(server, ["UIDNEXT"])[b"UIDNEXT"])
            self._client.append(server, data, flag_list, date)
            return self._find_appended(name, server, before, [data])[0]

    def append_many(
        self, name: str, items: Sequence[tuple[bytes, Flags, datetime | None]]
    ) -> list[int | None]:
        """With MULTIAPPEND: one ``APPEND name (flags) "date" {n+}... (flags) "date"
        {n+}...`` per `append_batch_count` messages or `append_batch_bytes` bytes,
        whichever comes first (a bigger message goes alone). The UIDs come from the
        ``[APPENDUID v uid-set]`` of each command (all None for a command whose set
        does not have one UID per message: the caller then matches by content), or,
        without UIDPLUS, as `append` finds one: UIDNEXT before the command, then one
        look at the arrivals for the whole command. Without MULTIAPPEND: `append`
        for each message.

        With MULTIAPPEND every flag name is checked before the first command is sent,
        and each message sent as imaplib's APPEND sends one (bare CR or LF as CRLF),
        so both ways store the same bytes."""
        if not items:
            return []
        if "MULTIAPPEND" not in self._capabilities:
            return append_each(self.append, name, items)
        out: list[int | None] = []
        server = self._server_name(name)
        prepared = [
            (_append_crlf(data), _flag_args(flags, "append to", name, self._address), date)
            for data, flags, date in items
        ]
        sizes = {i: len(data) for i, (data, _flags, _date) in enumerate(prepared)}
        uidplus = "UIDPLUS" in self._capabilities
        for indexes in batches(
            list(range(len(prepared))), sizes, self.append_batch_count, self.append_batch_bytes
        ):
            batch = [prepared[i] for i in indexes]
            before = 0
            try:
                with self._translate("append to", name):
                    if not uidplus:
                        before = int(self._client.folder_status(server, ["UIDNEXT"])[b"UIDNEXT"])
                    typ, answer = self._send_append(server, batch)
                    text = _as_bytes(answer[0]) if answer and answer[0] else typ.encode()
                    if typ != "OK":
                        raise imaplib.IMAP4.error(_text(text))
            except ServerError as exc:
                raise append_refused(exc, out, len(batch)) from exc
            if uidplus:
                out += _appended_uids(text, len(batch))
                continue
            # stored: a failure to find them now must not read as a refusal
            try:
                with self._translate("look for the messages appended to", name):
                    out += self._find_appended(name, server, before, [d for d, _f, _t in batch])
            except ServerError as exc:
                log.warning("%s; they will be matched by content on the next run", exc)
                out += [None] * len(batch)
        return out

    def _send_append(
        self, server: str, batch: list[tuple[bytes, list[str], datetime | None]]
    ) -> tuple[str, list[Any]]:
        """Send ``APPEND`` with every message of `batch` and read its answer: imaplib
        sends one literal per command, and imapclient's `multiappend` takes a NO
        that comes instead of a literal's continuation for a lost connection.

        With LITERAL+ the command goes out without waiting, in writes of about
        `_SEND_CHUNK` bytes (small messages share one, a big one is sent as it is).
        Without it each literal waits for the server's "+"; a tagged answer instead
        (a refusal) ends the command there. Returns imaplib's (typ, data); BAD
        raises as in imaplib."""
        imap = self._client._imap
        plus = "LITERAL+" in self._capabilities
        folder = self._client._normalise_folder(server)
        tag = imap._new_tag()
        out = bytearray(tag + b" APPEND " + _as_bytes(folder))
        refused = False
        for data, flags, date in batch:
            if flags:
                out += b" (" + " ".join(flags).encode("ascii") + b")"
            if date is not None:
                out += b' "' + datetime_to_INTERNALDATE(date).encode("ascii") + b'"'
            out += b" {%d%s}\r\n" % (len(data), b"+" if plus else b"")
            if not plus:
                imap.send(bytes(out))
                out.clear()
                if not _continued(imap, tag):
                    refused = True
                    break
            if len(data) >= _SEND_CHUNK:
                if out:
                    imap.send(bytes(out))
                    out.clear()
                imap.send(data)
            else:
                out += data
                if len(out) >= _SEND_CHUNK:
                    imap.send(bytes(out))
                    out.clear()
        if not refused:
            out += b"\r\n"
            imap.send(bytes(out))
        typ, data = imap._command_complete("APPEND", tag)
        return str(typ), data

    def add_flags(self, uids: Iterable[int], flags: Flags) -> None:
        self._store(uids, flags, add=True)

    def store_flags(
        self, uids: Iterable[int], add: Flags, remove: Flags, unchanged_since: int = 0
    ) -> set[int]:
        """Conditional with CONDSTORE and `unchanged_since` > 0: ``UID STORE set
        (UNCHANGEDSINCE m) +FLAGS.SILENT (...)`` (or ``-FLAGS.SILENT``); the server
        skips every message changed after m and names it in ``[MODIFIED set]``.

        A change that both adds and removes is one ``FLAGS.SILENT`` with the message's
        whole new list, read first with ``FETCH (FLAGS)`` so that keywords and every
        other flag stay as they are (see `_replace_flags`). An addition followed by a
        removal would store each message twice, and a Maildir server finds a file it
        renamed in the command before only by listing the whole folder again: Dovecot
        took 30-40 ms for that second STORE on a 20,000-message folder, against 2-4
        ms for the first."""
        wanted = set(uids)
        if not wanted:
            return set()
        if unchanged_since <= 0 or "CONDSTORE" not in self._capabilities:
            self._store(wanted, add, add=True)
            self._store(wanted, remove, add=False)
            return set()
        folder = self._require_selected("store flags in")
        adding = _flag_args(add, "add flags in", folder, self._address)
        removing = _flag_args(remove, "remove flags in", folder, self._address)
        modified: set[int] = set()
        with self._translate("store flags in", folder):
            for chunk in uid_set_chunks(wanted):
                todo = parse_uid_set(chunk)
                if adding and removing:
                    modified |= self._replace_flags(todo, unchanged_since, adding, removing)
                elif adding or removing:
                    operation = "+FLAGS.SILENT" if adding else "-FLAGS.SILENT"
                    modified |= self._conditional_store(
                        todo, unchanged_since, operation, adding or removing
                    )
        return modified & wanted

    def _replace_flags(
        self, uids: set[int], since: int, adding: list[str], removing: list[str]
    ) -> set[int]:
        """Add `adding` and remove `removing` with one ``FLAGS.SILENT`` per resulting
        list: the UIDs refused as changed since `since`.

        Safe although FLAGS replaces the whole list: the list comes from a FETCH, and
        the STORE's UNCHANGEDSINCE only lets through a message that has not changed
        since `since`, so it still has exactly the flags that were read, whichever
        came first, the read or another client's change. A message gone meanwhile
        needs nothing; one whose list cannot be written back as read (a flag that is
        not a plain atom) is refused, for the caller to re-read and merge."""
        rows = self._uid_fetch(uid_set(uids), "(FLAGS)")
        drop = {f.lower() for f in removing}
        drop.add(_RECENT)
        by_list: dict[tuple[str, ...], set[int]] = {}
        refused: set[int] = set()
        for uid in sorted(uids):
            row = rows.get(uid)
            if row is None:
                continue  # expunged meanwhile
            if b"FLAGS" not in row:
                refused.add(uid)
                continue
            kept = [f for f in _flags_of(row[b"FLAGS"]) if f.lower() not in drop]
            if not all(_FLAG_RE.match(f) for f in kept):
                refused.add(uid)
                continue
            have = {f.lower() for f in kept}
            kept += [f for f in adding if f.lower() not in have]
            by_list.setdefault(tuple(sorted(kept)), set()).add(uid)
        for flags, group in by_list.items():
            refused |= self._conditional_store(group, since, "FLAGS.SILENT", list(flags))
        return refused

    def _conditional_store(
        self, uids: set[int], since: int, operation: str, flags: list[str]
    ) -> set[int]:
        """One ``UID STORE`` with UNCHANGEDSINCE: the UIDs the server refused."""
        imap = self._client._imap
        imap.untagged_responses.pop("MODIFIED", None)
        typ, data = self._run(
            "UID",
            "STORE",
            uid_set(uids),
            f"(UNCHANGEDSINCE {since})",
            operation,
            "(" + " ".join(flags) + ")",
        )
        # imaplib files the tagged response's [MODIFIED set] with the untagged ones
        codes = [c for c in imap.untagged_responses.pop("MODIFIED", []) if c]
        # our own silent responses (UID and MODSEQ) say nothing the caller needs
        imap.untagged_responses.pop("FETCH", None)
        if typ != "OK" and not codes:
            raise imaplib.IMAP4.error(_text(data[0]) if data and data[0] else typ)
        failed: set[int] = set()
        for code in codes:
            failed |= parse_uid_set(code, max(uids))
        return failed & uids

    def remove_flags(self, uids: Iterable[int], flags: Flags) -> None:
        self._store(uids, flags, add=False)

    def expunge(self, uids: Iterable[int]) -> None:
        """With UIDPLUS: STORE \\Deleted, then UID EXPUNGE of exactly these UIDs.

        Without UIDPLUS only a bare EXPUNGE exists, which would also remove messages
        that another client flagged \\Deleted and meant to keep until *it* expunges.
        So: SEARCH DELETED; if every \\Deleted message is one of ours, EXPUNGE;
        otherwise ours stay flagged \\Deleted (a warning is logged) and go at the next
        run when the other client's are gone. A message flagged by another client
        between the SEARCH and the EXPUNGE would still go: no protocol closes that gap.
        """
        wanted = set(uids)
        if not wanted:
            return
        folder = self._require_selected("expunge")
        chunks = uid_set_chunks(wanted)
        with self._translate("expunge", folder):
            for chunk in chunks:
                self._client.add_flags(chunk, ["\\Deleted"], silent=True)
            if "UIDPLUS" in self._capabilities:
                for chunk in chunks:
                    self._client.uid_expunge(chunk)
                return
            others = set(self._client.search("DELETED")) - wanted
            if others:
                log.warning(
                    "folder %r on %s: left %d message(s) flagged \\Deleted instead of "
                    "expunging them, because the server has no UIDPLUS and %d other "
                    "message(s) there are flagged \\Deleted by another client",
                    folder,
                    self._address,
                    len(wanted),
                    len(others),
                )
                return
            self._client.expunge()

    def move(self, uids: Sequence[int], name: str) -> dict[int, int]:
        """Move messages of the selected folder to `name`: UID MOVE (RFC 6851), which
        keeps flags and INTERNALDATE and costs no upload; without MOVE, UID COPY then
        \\Deleted and an expunge of exactly these UIDs (see `expunge`). Returns old
        UID -> new UID from COPYUID where the server has UIDPLUS (for MOVE it comes in
        an untagged OK before the expunges), else found by Message-ID and size; a UID
        missing from the result was not found, and the caller matches it by content."""
        wanted = sorted(set(uids))
        if not wanted:
            return {}
        folder = self._require_selected("move messages from")
        dest = self._server_name(name)
        found: dict[int, int] = {}
        has_move = "MOVE" in self._capabilities
        told = "UIDPLUS" in self._capabilities
        with self._translate(f"move messages to {name!r} from", folder):
            if not told:
                # Without COPYUID the new UIDs are found the way `append` finds one:
                # by Message-ID and size among the arrivals from the old UIDNEXT on.
                before = self.identities(wanted)
                uidnext = int(self._client.folder_status(dest, ["UIDNEXT"])[b"UIDNEXT"])
            for chunk in uid_set_chunks(wanted):
                self._response_codes("COPYUID")  # none left over from an earlier command
                if has_move:
                    self._client.move(chunk, dest)
                else:
                    self._client.copy(chunk, dest)
                for data in self._response_codes("COPYUID") if told else []:
                    m = _COPYUID_RE.match(data)
                    if m:
                        old, new = uid_list(m.group(2)), uid_list(m.group(3))
                        found.update(zip(old, new, strict=False))
        if not has_move:
            self.expunge(wanted)
        if not told:
            with self._translate(f"look for the messages moved to {name!r} from", folder):
                arrived = self._arrivals(name, dest, uidnext)
            by_identity: dict[tuple[str | None, int], list[int]] = {}
            for uid, ident in sorted(arrived.items()):
                by_identity.setdefault((ident.message_id, ident.size), []).append(uid)
            for uid, ident in before.items():
                pool = by_identity.get((ident.message_id, ident.size))
                if pool:
                    found[uid] = pool.pop(0)
        return found

    def _response_codes(self, code: str) -> list[bytes]:
        """Take the data of every ``[CODE ...]`` response code read since the last
        call. imaplib files a response code's data under ``untagged_responses[CODE]``
        whether it came in an untagged OK (MOVE's COPYUID, RFC 6851) or in the tagged
        answer (COPY's COPYUID, RFC 4315); imapclient returns neither (its `copy` hands
        back imaplib's FETCH list, None), so this is where the store reads imaplib's
        table for them."""
        return [_as_bytes(d) for d in self._client._imap.untagged_responses.pop(code, []) if d]

    # -- protocol: server space -----------------------------------------------------

    def search(self, criteria: Sequence[str]) -> list[int]:
        """``UID SEARCH [RETURN (ALL)] UID a:b criteria`` in windows (see
        `_search_windows`), so that no answer line can outgrow imaplib's limit."""
        folder = self._require_selected("search")
        tokens = [str(c) for c in criteria]
        bad = [t for t in tokens if not _SEARCH_TOKEN_RE.fullmatch(t)]
        if bad:
            raise ServerError(f"search in {folder!r}: {bad[0]!r} is not a valid search key")
        with self._translate("search", folder):
            return sorted(self._search_windows(tokens, 1, None))

    def quota(self) -> list[QuotaResource]:
        """imapclient's `get_quota_root` sends ``GETQUOTAROOT INBOX`` and reads the
        QUOTAROOT and QUOTA answers."""
        if "QUOTA" not in self._capabilities:
            return []
        with self._translate("read quota of", "INBOX"):
            _roots, quotas = self._client.get_quota_root("INBOX")
        return [
            QuotaResource(_text(q.quota_root), _text(q.resource).upper(), q.usage, q.limit)
            for q in quotas
        ]

    def folder_sizes(self) -> dict[str, tuple[int, int]]:
        """With STATUS=SIZE one pipelined STATUS per folder (no folder opened).
        Without it each folder is EXAMINEd (read-only, so \\Recent and the selected
        folder's state are left alone) and ``UID FETCH 1:* (UID RFC822.SIZE)`` summed;
        that leaves no folder selected."""
        names = [f.name for f in self._list_folders() if f.selectable]
        if "STATUS=SIZE" in self._capabilities:
            out: dict[str, tuple[int, int]] = {}
            for name, numbers in self._status_numbers(names, ["MESSAGES", "SIZE"]).items():
                with self._translate("status", name):
                    out[name] = (numbers[b"MESSAGES"], numbers[b"SIZE"])
            return out
        self._selected = None
        self._generation += 1
        out = {}
        for name in names:
            with self._translate("read the size of", name):
                data = self._client.select_folder(self._server_name(name), readonly=True)
                if int(data[b"EXISTS"]) == 0:
                    out[name] = (0, 0)
                    continue
                rows = parse_fetch(self._uid_fetch_data("1:*", "(UID RFC822.SIZE)"))
                sizes = [int(r[b"RFC822.SIZE"]) for r in rows.values() if b"RFC822.SIZE" in r]
                out[name] = (len(sizes), sum(sizes))
        if names:
            with self._translate("close folder"):
                self._client.close_folder()  # read-only: CLOSE expunges nothing
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._client.logout()
        except Exception:
            _shutdown(self._client)

    def __enter__(self) -> ImapStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------

    def _uid_fetch(
        self, uids: str, items: str, modifiers: str | None = None
    ) -> dict[int, dict[bytes, Any]]:
        """``UID FETCH <set> <items>`` through imapclient's imaplib object.

        Why not `IMAPClient.fetch`: in 4.1.0 it int()s every message id to filter the
        answer, so a set like "1:*" or "3:9" raises ValueError, and a list of plain
        UIDs makes command lines as long as the folder. Sending the command directly
        keeps one round trip with compact sets. Only imaplib's long-stable internals
        (`_command`, `_command_complete`, `_untagged_response`) are used, exactly as
        imapclient itself uses them.

        Rows are keyed by UID and only rows that carry a UID are kept: unsolicited
        FETCH responses (another client changed flags) carry only a sequence number
        unless QRESYNC is enabled, and keying them by that number would attach them to
        the wrong message. Stale FETCH responses from earlier commands are dropped
        first; callers also check that the items they asked for are present.
        """
        return parse_fetch(self._uid_fetch_data(uids, items, modifiers))

    def _uid_fetch_data(self, uids: str, items: str, modifiers: str | None = None) -> list[Any]:
        """`_uid_fetch` before parsing: the FETCH data as imaplib would file it."""
        imap = self._client._imap
        imap.untagged_responses.pop("FETCH", None)
        tag = imap._command("UID", "FETCH", uids, items, modifiers)  # None: left out
        typ, data, fetched = self._complete_fetch(tag)
        if typ != "OK":
            raise imaplib.IMAP4.error(_text(data[0]) if data and data[0] else typ)
        return fetched

    def _complete_fetch(self, tag: bytes) -> tuple[str, list[Any], list[Any]]:
        """imaplib's `_command_complete` for a FETCH, but reading the ``* n FETCH``
        responses itself: returns (typ, data, the FETCH data as imaplib would file it).

        Why: per response imaplib formats a log line and tries four regular
        expressions before filing it, which was half the time of a 20 000-message
        `list_messages()`. Here a FETCH line costs a readline and one match; its
        literals are read with imaplib's own `read`. Every other line (the tagged
        answer, EXISTS, VANISHED, BYE, ...) is handed back to imaplib's
        `_get_response` by lending it the line through a one-shot `_get_line`, so
        imaplib's bookkeeping stays exactly its own."""
        imap = self._client._imap
        fetched: list[Any] = []
        readline, read, match = imap.readline, imap.read, _FETCH_START_RE.match
        try:
            while imap.tagged_commands[tag] is None:
                line = readline()
                if not line.endswith(b"\r\n"):
                    raise imaplib.IMAP4.abort(
                        "socket error: EOF" if not line else f"unterminated line: {line!r:.60}"
                    )
                m = match(line) if line.startswith(b"* ") else None
                if m is None:
                    _lend_line(imap, line[:-2])
                    imap._get_response()
                    imap._check_bye()
                    continue
                data = m.group(1) + b" " + line[m.end() : -2]
                while data.endswith(b"}"):
                    literal = _LITERAL_END_RE.search(data)
                    if literal is None:
                        break
                    fetched.append((data, read(int(literal.group(1)))))
                    data = readline()
                    if not data.endswith(b"\r\n"):
                        raise imaplib.IMAP4.abort("socket error: EOF in a FETCH response")
                    data = data[:-2]
                fetched.append(data)
        except imaplib.IMAP4.abort as exc:
            raise imaplib.IMAP4.abort(f"command: FETCH => {exc}") from exc
        typ, data = imap.tagged_commands.pop(tag)
        imap._check_bye()
        if typ == "BAD":
            raise imaplib.IMAP4.error(f"FETCH command error: {typ} {data}")
        return str(typ), data, fetched

    def _run(
        self, name: str, *args: str | bytes, watch: Callable[[], None] | None = None
    ) -> tuple[str, list[Any]]:
        """Send a command imapclient has no method for (or none that keeps what we
        need) and read up to its tagged response, leaving the untagged ones in
        imaplib's `untagged_responses` for the caller. Returns imaplib's (typ, data);
        BAD raises as in imaplib, NO is the caller's to judge.

        `watch` is called after each response read: imaplib files responses by type
        and so loses their order, which the SELECT with QRESYNC needs (see
        `_select_with`). The loop is imaplib's own `_get_tagged_response`."""
        imap = self._client._imap
        tag = imap._command(name, *args)
        if watch is None:
            typ, data = imap._command_complete(name, tag)
            return str(typ), data
        try:
            while True:
                result = imap.tagged_commands[tag]
                if result is not None:
                    del imap.tagged_commands[tag]
                    break
                imap._check_bye()
                imap._get_response()
                watch()
        except imaplib.IMAP4.abort as exc:
            raise imaplib.IMAP4.abort(f"command: {name} => {exc}") from exc
        imap._check_bye()
        typ, data = result
        if typ == "BAD":
            raise imaplib.IMAP4.error(f"{name} command error: {typ} {data}")
        return str(typ), data

    def _pipeline(self, commands: Sequence[tuple[str | bytes, ...]]) -> list[tuple[str, list[Any]]]:
        """Send commands without waiting for each answer, at most `_PIPELINE_DEPTH`
        in flight (so neither side's socket buffer can fill up and stall both), and
        return each one's (typ, data) in order; a BAD comes back as ("BAD", [text])
        instead of raising, so that every answer is read and the connection stays in
        step. Only for commands whose untagged answers say what they belong to, or
        merge anyway (STATUS, SEARCH): imaplib files them all in one list per type."""
        imap = self._client._imap
        results: list[tuple[str, list[Any]]] = []
        for start in range(0, len(commands), _PIPELINE_DEPTH):
            window = commands[start : start + _PIPELINE_DEPTH]
            tags = [(str(command[0]), imap._command(*command)) for command in window]
            for name, tag in tags:
                try:
                    typ, data = imap._command_complete(name, tag)
                except imaplib.IMAP4.abort:
                    raise
                except imaplib.IMAP4.error as exc:
                    typ, data = "BAD", [str(exc).encode()]
                results.append((str(typ), data))
        return results

    def _select_with(self, name: str, params: str) -> tuple[FolderStatus, dict[str, list[Any]]]:
        """``SELECT name params`` (imapclient's select_folder cannot send parameters),
        keeping imaplib's idea of the state right. Returns the status (HIGHESTMODSEQ 0
        for a NOMODSEQ folder) and the untagged responses about the selected folder.

        When a folder was selected already, a QRESYNC server closes it with
        ``* OK [CLOSED]`` first, and anything before that (a late VANISHED or FETCH)
        concerns the old folder. imaplib files responses by type and loses that order,
        so every response is looked at as it comes and all before [CLOSED] dropped."""
        server = self._server_name(name)
        imap = self._client._imap
        # a failed SELECT leaves no folder selected (RFC 3501 6.3.1)
        self._selected = None
        self._generation += 1
        imap.untagged_responses = {}  # as imaplib's own select() does

        def closed() -> None:
            if "CLOSED" in imap.untagged_responses:
                imap.untagged_responses = {}

        typ, data = self._run(
            "SELECT", self._client._normalise_folder(server), params, watch=closed
        )
        if typ != "OK":
            imap.state = "AUTH"
            raise imaplib.IMAP4.error(_text(data[0]) if data and data[0] else typ)
        imap.state = "SELECTED"
        imap.is_readonly = False
        untagged, imap.untagged_responses = imap.untagged_responses, {}
        if "READ-ONLY" in untagged:
            raise imaplib.IMAP4.readonly(f"{name} is not writable")

        def number(key: str) -> int | None:
            values = [v for v in untagged.get(key, []) if v]
            return int(values[-1].split()[0]) if values else None

        uidnext = number("UIDNEXT")
        if uidnext is None:  # optional before IMAP4rev2; ask for it
            uidnext = int(self._client.folder_status(server, ["UIDNEXT"])[b"UIDNEXT"])
        uidvalidity = number("UIDVALIDITY")
        exists = number("EXISTS")
        if uidvalidity is None or exists is None:
            raise ValueError("the SELECT response lacks UIDVALIDITY or EXISTS")
        highest = 0 if "NOMODSEQ" in untagged else number("HIGHESTMODSEQ") or 0
        self._selected = canonical_folder(name)
        self._selected_uidnext = uidnext
        return FolderStatus(uidvalidity, uidnext, exists, highest), untagged

    def _store(self, uids: Iterable[int], flags: Flags, add: bool) -> None:
        operation = "add flags in" if add else "remove flags in"
        wanted = set(uids)
        if not wanted:
            return
        folder = self._require_selected(operation)
        flag_list = _flag_args(flags, operation, folder, self._address)
        if not flag_list:
            return
        store = self._client.add_flags if add else self._client.remove_flags
        with self._translate(operation, folder):
            for chunk in uid_set_chunks(wanted):
                store(chunk, flag_list, silent=True)

    def _find_appended(
        self, name: str, server: str, uidnext: int, datas: Sequence[bytes]
    ) -> list[int | None]:
        """The UIDs of `datas`, just appended (in this order) to `name` whose UIDNEXT
        was `uidnext` before: among the arrivals, those with a message's Message-ID
        and RFC822.SIZE. When more arrived than we sent (another client appended the
        same message meanwhile) ours are the highest, in order; when fewer (expunged
        already), those messages get None, since which is which cannot be told."""
        keys = [(message_id(data), len(_LINE_END_RE.sub(b"\r\n", data))) for data in datas]
        pools: dict[tuple[str | None, int], list[int]] = {}
        for uid, ident in sorted(self._arrivals(name, server, uidnext).items()):
            pools.setdefault((ident.message_id, ident.size), []).append(uid)
        ours: dict[tuple[str | None, int], list[int]] = {}
        for key, count in Counter(keys).items():
            pool = pools.get(key, [])
            if len(pool) > count:
                log.debug("append to %r: %d candidates for %d new UID(s)", name, len(pool), count)
            ours[key] = pool[len(pool) - count :] if len(pool) >= count else []
        return [ours[key].pop(0) if ours[key] else None for key in keys]

    def _arrivals(self, name: str, server: str, uidnext: int) -> dict[int, RemoteIdentity]:
        """Size and Message-ID of the messages of `name` from UID `uidnext` on: how the
        UID of something we just put there is found without UIDPLUS. Looking costs an
        EXAMINE of the folder and a re-SELECT of the previously selected one, unless
        it is the selected folder."""
        previous = self._selected
        if previous == canonical_folder(name):
            self._client.noop()  # let the server announce the new message
            rows = self._uid_fetch(f"{uidnext}:*", _IDENTITY_ITEMS)
        else:
            self._selected = None  # until the previous selection is back
            self._client.select_folder(server, readonly=True)
            rows = self._uid_fetch(f"{uidnext}:*", _IDENTITY_ITEMS)
            if previous is None:
                self._client.close_folder()  # read-only: CLOSE expunges nothing
            else:
                self._client.select_folder(self._server_name(previous))
                self._selected = previous
        return {u: i for u, i in _identities(rows, None).items() if u >= uidnext}

    def _unselect(self, server: str) -> None:
        """Leave the selected folder without expunging anything: UNSELECT, or else
        EXAMINE it and CLOSE (CLOSE on a read-only folder expunges nothing)."""
        if "UNSELECT" in self._capabilities:
            self._client.unselect_folder()
        else:
            self._client.select_folder(server, readonly=True)
            self._client.close_folder()
        self._selected = None
        self._generation += 1

    def _exists(self, server: str) -> bool:
        """True if `server` is listed as a selectable folder."""
        for attrs, _delim, name in self._client.list_folders("", server):
            if _text(name) == server:
                return RemoteFolder(server, frozenset(_text(a) for a in attrs)).selectable
        return False

    def _server_name(self, name: str) -> str:
        # Nested names are joined with the delimiter, and no component may hold it:
        # learn it unless the name is one plain word, which no delimiter is part of.
        if not all(c.isalnum() or c in " -_" for c in name):
            self._learn_delimiter()
        return canonical_to_server(name, self._delimiter, self._prefix)

    def _learn_delimiter(self) -> None:
        if not self._delimiter_known:
            with self._translate("list folders"):
                rows = self._client.list_folders("", "")  # LIST "" "": the delimiter
            for _attrs, delim, _name in rows:
                self._delimiter = _text(delim) if delim is not None else None
            self._delimiter_known = True

    def _require_selected(self, operation: str) -> str:
        if self._selected is None:
            raise ServerError(
                f"cannot {operation} on {self._address}: no folder is selected",
                hint="this is a bug in mirrorsync; please report it",
            )
        return self._selected

    @contextmanager
    def _translate(self, operation: str, folder: str | None = None) -> Iterator[None]:
        """Turn whatever imapclient, imaplib, socket or ssl raise into our errors."""
        where = f"{operation} {folder!r}" if folder is not None else operation
        try:
            yield
        except MirrorsyncError:
            raise
        except LiteralRefused as exc:
            raise ConnectionFailed(
                f"{where} on {self._address}: {exc}",
                hint="the server misbehaves; report it to its administrator",
            ) from exc
        except Overdue as exc:
            raise ConnectionFailed(
                f"{self._address} did not finish {where} in time: {exc}",
                hint="the server or the network is too slow; run again or raise timeout",
            ) from exc
        except imaplib.IMAP4.readonly as exc:
            raise ServerError(
                f"{where} on {self._address}: the folder is read-only",
                hint="mirrorsync needs write access; check the folder's permissions",
            ) from exc
        except imaplib.IMAP4.abort as exc:
            raise ConnectionFailed(
                f"connection to {self._address} lost during {where} ({server_text(exc)})",
                hint="check the network and run mirrorsync again",
            ) from exc
        except imaplib.IMAP4.error as exc:
            text = server_text(exc)
            raise ServerError(
                f"{where} failed on {self._address}: {text}", hint=_code_hint(text)
            ) from exc
        except TimeoutError as exc:
            raise ConnectionFailed(
                f"{self._address} did not answer within {self._timeout:g}s during {where}",
                hint="the server or the network is slow or down; run again or raise timeout",
            ) from exc
        except (OSError, EOFError) as exc:  # ssl.SSLError is an OSError
            raise ConnectionFailed(
                f"connection to {self._address} lost during {where} ({server_text(exc)})",
                hint="check the network and run mirrorsync again",
            ) from exc
        except ValueError as exc:  # imapclient's parsers raise it on odd responses
            raise ServerError(
                f"{where}: unexpected response from {self._address} ({server_text(exc)})"
            ) from exc
        except KeyError as exc:
            raise ServerError(
                f"{where}: response from {self._address} lacks {server_text(exc)}"
            ) from exc


_IDENTITY_ITEMS = "(UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"


def _appended_uids(text: bytes, count: int) -> list[int | None]:
    """The UIDs of `count` messages just appended, in their order, from the
    ``[APPENDUID v uid-set]`` in the tagged response `text`: a range "7:9" (either way
    round, RFC 4315) stands for ascending UIDs, since a server hands out UIDs in
    increasing order. All None when the code is missing or its set does not hold
    exactly `count` UIDs (then nothing tells which is which)."""
    m = _APPENDUID_RE.search(text)
    if m is None:
        return [None] * count
    uids: list[int | None] = []
    for part in m.group(2).split(b","):
        low, _, high = part.partition(b":")
        if not low:
            return [None] * count
        a, b = int(low), int(high or low)
        if abs(b - a) + 1 + len(uids) > count:  # also keeps "1:4294967295" cheap
            return [None] * count
        uids.extend(range(min(a, b), max(a, b) + 1))
    return uids if len(uids) == count else [None] * count


def _append_crlf(data: bytes) -> bytes:
    """`data` as imaplib's APPEND sends it: every bare CR or LF made CRLF (the copy
    is skipped when there is none, the usual case)."""
    crlf = data.count(b"\r\n")
    if data.count(b"\n") == crlf and data.count(b"\r") == crlf:
        return data
    return _LINE_END_RE.sub(b"\r\n", data)


def _continued(imap: Any, tag: bytes) -> bool:
    """Wait for the server's "+" before a synchronizing literal: True when it came,
    False when the tagged answer to `tag` came instead (the command is over)."""
    while imap._get_response() is not None:  # None: the continuation request
        if imap.tagged_commands.get(tag) is not None:
            return False
    return True


def _identities(
    rows: dict[int, dict[bytes, Any]], wanted: set[int] | None
) -> dict[int, RemoteIdentity]:
    out: dict[int, RemoteIdentity] = {}
    for uid, row in rows.items():
        if (wanted is not None and uid not in wanted) or b"RFC822.SIZE" not in row:
            continue
        header = next((v for k, v in row.items() if k.startswith(b"BODY[HEADER.FIELDS")), None)
        mid = message_id(header) if isinstance(header, bytes) else None
        out[uid] = RemoteIdentity(uid, int(row[b"RFC822.SIZE"]), mid)
    return out


def _lend_line(imap: Any, line: bytes) -> None:
    """Make imaplib's next `_get_line()` return `line` (read already) instead of
    reading one; the instance attribute removes itself, so later calls (the lines
    after a literal) read from the connection as usual."""

    def once() -> bytes:
        del imap._get_line
        return line

    imap._get_line = once


def _folder_status(numbers: dict[bytes, int], items: list[str]) -> FolderStatus | None:
    """A STATUS answer as FolderStatus, or None when an item asked for is missing."""
    if not all(item.encode() in numbers for item in items):
        return None
    return FolderStatus(
        uidvalidity=numbers[b"UIDVALIDITY"],
        uidnext=numbers[b"UIDNEXT"],
        messages=numbers[b"MESSAGES"],
        highestmodseq=numbers.get(b"HIGHESTMODSEQ", 0),
    )


def _flag_args(flags: Flags, operation: str, folder: str, address: str) -> list[str]:
    """Flags to send: \\Recent dropped (servers refuse it), the rest checked to be
    valid IMAP atoms so a bad name cannot corrupt the command line."""
    out = []
    for flag in sorted(flags):
        if flag.lower() == _RECENT:
            continue
        if not _FLAG_RE.match(flag):
            raise ServerError(
                f"cannot {operation} {folder!r} on {address}: {flag!r} is not a valid "
                "IMAP flag name"
            )
        out.append(flag)
    return out


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", "replace")


class _ClientSession:
    """`connection.Session` over imapclient: the primitives of `connection.login`
    and `connection.enable`, with imapclient's errors turned into theirs."""

    def __init__(self, client: Any, remote: RemoteConfig) -> None:
        self.client = client
        self.remote = remote
        self.address = f"{remote.host}:{remote.port}"

    def current_capabilities(self) -> frozenset[str]:
        return frozenset(_text(c).upper() for c in self.client.capabilities())

    def starttls(self, context: ssl.SSLContext) -> None:
        self.client.starttls(context)

    def send_login(self, username: str, password: str) -> None:
        remote = self.remote
        if (remote.host, remote.port, remote.username) in quickimap.refused_logins:
            raise LoginRefused("refused")  # the quick check was just refused: not again
        try:
            self.client.login(username, password)
        except imapclient.exceptions.LoginError as exc:
            # imapclient wraps every IMAP4.error, a dropped connection included
            if isinstance(exc.__context__, imaplib.IMAP4.abort):
                raise LoginLost(server_text(exc.__context__)) from exc
            text = server_text(exc)
            if "[UNAVAILABLE]" in text.upper():
                raise LoginUnavailable(text) from exc
            raise LoginRefused(text) from exc

    def send_enable(self, extension: str) -> frozenset[str]:
        try:
            return frozenset(_text(c).upper() for c in self.client.enable(extension))
        except imaplib.IMAP4.abort:
            raise
        except imaplib.IMAP4.error as exc:
            raise Refused(server_text(exc)) from exc


def _shutdown(client: Any) -> None:
    try:
        client.shutdown()
    except Exception:
        log.debug("closing the connection failed", exc_info=True)
