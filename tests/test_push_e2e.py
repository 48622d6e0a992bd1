"""NOTIFY push against a real Dovecot under load: it must stay prompt after Dovecot
rotates an index log (issue 17). Dovecot 2.3 watches each log with inotify on the file
it found at NOTIFY SET; after a rotation only its 30 s fallback timer announces changes,
unless mirrorsync sets NOTIFY again (see NotifySession)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import imapclient
import pytest

from devtools.devserver import Dovecot
from mirrorsync import config as configmod
from mirrorsync.imap.idle import ConnectionLost, ImapConnection
from mirrorsync.imap.notify import PUSH_CONNECTED, NotifySession

pytestmark = pytest.mark.dovecot

ANNOUNCED_WITHIN = 5.0  # Dovecot's fallback timer is 30 s; renewed NOTIFY takes ~1 s


class Announcements:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.seen: list[tuple[float, str | None, str]] = []

    def __call__(self, name: str | None, why: str) -> None:
        with self.cond:
            self.seen.append((time.monotonic(), name, why))
            self.cond.notify_all()

    def quiet(self, name: str | None, for_seconds: float, timeout: float) -> None:
        """Wait until `name` was not announced for `for_seconds` (at most `timeout`)."""
        end = time.monotonic() + timeout
        with self.cond:
            while time.monotonic() < end:
                last = max((t for t, n, _w in self.seen if n == name), default=0.0)
                if time.monotonic() - last >= for_seconds:
                    return
                self.cond.wait(last + for_seconds - time.monotonic())

    def wait(self, name: str | None, after: float, timeout: float) -> float | None:
        """Seconds from `after` until `name` was announced, or None."""
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                for t, n, _why in self.seen:
                    if t >= after and n == name:
                        return t - after
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)


@pytest.fixture
def listening(dovecot: Dovecot) -> Iterator[tuple[Any, Announcements, NotifySession]]:
    dovecot.add_user("rot", "pw")
    client = imapclient.IMAPClient(dovecot.host, dovecot.port, ssl=False, timeout=30)
    client.login("rot", "pw")
    remote = configmod.RemoteConfig(
        host=dovecot.host, username="rot", port=dovecot.port, tls="none", timeout=10
    )
    heard = Announcements()
    session = NotifySession(heard, lambda _name: True, refresh=60)
    conn = ImapConnection.open(remote, "pw")
    stop = threading.Event()

    def listen() -> None:
        with contextlib.suppress(ConnectionLost):  # interrupted at the end
            session.run(conn, stop, lambda: None)

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    assert heard.wait(None, 0.0, 10) is not None  # PUSH_CONNECTED
    assert heard.seen[0][2] == PUSH_CONNECTED
    try:
        yield client, heard, session
    finally:
        stop.set()
        conn.interrupt()
        thread.join(10)
        conn.close()
        client.logout()


def test_notify_stays_prompt_after_dovecot_rotates_the_inbox_log(
    dovecot: Dovecot, listening: tuple[Any, Announcements, NotifySession]
) -> None:
    client, heard, session = listening
    for i in range(200):
        client.append("INBOX", f"Subject: {i}\r\nMessage-ID: <r{i}@x>\r\n\r\n{i}\r\n".encode())
    client.select_folder("INBOX")
    # Flag changes on every other message: one index log record per message, so the
    # log grows past Dovecot's 1 MB rotation size within seconds.
    odd = list(range(1, 201, 2))
    log2 = dovecot.maildir_of("rot") / "dovecot.index.log.2"
    rounds = 0
    while not log2.exists():
        rounds += 1
        assert rounds < 5000, "Dovecot never rotated its INBOX index log"
        if rounds % 2:
            client.add_flags(odd, [b"\\Flagged"], silent=True)
        else:
            client.remove_flags(odd, [b"\\Flagged"], silent=True)
    client.unselect_folder()
    # The watch Dovecot set at NOTIFY SET is on the old file now. New mail in INBOX
    # must still be announced promptly, again and again.
    delays = []
    for i in range(3):
        heard.quiet("INBOX", 2.0, 15)  # what the flag changes caused is over
        started = time.monotonic()
        client.append("INBOX", f"Subject: new {i}\r\n\r\nnew\r\n".encode())
        delays.append(heard.wait("INBOX", started, 35))
    assert all(d is not None and d < ANNOUNCED_WITHIN for d in delays), delays
    assert session.renewals > 0
