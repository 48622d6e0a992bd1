"""Folder names and folder patterns, importable for next to nothing.

The canonical form of a folder name, the IMAP-style patterns of `folders.include`,
`folders.exclude` and `local.local_only`, and the mapping of a listed server name to
the canonical form live here rather than in `model`, `config` and `imapstore`
(which re-export them) because `mirrorsync.quick` must decide with exactly the same
code as a full sync while importing almost nothing: those modules pull in
dataclasses, YAML and imapclient, which cost several times what the quick check
itself does. Only `functools` is imported, which opening the state (`_sqlite3`)
imports anyway.
"""

from __future__ import annotations

import functools

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy knows this name
if TYPE_CHECKING:
    from collections.abc import Iterable

SEP = "/"


def canonical_folder(name: str) -> str:
    """INBOX is case-insensitive in IMAP (RFC 3501 5.1); give it one spelling."""
    head, sep, rest = name.partition(SEP)
    if head.upper() == "INBOX":
        return "INBOX" + sep + rest
    return name


@functools.lru_cache(maxsize=4096)
def match_pattern(pattern: str, name: str) -> bool:
    """Simulate the pattern as an NFA over the name. A regex would do, except that
    INBOX is case-insensitive (RFC 3501 5.1) while the rest of a name is not, so the
    first five characters of an INBOX name compare case-insensitively, whatever
    wildcards precede them in the pattern."""
    fold = len("INBOX") if name == "INBOX" or name.startswith("INBOX" + SEP) else 0

    def closure(states: set[int]) -> set[int]:
        # A wildcard may match nothing, so its position also reaches the next one.
        todo = list(states)
        while todo:
            k = todo.pop()
            if k < len(pattern) and pattern[k] in "*%" and k + 1 not in states:
                states.add(k + 1)
                todo.append(k + 1)
        return states

    states = closure({0})
    for j, c in enumerate(name):
        following: set[int] = set()
        for k in states:
            if k == len(pattern):
                continue
            p = pattern[k]
            if p == "*" or (p == "%" and c != SEP):
                following.add(k)
            elif p == c or (j < fold and p.upper() == c):
                following.add(k + 1)
        if not following:
            return False
        states = closure(following)
    return len(pattern) in states


def matches_any(patterns: Iterable[str], name: str) -> bool:
    """Whether any of `patterns` matches folder `name` (canonicalised first)."""
    name = canonical_folder(name)
    return any(match_pattern(p, name) for p in patterns)


def included(include: Iterable[str], exclude: Iterable[str], name: str) -> bool:
    """The `folders:` filter: matched by an include pattern and by no exclude one."""
    return matches_any(include, name) and not matches_any(exclude, name)


def server_to_canonical(name: str, delimiter: str | None) -> str | None:
    """The canonical name of a server folder, or None when it has no canonical form
    (a component holding "/" while the delimiter is something else, or an empty
    component), since such a name could not be mapped back."""
    parts = [name] if delimiter is None else name.split(delimiter)
    if any(not p or SEP in p for p in parts):
        return None
    return canonical_folder(SEP.join(parts))
