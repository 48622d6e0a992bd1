"""The local side of `mirrorsync daemon`: filesystem events -> names of changed folders.

A watchdog observer (inotify on Linux) watches the account's Maildir root
recursively. Each event is mapped back to the canonical folder it touches through the
layout (`folder_of`), and only what can change the sync's view counts:

* files appearing in, vanishing from or moving between FOLDER/cur and FOLDER/new
  (a delivery, a flag rename, a deletion, a move to another folder), and files
  written there directly (closed after writing);
* directories appearing, vanishing or moving (a folder created, deleted or renamed),
  which ask for a full sync since the folder list itself changed.

Everything else is noise and dropped here: tmp/ (deliveries in progress), opens and
reads, the directories' own mtime changes, dot-directories of other tools (.notmuch).

Our own writes are told apart with `maildir.on_own_change`: the Maildir store names
every path it is about to create, rename or remove, and `OwnWrites` remembers them
for a while. An event whose every path is one of ours is dropped, so a download does
not come back as a local change to sync. Entries are not consumed by the first
matching event, because inotify reports some changes twice (watchdog also synthesizes
events for the contents of a directory it starts watching); they expire instead.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mirrorsync import maildir as maildirmod
from mirrorsync.errors import FolderNameError
from mirrorsync.layout import MAILDIRPP, NESTED, folder_name_of, folder_path
from mirrorsync.model import canonical_folder

log = logging.getLogger(__name__)

# Where the watcher reports: a folder name, or None for "sync everything" (the folder
# list changed), and a short reason for the log.
Sink = Callable[[str | None, str], None]

MESSAGE_DIRS = ("cur", "new")
_EVENTS = ("created", "deleted", "moved", "closed")
_DOUBLE_WATCH = r"Callback with id .* already exists for watch"


def folder_of(root: Path, layout: str, directory: Path) -> str | None:
    """The canonical name of the folder stored in `directory`, or None when no folder
    of this layout lives there (a dot-directory, a cur/ of its own, a name the layout
    cannot hold). The answer is checked by mapping it back with `folder_path`, the
    same rule `layout.list_folders` applies, so the watcher and the sync agree on
    which directories are folders."""
    try:
        rel = directory.relative_to(root)
    except ValueError:
        return None
    if layout not in (NESTED, MAILDIRPP):
        return None
    # the escapes read, or (a directory stored before escaping existed) as they are
    raw = folder_name_of(layout, rel.parts)
    literal = folder_name_of(layout, rel.parts, unescape=False)
    for candidate in dict.fromkeys([raw, literal]):
        if candidate is None:
            continue
        try:
            name = canonical_folder(candidate)
            if folder_path(root, layout, name) == directory:
                return name
        except (FolderNameError, ValueError):
            pass
    return None


def message_folder(root: Path, layout: str, path: Path) -> str | None:
    """The folder whose messages `path` (a file in FOLDER/cur or FOLDER/new) is one of;
    None for anything else, tmp/ included (a delivery there is not finished)."""
    if path.parent.name not in MESSAGE_DIRS or path.name.startswith("."):
        return None
    return folder_of(root, layout, path.parent.parent)


class OwnWrites:
    """Paths mirrorsync itself is creating, renaming or removing, for `ttl` seconds.

    `note` is installed as `maildir.on_own_change`. Whether a path appears or
    disappears is kept apart, so a reader deleting a file we just delivered is still
    its change, not ours. Memory stays bounded: expired entries are dropped whenever
    the table has doubled since the last sweep."""

    def __init__(self, ttl: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._paths: dict[tuple[str, bool], float] = {}
        self._swept_at_size = 64

    def note(self, path: Path, appears: bool) -> None:
        now = self._clock()
        with self._lock:
            self._paths.pop((os.fspath(path), appears), None)  # re-insert: keep order
            self._paths[(os.fspath(path), appears)] = now + self.ttl
            if len(self._paths) >= 2 * self._swept_at_size:
                self._sweep(now)

    def is_own(self, path: str, appears: bool) -> bool:
        now = self._clock()
        with self._lock:
            expires = self._paths.get((path, appears))
            return expires is not None and expires > now

    def size(self) -> int:
        """Live entries (tests check that the table stays bounded)."""
        with self._lock:
            self._sweep(self._clock())
            return len(self._paths)

    def _sweep(self, now: float) -> None:
        # Insertion order is expiry order (every entry lives `ttl`), so stop at the
        # first live one.
        expired = []
        for key, expires in self._paths.items():
            if expires > now:
                break
            expired.append(key)
        for key in expired:
            del self._paths[key]
        self._swept_at_size = max(64, len(self._paths))


class EventRouter:
    """Turns one watchdog event into calls of `sink`; separate from the observer so
    it can be tested from tables of events without a filesystem."""

    def __init__(
        self,
        root: Path,
        layout: str,
        sink: Sink,
        own: OwnWrites,
        wanted: Callable[[str], bool] = lambda _name: True,
    ) -> None:
        self.root = root
        self.layout = layout
        self.sink = sink
        self.own = own
        self.wanted = wanted

    def dispatch(self, event: Any) -> None:
        kind = getattr(event, "event_type", "")
        if kind not in _EVENTS:
            return  # opened, closed without writing, modified, attrib: nothing changed
        src = os.fsdecode(event.src_path)
        dest = os.fsdecode(getattr(event, "dest_path", "") or "")
        if event.is_directory:
            self._directory(kind, src, dest)
        else:
            self._file(kind, src, dest)

    def _file(self, kind: str, src: str, dest: str) -> None:
        if kind == "moved":
            sides = [(src, False), (dest, True)]
        elif kind == "deleted":
            sides = [(src, False)]
        else:  # created, or closed after writing
            sides = [(src, True)]
        folders: list[str] = []
        foreign = False
        for path, appears in sides:
            folder = message_folder(self.root, self.layout, Path(path))
            if folder is None:
                continue
            folders.append(folder)
            if kind == "closed" or not self.own.is_own(path, appears):
                foreign = True
        if not foreign:
            return
        for folder in dict.fromkeys(folders):
            if self.wanted(folder):
                self.sink(folder, "local change")

    def _directory(self, kind: str, src: str, dest: str) -> None:
        if kind == "closed":
            return
        sides = [(src, False), (dest, True)] if kind == "moved" else [(src, kind == "created")]
        relevant = [(p, a) for p, a in sides if self._may_hold_folders(Path(p))]
        if relevant and any(not self.own.is_own(p, a) for p, a in relevant):
            self.sink(None, f"local folder {kind}")

    def _may_hold_folders(self, path: Path) -> bool:
        """Whether a directory appearing or vanishing here can change the folder list:
        not inside a cur/, new/ or tmp/, nor inside another tool's dot-directory."""
        try:
            parts = path.relative_to(self.root).parts
        except ValueError:
            return path == self.root or self.root in path.parents
        if not parts:
            return True  # the root itself
        if any(p in ("cur", "new", "tmp") for p in parts[:-1]):
            return False
        if self.layout == NESTED:
            return not any(p.startswith(".") for p in parts)
        return len(parts) <= 2  # .Folder, or .Folder/cur


class LocalWatcher:
    """A watchdog observer over one Maildir root, feeding an `EventRouter`.

    `start` fails softly: without a watch (root missing, inotify watch limit reached)
    local changes are still found by the daemon's periodic full check, so the daemon
    logs why and carries on; `healthy` tells it when to try again."""

    def __init__(self, router: EventRouter) -> None:
        self.router = router
        self._observer: Any = None
        self._identity: tuple[int, int] | None = None

    def start(self) -> bool:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        root = self.router.root
        try:
            st = os.stat(root)
        except OSError:
            return False
        router = self.router

        class _Handler(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                try:
                    router.dispatch(event)
                except Exception:  # a bug must not kill the observer thread
                    log.exception("watching %s: cannot handle %r", root, event)

        # watchdog watches a new directory twice when its subtree appears quickly (once
        # for the creation event, once while walking the parent) and warns that the
        # second add overwrites the first's callback, with the same one: nothing is
        # lost, so that warning alone is dropped instead of reaching stderr per folder.
        warnings.filterwarnings("ignore", message=_DOUBLE_WATCH, category=RuntimeWarning)
        # The dispatcher thread blocks on its queue for `timeout` seconds at a time;
        # stop() wakes it at once, so a long timeout only saves idle wakeups.
        observer = Observer(timeout=3600)
        try:
            observer.schedule(_Handler(), os.fspath(root), recursive=True)
            observer.start()
        except OSError as e:
            log.warning(
                "cannot watch %s for local changes (%s); they are found by the periodic "
                "full check only%s",
                maildirmod.display_path(root),
                e.strerror or e,
                " (raise fs.inotify.max_user_watches)" if "limit" in str(e) else "",
            )
            _stop_observer(observer)
            return False
        self._observer = observer
        self._identity = (st.st_dev, st.st_ino)
        return True

    @property
    def healthy(self) -> bool:
        """Running, and still watching the directory that is now at the root path (a
        root that was removed and made again needs a new watch)."""
        if self._observer is None or not self._observer.is_alive():
            return False
        try:
            st = os.stat(self.router.root)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._identity

    def stop(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            _stop_observer(observer)


def _stop_observer(observer: Any) -> None:
    try:
        observer.stop()
        if observer.is_alive():
            observer.join(timeout=5)
    except Exception:
        log.debug("stopping the watcher failed", exc_info=True)


def install_hook(own: OwnWrites | None) -> None:
    """Point `maildir.on_own_change` at `own` (one table per process: every account's
    watcher consults the same one, since paths are absolute); None removes it."""
    maildirmod.on_own_change = own.note if own is not None else None
