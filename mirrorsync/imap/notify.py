"""What push listens for: NOTIFY for every folder, or IDLE on one.

With NOTIFY (RFC 5465) one connection hears about every folder:

    NOTIFY SET (personal (MessageNew MessageExpunge FlagChange MailboxName))

and then idles with no folder selected; the server reports a changed folder with an
untagged STATUS and a created, deleted or renamed one with LIST. Without NOTIFY, a
folder gets a connection that EXAMINEs it and IDLEs (RFC 2177); EXISTS, EXPUNGE and
FETCH there mean that folder changed. IDLE is re-issued every `daemon.idle_refresh`
seconds (the server may drop a client after 30 minutes).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from mirrorsync.errors import (
    FolderNameError,
    MirrorsyncError,
)
from mirrorsync.imap.base import canonical_to_server
from mirrorsync.imap.connection import (
    enable,
    without_timing,
)
from mirrorsync.imap.idle import ConnectionLost, ImapConnection, astring
from mirrorsync.imap.wire import (
    Response,
    decode_mutf7,
    encode_mutf7,
)
from mirrorsync.names import server_to_canonical

log = logging.getLogger(__name__)

# A folder name, or None for "sync everything"; and a short reason for the log.
Sink = Callable[[str | None, str], None]

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
# The reason a listener gives when it is (re)connected and asks for a sync of what
# it covers; the daemon also takes it as proof that the server is reachable again.
PUSH_CONNECTED = "push connected"


class NotifyUnavailable(MirrorsyncError):
    """The server has no usable NOTIFY; IDLE per folder is used instead."""


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
        conn.check(conn.command(b"EXAMINE", astring(encode_mutf7(server))), "EXAMINE")
        connected()
        self.sink(self.folder, PUSH_CONNECTED)
        while not stop.is_set():
            conn.idle(self.refresh, self.handle, stop)

    def handle(self, resp: Response) -> None:
        if resp.kind in _FOLDER_CHANGES:
            self.sink(self.folder, "server change")


Session = NotifySession | IdleSession
