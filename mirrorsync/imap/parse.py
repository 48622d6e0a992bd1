"""The store's response parsers: FETCH, LIST, STATUS, VANISHED, SEARCH, APPENDUID.

They read what imaplib files (see `mirrorsync.imap.wire` for the shape) and are
table-tested in tests/test_imap_parsing.py on literal server responses. The hot
shapes of FETCH cost one regular expression per message or per item; anything else
goes through the wire's tokenizer, and what that does not understand to imapclient's
parser, so that odd but valid responses still parse (slowly) and garbage still
raises ValueError.
"""

from __future__ import annotations

import imaplib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from imapclient.datetime_util import parse_to_datetime
from imapclient.response_parser import parse_response

from mirrorsync.content import message_id
from mirrorsync.imap.wire import parse_parts, parse_uid_set, split_responses
from mirrorsync.model import NO_FLAGS, Flags, FolderStatus, RemoteIdentity, RemoteMessage

# uid-set: one UID per message appended; a MULTIAPPEND lists them in the messages'
# order (RFC 4315), e.g. "7:9" or "7,9,12:13"
_APPENDUID_RE = re.compile(rb"\[APPENDUID\s+(\d+)\s+([\d:,]+)\]", re.IGNORECASE)
# The data of a COPYUID response code as imaplib files it: "uidvalidity old-set new-set",
# possibly followed by the rest of the line when the text holds another "]".
COPYUID_RE = re.compile(rb"(\d+)\s+([\d:,]+)\s+([\d:,]+)")
# imaplib turns bare CR or LF in an APPEND literal into CRLF; the size the server will
# report is that of the converted message.
LINE_END_RE = re.compile(rb"\r\n|\r(?!\n)|\n")


def text_of(value: object) -> str:
    """Atoms come back as bytes, but the parser turns numeric-looking ones into ints."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


# A folder has few distinct flag sets; sharing one frozenset per set saves building
# one per message (and memory) on 10^5-message listings. Cleared when it grows.
_FLAG_SETS: dict[object, Flags] = {}
_FLAG_SETS_MAX = 4096


def flags_of(value: object) -> Flags:
    """The flags of a FETCH's FLAGS item. A value that is not a list (NIL, an atom)
    raises ValueError: read as "no flags" it would take every flag away from the
    message on the other side. Callers check that the item is there first."""
    if not isinstance(value, tuple):
        raise ValueError(f"FLAGS {text_of(value)!r:.40} is not a list")
    flags = _FLAG_SETS.get(value)
    if flags is None:
        if len(_FLAG_SETS) >= _FLAG_SETS_MAX:
            _FLAG_SETS.clear()
        flags = _FLAG_SETS[value] = frozenset(text_of(f) for f in value)
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


def aware(value: object) -> datetime | None:
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
            row = {as_bytes(attrs[j]).upper(): attrs[j + 1] for j in range(0, len(attrs), 2)}
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
                flags[uid] = flags_of(row[b"FLAGS"])
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
            if any(as_bytes(t).upper() == b"EARLIER" for t in tokens[0]):
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
        attrs = {text_of(a) for a in tokens[0]}
        if any(a.lower() == "\\nonexistent" for a in attrs) and not any(
            a.lower() == "\\noselect" for a in attrs
        ):
            attrs.add("\\Noselect")
        delim = None if tokens[1] is None else text_of(tokens[1])
        out.append(ListedFolder(frozenset(attrs), delim, as_bytes(tokens[2])))
    return out


def parse_status(data: Iterable[Any]) -> dict[bytes, dict[bytes, int]]:
    """``* STATUS name (ITEM n ...)`` responses -> raw name -> {ITEM: n}."""
    out: dict[bytes, dict[bytes, int]] = {}
    for parts in split_responses(data):
        tokens = _parse_one(parts)
        if len(tokens) != 2 or not isinstance(tokens[1], tuple) or len(tokens[1]) % 2:
            raise ValueError(f"malformed STATUS response {parts[0]!r:.80}")
        items = tokens[1]
        out[as_bytes(tokens[0])] = {
            as_bytes(items[i]).upper(): int(items[i + 1]) for i in range(0, len(items), 2)
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


IDENTITY_ITEMS = "(UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"


def appended_uids(text: bytes, count: int) -> list[int | None]:
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


def append_crlf(data: bytes) -> bytes:
    """`data` as imaplib's APPEND sends it: every bare CR or LF made CRLF (the copy
    is skipped when there is none, the usual case)."""
    crlf = data.count(b"\r\n")
    if data.count(b"\n") == crlf and data.count(b"\r") == crlf:
        return data
    return LINE_END_RE.sub(b"\r\n", data)


def identities_of(
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


def folder_status(numbers: dict[bytes, int], items: list[str]) -> FolderStatus | None:
    """A STATUS answer as FolderStatus, or None when an item asked for is missing."""
    if not all(item.encode() in numbers for item in items):
        return None
    return FolderStatus(
        uidvalidity=numbers[b"UIDVALIDITY"],
        uidnext=numbers[b"UIDNEXT"],
        messages=numbers[b"MESSAGES"],
        highestmodseq=numbers.get(b"HIGHESTMODSEQ", 0),
    )


def as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", "replace")
