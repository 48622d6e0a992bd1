"""The server side of `mirrorsync daemon`: IMAP push -> names of changed folders.

Push runs on connections of its own, never the sync's, so a sync never waits for a
push connection and push never misses a change because a sync holds the line. With
NOTIFY (RFC 5465) one connection hears about every folder:

    NOTIFY SET (personal (MessageNew MessageExpunge FlagChange MailboxName))

and then idles with no folder selected; the server reports a changed folder with an
untagged STATUS and a created, deleted or renamed one with LIST. Without NOTIFY,
each folder named in `daemon.idle_folders` gets a connection that EXAMINEs it and
IDLEs (RFC 2177); EXISTS, EXPUNGE and FETCH there mean that folder changed.

The sessions are in `mirrorsync.imap.notify`, the connection they run on (IMAP on a
socket of its own, since imapclient can do neither NOTIFY nor a safe IDLE) in
`mirrorsync.imap.idle`.

Each listener is a daemonic thread that reconnects with exponential backoff (1 s to
5 min) and logs one warning per outage. Whenever a listener is connected (again), it
asks for a sync of everything it covers: changes made while nobody was listening
were never announced.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from mirrorsync.config import AccountConfig, RemoteConfig
from mirrorsync.errors import (
    MirrorsyncError,
)
from mirrorsync.imap.idle import ImapConnection
from mirrorsync.imap.notify import (
    IdleSession,
    NotifySession,
    NotifyUnavailable,
    Session,
    Sink,
)

log = logging.getLogger(__name__)

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 300.0


class OutageLog:
    """One warning per outage of an account, whichever of its connections notices
    first (the sync's or a push listener's), and one line when all of them work
    again. A connection that keeps failing while the others work (a server that
    allows fewer connections) is one outage too, not a warning per retry."""

    def __init__(self, account: str) -> None:
        self.account = account
        self._lock = threading.Lock()
        self._failing: set[str] = set()
        self._since: float | None = None

    def failed(self, source: str, error: object) -> None:
        with self._lock:
            new_source = source not in self._failing
            self._failing.add(source)
            first = self._since is None
            if first:
                self._since = time.monotonic()
        if first:
            log.warning(
                "[%s] %s: %s; retrying with backoff (%gs to %gs)",
                self.account,
                source,
                error,
                BACKOFF_FIRST,
                BACKOFF_MAX,
            )
        else:
            log.debug("[%s] %s: %s%s", self.account, source, error, "" if new_source else " again")

    def ok(self, source: str) -> None:
        with self._lock:
            if source not in self._failing:
                return
            self._failing.discard(source)
            if self._failing or self._since is None:
                return
            lasted, self._since = time.monotonic() - self._since, None
        log.warning("[%s] connected again after %.0fs", self.account, lasted)


class Backoff:
    """Exponential backoff: 1, 2, 4, ... seconds, at most `cap`; `reset` after success."""

    def __init__(self, first: float = BACKOFF_FIRST, cap: float = BACKOFF_MAX) -> None:
        self.first = first
        self.cap = cap
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.cap)
        return delay

    def reset(self) -> None:
        self._next = self.first


class Listener(threading.Thread):
    """Runs one session, reconnecting with backoff until stopped."""

    def __init__(
        self,
        account: str,
        connect: Callable[[], ImapConnection],
        session: Session,
        on_unavailable: Callable[[NotifyUnavailable], None] | None = None,
        outages: OutageLog | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__(name=f"mirrorsync-{account}-{session.label}", daemon=True)
        self.account = account
        self._connect = connect
        self.session = session
        self._on_unavailable = on_unavailable
        self._backoff = backoff or Backoff()
        self._stop_event = threading.Event()
        self._lock = threading.Lock()
        self._conn: ImapConnection | None = None
        self._outages = outages or OutageLog(account)
        self.connections = 0  # sessions set up, for tests and the debug log

    def stop(self) -> None:
        self._stop_event.set()
        with self._lock:
            if self._conn is not None:
                self._conn.interrupt()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self._attempt()
            except NotifyUnavailable as e:
                log.info("[%s] %s", self.account, e)
                if self._on_unavailable is not None:
                    self._on_unavailable(e)
                return
            except (MirrorsyncError, OSError, ValueError) as e:
                # ValueError: a response the wire's tokenizer could not read.
                if self._stop_event.is_set():
                    return
                self._outages.failed(self.session.label, e)
            except Exception:  # a bug: say so, but keep listening
                log.exception("[%s] %s failed", self.account, self.session.label)
                self._outages.failed(self.session.label, "internal error")
            self._stop_event.wait(self._backoff.next())

    def _attempt(self) -> None:
        conn = self._connect()
        with self._lock:
            if self._stop_event.is_set():
                conn.close()
                return
            self._conn = conn
        try:
            self.session.run(conn, self._stop_event, self._connected)
        finally:
            with self._lock:
                self._conn = None
            conn.close()

    def _connected(self) -> None:
        self.connections += 1
        self._backoff.reset()
        self._outages.ok(self.session.label)
        if self.connections == 1:
            log.info("[%s] %s: listening", self.account, self.session.label)


class Push:
    """Every push listener of one account: NOTIFY if the server has it, else one IDLE
    connection per folder in `daemon.idle_folders`."""

    def __init__(
        self,
        account: AccountConfig,
        password: str,
        sink: Sink,
        outages: OutageLog | None = None,
        connect: Callable[[RemoteConfig, str], ImapConnection] = ImapConnection.open,
    ) -> None:
        self.account = account
        self._outages = outages or OutageLog(account.name)
        self._password = password
        self._sink = sink
        self._open = connect
        self._lock = threading.Lock()
        self._stopped = False
        self.listeners: list[Listener] = []

    def start(self) -> None:
        session = NotifySession(
            self._sink, self.account.folders.matches, self.account.daemon.idle_refresh, self._prefix
        )
        self._add(
            Listener(self.account.name, self._connect, session, self._fallback, self._outages)
        )

    @property
    def mode(self) -> str:
        """ "notify", "idle", or "" while that is not known yet (for tests and logs)."""
        with self._lock:
            kinds = {type(li.session) for li in self.listeners if li.is_alive()}
        if NotifySession in kinds:
            return "notify"
        return "idle" if IdleSession in kinds else ""

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._stopped = True
            listeners = list(self.listeners)
        for li in listeners:
            li.stop()
        deadline = time.monotonic() + timeout
        for li in listeners:
            li.join(max(0.0, deadline - time.monotonic()))

    def _connect(self) -> ImapConnection:
        return self._open(self.account.remote, self._password)

    def _prefix(self, conn: ImapConnection) -> str:
        from mirrorsync.naming import recorded_prefix

        return recorded_prefix(self.account, conn)

    def _add(self, listener: Listener) -> None:
        with self._lock:
            if self._stopped:
                return
            self.listeners.append(listener)
        listener.start()

    def _fallback(self, why: NotifyUnavailable) -> None:
        folders = [f for f in self.account.daemon.idle_folders if self._idle_wanted(f)]
        if not folders:
            log.info(
                "[%s] no folder to IDLE on; server changes are found by the full check every %gs",
                self.account.name,
                self.account.daemon.full_check_interval,
            )
        for folder in folders:
            session = IdleSession(
                folder, self._sink, self.account.daemon.idle_refresh, self._prefix
            )
            self._add(Listener(self.account.name, self._connect, session, None, self._outages))

    def _idle_wanted(self, folder: str) -> bool:
        if self.account.folders.matches(folder):
            return True
        log.warning(
            "[%s] daemon.idle_folders names %r, which the folders settings exclude; "
            "not watching it",
            self.account.name,
            folder,
        )
        return False
