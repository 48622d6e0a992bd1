"""Folder names and folder patterns, importable for next to nothing.

The canonical form of a folder name, the IMAP-style patterns of `folders.include`,
`folders.exclude` and `local.local_only`, and the mapping of a listed server name to
the canonical form live here rather than in `model`, `config` and `imap.store`
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


# The special-use attributes (RFC 6154, and \Important from RFC 8457) a pattern may
# name instead of a folder: `exclude: ["\\Junk"]` leaves out whichever folder the
# server marks as the junk folder, whatever its name in the user's language.
SPECIAL_USES = (
    "\\All",
    "\\Archive",
    "\\Drafts",
    "\\Flagged",
    "\\Important",
    "\\Junk",
    "\\Sent",
    "\\Trash",
)
SPECIAL_USE_META = "special_use"  # the server's special-use folders: "name\tattribute" lines


def special_use_of(attributes: Iterable[str]) -> str:
    """The folder's special-use attribute, spelled as in SPECIAL_USES, or ""."""
    wanted = {a.lower(): a for a in SPECIAL_USES}
    for attribute in attributes:
        found = wanted.get(attribute.lower())
        if found is not None:
            return found
    return ""


def matches_any(patterns: Iterable[str], name: str, special: str = "") -> bool:
    """Whether any of `patterns` matches folder `name` (canonicalised first), or,
    for a special-use pattern such as "\\Junk", its special use `special`."""
    name = canonical_folder(name)
    return any(
        p.lower() == special.lower() if p.startswith("\\") else match_pattern(p, name)
        for p in patterns
    )


def included(include: Iterable[str], exclude: Iterable[str], name: str, special: str = "") -> bool:
    """The `folders:` filter: matched by an include pattern and by no exclude one;
    `special` is the folder's special-use attribute, for patterns that name one."""
    return matches_any(include, name, special) and not matches_any(exclude, name, special)


def special_use_patterns(patterns: Iterable[str]) -> bool:
    """Whether any pattern names a special use (which only a listing can resolve)."""
    return any(p.startswith("\\") for p in patterns)


def server_to_canonical(name: str, delimiter: str | None, prefix: str = "") -> str | None:
    """The canonical name of a server folder, or None when it has none: a component
    holding "/" while the delimiter is something else, an empty component, a name
    outside the personal namespace `prefix` (Courier's "INBOX.": "INBOX.Work" is
    "Work"), or any name that would not map back to itself (`server_spelling`),
    since the next sync would then create a second folder."""
    if name.upper() == "INBOX":
        return "INBOX"
    if prefix:
        if not name.startswith(prefix):
            return None
        name = name[len(prefix) :]
    parts = [name] if delimiter is None else name.split(delimiter)
    if any(not p or SEP in p for p in parts):
        return None
    if parts[0].upper() != "INBOX":
        # nothing to fold: the components spell the very name back (a fast path on
        # every listed folder of every run)
        return SEP.join(parts)
    canonical = canonical_folder(SEP.join(parts))
    try:
        back = server_spelling(canonical, delimiter, prefix)
    except ValueError:
        return None
    return (
        canonical
        if _inbox_folded(back, delimiter) == _inbox_folded(prefix + name, delimiter)
        else None
    )


def _inbox_folded(server_name: str, delimiter: str | None) -> str:
    """A server name with a leading INBOX level in capitals: "inbox.Sub" is listed by
    some servers for what is created as "INBOX.Sub" (RFC 3501 5.1)."""
    head = "INBOX" + (delimiter or "")
    if delimiter and server_name[: len(head)].upper() == head.upper():
        return head + server_name[len(head) :]
    return server_name


def server_spelling(name: str, delimiter: str | None, prefix: str = "") -> str:
    """The server's name (still Unicode; modified UTF-7 is the wire's business) of
    canonical `name`: its components joined with `delimiter`, after the personal
    namespace `prefix`; INBOX is INBOX. ValueError, saying why, when the server
    cannot hold the name: no component may contain the delimiter, whether nested or
    not ("Release.1" on a "." server would be the folder 1 inside Release)."""
    name = canonical_folder(name)
    if name == "INBOX":
        return name
    parts = name.split(SEP)
    if any(not p for p in parts):
        raise ValueError("it has an empty component")
    if delimiter is None:
        if len(parts) > 1:
            raise ValueError("it is nested, but the server has no folder hierarchy")
        return prefix + name
    bad = [p for p in parts if delimiter in p]
    if bad:
        raise ValueError(
            f"the server separates folder levels with {delimiter!r}, which "
            + (f"the component {bad[0]!r} contains" if len(parts) > 1 else "the name contains")
        )
    return prefix + delimiter.join(parts)


# Keys in the state's meta table: how the last full sync spelled folder names on the
# server, which `mirrorsync.quick` needs to read the server's listing as it did.
PREFIX_META = "namespace_prefix"  # the personal namespace prefix left out of names
DELIMITER_META = "delimiter"  # the server's hierarchy delimiter; "" for none
KEPT_LOCAL_META = "kept_local"  # local folders the server cannot hold, one a line


def stored_delimiter(delimiter: str | None) -> str:
    return delimiter or ""


def loaded_delimiter(value: str) -> str | None:
    return value or None
