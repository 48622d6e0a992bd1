"""The IMAP wire, once for every client in `mirrorsync.imap`: modified UTF-7, quoting,
capabilities, UID sets, the tokenizer, the response reader and the bounds on lines
and literals.

The store (on imapclient's imaplib object), push and the quick check's look (each on
a socket of its own) read the server's bytes in different ways, but they read them
with these functions, so a name, a literal or a capability list means the same to
all three. Table-tested in tests/test_imap_wire.py.

This module is imported by the quick check, whose whole run costs a few
milliseconds: it imports only `re`, which the interpreter has loaded already at
start-up (no typing, dataclasses, socket or imapclient).
"""

from __future__ import annotations

import re

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy knows this name
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence
    from typing import Any

# -- bounds on what the server may send --------------------------------------------------

# imaplib's own bound on one line (its _MAXLINE); the socket readers use it too.
LINE_MAX = 1_000_000
# The largest literal accepted where no body is expected (folder names, header fields).
LITERAL_MAX = 1024 * 1024
# After the timeout, a command's answer must keep coming at this rate on average: a
# server that trickles (5 bytes every 0.5 s) cannot hold a run for longer than the
# timeout plus what its bytes are worth at this rate.
MIN_RATE = 16 * 1024  # bytes per second


class LineTooLong(ValueError):
    """The server sent a line longer than the reader accepts."""


class LiteralRefused(OSError):
    """The server announced a literal larger than the command can expect."""


class Overdue(TimeoutError):
    """A command's answer did not come within its deadline."""


def literal_refused(size: int, limit: int, expected: str = "") -> LiteralRefused:
    """The error for a literal of `size` bytes where at most `limit` were expected
    (`expected`: what the limit comes from, for the message)."""
    return LiteralRefused(
        f"the server announced {size} bytes where at most {limit} were "
        f"expected{f' ({expected})' if expected else ''}; the "
        "connection was dropped rather than read them"
    )


# -- modified UTF-7 (RFC 3501 5.1.3): the project's one codec ----------------------------


def encode_mutf7(text: str) -> bytes:
    """The canonical modified UTF-7 form of `text` (as imapclient encodes it)."""
    import binascii

    out = bytearray()
    pending: list[str] = []

    def flush() -> None:
        if pending:
            data = "".join(pending).encode("utf-16be")
            out.extend(b"&" + binascii.b2a_base64(data).rstrip(b"\n=").replace(b"/", b",") + b"-")
            pending.clear()

    for ch in text:
        if " " <= ch <= "~":
            flush()
            out.extend(b"&-" if ch == "&" else ch.encode("ascii"))
        else:
            pending.append(ch)
    flush()
    return bytes(out)


def decode_mutf7(raw: bytes) -> str:
    """`raw` read as imapclient's decoder reads it, leniently: an 8-bit byte stands
    for itself (as Latin-1), a shift without its end runs to the end of the name.
    UnicodeError for base64 that is not UTF-16."""
    out: list[str] = []
    i = 0
    while i < len(raw):
        c = raw[i]
        if c != 0x26:  # "&" shifts to base64 up to the next "-"
            out.append(chr(c))
            i += 1
            continue
        end = raw.find(b"-", i + 1)
        chunk = raw[i + 1 : end if end >= 0 else len(raw)]
        if chunk or end < 0:
            out.append((b"+" + chunk.replace(b",", b"/") + b"-").decode("utf-7"))
        else:
            out.append("&")  # "&-" is "&"
        i = end + 1 if end >= 0 else len(raw)
    return "".join(out)


def decode_mutf7_strict(raw: bytes) -> str | None:
    """The name `decode_mutf7` makes of `raw` for names in canonical form; None for
    anything else (8-bit bytes, a shift without its end, base64 that a different
    encoder would have written differently), so that only names with one possible
    reading are compared."""
    if not raw.isascii() or any(c < 0x20 or c == 0x7F for c in raw):
        return None
    try:
        text = decode_mutf7(raw)
        return text if encode_mutf7(text) == raw else None
    except (UnicodeError, ValueError):  # a lone surrogate cannot be encoded back
        return None


# -- atoms, strings, capabilities --------------------------------------------------------

_ATOM_SPECIALS = frozenset(b'(){ %*"\\]')


def is_atom(text: str) -> bool:
    """Whether `text` can go on the wire as an IMAP atom, as imaplib sends a LOGIN's
    user name (unquoted): then the server reads it as the full path's LOGIN does."""
    if not text or not text.isascii():
        return False
    return all(0x20 < c < 0x7F and c not in _ATOM_SPECIALS for c in text.encode("ascii"))


def quoted(text: str | bytes) -> bytes | None:
    """`text` as imaplib's `_quote` sends a password (backslash and double quote
    escaped, in double quotes), or None where that would send something the server
    could read differently (anything but printable ASCII): send a literal then."""
    raw = text.encode("utf-8") if isinstance(text, str) else text
    if not all(0x20 <= c <= 0x7E for c in raw):
        return None
    return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def capability_set(text: bytes | str) -> frozenset[str]:
    """Capabilities as imapclient normalises them: upper-cased, split on white space."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    return frozenset(text.upper().split())


def response_code_capabilities(text: bytes) -> frozenset[str] | None:
    """The capabilities of a ``[CAPABILITY ...]`` response code at the start of
    `text`, taken up to the last "]" as imaplib's Response_code pattern does."""
    if not text.startswith(b"[CAPABILITY "):
        return None
    end = text.rfind(b"]")
    return capability_set(text[len(b"[CAPABILITY ") : end])


# -- UID sets ------------------------------------------------------------------------------

# A UID set longer than this is split over several commands. RFC 7162 (section 4) asks
# clients to keep command lines under 8192 octets; staying far below also suits servers
# with smaller limits, and compact ranges make long sets rare anyway.
UID_SET_MAX_LEN = 1000


def uid_set(uids: Iterable[int]) -> str:
    """Compact IMAP sequence-set for UIDs: [1, 2, 3, 5, 7, 8] -> "1:3,5,7:8"."""
    return ",".join(_ranges(sorted(set(uids))))


def uid_set_chunks(uids: Iterable[int], max_len: int = UID_SET_MAX_LEN) -> list[str]:
    """Compact UID sets, each at most `max_len` characters (a single range may exceed
    it only if one range alone does, which cannot happen for sane limits)."""
    chunks: list[str] = []
    current: list[str] = []
    length = 0
    for part in _ranges(sorted(set(uids))):
        extra = len(part) + (1 if current else 0)
        if current and length + extra > max_len:
            chunks.append(",".join(current))
            current, length = [], 0
            extra = len(part)
        current.append(part)
        length += extra
    if current:
        chunks.append(",".join(current))
    return chunks


def _ranges(sorted_uids: list[int]) -> Iterator[str]:
    if not sorted_uids:
        return
    start = prev = sorted_uids[0]
    for uid in sorted_uids[1:]:
        if uid == prev + 1:
            prev = uid
            continue
        yield str(start) if start == prev else f"{start}:{prev}"
        start = prev = uid
    yield str(start) if start == prev else f"{start}:{prev}"


def parse_uid_set(text: bytes | str, maximum: int | None = None) -> set[int]:
    """ "1:3,7,9:8" -> {1, 2, 3, 7, 8, 9}. `maximum` clips ranges (and stands for
    "*"), so a reply like "1:4294967295" cannot make a set of four billion UIDs."""
    if isinstance(text, bytes):
        text = text.decode("ascii")
    out: set[int] = set()
    for piece in text.split(","):
        piece = piece.strip()
        if not piece:
            continue
        first, sep, last = piece.partition(":")
        ends = [_uid_end(end, maximum) for end in ((first, last) if sep else (first,))]
        low, high = min(ends), max(ends)
        if maximum is not None and sep:
            high = min(high, maximum)
        out.update(range(low, high + 1))
    return out


def _uid_end(text: str, maximum: int | None) -> int:
    if text != "*":
        return int(text)
    if maximum is None:
        raise ValueError("'*' in a UID set needs a maximum")
    return maximum


def uid_list(text: bytes) -> list[int]:
    """A UID set in its written order (COPYUID pairs two sets position by position)."""
    out: list[int] = []
    for part in text.split(b","):
        low, _, high = part.partition(b":")
        a, b = int(low), int(high or low)
        out.extend(range(a, b + 1) if a <= b else range(a, b - 1, -1))
    return out


# -- the tokenizer -------------------------------------------------------------------------
#
# A response is handed over as imaplib files it: a response with literals is a run of
# (text-before-literal, literal) tuples followed by the text after the last one; one
# without is a single bytes item. `split_responses` groups a stream of such items,
# `split_response` cuts them from a socket's buffer, and `parse_parts` reads one.
#
# Why not imapclient's `parse_response`: it lexes byte by byte in Python, about 25 µs
# per message of a ``UID FETCH 1:* (UID FLAGS RFC822.SIZE)``; this costs one regular
# expression per token.

_TOKEN_RE = re.compile(
    rb" *(?:"
    rb"(\()"  # 1: list opens
    rb"|(\))"  # 2: list closes
    # 3: quoted string; only \\ and \" are quoted pairs (RFC 3501 quoted-specials)
    rb'|"((?:[^"\\]|\\["\\])*)"'
    rb"|\{(\d+)\+?\}\Z"  # 4: a literal follows (only at the end of a text)
    # 5: atom, number or NIL; a [section] may hold spaces and parens, as in
    # BODY[HEADER.FIELDS (MESSAGE-ID)], and be followed by <partial>
    rb"|((?:[^ ()\"{\[\x00-\x1f\x7f]|\[[^\[\]]*\])+)"
    rb")"
)
_QUOTED_PAIR_RE = re.compile(rb"\\(.)", re.DOTALL)


def split_responses(data: Iterable[object]) -> Iterator[list[bytes | tuple[bytes, bytes]]]:
    """Group imaplib's untagged data of one type into responses (see above); None
    items (imaplib's "no data") are dropped."""
    pending: list[bytes | tuple[bytes, bytes]] = []
    for item in data:
        if item is None:
            continue
        pending.append(item)  # type: ignore[arg-type]
        if not isinstance(item, tuple):
            yield pending
            pending = []
    if pending:  # a literal without the rest of its line: imaplib never does this
        yield pending


def parse_parts(parts: Sequence[bytes | tuple[bytes, bytes]]) -> list[Any]:
    """One response's tokens: atoms and numbers as bytes (folder "007" must stay
    "007"), NIL as None, quoted strings unescaped, literals as their bytes,
    parenthesized lists as tuples. ValueError on anything else."""
    stack: list[list[Any]] = []
    current: list[Any] = []
    for part in parts:
        text, literal = part if isinstance(part, tuple) else (part, None)
        current, literal = _tokens(text, literal, stack, current)
        if literal is not None:
            raise ValueError(f"literal without announcement after {text[:60]!r}")
    if stack:
        raise ValueError("unbalanced '(' in response")
    return current


def _tokens(
    text: bytes, literal: bytes | None, stack: list[list[Any]], current: list[Any]
) -> tuple[list[Any], bytes | None]:
    """The tokens of one text (and the literal after it) added to `current`; the
    list being filled afterwards, and the literal if no token took it."""
    match = _TOKEN_RE.match
    pos, end = 0, len(text)
    while pos < end:
        m = match(text, pos)
        if m is None:
            if text[pos:].strip(b" "):
                raise ValueError(f"cannot parse {text[pos : pos + 40]!r}")
            break
        pos = m.end()
        kind = m.lastindex
        if kind == 5:
            atom = m.group(5)
            current.append(None if atom == b"NIL" else atom)
        elif kind == 1:
            stack.append(current)
            current = []
        elif kind == 2:
            if not stack:
                raise ValueError(f"unbalanced ')' in {text[:60]!r}")
            done = tuple(current)
            current = stack.pop()
            current.append(done)
        elif kind == 3:
            quoted_text = m.group(3)
            if b"\\" in quoted_text:
                quoted_text = _QUOTED_PAIR_RE.sub(rb"\1", quoted_text)
            current.append(quoted_text)
        else:
            if literal is None:
                raise ValueError(f"literal announced but missing in {text[:60]!r}")
            current.append(literal)
            literal = None
    return current, literal


def literal_size(line: bytes) -> int | None:
    """The size of the literal a line announces at its end ("... {12}" or "{12+}").
    (No regular expression: compiling one costs the quick check's import time.)"""
    if not line.endswith(b"}"):
        return None
    start = line.rfind(b"{")
    digits = line[start + 1 : -2 if line.endswith(b"+}") else -1]
    return int(digits) if start >= 0 and digits.isdigit() and digits.isascii() else None


def split_response(
    buf: bytes | bytearray, max_line: int = LINE_MAX, max_literal: int = LITERAL_MAX
) -> tuple[tuple[bytes | tuple[bytes, bytes], ...], int] | None:
    """The first complete response in `buf` and how many bytes it took, or None if
    more bytes are needed. A line ending in a literal marker {n} (or {n+}) continues
    after the n bytes of the literal. LineTooLong or LiteralRefused beyond the bounds,
    so that a broken or hostile server cannot make a reader's buffer grow."""
    parts: list[bytes | tuple[bytes, bytes]] = []
    pos = 0
    while True:
        end = buf.find(b"\r\n", pos)
        if (end < 0 and len(buf) - pos > max_line) or end - pos > max_line:
            raise LineTooLong(f"the server sent a line longer than {max_line} bytes")
        if end < 0:
            return None
        line = bytes(buf[pos:end])
        size = literal_size(line)
        if size is None:
            parts.append(line)
            return tuple(parts), end + 2
        if size > max_literal:
            raise literal_refused(size, max_literal)
        start = end + 2
        if len(buf) < start + size:
            return None
        parts.append((line, bytes(buf[start : start + size])))
        pos = start + size


# -- one response, by its first words -------------------------------------------------------


class Response:
    """One complete response, split into tag, kind, number and text."""

    __slots__ = ("kind", "number", "parts", "tag", "text")

    def __init__(
        self,
        tag: str,
        kind: str,
        number: int | None,
        text: str,
        parts: tuple[bytes | tuple[bytes, bytes], ...],
    ) -> None:
        self.tag = tag  # "*" untagged, "+" continuation, else the tag of a command
        self.kind = kind  # upper case: OK, NO, BAD, BYE, STATUS, LIST, EXISTS, ...
        self.number = number  # the message number in "* 3 EXISTS"
        self.text = text  # the rest of the first line, for OK/NO/BAD/BYE and errors
        self.parts = parts  # everything after the tag (and number), for `values`

    def __repr__(self) -> str:
        return f"Response({self.tag!r}, {self.kind!r}, {self.number!r}, {self.text!r})"

    @property
    def code(self) -> str | None:
        """The response code of a status response: "[NOTIFICATIONOVERFLOW] ..." ->
        "NOTIFICATIONOVERFLOW"."""
        m = re.match(r"\[([A-Za-z0-9-]+)", self.text)  # re caches it: compiled once
        return m.group(1).upper() if m else None

    def values(self) -> tuple[Any, ...]:
        """The tokens after the kind (see `parse_parts`: atoms, numbers and strings
        as bytes, lists as tuples); ValueError for what cannot be read."""
        return tuple(parse_parts(self.parts)[1:])


def parse_line(parts: tuple[bytes | tuple[bytes, bytes], ...]) -> Response:
    """Split one complete response into tag, kind, number and text."""
    first = parts[0]
    head = first[0] if isinstance(first, tuple) else first
    tag, _, rest = head.partition(b" ")
    if tag == b"+":
        return Response("+", "", None, rest.decode("utf-8", "replace"), ())
    skip = len(tag) + 1
    word, _, after = rest.partition(b" ")
    number = None
    if tag == b"*" and word.isdigit():
        number = int(word)
        skip += len(word) + 1
        word, _, after = after.partition(b" ")
    # Drop "TAG " (and "N ") from the first part, so that `values` sees KIND first.
    stripped = list(parts)
    stripped[0] = (first[0][skip:], first[1]) if isinstance(first, tuple) else first[skip:]
    return Response(
        tag.decode("ascii", "replace"),
        word.decode("ascii", "replace").upper(),
        number,
        after.decode("utf-8", "replace"),
        tuple(stripped),
    )
