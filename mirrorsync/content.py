"""Message bytes: line endings, the content hash, and cheap identity.

A Maildir file holds the server's bytes with CRLF turned into LF and nothing added;
an upload turns LF back into CRLF. The hash is taken over the LF form so that a
message hashes the same on both sides.

Mail readers and other sync tools add header fields to their own copy of a message
to keep track of it (mbsync's X-TUID, mutt's Content-Length and Status, ...). Those
copies are still the same message: `loose_hash` is the hash of the LF form without
them, used only to pair messages that are otherwise byte for byte the same.
"""

from __future__ import annotations

import hashlib
import re
from typing import BinaryIO

_MSGID_RE = re.compile(rb"^message-id:[ \t]*(.*(?:\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)


def to_lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


def to_crlf(data: bytes) -> bytes:
    return to_lf(data).replace(b"\n", b"\r\n")


def content_hash(lf_data: bytes) -> str:
    return hashlib.sha256(lf_data).hexdigest()


def crlf_size(lf_data: bytes) -> int:
    """What the server's RFC822.SIZE would be for this LF-form message."""
    return len(lf_data) + lf_data.count(b"\n")


# Header fields that tools add to their own copy of a message and that say nothing
# about the message itself. Only these, and only in the header block, are ignored:
# - X-TUID: mbsync (1.4) adds it to nearly every message it stores;
# - X-OfflineIMAP: offlineimap adds it to messages it uploads (to find their UID);
# - Status, X-Status, Content-Length, Lines: mutt and neomutt add them when saving a
#   message to another folder (flags in mbox style, and the body's length).
# Not ignored: X-Keywords, X-Mozilla-Keys (they carry the user's labels, which a
# replacement by the server's bytes would lose) and X-Mozilla-Status/-Status2
# (Thunderbird rewrites them in place; a file differing there is uploaded as its own
# message: at worst a duplicate, never a loss of what only the local copy holds).
TRACKING_FIELDS = frozenset(
    {b"x-tuid", b"x-offlineimap", b"status", b"x-status", b"content-length", b"lines"}
)
_TRACKING_RE = re.compile(
    rb"^(?:" + b"|".join(sorted(TRACKING_FIELDS)) + rb")[ \t]*:", re.IGNORECASE | re.MULTILINE
)


def strip_tracking(lf_data: bytes) -> bytes | None:
    """The LF-form message without the TRACKING_FIELDS of its header block (each with
    its folded continuation lines), or None when it has none. Everything else, the
    body included, is kept byte for byte."""
    if lf_data.startswith(b"\n"):
        return None  # an empty header block
    end = lf_data.find(b"\n\n")
    head_len = len(lf_data) if end < 0 else end + 1
    if not _TRACKING_RE.search(lf_data, 0, head_len):
        return None
    kept: list[bytes] = []
    dropping = False
    # Split at LF only: a bare CR is content (bytes.splitlines would split there).
    for line in lf_data[:head_len].split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        name, colon, _ = line.partition(b":")
        dropping = bool(colon) and name.rstrip(b" \t").lower() in TRACKING_FIELDS
        if not dropping:
            kept.append(line)
    return b"\n".join(kept) + lf_data[head_len:]


def loose_hash(lf_data: bytes) -> str | None:
    """The content hash without the tracking fields, or None when the message has
    none (its loose hash is then `content_hash` itself, not computed twice)."""
    stripped = strip_tracking(lf_data)
    return None if stripped is None else content_hash(stripped)


def header_block(data: bytes) -> bytes:
    head = to_lf(data[:262144])
    end = head.find(b"\n\n")
    return head if end < 0 else head[: end + 1]


def message_id(data: bytes) -> str | None:
    """The Message-ID header value (unfolded, stripped), or None."""
    m = _MSGID_RE.search(header_block(data))
    if not m:
        return None
    value = b" ".join(m.group(1).split()).strip()
    return value.decode("ascii", "replace") or None


class LfWriter:
    """A file-like sink that turns CRLF into LF on the fly and hashes what it writes,
    for messages streamed to disk in chunks. A CR at the end of one chunk is held back
    until the next shows whether an LF follows it."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._hash = hashlib.sha256()
        self._held = b""

    def write(self, data: bytes) -> int:
        chunk = self._held + bytes(data)
        self._held = b""
        if chunk.endswith(b"\r"):
            chunk, self._held = chunk[:-1], b"\r"
        lf = chunk.replace(b"\r\n", b"\n")
        self._out.write(lf)
        self._hash.update(lf)
        return len(data)

    def close(self) -> None:
        if self._held:
            self._out.write(self._held)
            self._hash.update(self._held)
            self._held = b""

    def hexdigest(self) -> str:
        return self._hash.hexdigest()
