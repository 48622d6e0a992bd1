"""The connection push listens on: one IMAP session on a socket of its own.

imapclient cannot do NOTIFY, and its IDLE has known traps (`idle_done` can block for
ever when the network is gone, imapclient issue 449; a line split across packets,
issue 519), so push speaks IMAP itself: `ImapConnection` is a small command layer on
the wire's response reader (`mirrorsync.imap.wire.split_response`), which handles
literals and partial reads, and signs in through `mirrorsync.imap.connection.login`
like the store. Every read has a deadline, and TCP keepalive notices a silently dead
network in about two minutes.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable

from mirrorsync.config import RemoteConfig
from mirrorsync.errors import (
    ConnectionFailed,
)
from mirrorsync.imap.connection import (
    LoginRefused,
    LoginUnavailable,
    Refused,
    login,
    personal_prefix_of,
    tls_context,
    without_timing,
)
from mirrorsync.imap.wire import (
    LineTooLong,
    LiteralRefused,
    Response,
    parse_line,
    quoted,
    split_response,
)

log = logging.getLogger(__name__)

# Bounds on what one response may hold: push responses are a line or two, and a
# broken or hostile server must not make the daemon's memory grow.
MAX_LINE = 64 * 1024
MAX_LITERAL = 1024 * 1024
_KEEPALIVE = (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 15), ("TCP_KEEPCNT", 4))


class ConnectionLost(ConnectionFailed):
    """The push connection broke: closed, reset, timed out, or the server said BYE."""


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
        done = self.command(b"LOGIN", astring(username), astring(password))
        if done.kind != "OK":
            text = without_timing(done.text)
            raise (LoginUnavailable if "[UNAVAILABLE]" in text.upper() else LoginRefused)(text)
        self.capabilities = self._capability()

    def send_authenticate(self, mechanism: str, initial: bytes) -> None:
        """AUTHENTICATE: the initial response at the first continuation, an empty one
        at any further (the error challenge of a refused token, RFC 7628 3.2.3)."""
        tag = f"M{next(self._tags)}".encode()
        self.send(tag + b" AUTHENTICATE " + mechanism.encode("ascii") + b"\r\n")
        answer = base64.b64encode(initial)
        while (done := self._await_continuation(tag, None)) is None:
            self.send(answer + b"\r\n")
            answer = b""
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


def astring(value: str | bytes) -> bytes | Literal:
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
