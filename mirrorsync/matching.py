"""Pair unpaired server messages and local files by content.

Used when the state cannot be trusted to know every pair: a run was killed between
a copy and its state commit, the server's UIDVALIDITY changed, the state was lost,
or the first sync meets a Maildir that already holds mail. Matching by content is
what makes those cases neither lose nor duplicate mail.

Cheap identity first (Message-ID, else size), then the hash settles it; only the
candidates' bodies are fetched.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from mirrorsync.content import content_hash, crlf_size, message_id, to_lf
from mirrorsync.errors import LocalStoreError
from mirrorsync.maildir import MaildirFolder
from mirrorsync.model import LocalMessage
from mirrorsync.planner import Match
from mirrorsync.remote import RemoteStore


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
    # Local side: read each unpaired file once.
    by_ident: dict[tuple[str, object], list[tuple[str, str]]] = defaultdict(list)
    for lm in local:
        try:
            data = to_lf(folder.read(lm))
        except LocalStoreError:
            continue  # vanished meanwhile: it is no candidate
        by_ident[_ident(message_id(data), crlf_size(data))].append((lm.key, content_hash(data)))
    # Server side: identities, then bodies only of the candidates.
    ids = remote.identities(uids)
    candidates = [u for u, i in ids.items() if _ident(i.message_id, i.size) in by_ident]
    hashes = {uid: content_hash(to_lf(data)) for uid, data, _f, _d in remote.fetch(candidates)}
    matches: list[Match] = []
    for uid in sorted(hashes):
        i = ids[uid]
        pool = by_ident[_ident(i.message_id, i.size)]
        for n, (key, h) in enumerate(pool):
            if h == hashes[uid]:
                matches.append(Match(uid, key, h))
                del pool[n]
                break
    return matches
