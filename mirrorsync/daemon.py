"""`mirrorsync daemon`: keep syncing as changes happen on either side.

Three sources feed one `ChangeQueue` per account: the local watcher (`watch`), the
server push listeners (`push`), and the main thread (signals, config reloads). One
`AccountLoop` thread per account drains it and runs the syncs, one at a time, so
the engine never runs twice on an account and nothing in it has to be thread-safe:

    watchdog observer --folder--> +------------+
    NOTIFY / IDLE     --folder--> | ChangeQueue| --batch--> AccountLoop --> AccountSync
    main thread       --full----> +------------+             (one sync at a time)

A batch is what gathered until the sources were quiet for `daemon.debounce`
seconds (at most `MAX_DELAY_FACTOR` times that in all), so a mail reader renaming
two hundred files is one sync, not two hundred, and it names the folders to sync;
anything that cannot name its folders (a folder list change, a reconnect after an
outage, the periodic check every `daemon.full_check_interval` seconds, SIGUSR1)
asks for a full sync instead. The queue keeps a set of folder names, not a list of
events, so its size is bounded by the number of folders however busy the sources are.

The main thread only waits for signals: a signal handler merely wakes it (through
`signal.set_wakeup_fd`), and everything else happens in ordinary code, where taking
a lock cannot deadlock against the interrupted code. SIGTERM and SIGINT let each
loop finish the sync under way (the state is committed as it goes) and exit 0; a
second one exits at once, which is safe too, only slower for the next run. SIGUSR1
asks for a full sync now, SIGHUP reloads the configuration and, for accounts whose
settings changed, restarts the watcher and push connections; a configuration that
does not load is reported in one line and the old one kept.

Failures: a first connection that fails at start (a wrong password, a wrong host)
ends the daemon with status 3, as `sync` would; later ones are retried with
exponential backoff (1 s to 5 min) and logged once per outage, and the first sync
after an outage is a full one, since push missed whatever happened meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mirrorsync import proof
from mirrorsync.config import AccountConfig, HooksConfig, resolve_password
from mirrorsync.errors import (
    ConnectionFailed,
    DaemonRunning,
    ExitStatus,
    LockedError,
    MirrorsyncError,
)
from mirrorsync.imap.notify import PUSH_CONNECTED
from mirrorsync.imap.push import Backoff, OutageLog, Push
from mirrorsync.maildir import display_path
from mirrorsync.paths import check_account_paths
from mirrorsync.state import AccountLock
from mirrorsync.watch import EventRouter, LocalWatcher, OwnWrites, install_hook
from mirrorsync.words import counted

if TYPE_CHECKING:
    from mirrorsync.environment import Environment
    from mirrorsync.imap.store import ImapStore
    from mirrorsync.sync.base import AccountReport

ARCHIVE_EVERY = 24 * 3600.0  # seconds between two runs of the archive rules

log = logging.getLogger(__name__)

MAX_DELAY_FACTOR = 10  # a batch waits at most this many debounce periods ...
MAX_DELAY_MIN = 1.0  # ... or this many seconds, whichever is longer
LOCKED_RETRY = 5.0  # another mirrorsync holds the account: try again after this
STOP_JOIN = 5.0
_WAKE = b"\0"  # written to the wakeup pipe by loops; signals write their number


# -- the queue -----------------------------------------------------------------------


@dataclass
class Batch:
    """What a loop takes from its queue in one go."""

    folders: dict[str, str] = field(default_factory=dict)  # folder -> why
    full: str | None = None  # why everything must be synced, if it must
    stop: bool = False
    reload: tuple[AccountConfig, str] | None = None

    def __bool__(self) -> bool:
        return bool(self.folders or self.full or self.stop or self.reload)


class ChangeQueue:
    """The single thread-safe queue between the sources and an account's loop.

    Producers call `folder`, `full`, `stop` and `reload` from any thread; the loop
    calls `take`. Changes are merged as they arrive (a set of folder names and one
    "everything" flag), so memory does not grow with the number of events."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._batch = Batch()
        self._first = 0.0  # when the pending changes began
        self._last = 0.0  # when the latest change arrived

    def folder(self, name: str | None, why: str) -> None:
        """A change in folder `name`; None means the folder is not known: sync all."""
        if name is None:
            self.full(why)
            return
        with self._cond:
            self._changed()
            self._batch.folders.setdefault(name, why)
            self._cond.notify_all()

    def full(self, why: str) -> None:
        with self._cond:
            self._changed()
            if self._batch.full is None:
                self._batch.full = why
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._batch.stop = True
            self._cond.notify_all()

    @property
    def stopping(self) -> bool:
        with self._cond:
            return self._batch.stop

    def reload(self, account: AccountConfig, password: str) -> None:
        with self._cond:
            self._batch.reload = (account, password)
            self._cond.notify_all()

    def _changed(self) -> None:
        now = self._clock()
        if not (self._batch.folders or self._batch.full):
            self._first = now
        self._last = now

    def take(self, timeout: float, debounce: float) -> Batch:
        """Wait up to `timeout` seconds for something, then until changes have been
        quiet for `debounce` seconds (but no longer than `max_delay(debounce)` after
        the first), and return everything pending; an empty Batch on timeout. Stop and
        reload requests are returned at once."""
        with self._cond:
            end = self._clock() + max(0.0, timeout)
            while not self._batch:
                remaining = end - self._clock()
                if remaining <= 0:
                    return Batch()
                self._cond.wait(remaining)
            limit = self._first + max_delay(debounce)
            while not (self._batch.stop or self._batch.reload):
                wake = min(self._last + debounce, limit)
                remaining = wake - self._clock()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch, self._batch = self._batch, Batch()
            return batch


def max_delay(debounce: float) -> float:
    return max(MAX_DELAY_FACTOR * debounce, MAX_DELAY_MIN)


# -- output --------------------------------------------------------------------------


class Output:
    """Lines for the user from several threads: one per sync that changed something
    on stdout (unless -q), errors on stderr; flushed at once, since a daemon's output
    usually goes to a file or the journal, where buffering would hold it back."""

    def __init__(self, env: Environment, quiet: bool) -> None:
        self._env = env
        self._quiet = quiet
        self._lock = threading.Lock()

    def result(self, line: str) -> None:
        if self._quiet:
            return
        with self._lock:
            self._env.stdout.write(line + "\n")
            self._env.stdout.flush()

    def error(self, line: str) -> None:
        with self._lock:
            self._env.stderr.write(f"mirrorsync: {line}\n")
            self._env.stderr.flush()


# -- one account ---------------------------------------------------------------------


class AccountLoop(threading.Thread):
    """Owns one account: its sync connection, watcher and push listeners, and the
    only thread that syncs it."""

    def __init__(
        self,
        account: AccountConfig,
        password: str,
        out: Output,
        own: OwnWrites,
        wake: Callable[[], None],
        verbose: bool = False,
    ) -> None:
        super().__init__(name=f"mirrorsync-{account.name}", daemon=True)
        self.account = account
        self.password = password
        self.queue = ChangeQueue()
        self._out = out
        self._own = own
        self._wake = wake
        self._verbose = verbose
        self.start_error: MirrorsyncError | None = None
        self.started_ok = threading.Event()
        self.finished = threading.Event()
        self.syncs = 0
        self._store: ImapStore | None = None  # the connection opened at start
        self._watcher: LocalWatcher | None = None
        self._watch_gave_up = False
        self._push: Push | None = None
        self._backoff = Backoff()
        self._outages = OutageLog(account.name)
        self._retry_at: float | None = None
        self._reported: dict[str, str] = {}  # folder or "" -> last error shown
        self._pending = Batch()

    # -- control, from other threads

    def stop(self) -> None:
        self.queue.stop()

    def sync_now(self, why: str) -> None:
        self.queue.full(why)

    def reload(self, account: AccountConfig, password: str) -> None:
        self.queue.reload(account, password)

    # -- the thread

    def run(self) -> None:
        try:
            self._main()
        except Exception as e:  # a bug: one line (a traceback with -v), then stop
            self._out.error(
                f"[{self.account.name}] internal error: {type(e).__name__}: {e} "
                "(re-run with -v for a traceback and report it)"
            )
            if self._verbose:
                log.exception("[%s] the account's loop failed", self.account.name)
            if not self.started_ok.is_set() and self.start_error is None:
                self.start_error = MirrorsyncError(f"{type(e).__name__}: {e}")
                self.start_error.exit_status = ExitStatus.INTERNAL
        finally:
            self._stop_sources()
            self._close_store()
            self.finished.set()
            self._wake()

    def _main(self) -> None:
        from mirrorsync.imap.store import ImapStore

        try:
            # The first contact decides whether the daemon runs at all: a wrong
            # password or host must stop it with one line, not be retried for ever.
            self._store = ImapStore.connect(self.account.remote, self.password)
        except MirrorsyncError as e:
            self.start_error = e
            return
        self.started_ok.set()
        self._wake()
        if self.queue.stopping:
            return  # stopped while connecting: no first sync to wait for
        # Sources first, then the first sync: whatever changes during that sync is
        # queued and synced after it, not lost in between.
        self._start_sources()
        self._pending.full = "start"
        next_full = time.monotonic() + self.account.daemon.full_check_interval
        while True:
            if self._pending:
                timeout = 0.0 if self._retry_at is None else self._retry_at - time.monotonic()
            else:
                due = next_full if self._retry_at is None else self._retry_at
                timeout = due - time.monotonic()
            batch = self.queue.take(timeout, self.account.daemon.debounce)
            if batch.stop:
                return
            if batch.reload is not None:
                self._reconfigure(*batch.reload)
                interval = self.account.daemon.full_check_interval
                next_full = min(next_full, time.monotonic() + interval)
            if self._retry_at is not None and PUSH_CONNECTED in (
                batch.full,
                *batch.folders.values(),
            ):
                self._retry_at = None  # a push connection works: so should a sync
            self._merge(batch)
            now = time.monotonic()
            if self._retry_at is not None:
                if now < self._retry_at:
                    continue  # in backoff: keep collecting
                self._pending.full = self._pending.full or "retry"
            if now >= next_full:
                self._pending.full = self._pending.full or "periodic check"
            if not (self._pending.full or self._pending.folders):
                continue
            full = self._pending.full is not None
            if self._sync(self._pending) and full:
                next_full = time.monotonic() + self.account.daemon.full_check_interval

    def _merge(self, batch: Batch) -> None:
        for name, why in batch.folders.items():
            self._pending.folders.setdefault(name, why)
        if batch.full and not self._pending.full:
            self._pending.full = batch.full

    # -- syncing

    def _sync(self, pending: Batch) -> bool:
        """Run one sync for what is pending; True when it ran (whatever the folders'
        outcome), False when it must be retried (the server is unreachable, or
        another mirrorsync holds the account)."""
        from mirrorsync.sync.base import SyncOptions

        if pending.full:
            folders: tuple[str, ...] = ()
            trigger = pending.full
        else:
            folders = tuple(sorted(pending.folders))
            whys = sorted(set(pending.folders.values()))
            trigger = f"{', '.join(whys)}: {', '.join(folders)}"
        self.syncs += 1
        self._hooks(["pre_sync"])
        started = time.monotonic()
        try:
            # A full check trusts no recorded position: drift heals (see SyncOptions).
            report = self._run_engine(SyncOptions(folders=folders, verify=bool(pending.full)))
        except ConnectionFailed as e:
            self._connection_failed(e)
            return False
        except LockedError as e:
            log.info("[%s] %s; trying again in %gs", self.account.name, e, LOCKED_RETRY)
            self._retry_at = time.monotonic() + LOCKED_RETRY
            return False
        except MirrorsyncError as e:
            # The root vanished, the state is unusable, ...: say it once; the next
            # periodic check tries again, and says it again only if it changed.
            self._recovered()
            self._report("", str(e))
            self._pending = Batch()
            return True
        except Exception as e:
            # A bug, in the engine or here. The daemon stays up for the other folders
            # and accounts; the problem is reported once, with a traceback under -v.
            if self._verbose:
                log.exception("[%s] sync #%d failed", self.account.name, self.syncs)
            self._close_store()
            self._report(
                "", f"internal error: {type(e).__name__}: {e} (re-run with -v and report it)"
            )
            self._pending = Batch()
            return True
        self._recovered()
        self._pending = Batch()
        self._show(report, trigger, time.monotonic() - started, full=not folders)
        self._hooks(
            ["post_sync", "new_mail"],
            status=int(ExitStatus.PARTIAL if report.failed else ExitStatus.OK),
            done={f.name: f.counts for f in report.folders},
            failed={f.name: f.error for f in report.folders if f.error},
        )
        self._ensure_watcher()
        return True

    def _hooks(self, which: list[str], **facts: Any) -> None:
        """The account's hooks, as `sync` runs them (mirrorsync/hooks.py); a failure
        is reported there and changes nothing here."""
        if self.account.hooks == HooksConfig():
            return
        from mirrorsync.hooks import run_hooks, scrubbed

        run_hooks(which, self.account, scrubbed(os.environ, [self.account]), **facts)

    def _run_engine(self, options: Any) -> AccountReport:
        """The engine on a connection of its own for this sync (the one opened at
        start serves the first sync). Not one kept between syncs: a connection that
        still has a folder selected gets that folder's STATUS from its own, older
        view (RFC 3501 6.3.10; Dovecot does so), and the engine would miss the very
        change it was woken for. A login per sync is cheap next to that."""
        from mirrorsync.imap.store import ImapStore
        from mirrorsync.maildir import Maildir
        from mirrorsync.state import State
        from mirrorsync.sync.engine import AccountSync

        account = self.account
        with AccountLock(account.state_dir, account.name):
            proof.void_for_work(account.state_dir)  # see `proof`: this sync may change the state
            store, self._store = self._store, None
            if store is None:
                store = ImapStore.connect(account.remote, self.password)
            try:
                state = State.open(account.state_dir)
                try:
                    maildir = Maildir.of(account.local)
                    report = AccountSync(
                        account, store, maildir, state, options, self._out.result
                    ).run()
                    if not options.folders and not report.failed:
                        self._archive_daily(store, maildir, state)
                    return report
                finally:
                    state.close()
            finally:
                with contextlib.suppress(Exception):
                    store.close()

    def _archive_daily(self, store: Any, maildir: Any, state: Any) -> None:
        """The account's archive rules, applied once a day after a full sync (on its
        connection, under its lock), as `sync --archive` applies them on demand. The
        time of the last run is kept in the state, so a restart does not repeat it."""
        account = self.account
        if not account.archive:
            return
        last = float(state.get_meta("last_archive") or 0)
        if time.time() - last < ARCHIVE_EVERY:
            return
        from mirrorsync.archive import run_archive

        done = run_archive(account, store, maildir, state, account.archive, False, log.info)
        with state.transaction():
            state.set_meta("last_archive", str(time.time()))
        if done.messages:
            self._out.result(
                f"{account.name}: archived {counted(done.messages, 'message')}, "
                f"{done.bytes / 1_048_576:.1f} MB freed on the server"
            )

    def _show(self, report: AccountReport, trigger: str, seconds: float, full: bool) -> None:
        name = self.account.name
        changed = [f.summary() for f in report.folders if not f.error and any(f.counts.values())]
        for f in report.folders:
            if f.error:
                self._report(f.name, f.summary())
            else:
                self._reported.pop(f.name, None)
        if full and not report.failed:
            self._reported.pop("", None)
        if changed:
            self._out.result(f"{name}: {'; '.join(changed)} ({seconds:.1f}s)")
        log.info(
            "[%s] sync #%d (%s): %s (%.2fs)",
            name,
            self.syncs,
            trigger,
            f"{counted(len(changed), 'folder')} changed" if changed else "no changes",
            seconds,
        )

    def _report(self, key: str, text: str) -> None:
        """Each problem once, until it changes or goes away, so that a folder that
        fails at every periodic check does not fill the log."""
        if self._reported.get(key) == text:
            log.debug("[%s] still: %s", self.account.name, text)
            return
        self._reported[key] = text
        self._out.error(f"[{self.account.name}] {text}")

    def _connection_failed(self, e: ConnectionFailed) -> None:
        delay = self._backoff.next()
        self._retry_at = time.monotonic() + delay
        self._pending.full = self._pending.full or "reconnect"
        self._outages.failed("sync", e)
        log.debug("[%s] sync: next try in %gs", self.account.name, delay)

    def _recovered(self) -> None:
        self._retry_at = None
        self._backoff.reset()
        self._outages.ok("sync")

    # -- sources

    def _start_sources(self) -> None:
        self._watch_gave_up = False
        self._ensure_watcher()
        self._push = Push(self.account, self.password, self.queue.folder, self._outages)
        self._push.start()

    def _ensure_watcher(self) -> None:
        """(Re)start the watcher when it is not watching the current root: at start,
        once the first sync has created the root, or after the root was replaced."""
        if self._watch_gave_up or (self._watcher is not None and self._watcher.healthy):
            return
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        root = self.account.local.path
        queue_folder = self.queue.folder
        if self.account.local.rename:
            back = {local: server for server, local in self.account.local.rename}

            def queue_folder(name: str | None, why: str) -> None:
                # a renamed folder's directory -> the folder's name (folders.rename)
                self.queue.folder(name and back.get(name, name), why)

        if self.account.local.folder_names == "modified-utf-7":
            from mirrorsync.adopt import decode_name

            renamed = queue_folder

            def queue_folder(name: str | None, why: str) -> None:
                # the directory's spelling -> the folder's name
                renamed(name and (decode_name(name) or name), why)

        router = EventRouter(
            root,
            self.account.local.layout,
            queue_folder,
            self._own,
            self.account.folders.matches,
        )
        watcher = LocalWatcher(router)
        if watcher.start():
            self._watcher = watcher
            log.info("[%s] watching %s for local changes", self.account.name, display_path(root))
        elif root.is_dir():
            self._watch_gave_up = True  # it said why; the periodic check remains

    def _stop_sources(self) -> None:
        if self._push is not None:
            self._push.stop(STOP_JOIN)
            self._push = None
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None

    def _reconfigure(self, account: AccountConfig, password: str) -> None:
        if account == self.account and password == self.password:
            log.info("[%s] configuration unchanged", account.name)
            return
        log.info("[%s] configuration changed; restarting the watcher and push", account.name)
        self._stop_sources()
        self._close_store()
        self.account, self.password = account, password
        self.queue.full("configuration reloaded")
        self._start_sources()

    def _close_store(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            with contextlib.suppress(Exception):
                store.close()


# -- the process ---------------------------------------------------------------------


def daemon_lock(account: AccountConfig) -> AccountLock:
    """One daemon per account: a second one would only double every sync. Held for
    the daemon's lifetime; the per-sync lock still keeps a manual `mirrorsync sync`
    from overlapping a daemon's sync."""
    return AccountLock(
        account.state_dir,
        account.name,
        name="daemon.lock",
        busy="already has a mirrorsync daemon",
        hint="stop it first",
    )


_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)


@contextlib.contextmanager
def _signal_pipe() -> Iterator[tuple[int, int]]:
    """A pipe that every handled signal writes its number to: the main thread blocks
    reading it, with no timeout and so no wakeups while idle."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    previous = {s: signal.getsignal(s) for s in _SIGNALS}
    old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    try:
        for s in _SIGNALS:
            signal.signal(s, lambda _signum, _frame: None)
        yield r, w
    finally:
        signal.set_wakeup_fd(old_fd)
        for s, handler in previous.items():
            signal.signal(s, handler)
        os.close(r)
        os.close(w)


def _poke(fd: int) -> None:
    with contextlib.suppress(OSError):  # full (the main thread is awake anyway) or closed
        os.write(fd, _WAKE)


class Daemon:
    """The main thread's side: starts a loop per account, turns signals into
    requests to the loops, reloads the configuration."""

    def __init__(
        self,
        accounts: Sequence[AccountConfig],
        env: Environment,
        out: Output,
        reload_accounts: Callable[[], list[AccountConfig]],
        verbose: bool,
    ) -> None:
        self.env = env
        self.out = out
        self.verbose = verbose
        self._initial = list(accounts)
        self._reload_accounts = reload_accounts
        self.own = OwnWrites()
        self.loops: dict[str, AccountLoop] = {}
        self._retired: list[AccountLoop] = []  # removed by a reload, maybe still syncing
        self._locks: dict[str, AccountLock] = {}
        self._wakefd = -1
        self._stopping = False

    def run(self) -> ExitStatus:
        passwords = {a.name: resolve_password(a.remote, self.env.environ) for a in self._initial}
        install_hook(self.own)
        try:
            with _signal_pipe() as (r, w):
                self._wakefd = w
                try:
                    for account in self._initial:
                        self._start(account, passwords[account.name])
                    return self._serve(r)
                finally:
                    self._shutdown()
        finally:
            install_hook(None)
            for lock in self._locks.values():
                lock.__exit__(None, None, None)

    def _start(self, account: AccountConfig, password: str) -> None:
        check_account_paths(account)
        try:
            lock = daemon_lock(account).__enter__()
        except LockedError as e:
            raise DaemonRunning(e.message, e.hint) from None
        self._locks[account.name] = lock
        fd = self._wakefd
        loop = AccountLoop(account, password, self.out, self.own, lambda: _poke(fd), self.verbose)
        self.loops[account.name] = loop
        loop.start()

    def _serve(self, r: int) -> ExitStatus:
        starting = True
        while True:
            failed = self._collect_start_errors()
            if failed is not None and starting:
                # A daemon that cannot log in at start is misconfigured: say so and stop
                # rather than retry for ever in the background.
                self._stop_all()
                return failed
            if starting and all(lp.started_ok.is_set() for lp in self.loops.values()):
                starting = False
                names = ", ".join(self.loops)
                log.info("watching %s; SIGUSR1 syncs now, SIGHUP reloads, SIGTERM stops", names)
            if all(lp.finished.is_set() for lp in self.loops.values()):
                # Loops end on a stop request only, unless something broke them.
                return ExitStatus.OK if self._stopping else ExitStatus.INTERNAL
            try:
                data = os.read(r, 64)
            except InterruptedError:  # pragma: no cover - PEP 475 retries for us
                continue
            for byte in data:
                self._on_signal(byte)

    def _collect_start_errors(self) -> ExitStatus | None:
        worst: ExitStatus | None = None
        for name, loop in list(self.loops.items()):
            if loop.start_error is None or not loop.finished.is_set():
                continue
            from mirrorsync.cli import report_error

            status = report_error(loop.start_error, self.env, verbose=self.verbose)
            worst = status if worst is None else max(worst, status)
            del self.loops[name]
            self._locks.pop(name).__exit__(None, None, None)
        return worst

    def _on_signal(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            if self._stopping:
                log.warning("stopping at once; the next run finishes what was under way")
                os._exit(int(ExitStatus.PARTIAL))
            self._stopping = True
            log.info("stopping after the sync under way (signal again to stop at once)")
            self._stop_all()
        elif signum == signal.SIGUSR1:
            for loop in self.loops.values():
                loop.sync_now("SIGUSR1")
        elif signum == signal.SIGHUP and not self._stopping:
            self._reload()

    def _reload(self) -> None:
        try:
            accounts = self._reload_accounts()
            passwords = {a.name: resolve_password(a.remote, self.env.environ) for a in accounts}
        except MirrorsyncError as e:
            self.out.error(f"configuration not reloaded, keeping the old one: {e}")
            return
        log.info("configuration reloaded")
        wanted = {a.name: a for a in accounts}
        for name in list(self.loops):
            if name not in wanted:
                log.info("[%s] no longer configured; stopping it", name)
                loop = self.loops.pop(name)
                loop.stop()
                self._retired.append(loop)
                self._locks.pop(name).__exit__(None, None, None)
        for name, account in wanted.items():
            if name in self.loops:
                self.loops[name].reload(account, passwords[name])
                continue
            try:
                self._start(account, passwords[name])
            except MirrorsyncError as e:
                self.out.error(str(e))

    def _stop_all(self) -> None:
        for loop in self.loops.values():
            loop.stop()

    def _shutdown(self) -> None:
        self._stop_all()
        for loop in [*self.loops.values(), *self._retired]:
            # Daemonic: a loop stuck on a dead network must not keep the process alive,
            # but a sync under way is given the time it needs to finish.
            while loop.is_alive():
                loop.join(1.0)


def run(
    accounts: Sequence[AccountConfig],
    env: Environment,
    *,
    quiet: bool,
    verbose: bool,
    reload_accounts: Callable[[], list[AccountConfig]],
) -> ExitStatus:
    """Run until SIGTERM/SIGINT; the exit status as `mirrorsync sync` would give it
    for a failure at start, 0 after a signal."""
    out = Output(env, quiet)
    return Daemon(accounts, env, out, reload_accounts, verbose).run()
