"""IMAP flags <-> Maildir info letters.

Only the six flags that both worlds agree on are mapped; anything else on the server
(keywords, \\Recent) is left alone there and never deleted by a sync, because the
planner only adds or removes flags that it can see on both sides.
"""

from __future__ import annotations

import functools

from mirrorsync.model import Flags

IMAP_TO_LETTER: dict[str, str] = {
    "\\Draft": "D",
    "\\Flagged": "F",
    "$Forwarded": "P",
    "\\Answered": "R",
    "\\Seen": "S",
    "\\Deleted": "T",
}
LETTER_TO_IMAP: dict[str, str] = {v: k for k, v in IMAP_TO_LETTER.items()}
_CANONICAL: dict[str, str] = {k.lower(): k for k in IMAP_TO_LETTER}
SYNCED_FLAGS: Flags = frozenset(IMAP_TO_LETTER)


_INTERNED: dict[Flags, Flags] = {}


def normalize(flags: object) -> Flags:
    """Keep the mappable flags, spelled canonically (IMAP flag names are case-insensitive)."""
    out = set()
    for f in flags:  # type: ignore[attr-defined]
        name = f.decode("ascii", "replace") if isinstance(f, bytes) else str(f)
        canon = _CANONICAL.get(name.lower())
        if canon:
            out.add(canon)
    result = frozenset(out)
    # At most 64 distinct sets exist: share them, so 10^5 messages do not hold 10^5
    # copies of the same few flag sets.
    return _INTERNED.setdefault(result, result)


def to_letters(flags: Flags) -> str:
    """Info letters, sorted as the Maildir spec asks."""
    return "".join(sorted(IMAP_TO_LETTER[f] for f in flags if f in IMAP_TO_LETTER))


@functools.lru_cache(maxsize=256)
def from_letters(letters: str) -> Flags:
    """Unknown letters (lowercase keywords, other tools' letters) are ignored, not lost:
    the file keeps them until mirrorsync renames it, and then they are carried over."""
    result = frozenset(LETTER_TO_IMAP[c] for c in letters if c in LETTER_TO_IMAP)
    return _INTERNED.setdefault(result, result)


def merge(base: Flags, local: Flags, remote: Flags) -> Flags:
    """Three-way merge: a flag added on either side is added, removed on either side is
    removed. The two cannot conflict, since adding needs it absent from base and removing
    needs it present."""
    added = (local - base) | (remote - base)
    removed = (base - local) | (base - remote)
    return frozenset((base | added) - removed)
