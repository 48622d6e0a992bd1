"""The server side of `mirrorsync daemon`: IMAP push -> names of changed folders.

Push runs on connections of its own, never the sync's, so a sync never waits for a
push connection and push never misses a change because a sync holds the line. With
NOTIFY (RFC 5465) one connection hears about every folder:

    NOTIFY SET (personal (MessageNew MessageExpunge FlagChange MailboxName))

and then idles with no folder selected; the server reports a changed folder with an
untagged STATUS and a created, deleted or renamed one with LIST. Without NOTIFY,
each folder named in `daemon.idle_folders` gets a connection that EXAMINEs it and
IDLEs (RFC 2177); EXISTS, EXPUNGE and FETCH there mean that folder changed.

imapclient cannot do NOTIFY, and its IDLE has known traps (`idle_done` can block for
ever when the network is gone, imapclient issue 449; a line split across packets,
issue 519), so this module speaks IMAP itself on a plain socket: `ImapConnection` is
a small command layer with a response reader that handles literals, partial reads
and timeouts. Every read has a deadline; IDLE is re-issued every
`daemon.idle_refresh` seconds (the server may drop a client after 30 minutes), and
TCP keepalive notices a silently dead network in about two minutes.

Each listener is a daemonic thread that reconnects with exponential backoff (1 s to
5 min) and logs one warning per outage. Whenever a listener is connected (again), it
asks for a sync of everything it covers: changes made while nobody was listening
were never announced.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable

from mirrorsync.config import AccountConfig, RemoteConfig
from mirrorsync.errors import (
    ConnectionFailed,
    FolderNameError,
    MirrorsyncError,
)
from mirrorsync.imap.base import canonical_to_server
from mirrorsync.imap.connection import (
    LoginRefused,
    LoginUnavailable,
    Refused,
    enable,
    login,
    personal_prefix_of,
    tls_context,
    without_timing,
)
from mirrorsync.imap.wire import (
    LineTooLong,
    LiteralRefused,
    Response,
    decode_mutf7,
    encode_mutf7,
    parse_line,
    quoted,
    split_response,
)
from mirrorsync.names import server_to_canonical

log = logging.getLogger(__name__)

# A folder name, or None for "sync everything"; and a short reason for the log.
Sink = Callable[[str | None, str], None]

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 300.0
# Bounds on what one response may hold: push responses are a line or two, and a
# broken or hostile server must not make the daemon's memory grow.
MAX_LINE = 64 * 1024
MAX_LITERAL = 1024 * 1024
NOTIFY_EVENTS = (
    b"(personal (MessageNew MessageExpunge FlagChange MailboxName))",
    # A server that knows no FlagChange (it needs CONDSTORE to be useful) still tells
    # about new and expunged messages; flag changes then wait for the full check.
    b"(personal (MessageNew MessageExpunge MailboxName))",
)
# While changes flow (one was announced within ACTIVE_FOR seconds), NOTIFY is set
# again every RENEW_EVERY seconds: Dovecot's watch goes stale when its index log is
# rotated (see NotifySession). ACTIVE_FOR exceeds Dovecot's 30 s fallback timer, so a
# watch gone stale while changes flow is renewed before the daemon stops renewing.
RENEW_EVERY = 1.0
ACTIVE_FOR = 60.0
# Untagged responses that mean "this selected folder changed" during IDLE.
_FOLDER_CHANGES = frozenset({"EXISTS", "EXPUNGE", "FETCH", "VANISHED"})
_KEEPALIVE = (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 15), ("TCP_KEEPCNT", 4))


class ConnectionLost(ConnectionFailed):
    """The push connection broke: closed, reset, timed out, or the server said BYE."""


class NotifyUnavailable(MirrorsyncError):
    """The server has no usable NOTIFY; IDLE per folder is used instead."""


# The reason a listener gives when it is (re)connected and asks for a sync of what
# it covers; the daemon also takes it as proof that the server is reachable again.
PUSH_CONNECTED = "push connected"


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


# -- responses -----------------------------------------------------------------------


def mailbox_name(value: object, delimiter: str | None, prefix: str = "") -> str | None:
    """The canonical name of a mailbox named in a response (an atom, a string or a
    literal), or None if it has none (see `server_to_canonical`).

    Names are modified UTF-7, except where a server sends 8-bit names anyway: Dovecot
    2.3 names mailboxes in its NOTIFY STATUS and LIST responses as UTF-8 literals.
    Modified UTF-7 is 7-bit, so 8-bit bytes can only be UTF-8."""
    if not isinstance(value, bytes):
        return None
    try:
        name = value.decode("utf-8") if not value.isascii() else decode_mutf7(value)
    except (UnicodeError, ValueError):
        return None
    return server_to_canonical(name, delimiter, prefix)


# -- the connection ------------------------------------------------------------------


class ImapConnection:
    """One IMAP connection for push: commands, IDLE, and a reader with deadlines.

    Not thread-safe, except `interrupt`, which another thread may call to make a
    blocked read return at once (it shuts the socket down)."""

    def __init__(self, sock: socket.socket, address: str, timeout: float) -> None:
        self._sock = sock
        self.address = address
        self.timeout = timeout
        self._buf = bytearray()
        self._tags = itertools.count(1)
        self.capabilities: frozenset[str] = frozenset()

    # -- opening

    @classmethod
    def open(cls, remote: RemoteConfig, password: str) -> ImapConnection:
        """Connect, secure, log in, and learn the capabilities."""
        address = f"{remote.host}:{remote.port}"
        context = tls_context(remote) if remote.tls != "none" else None
        try:
            sock = socket.create_connection((remote.host, remote.port), timeout=remote.timeout)
        except OSError as e:
            raise ConnectionLost(f"cannot connect to {address} ({_why(e)})") from e
        _keepalive(sock)
        conn = None
        try:
            if remote.tls == "imaps":
                assert context is not None
                sock = context.wrap_socket(sock, server_hostname=remote.host)
            conn = cls(sock, address, remote.timeout)
            conn._greet_and_login(remote, password, context)
        except BaseException as e:
            if conn is not None:
                conn.close()
            else:
                sock.close()
            if isinstance(e, (ssl.SSLError, OSError)):
                raise ConnectionLost(f"cannot connect to {address} ({_why(e)})") from e
            raise
        return conn

    def _greet_and_login(
        self, remote: RemoteConfig, password: str, context: ssl.SSLContext | None
    ) -> None:
        greeting = self.read_response(time.monotonic() + self.timeout)
        if greeting is None:
            raise ConnectionLost(f"{self.address} sent no greeting within {self.timeout:g}s")
        if greeting.tag != "*" or greeting.kind not in ("OK", "PREAUTH"):
            raise ConnectionLost(
                f"{self.address} refused the connection: {without_timing(greeting.text)}"
            )
        self._host = remote.host
        self.capabilities = self._capability()
        if greeting.kind != "PREAUTH":
            self.capabilities = login(self, remote, password, context)
        elif remote.tls == "starttls":
            assert context is not None
            self.starttls(context)  # refused in this state, as it should be

    # -- what `connection.login` and `connection.enable` need

    def current_capabilities(self) -> frozenset[str]:
        return self.capabilities

    def starttls(self, context: ssl.SSLContext) -> None:
        self.check(self.command(b"STARTTLS"), "STARTTLS")
        if self._buf:
            raise ConnectionLost(f"{self.address} sent data before the TLS handshake")
        self._sock = context.wrap_socket(self._sock, server_hostname=self._host)
        self.capabilities = self._capability()

    def send_login(self, username: str, password: str) -> None:
        done = self.command(b"LOGIN", _astring(username), _astring(password))
        if done.kind != "OK":
            text = without_timing(done.text)
            raise (LoginUnavailable if "[UNAVAILABLE]" in text.upper() else LoginRefused)(text)
        self.capabilities = self._capability()

    def send_enable(self, extension: str) -> frozenset[str]:
        found: set[str] = set()

        def collect(resp: Response) -> None:
            if resp.kind == "ENABLED":
                found.update(resp.text.upper().split())

        done = self.command(b"ENABLE", extension.encode("ascii"), on_untagged=collect)
        if done.kind != "OK":
            raise Refused(without_timing(done.text))
        return frozenset(found)

    def _capability(self) -> frozenset[str]:
        found: list[str] = []

        def collect(resp: Response) -> None:
            if resp.kind == "CAPABILITY":
                found.extend(resp.text.upper().split())

        self.check(self.command(b"CAPABILITY", on_untagged=collect), "CAPABILITY")
        return frozenset(found)

    # -- commands

    def command(
        self,
        *args: bytes | Literal,
        on_untagged: Callable[[Response], None] | None = None,
    ) -> Response:
        """Send one command and read until its tagged response, which is returned
        (whatever its status; see `check`). Untagged responses on the way go to
        `on_untagged`; BYE raises ConnectionLost. Each wait has the connection's
        timeout."""
        tag = f"M{next(self._tags)}".encode()
        line = tag
        for arg in args:
            if isinstance(arg, Literal):
                sync = "LITERAL+" not in self.capabilities
                self.send(line + b" {%d%s}\r\n" % (len(arg.data), b"" if sync else b"+"))
                if sync:
                    refused = self._await_continuation(tag, on_untagged)
                    if refused is not None:
                        return refused
                line = arg.data
            else:
                line += b" " + arg
        self.send(line + b"\r\n")
        return self._await_tagged(tag, on_untagged)

    def check(self, resp: Response, what: str) -> Response:
        if resp.kind != "OK":
            raise ConnectionLost(f"{what} refused by {self.address}: {without_timing(resp.text)}")
        return resp

    def personal_prefix(self) -> str:
        """The prefix of the first personal namespace (NAMESPACE, RFC 2342), as
        `ImapStore.personal_prefix` reads it; "" without NAMESPACE."""
        if "NAMESPACE" not in self.capabilities:
            return ""
        found: list[str] = []

        def collect(resp: Response) -> None:
            if resp.kind == "NAMESPACE":
                found.append(personal_prefix_of(resp.values()[0] if resp.values() else None))

        self.check(self.command(b"NAMESPACE", on_untagged=collect), "NAMESPACE")
        return found[0] if found else ""

    def delimiter(self) -> str | None:
        """The hierarchy delimiter (LIST "" ""); None for a flat server."""
        found: list[str | None] = []

        def collect(resp: Response) -> None:
            if resp.kind == "LIST":
                values = resp.values()
                if len(values) >= 2:
                    d = values[1]
                    found.append(d.decode("ascii", "replace") if isinstance(d, bytes) else None)

        self.check(self.command(b"LIST", b'""', b'""', on_untagged=collect), "LIST")
        return found[0] if found else None

    def idle(
        self,
        duration: float,
        on_untagged: Callable[[Response], None],
        stop: threading.Event,
        end_by: Callable[[], float] | None = None,
    ) -> None:
        """IDLE for `duration` seconds (or until `stop`, or until the monotonic time
        `end_by()` returns, which `on_untagged` may bring forward), passing what the
        server says to `on_untagged`, then DONE and wait for the end of the command.
        DONE is answered within the timeout or the connection counts as lost, so a
        dead network never blocks here (imapclient issue 449)."""
        tag = f"M{next(self._tags)}".encode()
        self.send(tag + b" IDLE\r\n")
        ended = self._await_continuation(tag, on_untagged)
        if ended is not None:
            if ended.kind != "OK":
                raise ConnectionLost(
                    f"IDLE refused by {self.address}: {without_timing(ended.text)}"
                )
            return
        until = time.monotonic() + duration
        while not stop.is_set():
            resp = self.read_response(until if end_by is None else min(until, end_by()))
            if resp is None:
                break
            if resp.tag == tag.decode():
                return  # the server ended IDLE itself: the caller starts it again
            self._untagged(resp, on_untagged)
        self.send(b"DONE\r\n")
        self._await_tagged(tag, on_untagged)

    def _await_continuation(
        self, tag: bytes, on_untagged: Callable[[Response], None] | None
    ) -> Response | None:
        """Wait for "+"; returns the tagged response instead if the server refused."""
        deadline = time.monotonic() + self.timeout
        while True:
            resp = self._next(deadline)
            if resp.tag == "+":
                return None
            if resp.tag == tag.decode():
                return resp
            self._untagged(resp, on_untagged)

    def _await_tagged(self, tag: bytes, on_untagged: Callable[[Response], None] | None) -> Response:
        deadline = time.monotonic() + self.timeout
        while True:
            resp = self._next(deadline)
            if resp.tag == tag.decode():
                return resp
            self._untagged(resp, on_untagged)
            deadline = time.monotonic() + self.timeout  # the server is alive: wait on

    def _next(self, deadline: float) -> Response:
        resp = self.read_response(deadline)
        if resp is None:
            raise ConnectionLost(f"{self.address} did not answer within {self.timeout:g}s")
        return resp

    def _untagged(self, resp: Response, handler: Callable[[Response], None] | None) -> None:
        if resp.tag == "*" and resp.kind == "BYE":
            raise ConnectionLost(
                f"{self.address} closed the connection: {without_timing(resp.text)}"
            )
        if resp.tag == "*" and handler is not None:
            handler(resp)

    # -- bytes

    def read_response(self, deadline: float) -> Response | None:
        """The next complete response, or None if none arrived by `deadline`
        (monotonic). A partial response stays buffered for the next call."""
        while True:
            try:
                found = split_response(self._buf, MAX_LINE, MAX_LITERAL)
            except (LineTooLong, LiteralRefused) as e:
                raise ConnectionLost(f"{self.address}: {e}") from e
            if found is not None:
                parts, used = found
                del self._buf[:used]
                return parse_line(parts)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                self._sock.settimeout(remaining)
                data = self._sock.recv(16384)
            except TimeoutError:
                return None
            except (OSError, ValueError) as e:  # ValueError: closed by `interrupt`
                raise ConnectionLost(f"connection to {self.address} lost ({_why(e)})") from e
            if not data:
                raise ConnectionLost(f"{self.address} closed the connection")
            self._buf += data

    def send(self, data: bytes) -> None:
        try:
            self._sock.settimeout(self.timeout)
            self._sock.sendall(data)
        except (OSError, ValueError) as e:
            raise ConnectionLost(f"connection to {self.address} lost ({_why(e)})") from e

    def interrupt(self) -> None:
        """From another thread: make a blocked read or write fail now. The base class's
        shutdown is called even on a TLS socket, so the TLS object the reading thread
        uses is left alone."""
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self._sock, socket.SHUT_RDWR)

    def close(self) -> None:
        """Without LOGOUT: closing is what ends a session the server may already have
        dropped, and waiting for a LOGOUT answer could block on a dead network."""
        with contextlib.suppress(OSError):
            self._sock.close()


class Literal:
    """A command argument sent as an IMAP literal ({n} and the bytes)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def _astring(value: str | bytes) -> bytes | Literal:
    """A quoted string where that reads the same, else a literal."""
    found = quoted(value)
    if found is not None:
        return found
    return Literal(value.encode("utf-8") if isinstance(value, str) else value)


def _keepalive(sock: socket.socket) -> None:
    """TCP keepalive finds a silently dead network (a suspended laptop, a NAT that
    forgot us) in about two minutes instead of at the next IDLE refresh."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in _KEEPALIVE:
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    except OSError:
        log.debug("cannot enable TCP keepalive", exc_info=True)


def _why(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


# -- sessions ------------------------------------------------------------------------


class NotifySession:
    """NOTIFY on one connection for every folder of the personal namespace.

    Dovecot 2.3 watches its list index log with inotify on the file it found when
    NOTIFY was set. Under a steady load that log is rotated (renamed, and a new one
    created) every minute or two, and from then on the watch sees nothing: changes
    are announced only by Dovecot's `mailbox_idle_check_interval` timer, every 30 s,
    in one burst. A NOTIFY SET makes Dovecot watch the current file again. So while
    changes flow (one was announced in the last `ACTIVE_FOR` seconds) NOTIFY is set
    again every `RENEW_EVERY` seconds, with the STATUS indicator (RFC 5465 section
    5.1): the server then sends the status of every folder, and a folder whose status
    differs from the last one heard had a change that was never announced. When
    nothing changes, nothing is renewed: an idle daemon costs no more than before.

    The last status heard of each folder also filters Dovecot's spurious events (a
    STATUS for a folder that did not change, e.g. after another client selected it):
    with CONDSTORE every change raises HIGHESTMODSEQ, so a STATUS that carries it and
    repeats what was known is no change."""

    label = "push (NOTIFY)"

    def __init__(
        self,
        sink: Sink,
        wanted: Callable[[str], bool],
        refresh: float,
        prefix: Callable[[ImapConnection], str] = lambda conn: "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sink = sink
        self.wanted = wanted
        self.refresh = refresh
        self.delimiter: str | None = None
        self.prefix = prefix  # asked at each connection: the first sync may set it
        self._prefix = ""
        self._clock = clock
        self._events: bytes | None = None  # the event groups the server accepted
        self._with_status = False  # whether it accepted the STATUS indicator
        self._known: dict[str, dict[str, int]] = {}  # folder -> last status heard
        self._last_change = -ACTIVE_FOR  # when a change was last announced
        self._renew_at = float("inf")  # when NOTIFY is to be set again
        self.renewals = 0  # NOTIFY SETs after the first, for tests and benchmarks

    def run(
        self, conn: ImapConnection, stop: threading.Event, connected: Callable[[], None]
    ) -> None:
        if "NOTIFY" not in conn.capabilities:
            raise NotifyUnavailable(f"{conn.address} does not offer NOTIFY")
        self.delimiter = conn.delimiter()
        self._prefix = self.prefix(conn)
        if "CONDSTORE" in conn.capabilities:
            # With CONDSTORE enabled, a flag change in a folder that is not selected
            # is announced too (a STATUS with HIGHESTMODSEQ).
            enable(conn, conn.capabilities, "CONDSTORE")
        self._known.clear()
        self._renew_at = float("inf")
        refused = ""
        # The STATUS indicator first: it gives the status to compare renewals with.
        for with_status in (True, False):
            for events in NOTIFY_EVENTS:
                args = (b"SET", b"STATUS", events) if with_status else (b"SET", events)
                resp = conn.command(b"NOTIFY", *args, on_untagged=self._initial)
                if resp.kind == "OK":
                    # (A new account may have no folder yet: no STATUS at all.)
                    self._events, self._with_status = events, with_status
                    break
                refused = without_timing(resp.text)
            else:
                continue
            break
        else:
            raise NotifyUnavailable(f"{conn.address} refused NOTIFY SET: {refused}")
        connected()
        self.sink(None, PUSH_CONNECTED)
        while not stop.is_set():
            conn.idle(self.refresh, self.handle, stop, lambda: self._renew_at)
            if not stop.is_set() and self._clock() >= self._renew_at:
                self.renew(conn)

    def renew(self, conn: ImapConnection) -> None:
        """NOTIFY SET again, and announce every folder whose status changed unheard."""
        assert self._events is not None
        self.renewals += 1
        heard: dict[str, dict[str, int]] = {}

        def collect(resp: Response) -> None:
            found = self._status(resp)
            if found is not None and found[0] is not None:
                heard.setdefault(found[0], {}).update(found[1])
            else:
                self.handle(resp)

        resp = conn.command(b"NOTIFY", b"SET", b"STATUS", self._events, on_untagged=collect)
        conn.check(resp, "NOTIFY SET")
        for name, status in heard.items():
            known = self._known.get(name)
            if known is None or any(known.get(k) != v for k, v in status.items()):
                self._changed(name, "server change NOTIFY did not announce")
        # A folder not heard of is forgotten, not synced: a deletion is announced
        # with LIST, and one missed is found by Dovecot's timer or the full check.
        self._known = heard
        now = self._clock()
        self._renew_at = now + RENEW_EVERY if now - self._last_change < ACTIVE_FOR else float("inf")

    def handle(self, resp: Response) -> None:
        found = self._status(resp)
        if found is not None:
            name, status = found
            if name is None:
                self._changed(None, "server change in an unknown folder")
                return
            known = self._known.setdefault(name, {})
            repeated = "HIGHESTMODSEQ" in status and all(
                known.get(k) == v for k, v in status.items()
            )
            known.update(status)
            if not repeated:
                self._changed(name, "server change")
        elif resp.kind == "LIST":
            self._changed(None, "server folder list changed")
        elif resp.kind == "OK" and resp.code == "NOTIFICATIONOVERFLOW":
            self._changed(None, "server notification overflow")

    def _initial(self, resp: Response) -> None:
        """The answers to the first NOTIFY SET: what is known when listening starts."""
        found = self._status(resp)
        if found is not None and found[0] is not None:
            self._known.setdefault(found[0], {}).update(found[1])

    def _status(self, resp: Response) -> tuple[str | None, dict[str, int]] | None:
        """(folder, status items) of a STATUS response, None for other responses."""
        if resp.kind != "STATUS":
            return None
        values = resp.values()
        name = mailbox_name(values[0], self.delimiter, self._prefix) if values else None
        items: dict[str, int] = {}
        if len(values) >= 2 and isinstance(values[1], tuple):
            pairs = values[1]
            for key, value in zip(pairs[::2], pairs[1::2], strict=False):
                if isinstance(key, bytes) and isinstance(value, bytes) and value.isdigit():
                    items[key.decode("ascii", "replace").upper()] = int(value)
        return name, items

    def _changed(self, name: str | None, why: str) -> None:
        if name is not None and not self.wanted(name):
            return
        now = self._clock()
        self._last_change = now
        if self._with_status and self._renew_at == float("inf"):
            self._renew_at = now + RENEW_EVERY
        self.sink(name, why)


class IdleSession:
    """IDLE on one folder (EXAMINE, so that watching changes nothing)."""

    def __init__(
        self,
        folder: str,
        sink: Sink,
        refresh: float,
        prefix: Callable[[ImapConnection], str] = lambda conn: "",
    ) -> None:
        self.folder = folder
        self.sink = sink
        self.refresh = refresh
        self.prefix = prefix  # asked at each connection: the first sync may set it
        self.label = f"push (IDLE {folder})"

    def run(
        self, conn: ImapConnection, stop: threading.Event, connected: Callable[[], None]
    ) -> None:
        if "IDLE" not in conn.capabilities:
            raise NotifyUnavailable(f"{conn.address} offers neither NOTIFY nor IDLE")
        try:
            server = canonical_to_server(self.folder, conn.delimiter(), self.prefix(conn))
        except FolderNameError as e:
            raise ConnectionLost(f"cannot watch {self.folder!r}: {e}") from e
        conn.check(conn.command(b"EXAMINE", _astring(encode_mutf7(server))), "EXAMINE")
        connected()
        self.sink(self.folder, PUSH_CONNECTED)
        while not stop.is_set():
            conn.idle(self.refresh, self.handle, stop)

    def handle(self, resp: Response) -> None:
        if resp.kind in _FOLDER_CHANGES:
            self.sink(self.folder, "server change")


Session = NotifySession | IdleSession


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
