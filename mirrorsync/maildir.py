"""The local Maildir store.

A message's identity here is the *key*: the unique part of its file name, before the
info (":2,FS"). Mail readers rename files to change flags and move them from new/ to
cur/, but keep the key, so the key is what the state database remembers. Flags live
only in the info letters.

Durability follows the Maildir delivery protocol with the step most implementations
forget: write into tmp/, fsync the file, set its mtime, link it into new/ or cur/
(never overwriting), then fsync the target *directory*, without which a power loss
can forget the rename although the state database already recorded the message.

Nothing here ever opens a delivered message for writing; the only changes to an
existing message are renames (flags), unlinks, and `replace_contents`, which gives a
file new bytes by writing a new file in tmp/ and swapping the two names atomically.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

    from mirrorsync.config import LocalConfig

from mirrorsync import flags as flagmod
from mirrorsync.dirstamp import read_stamp
from mirrorsync.errors import FolderNameError, LocalStoreError, abridged
from mirrorsync.layout import MAILDIR_SUBDIRS, MAILDIRPP, NESTED, check_layout, folder_path
from mirrorsync.layout import list_folders as _list_folders
from mirrorsync.model import Flags, LocalMessage, canonical_folder

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600
INFO_SEPARATORS = (":", "!")  # "!" where ":" is not allowed in file names (mbsync, Windows)
_INFO_RE = re.compile(r"[:!]2,")
_counter = itertools.count()
_host: str | None = None  # escaped for a file name; looked up once
# tmp/ files older than this are abandoned deliveries (maildir(5), mailbox.Maildir.clean)
TMP_MAX_AGE = 36 * 3600.0
# What `new_key` names (the R part is ours alone), with its creation second: the
# mtime of a delivery's tmp file is set to the message's date, so only the name says
# when it was made.
_OWN_TMP = re.compile(r"(\d+)\.M\d+P\d+Q\d+R[0-9a-f]{16}\.")
_tmp_cleaned: dict[str, float] = {}  # folder path -> when its tmp/ was last cleaned
_NAME_MAX = 255
_MARKER = "maildirfolder"  # maildir++: tells delivery agents (quota) this is a subfolder

# (key, bytes, flags, mtime): what `deliver_many` takes per message.
DeliveryItem = tuple[str, bytes, Flags, float | None]
Entry = tuple[str, str, str]  # a listed file: (subdir, file name, info letters)

# Called with every path mirrorsync is about to create (True), or to rename away or
# remove (False), before it does, so that `mirrorsync daemon`'s watcher can tell our
# own writes from a mail reader's and does not sync them back. None: nobody listens.
on_own_change: Callable[[Path, bool], None] | None = None


def _own(path: Path, appears: bool) -> None:
    if on_own_change is not None:
        on_own_change(path, appears)


class MessageVanished(LocalStoreError):
    """The file is not where the last scan saw it: a mail reader renamed (changed
    flags) or deleted it meanwhile. The engine re-scans instead of guessing."""

    def __init__(self, path: Path, operation: str) -> None:
        super().__init__(
            f"cannot {operation} {display_path(path)}: the file is gone "
            "(a mail reader moved or deleted it)",
            "re-run to re-scan the folder",
        )
        self.path = path


class MessageExists(LocalStoreError):
    """A delivery would replace an existing file: Maildir files are never overwritten,
    and a clash means the key was reused (a replayed delivery, or a bug)."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"cannot deliver to {display_path(path)}: a message file with that name already exists",
            "re-run; nothing was overwritten",
        )
        self.path = path


# --- helpers ------------------------------------------------------------------------


_FSYNC_THREADS = 16
_fsync_pool: ThreadPoolExecutor | None = None  # made on first use


def _submit_all(work: Callable[[Any], None], jobs: list[Any]) -> list[Future[None]]:
    """Start `work` over `jobs` on a few threads (file system calls release the GIL)."""
    global _fsync_pool
    if _fsync_pool is None:
        from concurrent.futures import ThreadPoolExecutor

        _fsync_pool = ThreadPoolExecutor(_FSYNC_THREADS, thread_name_prefix="maildir-io")
    return [_fsync_pool.submit(work, job) for job in jobs]


def _wait_all(futures: list[Future[None]], raise_first: bool = True) -> None:
    """Wait for every job; then raise the first error, if any (and if asked)."""
    errors = [f.exception() for f in futures]
    for e in errors:
        if e is not None and raise_first:
            raise e


def _write_synced(job: tuple[str, bytes, float | None]) -> None:
    """Create `tmp` (never overwriting), write, date and fsync it."""
    _write_file(job, sync=True)


def _write_file(job: tuple[str, bytes, float | None], sync: bool = False) -> None:
    tmp, data, mtime = job
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if mtime is not None:
            # Before the fsync, so the fsync makes the date durable too.
            os.utime(fd, (time.time(), mtime))
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


SYNCFS_MIN_FILES = 32  # below this, an fsync per file costs less than syncing the file system
_syncfs_fn: Callable[[str], None] | bool | None = False  # False: not looked up yet


def _syncfs() -> Callable[[str], None] | None:
    """A function making everything written to the file system holding a path durable
    (syncfs(2)), or None where that is not available or not trustworthy: before Linux
    5.8 syncfs did not report write-back errors, so a failed write could pass unseen;
    there, and off Linux, files are fsynced one by one."""
    global _syncfs_fn
    if _syncfs_fn is not False:
        return _syncfs_fn  # type: ignore[return-value]
    _syncfs_fn = None
    if sys.platform != "linux" or os.environ.get("MIRRORSYNC_NO_SYNCFS"):
        return None
    try:
        major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    except ValueError:
        return None
    if (major, minor) < (5, 8):
        return None
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int

    def syncfs(path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if fn(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), path)
        finally:
            os.close(fd)

    _syncfs_fn = syncfs
    return syncfs


def fsync_dir(path: Path) -> None:
    """Make renames, links and unlinks in `path` durable. Filesystems that cannot fsync
    a directory (some FUSE and network ones) say EINVAL; there is nothing better to do
    there, so that is not an error."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


def display_path(path: Path) -> str:
    """Paths in messages as the user typed them in the configuration (~/Mail/INBOX)."""
    home = os.path.expanduser("~")
    if home in ("", "/", "~"):
        return str(path)
    try:
        rel = Path(path).relative_to(home)
    except ValueError:
        return str(path)
    return "~" if str(rel) == "." else f"~/{rel}"


def split_filename(filename: str) -> tuple[str, str, str]:
    """(key, separator, info letters); separator and letters are "" without an info.
    The first ":2," or "!2," starts the info, as in the stdlib."""
    # Two finds instead of the regex: a scan splits every name of the folder.
    i = filename.find(":2,")
    j = filename.find("!2,")
    if j != -1 and (i == -1 or j < i):
        i = j
    if i == -1:
        return filename, "", ""
    return filename[:i], filename[i], filename[i + 3 :]


def new_key() -> str:
    """A unique name part, as the stdlib's mailbox.Maildir makes it (time, microseconds,
    pid, a per-process counter), plus random bits so that it stays unique across
    processes that share a pid (containers, a pid reused within the same second) and
    after fork (which copies the counter)."""
    global _host
    now = time.time()
    sec = int(now)
    usec = int((now - sec) * 1e6)
    if _host is None:
        _host = os.uname().nodename or "localhost"
        for ch, esc in (("/", r"\057"), (":", r"\072"), ("!", r"\041")):
            _host = _host.replace(ch, esc)
    return f"{sec}.M{usec}P{os.getpid()}Q{next(_counter)}R{os.urandom(8).hex()}.{_host}"


def is_own_key(key: str) -> bool:
    """Whether `key` was made by `new_key`: a Maildir holding such files was synced
    by mirrorsync before (a reader's rename or move keeps the key)."""
    return _OWN_TMP.match(key) is not None


def _check_key(key: str) -> None:
    """Keys come from `new_key` or a scan; anything else is a caller bug, and writing
    it would produce a file name that scans back as a different key."""
    if (
        not key
        or key.startswith(".")
        or "/" in key
        or "\0" in key
        or _INFO_RE.search(key) is not None
    ):
        raise ValueError(f"invalid Maildir key {key!r}")


def _merge_letters(old_letters: str, flags: Flags) -> str:
    """Letters we do not map (keywords as lowercase letters, other tools' letters) stay;
    the mapped ones are replaced by `flags`; ASCII-sorted as the Maildir spec asks."""
    keep = {c for c in old_letters if c not in flagmod.LETTER_TO_IMAP}
    return "".join(sorted(keep | set(flagmod.to_letters(flagmod.normalize(flags)))))


_REASONS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("disk full", "free space and re-run"),
    errno.EDQUOT: ("disk quota exceeded", "free space or raise the quota and re-run"),
    errno.EACCES: ("permission denied", "check the directory's permissions and re-run"),
    errno.EPERM: ("operation not permitted", "check the directory's permissions and re-run"),
    errno.EROFS: ("read-only file system", "remount it read-write and re-run"),
    errno.ENAMETOOLONG: (
        "name too long for the file system",
        "rename the folder on the server (or exclude it in the config)",
    ),
}


def _os_error(
    doing: str, path: Path, e: OSError, lost: str = "nothing was lost"
) -> LocalStoreError:
    """One wording for every OS failure: what we were doing, where, the OS's own words,
    what to do, and what state the user's mail is in."""
    reason, hint = _REASONS.get(e.errno or 0, ("", "re-run"))
    detail = e.strerror or str(e)
    if e.filename and Path(os.fsdecode(e.filename)) != path:
        detail += f": {abridged(display_path(Path(os.fsdecode(e.filename))))}"
    what = f"{reason} {doing}" if reason else doing
    return LocalStoreError(f"{what} {abridged(display_path(path))} ({detail})", f"{hint}; {lost}")


# --- the store ----------------------------------------------------------------------


class Maildir:
    """A tree of Maildir folders under `root`, in one of the `layout` module's layouts."""

    def __init__(
        self,
        root: Path,
        layout: str = NESTED,
        *,
        info_sep: str = ":",
        folder_names: str = "utf-8",
        rename: Iterable[tuple[str, str]] = (),
    ) -> None:
        check_layout(layout)
        if info_sep not in INFO_SEPARATORS:
            raise ValueError(f"info separator must be one of {INFO_SEPARATORS}")
        self.root = Path(root)
        self.layout = layout
        self.info_sep = info_sep
        # Folder -> directory where it is for now, instead of where the layout keeps
        # it: a dry run reads another tool's directory it would rename (see `adopt`).
        self.aliases: dict[str, Path] = {}
        # local.folder_names: directories named in modified UTF-7 (see `adopt`)
        self.utf7 = folder_names == "modified-utf-7"
        # folders.rename: folder (its server name) -> its name here, and back
        self.rename = dict(rename)
        self.renamed_from = {local: server for server, local in self.rename.items()}

    @classmethod
    def of(cls, local: LocalConfig) -> Maildir:
        """The Maildir an account's `local:` settings describe."""
        return cls(local.path, local.layout, folder_names=local.folder_names, rename=local.rename)

    def exists(self) -> bool:
        return self.root.is_dir()

    def list_folders(self) -> list[str]:
        found = self._listed()
        if not self.rename:
            return found
        names = []
        for local in found:
            if local in self.rename and local not in self.renamed_from:
                log.warning(
                    "ignoring Maildir %s: folders.rename keeps server folder %r in %r",
                    display_path(folder_path(self.root, self.layout, local)),
                    local,
                    self.rename[local],
                )
                continue
            names.append(self.renamed_from.get(local, local))
        return sorted(names)

    def server_name(self, local: str) -> str:
        """The folder whose directory is called `local` (folders.rename undone)."""
        return self.renamed_from.get(local, local)

    def _listed(self) -> list[str]:
        """The folders by their names here (before folders.rename is undone)."""
        found = _list_folders(self.root, self.layout)
        if not self.utf7:
            return found
        from mirrorsync.adopt import decode_name

        names = []
        for raw in found:
            name = decode_name(raw)
            if name is None:
                log.warning(
                    "ignoring Maildir %s: its name is not modified UTF-7 "
                    "(local.folder_names: modified-utf-7)",
                    display_path(folder_path(self.root, self.layout, raw)),
                )
                continue
            names.append(name)
        return sorted(names)

    def dir_name(self, name: str) -> str:
        """Folder `name` as its directory spells it: renamed by folders.rename, and
        in modified UTF-7 with local.folder_names so."""
        local = self.rename.get(name)
        if local is None and name in self.renamed_from:
            raise FolderNameError(
                f"folder {name!r} would be kept in the local folder {name!r}, which "
                f"folders.rename gives to {self.renamed_from[name]!r}",
                f"rename {name!r} too in folders.rename",
            )
        name = local or name
        if not self.utf7:
            return name
        from mirrorsync.adopt import encode_name

        return encode_name(name)

    def folder(self, name: str) -> MaildirFolder:
        """Raises FolderNameError for names this layout cannot store."""
        name = canonical_folder(name)
        path = self.aliases.get(name) or folder_path(self.root, self.layout, self.dir_name(name))
        return MaildirFolder(path, name, info_sep=self.info_sep)

    def create_folder(self, name: str) -> MaildirFolder:
        """Create the folder (and missing parents) with mode 0700; completes a folder
        that lacks some of cur/new/tmp; durable before it returns, so that the state
        never records a folder that a power loss could take back."""
        folder = self.folder(name)
        path = folder.path
        created: list[Path] = []
        try:
            missing: list[Path] = []
            p = path
            while not p.exists():
                missing.append(p)
                if p.parent == p:
                    break
                p = p.parent
            for d in [*reversed(missing), *(path / sub for sub in MAILDIR_SUBDIRS)]:
                if _mkdir(d):
                    created.append(d)
            if self.layout == MAILDIRPP and path != self.root:
                _create_marker(path / _MARKER)
            for parent in sorted({d.parent for d in created}, key=lambda q: -len(q.parts)):
                fsync_dir(parent)
        except OSError as e:
            raise _os_error("creating folder", path, e) from e
        return folder

    def delete_folder(self, name: str) -> None:
        """Remove an empty folder. Only empty directories are ever removed (rmdir), so
        a message delivered by someone else meanwhile makes this fail instead of
        vanishing. A missing folder is already deleted (idempotent after a crash)."""
        name = canonical_folder(name)
        folder = self.folder(name)
        path = folder.path
        if name == "INBOX":
            raise LocalStoreError(
                f"cannot delete the local INBOX ({display_path(path)})",
                "INBOX cannot be deleted; exclude it in the configuration instead",
            )
        if not path.is_dir():
            return
        try:
            held = [f"{sub}/{e}" for sub in ("cur", "new") for e in _listdir_or_empty(path / sub)]
            if held:
                raise LocalStoreError(
                    f"cannot delete folder {name!r} ({display_path(path)}): it still holds "
                    f"{len(held)} file(s), e.g. {held[0]}",
                    "move or delete them first, then re-run",
                )
            tmp = path / "tmp"
            for leftover in _listdir_or_empty(tmp):
                _unlink_quiet(tmp / leftover)  # aborted deliveries: never messages
            removed: list[Path] = []
            try:
                for sub in ("new", "cur", "tmp"):
                    _rmdir_quiet(path / sub)
                    removed.append(path / sub)
            except OSError:
                # Put back what we took away: a folder without cur/ is no folder, and
                # the message that just arrived in new/ would drop out of the sync.
                for d in removed:
                    _mkdir(d)
                raise
            if self.layout == MAILDIRPP:
                _unlink_quiet(path / _MARKER)
            self._remove_dir_if_empty(path)
        except OSError as e:
            raise _os_error("deleting folder", path, e, "no message was deleted") from e

    def _remove_dir_if_empty(self, path: Path) -> None:
        """The folder directory goes only when nothing else is in it: child folders
        (nested layout) stay, and so do files of other tools, which are not ours to
        delete. Empty parents that were only parents go too."""
        parent = path.parent
        try:
            _own(path, False)
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            left = sorted(_listdir_or_empty(path))
            if not any((path / entry).is_dir() for entry in left):
                log.warning(
                    "left %s in place: it still holds files mirrorsync does not know (%s)",
                    display_path(path),
                    ", ".join(left[:5]),
                )
            fsync_dir(path)
            return
        fsync_dir(parent)
        if self.layout != NESTED:
            return
        while parent != self.root and self.root in parent.parents:
            if (parent / "cur").is_dir():
                return  # a folder of its own
            try:
                _own(parent, False)
                os.rmdir(parent)
            except OSError:
                return
            fsync_dir(parent.parent)
            parent = parent.parent


@dataclass(frozen=True)
class Stamp:
    """Directory mtimes as a change signal, with the granularity problem handled.

    A change made in the same clock tick as the stamp may leave the mtime unchanged,
    so a stamp whose newest mtime is not clearly older than the moment it was taken
    is not trusted: the folder is scanned again next time. How much older is enough
    depends on the file system: one whose mtimes carry nanoseconds (ext4, xfs, btrfs)
    stamps from the kernel's coarse clock, which ticks at least every 10 ms; one with
    whole seconds (or FAT's two) needs SETTLE_COARSE."""

    value: str
    newest: float
    taken: float
    fine: bool = False  # the file system keeps sub-second mtimes

    SETTLE_FINE: ClassVar[float] = 0.05
    SETTLE_COARSE: ClassVar[float] = 2.0

    @property
    def settled(self) -> bool:
        margin = self.SETTLE_FINE if self.fine else self.SETTLE_COARSE
        return self.taken - self.newest > margin


class MaildirFolder:
    """One Maildir: the message operations the engine needs, keyed by Maildir key."""

    def __init__(self, path: Path, name: str = "", *, info_sep: str = ":") -> None:
        if info_sep not in INFO_SEPARATORS:
            raise ValueError(f"info separator must be one of {INFO_SEPARATORS}")
        self.path = Path(path)
        self.name = name
        self.info_sep = info_sep

    def __repr__(self) -> str:
        return f"MaildirFolder({str(self.path)!r}, {self.name!r})"

    def exists(self) -> bool:
        """Raises LocalStoreError when the file system cannot even look (a path too
        long for it, no permission): that is the folder's failure, not a missing one."""
        try:
            return (self.path / "cur").is_dir() and (self.path / "new").is_dir()
        except OSError as e:
            raise _os_error("looking for folder", self.path, e) from e

    # -- reading --

    def stamp(self) -> Stamp | None:
        """A cheap change signal: the mtimes of cur/ and new/. Any delivery, rename or
        unlink in either directory changes its mtime, so an equal stamp means an
        unchanged folder, provided the stamp was settled when taken (see Stamp)."""
        found = read_stamp(self.path)  # shared with mirrorsync.quick
        if found is None:
            return None
        value, newest, taken, fine = found
        return Stamp(value, newest=newest, taken=taken, fine=fine)

    def scan(self) -> dict[str, LocalMessage]:
        """Key -> message from the directory listings alone (no file is opened, so a
        scan of a large folder is cheap); see `listing`."""
        letters_to_flags = flagmod.from_letters
        return {
            key: LocalMessage(key, letters_to_flags(letters), sub, filename)
            for key, (sub, filename, letters) in self.listing().items()
        }

    def listing(self) -> dict[str, Entry]:
        """Key -> (subdir, file name, info letters): what `scan` returns, before it is
        made into objects, for a caller that compares most files with the state and
        needs objects only for the few that differ. new/ is listed before cur/: a
        reader moving a file from new/ to cur/ between the two listings is then seen
        twice (and kept once), never missed; a missed file would look deleted."""
        out: dict[str, Entry] = {}
        for sub in ("new", "cur"):
            for filename in self._list(sub):
                if filename.startswith("."):
                    continue
                if "!" in filename:
                    key, _sep, letters = split_filename(filename)
                else:  # the usual name, split by one C call
                    key, _sep, letters = filename.partition(":2,")
                if not key:
                    continue
                entry = (sub, filename, letters)
                prev = out.get(key)
                if prev is not None:
                    keep = _prefer(prev, entry)
                    log.warning(
                        "%s: two files with the key %s (%s/%s, %s/%s); using %s/%s",
                        display_path(self.path),
                        key,
                        *prev[:2],
                        *entry[:2],
                        *keep[:2],
                    )
                    entry = keep
                out[key] = entry
        return out

    @staticmethod
    def message(key: str, entry: Entry) -> LocalMessage:
        """The message of one `listing` entry."""
        return LocalMessage(key, flagmod.from_letters(entry[2]), entry[0], entry[1])

    def _list(self, sub: str) -> list[str]:
        directory = self.path / sub
        try:
            with os.scandir(directory) as it:
                # is_dir() costs nothing with d_type, and a vanished entry is just False.
                return [e.name for e in it if not e.is_dir()]
        except FileNotFoundError as e:
            raise LocalStoreError(
                f"cannot scan {display_path(self.path)}: {sub}/ is missing",
                "the folder was removed or is not a Maildir; re-run to re-check",
            ) from e
        except OSError as e:
            raise _os_error("scanning", directory, e) from e

    def locate(self, key: str, flags: Flags) -> LocalMessage | None:
        """Find one message by the name it most likely has (``cur/KEY:2,LETTERS``, or
        ``new/KEY`` when unflagged), with a stat or two instead of listing the folder;
        None when it is not there under that name (renamed by a reader, odd letters):
        the caller then lists the folder."""
        letters = flagmod.to_letters(flags)
        names = [("cur", f"{key}{self.info_sep}2,{letters}")]
        if not letters:
            names.insert(0, ("new", key))
        for sub, name in names:
            if os.path.exists(self.path / sub / name):
                return LocalMessage(key, flagmod.from_letters(letters), sub, name)
        return None

    def path_of(self, msg: LocalMessage) -> Path:
        return self.path / msg.subdir / self._filename(msg)

    def _filename(self, msg: LocalMessage) -> str:
        """A message rebuilt from the state may lack its file name: use the name that
        mirrorsync itself would have given it."""
        if msg.filename:
            return msg.filename
        if msg.subdir == "new" and not flagmod.to_letters(msg.flags):
            return msg.key
        return f"{msg.key}{self.info_sep}2,{flagmod.to_letters(msg.flags)}"

    def read(self, msg: LocalMessage) -> bytes:
        path = self.path_of(msg)
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError as e:
            raise MessageVanished(path, "read") from e
        except OSError as e:
            raise _os_error("reading", path, e) from e

    # -- writing --

    def new_key(self) -> str:
        return new_key()

    def _target(self, key: str, flags: Flags) -> tuple[str, str]:
        """(subdir, filename) for a new delivery. Without flags it is new mail (new/,
        no info), so the user's reader shows it as new; anything else goes to cur/."""
        _check_key(key)
        letters = flagmod.to_letters(flagmod.normalize(flags))
        if letters:
            subdir, filename = "cur", f"{key}{self.info_sep}2,{letters}"
        else:
            subdir, filename = "new", key
        # Leave room for a later flag rename to add every letter.
        if len(os.fsencode(key)) + 3 + len(flagmod.LETTER_TO_IMAP) > _NAME_MAX:
            raise ValueError(f"Maildir key too long: {key[:40]!r}...")
        return subdir, filename

    def deliver(
        self, key: str, data: bytes, flags: Flags, mtime: float | None = None
    ) -> LocalMessage:
        """Durably add one message (see `deliver_many`); `mtime` is the INTERNALDATE."""
        return self.deliver_many([(key, data, flags, mtime)])[0]

    def clean_tmp(self, now: float | None = None) -> int:
        """Remove what deliveries of ours that were killed left in tmp/: files of our
        own naming made more than TMP_MAX_AGE ago. Other writers' files are never
        touched. Done at most once an hour per folder (a daemon delivers often), before
        a delivery; returns how many were removed."""
        now = time.time() if now is None else now
        if now - _tmp_cleaned.get(str(self.path), -TMP_MAX_AGE) < 3600:
            return 0
        _tmp_cleaned[str(self.path)] = now
        removed = 0
        tmp = self.path / "tmp"
        with contextlib.suppress(OSError):  # a cleanup; the delivery reports real trouble
            for name in _listdir_or_empty(tmp):
                made = _OWN_TMP.match(name)
                if made and now - int(made.group(1)) > TMP_MAX_AGE:
                    _unlink_quiet(tmp / name)
                    removed += 1
        if removed:
            log.info("%s: removed %d abandoned files from tmp/", self.name, removed)
        return removed

    def deliver_stream(
        self,
        key: str,
        write: Callable[[BinaryIO], None],
        flags: Flags,
        mtime: float | None = None,
    ) -> LocalMessage:
        """Durably add one message whose bytes `write` produces into a file, so a
        message of any size is never held in memory whole. Errors raised by `write`
        (a dropped connection) pass through; the half-written file is removed."""
        subdir, filename = self._target(key, flags)
        self.clean_tmp()
        temps: list[Path] = []
        placed: list[Path] = []
        try:
            tmp = self.path / "tmp" / new_key()
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            except OSError as e:
                raise _os_error("writing to", self.path, e) from e
            temps.append(tmp)
            with os.fdopen(fd, "wb") as f:
                write(f)
                try:
                    f.flush()
                    if mtime is not None:
                        os.utime(f.fileno(), (time.time(), mtime))
                    os.fsync(f.fileno())
                except OSError as e:
                    raise _os_error("writing to", self.path, e) from e
            msg = LocalMessage(
                key, flagmod.from_letters(split_filename(filename)[2]), subdir, filename
            )
            self._commit([(tmp, self.path / subdir / filename, msg)], placed)
        except BaseException:
            self._undo(temps, placed)
            raise
        return msg

    def deliver_many(self, items: Iterable[DeliveryItem]) -> list[LocalMessage]:
        """Durably add messages with one directory fsync per target directory instead of
        one per message (group commit): every file is written and fsynced in tmp/
        first, then linked into place, then cur/ and new/ are fsynced once. All or
        nothing: on any error the files of this batch are removed again, so a caller
        that retries never makes a duplicate. The bytes are written as given."""
        return self.deliver_start(items).finish()

    def deliver_start(self, items: Iterable[DeliveryItem]) -> PendingDelivery:
        """`deliver_many` in two halves, so a caller can fetch the next batch while
        this one's files are written and fsynced by the I/O threads: `finish()` on the
        result places them (or `abandon()` removes them)."""
        self.clean_tmp()
        tmpdir = os.path.join(self.path, "tmp")
        temps: list[str] = []
        staged: list[tuple[str, Path, LocalMessage]] = []
        jobs: list[tuple[str, bytes, float | None]] = []
        try:
            # The caller's iterable may fail too (a dropped connection is an OSError):
            # that error passes through as it is, only our own I/O is reworded.
            dirs = {"cur": self.path / "cur", "new": self.path / "new"}
            for key, data, flags, mtime in items:
                subdir, filename = self._target(key, flags)
                tmp = os.path.join(tmpdir, new_key())
                temps.append(tmp)  # registered before it exists, so a failure removes it
                msg = LocalMessage(
                    key, flagmod.from_letters(split_filename(filename)[2]), subdir, filename
                )
                staged.append((tmp, dirs[subdir] / filename, msg))
                jobs.append((tmp, data, mtime))
        except BaseException:
            self._undo(temps, [])
            raise
        syncfs = _syncfs() if len(jobs) >= SYNCFS_MIN_FILES else None
        if syncfs is None:
            # Write and fsync the batch from several threads: creating and syncing
            # files mostly waits on the file system's journal, which commits concurrent
            # requests together. Exactly as durable as one after another: every file is
            # on disk before any is placed.
            return PendingDelivery(self, staged, temps, _submit_all(_write_synced, jobs))
        # Better still where the kernel allows: write the files here (the page cache
        # takes them at once) and make all of them durable with one syncfs(2) on an
        # I/O thread, instead of a thread hand-off and an fsync per file.
        try:
            for job in jobs:
                _write_file(job)
        except BaseException as e:
            self._undo(temps, [])
            if isinstance(e, OSError):
                raise _os_error("writing to", self.path, e) from e
            raise
        tmp = os.path.join(self.path, "tmp")
        return PendingDelivery(self, staged, temps, _submit_all(syncfs, [tmp]))

    def _commit(
        self, staged: Sequence[tuple[str | Path, Path, LocalMessage]], placed: list[Path]
    ) -> None:
        try:
            for tmp, target, _msg in staged:
                _place(tmp, target)
                placed.append(target)
                _unlink_quiet(tmp)
            for d in sorted({target.parent for _tmp, target, _msg in staged}):
                fsync_dir(d)
        except FileExistsError as e:
            raise MessageExists(Path(e.filename2 or e.filename or self.path)) from e
        except OSError as e:
            raise _os_error("writing to", self.path, e) from e

    @staticmethod
    def _undo(temps: Sequence[str | Path], placed: list[Path]) -> None:
        for p in placed:
            _own(p, False)
            with contextlib.suppress(OSError):
                os.unlink(p)
        for t in temps:  # never placed, so never seen by anyone
            with contextlib.suppress(OSError):
                os.unlink(t)

    def replace_contents(self, items: Sequence[tuple[LocalMessage, bytes]]) -> list[LocalMessage]:
        """Give existing messages new bytes under the same name (key, flags) and
        mtime (mode 0600, as every file mirrorsync writes); returns those replaced.
        Used when a file matched the server's message apart from fields a tool added
        to its copy, so that it holds the server's bytes afterwards.

        Each new file is written and fsynced in tmp/ first, then swapped with the old
        one by one atomic exchange of the two names (renameat2 RENAME_EXCHANGE), then
        the directories are fsynced and the old bytes, now in tmp/, removed. A kill
        leaves every file whole, old or new. A file a reader renamed (changed flags)
        or removed meanwhile is not there to swap, so it is left alone: no second
        file with its key is ever made. Where the system cannot exchange names, the
        file is renamed over instead, checked to be there just before."""
        tmpdir = os.path.join(self.path, "tmp")
        temps: list[str] = []
        staged: list[tuple[str, Path, LocalMessage]] = []
        jobs: list[tuple[str, bytes, float | None]] = []
        try:
            for msg, data in items:
                path = self.path_of(msg)
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue  # renamed or removed meanwhile: left alone
                tmp = os.path.join(tmpdir, new_key())
                temps.append(tmp)
                staged.append((tmp, path, msg))
                jobs.append((tmp, data, st.st_mtime))
            # Durable as deliveries are: one syncfs for a large batch where the
            # kernel can be trusted with it, else an fsync per file on a few threads.
            syncfs = _syncfs() if len(jobs) >= SYNCFS_MIN_FILES else None
            if syncfs is None:
                _wait_all(_submit_all(_write_synced, jobs))
            else:
                for job in jobs:
                    _write_file(job)
                syncfs(tmpdir)
        except BaseException as e:
            self._undo(temps, [])
            if isinstance(e, OSError):
                raise _os_error("writing to", self.path, e) from e
            raise
        done: list[LocalMessage] = []
        try:
            for tmp, path, msg in staged:
                _own(path, False)
                _own(path, True)
                swapped = _exchange(tmp, path)
                if swapped is None and os.path.lexists(path):
                    os.rename(tmp, path)
                    swapped = True
                if swapped:
                    done.append(msg)
            for d in sorted({path.parent for _tmp, path, _msg in staged}):
                fsync_dir(d)
        except OSError as e:
            raise _os_error(
                "replacing messages in", self.path, e, "every file is whole, old or new"
            ) from e
        finally:
            for t in temps:  # the old bytes, or a new file that found nothing to swap with
                _unlink_quiet(t)
        return done

    def set_flags(self, msg: LocalMessage, flags: Flags, *, durable: bool = True) -> LocalMessage:
        """Rename to cur/KEY:2,LETTERS. Letters we do not map are carried over, and the
        file keeps the separator it had (a reader using "!" expects "!"). Nothing is
        renamed when the mapped flags already match, so an unread message stays in
        new/ until a flag really changes. With `durable` False the caller makes many
        renames durable at once with `flush` (before it records them)."""
        filename = self._filename(msg)
        src = self.path / msg.subdir / filename
        key, sep, letters = split_filename(filename)
        if flagmod.from_letters(letters) == flagmod.normalize(flags):
            return LocalMessage(key, flagmod.from_letters(letters), msg.subdir, filename)
        new_name = f"{key}{sep or self.info_sep}2,{_merge_letters(letters, flags)}"
        dst = self.path / "cur" / new_name
        result = LocalMessage(
            key, flagmod.from_letters(split_filename(new_name)[2]), "cur", new_name
        )
        try:
            if os.path.lexists(dst):
                if os.path.lexists(src):
                    # A second file with the same key: renaming would overwrite it.
                    raise LocalStoreError(
                        f"cannot change flags of {display_path(src)}: "
                        f"{display_path(dst)} already exists",
                        "two files share one key; remove the duplicate and re-run",
                    )
                return result  # a reader made the very same change meanwhile
            _own(src, False)
            _own(dst, True)
            os.rename(src, dst)
        except FileNotFoundError as e:
            if not os.path.lexists(src):
                raise MessageVanished(src, "change flags of") from e
            raise _os_error("changing flags of", src, e, "the message is unchanged") from e
        except OSError as e:
            raise _os_error("changing flags of", src, e, "the message is unchanged") from e
        if durable:
            self.flush({dst.parent.name, src.parent.name})
        return result

    def flush(self, subdirs: Iterable[str] = ("new", "cur")) -> None:
        """Make the renames and unlinks done in these subdirectories durable: one
        directory fsync each, however many files changed (group commit)."""
        for sub in sorted(set(subdirs)):
            path = self.path / sub
            try:
                fsync_dir(path)
            except OSError as e:
                raise _os_error(
                    "flushing", path, e, "recent changes may not survive a crash"
                ) from e

    def move_to(self, msg: LocalMessage, other: MaildirFolder) -> LocalMessage:
        """Rename the file into another Maildir (same subdirectory and name), so the
        message keeps its inode and never exists twice or not at all. Both
        directories are fsynced, the target first."""
        src = self.path_of(msg)
        dst = other.path / msg.subdir / src.name
        if dst.exists():
            raise MessageExists(dst)
        try:
            _own(src, False)
            _own(dst, True)
            os.rename(src, dst)
        except FileNotFoundError as e:
            raise MessageVanished(src, "move") from e
        except OSError as e:
            raise _os_error("moving", src, e, "the message is still where it was") from e
        try:
            fsync_dir(dst.parent)
            fsync_dir(src.parent)
        except OSError as e:
            raise _os_error("flushing", dst.parent, e, "the move may not survive a crash") from e
        return LocalMessage(msg.key, msg.flags, msg.subdir, src.name)

    def remove(self, msg: LocalMessage, *, durable: bool = True) -> None:
        """Unlink; a file already gone is already removed. (A file a reader renamed
        meanwhile is gone too from here: the next scan finds it under its new name.)
        With `durable` False the caller flushes many removals at once (see `flush`)."""
        path = self.path_of(msg)
        try:
            _own(path, False)
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as e:
            raise _os_error("removing", path, e, "the message is still there") from e
        if not durable:
            return
        try:
            fsync_dir(path.parent)
        except OSError as e:
            raise _os_error(
                "flushing", path.parent, e, "the removal may not survive a crash"
            ) from e


class PendingDelivery:
    """A batch whose files the I/O threads are writing and fsyncing (see
    `MaildirFolder.deliver_start`). Exactly one of `finish` or `abandon` is called."""

    def __init__(
        self,
        folder: MaildirFolder,
        staged: list[tuple[str, Path, LocalMessage]],
        temps: list[str],
        futures: list[Future[None]],
    ) -> None:
        self._folder = folder
        self._staged = staged
        self._temps = temps
        self._futures = futures

    def finish(self) -> list[LocalMessage]:
        """Wait until every file is on disk, then link them into place and fsync the
        directories once. All or nothing, as `deliver_many`."""
        placed: list[Path] = []
        try:
            try:
                _wait_all(self._futures)
            except OSError as e:
                raise _os_error("writing to", self._folder.path, e) from e
            self._folder._commit(self._staged, placed)
        except BaseException:
            _wait_all(self._futures, raise_first=False)
            self._folder._undo(self._temps, placed)
            raise
        return [msg for _tmp, _target, msg in self._staged]

    def abandon(self) -> None:
        """The caller failed before `finish`: remove what the threads wrote."""
        _wait_all(self._futures, raise_first=False)
        self._folder._undo(self._temps, [])


def _prefer(a: Entry, b: Entry) -> Entry:
    """Of two files with one key, cur/ is the newer state (readers move new -> cur);
    otherwise the smaller name, so that repeated scans agree."""
    if a[0] != b[0]:
        return a if a[0] == "cur" else b
    return a if a[1] <= b[1] else b


def _place(tmp: str | Path, target: Path) -> None:
    """link() fails instead of overwriting, which rename() would do silently. Some
    filesystems (FAT, some FUSE) have no hard links: fall back to a checked rename."""
    _own(target, True)
    try:
        os.link(tmp, target)
        return
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, "File exists", str(tmp), None, str(target))
    os.rename(tmp, target)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_renameat2_fn: Any = False  # False: not looked up yet; None: not available


def _exchange(a: str | Path, b: str | Path) -> bool | None:
    """Swap the names `a` and `b` atomically (Linux renameat2 RENAME_EXCHANGE, in
    glibc since 2.28): True when done, False when one of them does not exist, None
    when the system or the file system cannot exchange names."""
    global _renameat2_fn
    if _renameat2_fn is False:
        _renameat2_fn = None
        if sys.platform.startswith("linux"):
            import ctypes

            with contextlib.suppress(OSError, AttributeError):
                fn = ctypes.CDLL(None, use_errno=True).renameat2
                fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
                fn.argtypes += [ctypes.c_uint]
                fn.restype = ctypes.c_int
                _renameat2_fn = fn
    if _renameat2_fn is None:
        return None
    import ctypes

    if _renameat2_fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.ENOENT:
        return False
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return None
    raise OSError(err, os.strerror(err), os.fspath(b))


def _mkdir(path: Path) -> bool:
    """True when created; an existing directory is fine, anything else in its place is not."""
    try:
        _own(path, True)
        os.mkdir(path, DIR_MODE)
        return True
    except FileExistsError:
        if path.is_dir():
            return False
        raise NotADirectoryError(
            errno.ENOTDIR, "exists and is not a directory", str(path)
        ) from None


def _create_marker(path: Path) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return
    os.close(fd)


def _listdir_or_empty(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _unlink_quiet(path: str | Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _rmdir_quiet(path: Path) -> None:
    _own(path, False)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(path)
