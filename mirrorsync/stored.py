"""What the server stored, checked against what an upload sent.

Some servers change a message on APPEND: Cyrus, by default (`munge8bit`), turns every
raw 8-bit byte of the header into "X". Recorded as in sync, the file and the server's
copy would differ for ever, silently: a later match or move by content misses, and
the reader shows a header the server no longer has. So after each batch of uploads
the stored RFC822.SIZE is compared with the size sent (one FETCH for the batch), and
a message whose header holds raw 8-bit bytes is fetched back whole, because Cyrus's
munging keeps the size (one "X" per byte). Where the server's copy differs, it
replaces the local file (same key, flags and date, written durably) with a warning
naming the message, and the state records the hash of the server's copy.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from mirrorsync.content import content_hash, header_block, message_id, to_lf
from mirrorsync.errors import LocalStoreError
from mirrorsync.maildir import MaildirFolder
from mirrorsync.model import LocalMessage
from mirrorsync.remote import RemoteStore

log = logging.getLogger(__name__)

_RAW_8BIT = re.compile(rb"[\x80-\xff]")
_SUBJECT_RE = re.compile(rb"^subject:[ \t]*(.*(?:\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)

# (the uploaded file, the hash of its LF form, the CRLF bytes sent, the new UID)
Sent = tuple[LocalMessage, str, bytes, int]


def adopt_server_copies(
    remote: RemoteStore, name: str, mfolder: MaildirFolder, sent: Sequence[Sent]
) -> dict[int, str]:
    """Check the uploads `sent` to folder `name`, which must be selected, and make the
    local file of each one the server changed hold the server's bytes. Returns UID ->
    hash of the new local content for each file replaced; the others keep the hash
    of what was sent. A file a reader renamed or removed meanwhile is left alone (the
    next run sees its content differ or its absence)."""
    if not sent:
        return {}
    sizes = remote.sizes([uid for *_, uid in sent])
    suspects = {
        uid: (lm, digest)
        for lm, digest, data, uid in sent
        if uid in sizes and (sizes[uid] != len(data) or _RAW_8BIT.search(header_block(data)))
    }
    if not suspects:
        return {}
    out: dict[int, str] = {}
    for uid, served, _flags, _date in remote.fetch(sorted(suspects)):
        lm, digest = suspects[uid]
        lf = to_lf(served)
        fresh = content_hash(lf)
        if fresh == digest:
            continue
        try:
            replaced = mfolder.replace_contents([(lm, lf)])
        except LocalStoreError as e:
            log.warning("%s: the server changed %s on upload; %s", name, describe(lf), e)
            continue
        if not replaced:
            log.warning(
                "%s: the server changed %s on upload; the local file was renamed or "
                "removed meanwhile, so it keeps its bytes",
                name,
                describe(lf),
            )
            continue
        log.warning(
            "%s: the server changed %s when it was uploaded (it rewrites some messages, "
            "as Cyrus does raw 8-bit header bytes); the local file %s now holds the "
            "server's copy",
            name,
            describe(lf),
            mfolder.path_of(lm),
        )
        out[uid] = fresh
    return out


def describe(lf: bytes) -> str:
    """A message as a person finds it: its Message-ID, else its subject."""
    msgid = message_id(lf)
    if msgid:
        return f"message {msgid}"
    m = _SUBJECT_RE.search(header_block(lf))
    subject = b" ".join(m.group(1).split()).decode("utf-8", "replace") if m else ""
    return (
        f"message with subject {subject!r}"
        if subject
        else "a message without Message-ID or subject"
    )
