"""Message bytes: line endings, the content hash, and cheap identity.

A Maildir file holds the server's bytes with CRLF turned into LF and nothing added;
an upload turns LF back into CRLF. The hash is taken over the LF form so that a
message hashes the same on both sides.
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
