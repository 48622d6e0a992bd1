"""Canonical folder names <-> directories under the local root.

Two layouts are supported:

* ``nested`` (the default): every name component is a directory, so "A/B" is
  ROOT/A/B and INBOX is ROOT/INBOX. Readers that walk a tree (mutt, notmuch, aerc)
  see the server's hierarchy as it is.
* ``maildir++`` (Courier, Dovecot's default): INBOX is ROOT itself and every other
  folder is a hidden sibling, ROOT/.A.B for "A/B". The "." is the separator there, so
  a component may not contain one.

Directory names are the components' UTF-8 bytes, not modified UTF-7: the name on disk
is what the user sees in a file manager, and `model` already keeps every store's
quirks out of the planner. A name that cannot be stored is refused with a
`FolderNameError` that says why and what to do, never silently rewritten: a rewritten
name would not map back to the server's folder, and the next sync would create a
second folder.

`list_folders` only returns names that map back to the very directory they were found
in (checked by `folder_path`), so whatever it reports can be synced, and odd
directories (a stray "inbox" next to "INBOX", ".A..B") are skipped with a warning
instead of being synced under a name that means a different directory.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from mirrorsync.errors import FolderNameError, LocalStoreError
from mirrorsync.model import SEP, canonical_folder

log = logging.getLogger(__name__)

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
    check_layout(layout)
    name = canonical_folder(name)
    parts = _components(layout, name)
    if layout == NESTED:
        return root.joinpath(*parts)
    if name == "INBOX":
        return root
    return root / _maildirpp_entry(name, parts)


def _refuse(name: str, layout: str, why: str, hint: str = _SKIP_HINT) -> FolderNameError:
    return FolderNameError(
        f"folder {name!r} cannot be stored in the {layout} Maildir layout: {why}", hint
    )


def _components(layout: str, name: str) -> list[str]:
    """Split and validate; every rule here exists because the name would otherwise
    land on a directory that means something else (or nothing) to Maildir readers."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise _refuse(name, layout, "it is not valid Unicode") from None
    if "\0" in name:
        raise _refuse(name, layout, "it contains a NUL character")
    parts = name.split(SEP)
    for part in parts:
        if part == "":
            raise _refuse(name, layout, "it has an empty component (leading, trailing or '//')")
        if part in (".", ".."):
            raise _refuse(name, layout, f"the component {part!r} is a special directory name")
        if layout == NESTED:
            # Case-insensitively: on macOS "Cur" *is* the cur/ directory.
            if part.lower() in MAILDIR_SUBDIRS:
                raise _refuse(
                    name,
                    layout,
                    f"the component {part!r} would be taken for a Maildir's {part.lower()}/",
                    _SKIP_HINT + ", or use the maildir++ layout",
                )
            if part.startswith("."):
                raise _refuse(
                    name,
                    layout,
                    f"the component {part!r} starts with '.', which hides it and makes it "
                    "look like a maildir++ folder",
                    _SKIP_HINT + ", or use the maildir++ layout",
                )
            if len(part.encode("utf-8")) > NAME_MAX:
                raise _refuse(name, layout, f"a component is longer than {NAME_MAX} bytes in UTF-8")
        elif "." in part:
            raise _refuse(
                name,
                layout,
                f"the component {part!r} contains '.', the folder separator of maildir++",
                _SKIP_HINT + ", or use the nested layout",
            )
    if layout == MAILDIRPP and name != "INBOX":
        entry = _maildirpp_entry(name, parts)
        if len(entry.encode("utf-8")) > NAME_MAX:
            raise _refuse(
                name,
                layout,
                f"its directory name {entry[:40]!r}... is longer than {NAME_MAX} bytes in UTF-8",
                _SKIP_HINT + ", or use the nested layout",
            )
    return parts


def _maildirpp_entry(name: str, parts: list[str]) -> str:
    # "INBOX/Sub" stays ".INBOX.Sub" (as Dovecot stores it): mapping it to ".Sub" would
    # collide with the top-level folder "Sub".
    return "." + ".".join(parts)


# --- listing ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Found:
    name: str
    path: Path
    identity: tuple[int, int]  # (st_dev, st_ino): the same directory under two names
    via_symlink: bool


def list_folders(root: Path, layout: str) -> list[str]:
    """Canonical names of every Maildir (a directory with cur/ and new/) under `root`,
    sorted. A missing root holds no folders. An unreadable directory is an error, not
    an empty one: reporting it as empty would make its folders look deleted, and the
    engine would delete them on the server."""
    check_layout(layout)
    root_st = _stat(root)
    if root_st is None:
        return []
    if not stat.S_ISDIR(root_st.st_mode):
        raise LocalStoreError(
            f"the local Maildir root {root} is not a directory",
            "point the configuration at a directory",
        )
    found: list[_Found] = []
    if layout == NESTED:
        _walk_nested(root, root, [], {_identity(root_st)}, False, found)
    else:
        _scan_maildirpp(root, root_st, found)
    return _dedupe(found)


def _walk_nested(
    root: Path,
    directory: Path,
    parts: list[str],
    ancestors: set[tuple[int, int]],
    via_symlink: bool,
    out: list[_Found],
) -> None:
    for entry in _listdir(directory):
        # cur/new/tmp hold messages, never folders; dot-directories are other tools'
        # (.notmuch, .git) or maildir++ folders, which this layout does not use.
        if entry.startswith(".") or entry in MAILDIR_SUBDIRS:
            continue
        child = directory / entry
        st = _stat(child)
        if st is None or not stat.S_ISDIR(st.st_mode):
            continue
        ident = _identity(st)
        if ident in ancestors:
            log.warning("not following %s: it is a symlink loop", child)
            continue
        linked = via_symlink or child.is_symlink()
        child_parts = [*parts, entry]
        if _is_maildir(child):
            _consider(root, NESTED, SEP.join(child_parts), child, ident, linked, out)
        # A folder may hold child folders (INBOX/Sub lives in ROOT/INBOX/Sub).
        _walk_nested(root, child, child_parts, ancestors | {ident}, linked, out)


def _scan_maildirpp(root: Path, root_st: os.stat_result, out: list[_Found]) -> None:
    if _is_maildir(root):
        _consider(root, MAILDIRPP, "INBOX", root, _identity(root_st), False, out)
    for entry in _listdir(root):
        if not entry.startswith(".") or entry in (".", ".."):
            continue
        child = root / entry
        st = _stat(child)
        if st is None or not stat.S_ISDIR(st.st_mode) or not _is_maildir(child):
            continue
        name = SEP.join(entry[1:].split("."))
        _consider(root, MAILDIRPP, name, child, _identity(st), child.is_symlink(), out)


def _consider(
    root: Path,
    layout: str,
    raw_name: str,
    path: Path,
    ident: tuple[int, int],
    via_symlink: bool,
    out: list[_Found],
) -> None:
    """Keep `path` only if its name maps back to it."""
    name = canonical_folder(raw_name)
    try:
        expected = folder_path(root, layout, name)
    except FolderNameError as e:
        log.warning("ignoring Maildir %s: %s", path, e)
        return
    if expected != path:
        # On a case-insensitive filesystem ROOT/inbox *is* ROOT/INBOX: same directory.
        st = _stat(expected)
        if st is None or _identity(st) != ident:
            log.warning(
                "ignoring Maildir %s: its name means the folder %r, which is stored at %s; "
                "rename the directory",
                path,
                name,
                expected,
            )
            return
    out.append(_Found(name, path, ident, via_symlink))


def _dedupe(found: list[_Found]) -> list[str]:
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
            log.warning(
                "ignoring Maildir %s: it is the same directory as folder %r", f.path, kept.name
            )
    return sorted({f.name for f in best.values()})


def _identity(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


def _stat(path: Path) -> os.stat_result | None:
    """Follows symlinks; None when the entry vanished or is a dangling symlink."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise _listing_error(path, e) from e


def _listdir(directory: Path) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except FileNotFoundError:
        return []  # removed while we walked: nothing to list
    except OSError as e:
        raise _listing_error(directory, e) from e


def _is_maildir(path: Path) -> bool:
    return (path / "cur").is_dir() and (path / "new").is_dir()


def _listing_error(path: Path, e: OSError) -> LocalStoreError:
    return LocalStoreError(
        f"cannot list local folders: {path}: {e.strerror or e}",
        "fix the directory's permissions and re-run",
    )
