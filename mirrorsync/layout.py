"""Canonical folder names <-> directories under the local root.

Two layouts are supported:

* ``nested`` (the default): every name component is a directory, so "A/B" is
  ROOT/A/B and INBOX is ROOT/INBOX. Readers that walk a tree (mutt, notmuch, aerc)
  see the server's hierarchy as it is.
* ``maildir++`` (Courier, Dovecot's default): INBOX is ROOT itself and every other
  folder is a hidden sibling, ROOT/.A.B for "A/B". The "." is the separator there, so
  a component's "." is escaped (below).

Directory names are the components' UTF-8 bytes, not modified UTF-7: the name on disk
is what the user sees in a file manager, and `model` already keeps every store's
quirks out of the planner. Every folder a server can have is stored: a component that
would collide with a Maildir's own entries (cur, new, tmp; a leading "."; "." in
maildir++) is written with a reversible "%XX" escape (see `escape_component`), and a
component too long for one directory entry goes on in a subdirectory (`_levels`,
nested only). Only a name no directory can hold (an empty component, NUL, a maildir++
name too long for one directory entry) is refused, with a `FolderNameError` that says
why and what to do, never silently rewritten: a rewritten name would not map back to
the server's folder, and the next sync would create a second folder.

`list_folders` only returns names that map back to the very directory they were found
in (checked by `folder_dir`), so whatever it reports can be synced, and odd
directories (a stray "inbox" next to "INBOX", ".A..B") are skipped with a warning
instead of being synced under a name that means a different directory.

This module imports next to nothing (no logging, pathlib or dataclasses; paths are
strings inside, and `folder_path` makes a Path only for its callers), because
`mirrorsync.quick` lists the local folders with it and a no-op run must not spend
its time importing.
"""

from __future__ import annotations

import errno
import os
import stat

from mirrorsync.names import SEP, canonical_folder

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy knows this name
if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from mirrorsync.errors import LocalStoreError

    # Called as logging's warning() is: a %-format and its arguments.
    Warn = Callable[..., None]

NESTED = "nested"
MAILDIRPP = "maildir++"
LAYOUTS: tuple[str, ...] = (NESTED, MAILDIRPP)

MAILDIR_SUBDIRS: tuple[str, ...] = ("cur", "new", "tmp")
NAME_MAX = 255  # bytes in one directory entry on every common POSIX filesystem

_SKIP_HINT = "rename it on the server, or exclude it in the configuration"


def check_layout(layout: str) -> None:
    """Unknown layouts are a programming or configuration error, caught before any I/O."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown Maildir layout {layout!r}; expected one of {LAYOUTS}")


def folder_path(root: Path, layout: str, name: str) -> Path:
    """The directory that holds folder `name` (its cur/, new/ and tmp/)."""
    from pathlib import Path

    return Path(folder_dir(os.fspath(root), layout, name))


def folder_dir(root: str, layout: str, name: str) -> str:
    """`folder_path` as a string joined onto `root` as given, for the listing below
    and for `mirrorsync.quick`, which does without pathlib."""
    try:
        return _folder_dir(root, layout, name)
    except _Refused as e:
        from mirrorsync.errors import FolderNameError

        raise FolderNameError(e.message, e.hint) from None


def _folder_dir(root: str, layout: str, name: str) -> str:
    check_layout(layout)
    name = canonical_folder(name)
    path = _joined(root, layout, name, _components(layout, name))
    if ESCAPE in name:
        # A name with "%XX" in it was stored as it is before escaping existed: such
        # a directory keeps its folder (renaming it would look like a deletion).
        legacy = _legacy_dir(root, layout, name)
        if legacy not in (None, path) and not os.path.lexists(path) and _is_maildir(legacy):
            return legacy
    return path


def _joined(root: str, layout: str, name: str, stored: list[str]) -> str:
    if layout == NESTED:
        return os.path.join(root, *stored)
    if name == "INBOX":
        return root
    return os.path.join(root, _maildirpp_entry(stored))


def _legacy_dir(root: str, layout: str, name: str) -> str | None:
    """Where mirrorsync stored `name` before it escaped anything, or None if it
    refused the name then (what is escaped now was refused, so nothing collides)."""
    parts = name.split(SEP)
    if any(len(p.encode("utf-8")) > NAME_MAX for p in parts):
        return None
    if layout == NESTED:
        if any(p.lower() in MAILDIR_SUBDIRS or p.startswith(".") for p in parts):
            return None
    elif any("." in p for p in parts):
        return None
    return _joined(root, layout, name, parts)


class _Refused(Exception):
    """A name no directory can hold: `FolderNameError` where it leaves this module.
    Kept apart so that the quick check's listing does not import `errors` (and enum)."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:  # as FolderNameError words it
        return f"{self.message}; {self.hint}"


def _refuse(name: str, layout: str, why: str, hint: str = _SKIP_HINT) -> _Refused:
    return _Refused(f"folder {name!r} cannot be stored in the {layout} Maildir layout: {why}", hint)


def _components(layout: str, name: str) -> list[str]:
    """Split, validate and escape. A name is refused only when no directory could
    hold it; what would merely collide with a Maildir's own entries is escaped (see
    `escape_component`)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise _refuse(name, layout, "it is not valid Unicode") from None
    if "\0" in name:
        raise _refuse(name, layout, "it contains a NUL character")
    parts = name.split(SEP)
    if "" in parts:
        raise _refuse(name, layout, "it has an empty component (leading, trailing or '//')")
    stored = [escape_component(layout, part) for part in parts]
    if layout == NESTED:
        # a component too long for one directory entry continues in a subdirectory
        if all(len(entry) <= NAME_MAX // 4 for entry in stored):
            return stored
        return [level for entry in stored for level in _levels(entry)]
    if name != "INBOX":
        entry = _maildirpp_entry(stored)
        if len(entry.encode("utf-8")) > NAME_MAX:
            raise _refuse(
                name,
                layout,
                f"its directory name {entry[:40]!r}... is longer than {NAME_MAX} bytes in UTF-8",
                _SKIP_HINT + ", or use the nested layout",
            )
    return stored


CONTINUED = "%+"  # ends a directory whose name goes on in its subdirectory


def _levels(entry: str) -> list[str]:
    """The directory levels of one (escaped) component: itself, or, when it is longer
    than a directory entry may be, pieces of at most NAME_MAX bytes that each but the
    last end with CONTINUED ("LLL...%+/LLL"). A piece starting with "." or being cur,
    new or tmp has that first character escaped, so that no level is hidden or read
    as a Maildir's own; the pieces are joined before the escapes are read."""
    if len(entry) <= NAME_MAX // 4:  # no character takes more than 4 bytes
        return [entry]
    levels: list[str] = []
    while len(entry.encode("utf-8")) > NAME_MAX:
        cut, size = 0, len(CONTINUED)
        while size + len(entry[cut].encode("utf-8")) <= NAME_MAX:
            size += len(entry[cut].encode("utf-8"))
            cut += 1
        levels.append(entry[:cut] + CONTINUED)
        entry = entry[cut:]
        if entry.startswith(".") or entry.lower() in MAILDIR_SUBDIRS:
            entry = _quote(entry[0]) + entry[1:]
    levels.append(entry)
    return levels


def _maildirpp_entry(stored: list[str]) -> str:
    # "INBOX/Sub" stays ".INBOX.Sub" (as Dovecot stores it): mapping it to ".Sub" would
    # collide with the top-level folder "Sub".
    return "." + ".".join(stored)


# --- escaping -----------------------------------------------------------------------
#
# A component that would collide with what a Maildir's directory already means is
# stored with the offending characters written as "%XX" (the ASCII code in capital
# hex): "new" is "%6Eew" (nested), ".hidden" is "%2Ehidden" (nested), "a.b" is
# "a%2Eb" (maildir++). A "%" is itself escaped ("%25") only where it is followed by
# two capital hex digits from 00 to 7F, so a name that could be stored before
# escaping existed keeps its directory unless it holds such a sequence, and no
# escaped name can be read as another: decoding turns every "%XX" back, nothing else.

ESCAPE = "%"
_HEX = frozenset("0123456789ABCDEF")


def _is_code(code: str) -> bool:
    """Whether "%" + `code` reads as an escape: only ASCII characters are ever escaped,
    so "%C3" and above are plain text."""
    return len(code) == 2 and "0" <= code[0] <= "7" and code[1] in _HEX


def _quote(c: str) -> str:
    return f"%{ord(c):02X}"  # only ever ".", "%" and the letters of cur/new/tmp


def escape_component(layout: str, part: str) -> str:
    """The directory-name spelling of one name component (see above): escaped are a
    component's first character when the component is cur, new or tmp in any case
    (case-insensitively, because on a case-insensitive file system, macOS's by
    default, "New" *is* new/, and the mapping must not depend on the file system a
    Maildir happens to be on), a leading "." in the nested layout (it would hide the
    folder and read as another tool's dot-directory, or be "." or ".."), every "." in
    maildir++ (its separator), and a "%" that would read as an escape (or, at the
    end, as CONTINUED)."""
    if ESCAPE not in part and (
        "." not in part
        if layout == MAILDIRPP
        else part[:1] != "." and part.lower() not in MAILDIR_SUBDIRS
    ):
        return part  # the usual case, and on the path of every no-op run
    out: list[str] = []
    first = part.lower() in MAILDIR_SUBDIRS and layout == NESTED
    for i, c in enumerate(part):
        if (
            (i == 0 and (first or (c == "." and layout == NESTED)))
            or (c == "." and layout == MAILDIRPP)
            or (c == ESCAPE and (_is_code(part[i + 1 : i + 3]) or part[i + 1 :] == "+"))
        ):
            out.append(_quote(c))
        else:
            out.append(c)
    return "".join(out)


def unescape_component(entry: str) -> str:
    """The name component a directory-name component spells (inverse of
    `escape_component` on its image; anything else is caught by mapping back)."""
    if ESCAPE not in entry:
        return entry
    chars: list[str] = []
    i = 0
    while i < len(entry):  # not `re`: importing it would cost the quick check 6 ms
        code = entry[i + 1 : i + 3]
        if entry[i] == ESCAPE and _is_code(code):
            chars.append(chr(int(code, 16)))
            i += 3
        else:
            chars.append(entry[i])
            i += 1
    return "".join(chars)


def folder_name_of(
    layout: str, parts: tuple[str, ...] | list[str], *, unescape: bool = True
) -> str | None:
    """The folder name the directory ROOT/parts... would hold, unchecked (`folder_dir`
    must map it back to the same place), or None when no folder of this layout can
    live there: a dot-directory or a Maildir's own subdirectory in the nested layout,
    anything but one dot-directory in maildir++. Without `unescape`, "%XX" is read
    as plain text, as before escaping existed."""
    read = unescape_component if unescape else str
    if layout == NESTED:
        if not parts or any(p.startswith(".") or p in MAILDIR_SUBDIRS for p in parts):
            return None
        components: list[str] = []
        pending = ""  # a long component's pieces so far (see `_levels`)
        for p in parts:
            if unescape and p.endswith(CONTINUED):
                pending += p[: -len(CONTINUED)]
            else:
                components.append(read(pending + p))
                pending = ""
        return None if pending else SEP.join(components)
    if not parts:
        return "INBOX"
    if len(parts) != 1 or not parts[0].startswith(".") or parts[0] in (".", ".."):
        return None
    return SEP.join(read(p) for p in parts[0][1:].split("."))


# --- listing ------------------------------------------------------------------------


class _Found:
    """A Maildir found by the listing (a plain class: dataclasses cost an import)."""

    __slots__ = ("identity", "name", "path", "via_symlink")

    def __init__(self, name: str, path: str, identity: tuple[int, int], via_symlink: bool) -> None:
        self.name = name
        self.path = path
        self.identity = identity  # (st_dev, st_ino): the same directory under two names
        self.via_symlink = via_symlink


def _log_warning(message: str, *args: object) -> None:
    import logging

    logging.getLogger(__name__).warning(message, *args)


def list_folders(
    root: str | os.PathLike[str], layout: str, *, warn: Warn | None = None
) -> list[str]:
    """Canonical names of every Maildir (a directory with cur/ and new/) under `root`,
    sorted. A missing root holds no folders. An unreadable directory is an error, not
    an empty one: reporting it as empty would make its folders look deleted, and the
    engine would delete them on the server.

    Directories skipped as odd are reported through `warn` (logging's warning by
    default); `mirrorsync.quick` passes its own, since a run that has something to
    say is not one it may cut short."""
    check_layout(layout)
    if warn is None:
        warn = _log_warning
    top = os.fspath(root)
    root_st = _stat(top)
    if root_st is None:
        return []
    if not stat.S_ISDIR(root_st.st_mode):
        from mirrorsync.errors import LocalStoreError

        raise LocalStoreError(
            f"the local Maildir root {top} is not a directory",
            "point the configuration at a directory",
        )
    found: list[_Found] = []
    if layout == NESTED:
        _walk_nested(top, top, [], {_identity(root_st)}, False, found, warn)
    else:
        _scan_maildirpp(top, root_st, found, warn)
    return _dedupe(found, warn)


def _walk_nested(
    root: str,
    directory: str,
    parts: list[str],
    ancestors: set[tuple[int, int]],
    via_symlink: bool,
    out: list[_Found],
    warn: Warn,
) -> None:
    for entry in _listdir(directory):
        # cur/new/tmp hold messages, never folders; dot-directories are other tools'
        # (.notmuch, .git) or maildir++ folders, which this layout does not use.
        if entry.startswith(".") or entry in MAILDIR_SUBDIRS:
            continue
        child = os.path.join(directory, entry)
        st = _stat(child)
        if st is None or not stat.S_ISDIR(st.st_mode):
            continue
        ident = _identity(st)
        if ident in ancestors:
            warn("not following %s: it is a symlink loop", child)
            continue
        linked = via_symlink or _is_symlink(child)
        child_parts = [*parts, entry]
        if _is_maildir(child):
            # None: a long name's piece, whose name goes on below, unless it is a
            # folder stored before escaping existed ("a%+"), which _consider tells
            name = folder_name_of(NESTED, child_parts)
            literal = folder_name_of(NESTED, child_parts, unescape=False)
            assert literal is not None  # dot-directories and cur/new/tmp were skipped
            _consider(root, NESTED, name or literal, child, ident, linked, out, warn)
        # A folder may hold child folders (INBOX/Sub lives in ROOT/INBOX/Sub).
        _walk_nested(root, child, child_parts, ancestors | {ident}, linked, out, warn)


def _scan_maildirpp(root: str, root_st: os.stat_result, out: list[_Found], warn: Warn) -> None:
    if _is_maildir(root):
        _consider(root, MAILDIRPP, "INBOX", root, _identity(root_st), False, out, warn)
    for entry in _listdir(root):
        if not entry.startswith(".") or entry in (".", ".."):
            continue
        child = os.path.join(root, entry)
        st = _stat(child)
        if st is None or not stat.S_ISDIR(st.st_mode) or not _is_maildir(child):
            continue
        name = folder_name_of(MAILDIRPP, [entry])
        assert name is not None
        _consider(root, MAILDIRPP, name, child, _identity(st), _is_symlink(child), out, warn)


def _consider(
    root: str,
    layout: str,
    raw_name: str,
    path: str,
    ident: tuple[int, int],
    via_symlink: bool,
    out: list[_Found],
    warn: Warn,
) -> None:
    """Keep `path` only if its name maps back to it."""
    name = canonical_folder(raw_name)
    try:
        expected = _folder_dir(root, layout, name)
    except _Refused as e:
        warn("ignoring Maildir %s: %s", path, e)
        return
    if expected != path and ESCAPE in path:
        literal = _literal_name(root, layout, path)
        if literal is not None and literal != name and _legacy_dir(root, layout, literal) == path:
            # stored before escaping existed ("%41" for the folder "%41"): see _folder_dir
            with _suppress_refused():
                if _folder_dir(root, layout, literal) == path:
                    name, expected = literal, path
    if expected != path:
        # On a case-insensitive filesystem ROOT/inbox *is* ROOT/INBOX: same directory.
        st = _stat(expected)
        if st is None or _identity(st) != ident:
            warn(
                "ignoring Maildir %s: its name means the folder %r, which is stored at %s; "
                "rename the directory",
                path,
                name,
                expected,
            )
            return
    out.append(_Found(name, path, ident, via_symlink))


def _literal_name(root: str, layout: str, path: str) -> str | None:
    """The folder name `path` spells with its escapes read as plain text."""
    rel = os.path.relpath(path, root)
    if layout == NESTED:
        return canonical_folder(rel.replace(os.sep, SEP))
    if rel == ".":
        return "INBOX"
    return canonical_folder(SEP.join(rel[1:].split(".")))


class _suppress_refused:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, value: object, tb: object) -> bool:
        return isinstance(value, _Refused)


def _dedupe(found: list[_Found], warn: Warn) -> list[str]:
    """One name per directory: a directory reachable under two names (a symlink to a
    sibling) would otherwise be synced twice, and a deletion in one copy would show up
    as a deletion in the other."""
    best: dict[tuple[int, int], _Found] = {}
    for f in found:
        cur = best.get(f.identity)
        if cur is None or (f.via_symlink, f.name) < (cur.via_symlink, cur.name):
            best[f.identity] = f
    for f in found:
        kept = best[f.identity]
        if kept.name != f.name:
            warn("ignoring Maildir %s: it is the same directory as folder %r", f.path, kept.name)
    return sorted({f.name for f in best.values()})


def _identity(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


def _stat(path: str) -> os.stat_result | None:
    """Follows symlinks; None when the entry vanished or is a dangling symlink."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise _listing_error(path, e) from e


def _listdir(directory: str) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except FileNotFoundError:
        return []  # removed while we walked: nothing to list
    except OSError as e:
        raise _listing_error(directory, e) from e


# What pathlib's is_dir() and is_symlink() take for "no" rather than raise; the other
# errors (EACCES above all) propagate, as they did when this module used pathlib.
_IGNORED_ERRNOS = (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP)


def _is_dir(path: str) -> bool:
    return _is(path, stat.S_ISDIR, os.stat)


def _is_symlink(path: str) -> bool:
    return _is(path, stat.S_ISLNK, os.lstat)


def _is(path: str, test: Callable[[int], bool], stat_call: Callable[[str], os.stat_result]) -> bool:
    try:
        return test(stat_call(path).st_mode)
    except OSError as e:
        if e.errno not in _IGNORED_ERRNOS:
            raise
        return False
    except ValueError:
        return False


def _is_maildir(path: str) -> bool:
    return _is_dir(os.path.join(path, "cur")) and _is_dir(os.path.join(path, "new"))


def _listing_error(path: str, e: OSError) -> LocalStoreError:
    from mirrorsync.errors import LocalStoreError

    return LocalStoreError(
        f"cannot list local folders: {path}: {e.strerror or e}",
        "fix the directory's permissions and re-run",
    )
