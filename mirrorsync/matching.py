"""Pair unpaired server messages and local files by content.

Used when the state cannot be trusted to know every pair: a run was killed between
a copy and its state commit, the server's UIDVALIDITY changed, the state was lost,
or the first sync meets a Maildir that already holds mail. Matching by content is
what makes those cases neither lose nor duplicate mail.

Cheap identity first (Message-ID, else size), then the hash settles it; only the
candidates' bodies are fetched. A file that another tool marked with its tracking
fields (mbsync's X-TUID, mutt's Status, ...: `content.TRACKING_FIELDS`) is the same
message when it equals the server's bytes once those fields are gone on both sides:
it is paired after the exact matches, and then takes the server's bytes
(`take_server_bytes`), so the field leaves the local copy and never reaches the
server.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

from mirrorsync.content import (
    content_hash,
    crlf_size,
    loose_hash,
    message_id,
    strip_tracking,
    to_lf,
)
from mirrorsync.errors import LocalStoreError
from mirrorsync.maildir import MaildirFolder
from mirrorsync.model import LocalMessage
from mirrorsync.remote import RemoteStore
from mirrorsync.sync.plan import Match

REPLACE_BATCH = 500  # files written and made durable together
REPLACE_BATCH_BYTES = 8 * 1024 * 1024  # bounds memory: a batch is held until it is placed


def _ident(msgid: str | None, size: int) -> tuple[str, object]:
    return ("id", msgid) if msgid else ("size", size)


def match_by_content(
    remote: RemoteStore,
    folder: MaildirFolder,
    uids: Sequence[int],
    local: Sequence[LocalMessage],
) -> list[Match]:
    if not uids or not local:
        return []
    # Local side: read each unpaired file once. key -> (exact hash, loose hash); the
    # loose one is computed only for a file that has tracking fields.
    hashes_of: dict[str, tuple[str, str]] = {}
    by_ident: dict[tuple[str, object], list[str]] = defaultdict(list)
    idents_of: dict[str, list[tuple[str, object]]] = defaultdict(list)
    for lm in local:
        try:
            data = to_lf(folder.read(lm))
        except LocalStoreError:
            continue  # vanished meanwhile: it is no candidate
        msgid, exact = message_id(data), content_hash(data)
        stripped = strip_tracking(data)
        hashes_of[lm.key] = (exact, exact if stripped is None else content_hash(stripped))
        idents_of[lm.key].append(_ident(msgid, crlf_size(data)))
        if stripped is not None and msgid is None:
            # Without a Message-ID the size picks candidates: the server's copy is
            # most likely the one without the fields.
            idents_of[lm.key].append(_ident(None, crlf_size(stripped)))
        for ident in idents_of[lm.key]:
            by_ident[ident].append(lm.key)
    # Server side: identities, then bodies only of the candidates.
    ids = remote.identities(uids)
    candidates = [u for u, i in ids.items() if _ident(i.message_id, i.size) in by_ident]
    served: dict[int, tuple[str, str]] = {}
    for uid, body, _f, _d in remote.fetch(candidates):
        data = to_lf(body)
        exact = content_hash(data)
        served[uid] = (exact, loose_hash(data) or exact)
    matches: list[Match] = []
    matched: set[int] = set()
    # Exact matches first, so that a file with tracking fields never takes the place
    # of one that is byte for byte the server's.
    for loose in (False, True):
        for uid in sorted(served):
            if uid in matched:
                continue
            i = ids[uid]
            want = served[uid][loose]
            for key in by_ident[_ident(i.message_id, i.size)]:
                if hashes_of[key][loose] == want:
                    matches.append(Match(uid, key, served[uid][0], replace=loose))
                    matched.add(uid)
                    for ident in idents_of[key]:  # taken: no candidate any more
                        by_ident[ident].remove(key)
                    break
    return matches


def take_server_bytes(
    remote: RemoteStore,
    folder: MaildirFolder,
    local: Mapping[str, LocalMessage],
    items: Sequence[tuple[int, str, str]],
) -> set[str]:
    """Give each local file (uid, key, hash: the server message it was matched with
    apart from tracking fields) the server's bytes, keeping its name (key and flags)
    and mtime; the server's folder must be selected. Returns the keys whose file now
    holds exactly the bytes of `hash`; a file a reader renamed or removed meanwhile,
    or one that no longer equals the server's message loosely, is left as it is.

    Each file is replaced whole and atomically (`MaildirFolder.replace_contents`), so
    a kill leaves it old or new, never half; the caller records the pair only after,
    and a file left new but unrecorded is matched exactly on the next run."""
    wanted = {uid: (key, h) for uid, key, h in items if key in local}
    done: set[str] = set()
    batch: list[tuple[LocalMessage, bytes]] = []
    size = 0

    def flush() -> None:
        nonlocal size
        done.update(m.key for m in folder.replace_contents(batch))
        batch.clear()
        size = 0

    for uid, body, _f, _d in remote.fetch(sorted(wanted)):
        key, h = wanted[uid]
        data = to_lf(body)
        if content_hash(data) != h:
            continue  # not the message that was matched (cannot happen: UIDs are unique)
        msg = local[key]
        try:
            mine = to_lf(folder.read(msg))
        except LocalStoreError:
            continue  # renamed or removed by a reader: the next run sees it afresh
        if mine != data and (loose_hash(mine) or content_hash(mine)) != (loose_hash(data) or h):
            continue  # the file changed since it was matched: not ours to replace
        if mine == data:
            done.add(key)
            continue
        batch.append((msg, data))
        size += len(data)
        if len(batch) >= REPLACE_BATCH or size >= REPLACE_BATCH_BYTES:
            flush()
    if batch:
        flush()
    return done
