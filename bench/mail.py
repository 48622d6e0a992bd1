"""Small mail helpers shared by the benchmark: flag letters, Message-IDs, content hashes,
Maildir file names. Self-contained on purpose, so the benchmark keeps measuring while
mirrorsync's own modules change under it."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path

# The flags all three tools map to Maildir info letters and back.
IMAP_TO_LETTER: dict[str, str] = {
    "\\draft": "D",
    "\\flagged": "F",
    "\\answered": "R",
    "\\seen": "S",
    "\\deleted": "T",
}
LETTER_TO_IMAP: dict[str, str] = {
    "D": "\\Draft",
    "F": "\\Flagged",
    "R": "\\Answered",
    "S": "\\Seen",
    "T": "\\Deleted",
}
MANAGED_LETTERS = frozenset(LETTER_TO_IMAP)

_MSGID_RE = re.compile(rb"^message-id:[ \t]*(<[^>\r\n]*>)", re.IGNORECASE | re.MULTILINE)
_INFO_RE = re.compile(r"[:!]2,")


def letters_of_imap(flags: Iterable[bytes | str]) -> str:
    """Sorted info letters for the IMAP flags we compare (\\Recent, keywords ignored)."""
    out = set()
    for f in flags:
        name = f.decode("ascii", "replace") if isinstance(f, bytes) else f
        letter = IMAP_TO_LETTER.get(name.lower())
        if letter:
            out.add(letter)
    return "".join(sorted(out))


def imap_of_letters(letters: str) -> list[str]:
    return [LETTER_TO_IMAP[c] for c in sorted(set(letters)) if c in LETTER_TO_IMAP]


def managed(letters: str) -> str:
    """Only the letters we compare, sorted."""
    return "".join(sorted(set(letters) & MANAGED_LETTERS))


def to_lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


def to_crlf(data: bytes) -> bytes:
    return to_lf(data).replace(b"\n", b"\r\n")


def content_hash(data: bytes) -> str:
    """Hash of the LF form, so a message hashes the same on the server and on disk."""
    return hashlib.sha256(to_lf(data)).hexdigest()


def without_header(data: bytes, name: bytes) -> bytes:
    """`data` without the header lines called `name` (unfolded lines only: enough for
    the one-line headers tools add, such as mbsync's X-TUID)."""
    lf = to_lf(data)
    end = lf.find(b"\n\n")
    if end < 0:
        return lf
    prefix = name.lower() + b":"
    head = [ln for ln in lf[: end + 1].split(b"\n") if not ln.lower().startswith(prefix)]
    return b"\n".join(head) + lf[end + 1 :]


def message_id(head: bytes) -> str | None:
    """The Message-ID in a message's first bytes (its header block)."""
    end = head.find(b"\n\n")
    if end < 0:
        end = head.find(b"\r\n\r\n")
    m = _MSGID_RE.search(head if end < 0 else head[:end])
    return m.group(1).decode("ascii", "replace") if m else None


def read_message_id(path: Path, limit: int = 16384) -> str | None:
    with path.open("rb") as f:
        return message_id(f.read(limit))


def split_info(filename: str) -> tuple[str, str, str]:
    """(unique part, separator incl. "2,", letters); ("name", "", "") without an info."""
    m = _INFO_RE.search(filename)
    if m is None:
        return filename, "", ""
    return filename[: m.start()], filename[m.start() : m.end()], filename[m.end() :]


def with_letters(filename: str, letters: str) -> str:
    """The same file name with other info letters, in the tool's own format: the
    unique part and the separator (":" or "!") are kept; letters we do not manage
    (keywords, other tools' letters) are carried over."""
    key, sep, old = split_info(filename)
    keep = set(old) - MANAGED_LETTERS
    return f"{key}{sep or ':2,'}{''.join(sorted(keep | set(letters)))}"
