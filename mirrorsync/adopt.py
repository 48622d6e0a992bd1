"""Folder directories written by other tools: find them and move them where
mirrorsync keeps the same folder.

mbsync and offlineimap name a folder's directory after the server's modified UTF-7
spelling (RFC 3501 5.1.3: ``Caf&AOk- &- Cr&AOg-me`` for "Café & Crème") and join
hierarchy in their own ways. Taken at face value, such a directory is a new local
folder: the first sync would create a second server folder with that literal name
and download the real one beside it, every message twice. So before the folders are
compared, a local directory that one of the recognised layouts maps to a server
folder (and that is no folder's own directory) is renamed to the directory
mirrorsync's layout gives that folder. The rename is printed, with --dry-run too.

Recognised, for every server folder (components encoded in modified UTF-7, or as
they are):

* nested directories, ``ROOT/A/B`` (mbsync ``SubFolders Verbatim``, offlineimap with
  ``sep = /``);
* one directory joined with '.', ``ROOT/A.B`` (offlineimap's default ``sep = .``,
  mbsync's ``Flatten .``);
* mbsync's ``SubFolders Legacy``, ``ROOT/A/.B``;
* maildir++, ``ROOT/.A.B`` (mbsync ``SubFolders Maildir++``, Dovecot, Courier);
* INBOX as ``ROOT/INBOX`` in any letter case (mbsync users often write ``Inbox``).

A rename never replaces anything: the target must not exist, and a source that
could mean two folders is left alone with a warning. Message files are not touched,
so the other tool's own state (which names folders, not paths) stays valid for
`mirrorsync migrate`, and a directory can be renamed back by hand.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from mirrorsync.imap import wire
from mirrorsync.layout import MAILDIRPP, NESTED, folder_dir
from mirrorsync.names import SEP

log = logging.getLogger(__name__)


def decode_mutf7(name: str) -> str | None:
    """The Unicode name a modified UTF-7 component stands for, or None when `name`
    is no modified UTF-7 at all (not printable ASCII, or not in the one spelling an
    encoder produces: "&foo" decodes to something, but nothing encodes to it)."""
    if not name or not name.isascii():
        return None
    return wire.decode_mutf7_strict(name.encode("ascii"))


def encode_mutf7(name: str) -> str:
    return wire.encode_mutf7(name).decode("ascii")


def encode_name(name: str) -> str:
    """A canonical folder name with each component in modified UTF-7."""
    return SEP.join(encode_mutf7(p) for p in name.split(SEP))


def decode_name(name: str) -> str | None:
    """The canonical name a directory's modified UTF-7 name stands for; None when a
    component is not modified UTF-7 (it could not be mapped back)."""
    parts = [decode_mutf7(p) for p in name.split(SEP)]
    if any(p is None or not p or SEP in p for p in parts):
        return None
    return SEP.join(p for p in parts if p is not None)


@dataclass(frozen=True)
class Adoption:
    """Directory `src`, written by another tool, is folder `name`; it goes to `dst`."""

    name: str
    src: Path
    dst: Path
    scheme: str

    def describe(self) -> str:
        return f"adopt folder {self.name!r}: rename {self.src} -> {self.dst} ({self.scheme})"


def _spellings(name: str) -> list[tuple[list[str], str]]:
    """The component lists a tool may have written for canonical `name`."""
    parts = name.split(SEP)
    out = [(parts, "")]
    utf7 = [encode_mutf7(p) for p in parts]
    if utf7 != parts:
        out.append((utf7, "modified UTF-7"))
        # under a parent already renamed to (or always spelled in) UTF-8
        last = [*parts[:-1], utf7[-1]]
        if last not in (parts, utf7):
            out.append((last, "modified UTF-7"))
    return out


def candidates(root: str, name: str) -> list[tuple[str, str]]:
    """Directories (under `root`) where the recognised layouts keep folder `name`,
    each with a word on the layout."""
    out: list[tuple[str, str]] = []
    if name == "INBOX":
        return [(os.path.join(root, s), "INBOX") for s in ("Inbox", "inbox", "INBOX")]
    for parts, enc in _spellings(name):
        how = f", {enc}" if enc else ""
        out.append((os.path.join(root, *parts), f"nested{how}"))
        if len(parts) > 1:
            out.append((os.path.join(root, ".".join(parts)), f"one directory joined by '.'{how}"))
            legacy = [parts[0], *("." + p for p in parts[1:])]
            out.append((os.path.join(root, *legacy), f"mbsync Legacy{how}"))
        out.append((os.path.join(root, "." + ".".join(parts)), f"maildir++{how}"))
    return out


class _View:
    """The directory tree as it will be after the renames planned so far, without
    making them: what --dry-run shows must be what a real run does."""

    def __init__(self) -> None:
        self.renames: list[tuple[str, str]] = []

    def real(self, path: str) -> str | None:
        """Where `path` of the planned tree is now; None if a rename takes it away."""
        for src, dst in reversed(self.renames):
            if path == dst or path.startswith(dst + os.sep):
                path = src + path[len(dst) :]
            elif path == src or path.startswith(src + os.sep):
                return None
        return path

    def exists(self, path: str) -> bool:
        now = self.real(path)
        return now is not None and os.path.lexists(now)

    def is_maildir(self, path: str) -> bool:
        now = self.real(path)
        return now is not None and all(
            os.path.isdir(os.path.join(now, sub)) for sub in ("cur", "new")
        )


def plan(
    root: Path,
    layout: str,
    wanted: Iterable[str],
    claimed: Iterable[str],
    warn: Callable[..., None] = log.warning,
    spell: Callable[[str], str] = str,
) -> list[Adoption]:
    """Renames that bring another tool's directories of the folders `wanted` (server
    folders that have no directory of mirrorsync's yet) where `layout` keeps them.
    `claimed` are the folders whose own directories must never be taken (every
    server folder and every folder the state knows). Parents come before children,
    since renaming a nested parent carries its children along. `spell` gives a
    folder's directory name (modified UTF-7 with local.folder_names)."""
    top = os.fspath(root)
    taken = set()
    for n in claimed:
        try:
            taken.add(folder_dir(top, layout, spell(n)))
        except Exception:  # a name this layout cannot store has no directory to protect
            continue
    view = _View()
    out: list[Adoption] = []
    # Where more than one folder could have written a directory, which one did is a
    # guess: such a directory is left alone.
    seen: dict[str, list[str]] = {}
    found: dict[str, list[tuple[str, str]]] = {}
    for name in sorted(set(wanted)):
        for path, scheme in candidates(top, name):
            seen.setdefault(path, []).append(name)
            found.setdefault(name, []).append((path, scheme))
    for name in sorted(found):
        try:
            dst = folder_dir(top, layout, spell(name))
        except Exception:
            continue  # refused by the layout: the sync says why
        if view.exists(dst):
            continue
        hits = [
            (p, s)
            for p, s in found[name]
            if p != dst and p not in taken and p != top and view.is_maildir(p)
        ]
        if not hits:
            continue
        if len(hits) > 1 or len(seen[hits[0][0]]) > 1:
            warn(
                "folder %r: several directories could be it (%s); none is renamed, "
                "rename the right one to %s by hand",
                name,
                ", ".join(p for p, _ in hits),
                dst,
            )
            continue
        src, scheme = hits[0]
        if layout == NESTED and dst.startswith(src + os.sep):
            continue  # a folder cannot move into itself
        if layout == MAILDIRPP and dst == top:
            continue
        view.renames.append((src, dst))
        # `src` as it will be when this rename's turn comes (after its parent's).
        out.append(Adoption(name, Path(src), Path(dst), scheme))
    return out


def apply(adoptions: Iterable[Adoption]) -> None:
    """Make the renames, in order, each durable before the next: a folder the state
    then records must not fall back to its old name after a power loss."""
    from mirrorsync.errors import LocalStoreError
    from mirrorsync.maildir import fsync_dir

    for a in adoptions:
        try:
            a.dst.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if a.dst.exists():
                raise FileExistsError(a.dst)
            os.rename(a.src, a.dst)
            fsync_dir(a.dst.parent)
            if a.src.parent != a.dst.parent:
                fsync_dir(a.src.parent)
        except OSError as e:
            raise LocalStoreError(
                f"cannot rename {a.src} to {a.dst} for folder {a.name!r}: {e.strerror or e}",
                "rename it by hand, or fix the permissions, and re-run",
            ) from e
        log.info("%s", a.describe())
