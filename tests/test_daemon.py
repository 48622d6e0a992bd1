"""`mirrorsync daemon`: its parts from tables, then the real thing as a subprocess
against a real Dovecot.

The end-to-end tests poll with a deadline instead of sleeping: each waits for the
effect it expects (a file, a flag on the server, a log line) and fails with the
daemon's output if it does not come in time.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
)

from devtools.devserver import Dovecot
from mirrorsync import config as configmod
from mirrorsync import maildir as maildirmod
from mirrorsync.daemon import ChangeQueue, max_delay
from mirrorsync.errors import AuthenticationFailed, ConfigError
from mirrorsync.imap.idle import ConnectionLost, ImapConnection
from mirrorsync.imap.notify import (
    ACTIVE_FOR,
    NOTIFY_EVENTS,
    RENEW_EVERY,
    IdleSession,
    NotifySession,
    NotifyUnavailable,
    mailbox_name,
)
from mirrorsync.imap.push import Backoff
from mirrorsync.imap.wire import Response, parse_line
from mirrorsync.watch import (
    EventRouter,
    LocalWatcher,
    OwnWrites,
    folder_of,
    install_hook,
    message_folder,
)
from tests.harness import Mirror, message

ROOT = Path("/m")

# -- the watcher's mapping from paths to folders --------------------------------------


@pytest.mark.parametrize(
    ("layout", "directory", "folder"),
    [
        ("nested", "/m/INBOX", "INBOX"),
        ("nested", "/m/Work/Projects", "Work/Projects"),
        ("nested", "/m/Archiv/Überträge", "Archiv/Überträge"),
        ("nested", "/m", None),  # the root holds no folder in this layout
        ("nested", "/m/.notmuch/xapian", None),
        ("nested", "/m/Work/.hidden", None),
        ("nested", "/elsewhere/INBOX", None),
        ("maildir++", "/m", "INBOX"),
        ("maildir++", "/m/.Work.Projects", "Work/Projects"),
        ("maildir++", "/m/.INBOX.Sub", "INBOX/Sub"),
        ("maildir++", "/m/Work", None),
        ("maildir++", "/m/.Work/deeper", None),
        ("maildir++", "/m/.A..B", None),  # an empty component maps back elsewhere
    ],
)
def test_folder_of(layout: str, directory: str, folder: str | None) -> None:
    assert folder_of(ROOT, layout, Path(directory)) == folder


@pytest.mark.parametrize(
    ("path", "folder"),
    [
        ("/m/INBOX/cur/123.abc:2,S", "INBOX"),
        ("/m/INBOX/new/123.abc", "INBOX"),
        ("/m/INBOX/tmp/123.abc", None),  # a delivery in progress
        ("/m/INBOX/cur/.hidden", None),
        ("/m/INBOX/dovecot-uidlist", None),
        ("/m/Work/cur/cur/x", None),
    ],
)
def test_message_folder(path: str, folder: str | None) -> None:
    assert message_folder(ROOT, "nested", Path(path)) == folder


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str | None, str]] = []

    def __call__(self, folder: str | None, why: str) -> None:
        self.calls.append((folder, why))

    @property
    def folders(self) -> list[str | None]:
        return [f for f, _ in self.calls]


def _router(own: OwnWrites | None = None, layout: str = "nested") -> tuple[EventRouter, Recorder]:
    rec = Recorder()
    wanted = lambda name: name != "Junk"  # noqa: E731
    return EventRouter(ROOT, layout, rec, own if own is not None else OwnWrites(), wanted), rec


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (FileCreatedEvent("/m/INBOX/new/k1"), ["INBOX"]),
        (FileDeletedEvent("/m/INBOX/cur/k1:2,S"), ["INBOX"]),
        (FileMovedEvent("/m/INBOX/new/k1", "/m/INBOX/cur/k1:2,S"), ["INBOX"]),
        (FileMovedEvent("/m/INBOX/cur/k1:2,S", "/m/Work/cur/k1:2,S"), ["INBOX", "Work"]),
        (FileMovedEvent("/m/Work/tmp/k1", "/m/Work/new/k1"), ["Work"]),  # a delivery
        (FileClosedEvent("/m/Work/cur/k1:2,"), ["Work"]),  # written in place
        (FileCreatedEvent("/m/Work/tmp/k1"), []),
        (FileModifiedEvent("/m/Work/cur/k1:2,"), []),
        (DirModifiedEvent("/m/Work/cur"), []),
        (FileCreatedEvent("/m/Junk/new/k1"), []),  # excluded by the folders settings
        (FileCreatedEvent("/m/.notmuch/xapian/record.glass"), []),
        (DirCreatedEvent("/m/NewFolder"), [None]),  # a new folder: sync everything
        (DirCreatedEvent("/m/NewFolder/cur"), [None]),
        (DirDeletedEvent("/m/Old"), [None]),
        (DirCreatedEvent("/m/Work/cur/odd"), []),
        (DirCreatedEvent("/m/.notmuch/xapian"), []),
    ],
)
def test_router_maps_events(event: Any, expected: list[str | None]) -> None:
    router, rec = _router()
    router.dispatch(event)
    assert rec.folders == expected


def test_router_ignores_our_own_writes_but_not_a_readers_change_to_them() -> None:
    own = OwnWrites()
    router, rec = _router(own)
    own.note(Path("/m/INBOX/new/k1"), True)  # we deliver k1
    own.note(Path("/m/INBOX/cur/k2:2,"), False)  # we rename k2 ...
    own.note(Path("/m/INBOX/cur/k2:2,S"), True)  # ... to seen
    own.note(Path("/m/Sub"), True)  # we create a folder
    router.dispatch(FileCreatedEvent("/m/INBOX/new/k1"))
    router.dispatch(FileCreatedEvent("/m/INBOX/new/k1"))  # inotify may say it twice
    router.dispatch(FileMovedEvent("/m/INBOX/cur/k2:2,", "/m/INBOX/cur/k2:2,S"))
    router.dispatch(DirCreatedEvent("/m/Sub"))
    assert rec.calls == []
    # A reader deleting the file we just delivered, or renaming it: its changes.
    router.dispatch(FileDeletedEvent("/m/INBOX/new/k1"))
    router.dispatch(FileMovedEvent("/m/INBOX/cur/k2:2,S", "/m/INBOX/cur/k2:2,FS"))
    assert rec.folders == ["INBOX", "INBOX"]


def test_own_writes_expire_and_stay_bounded() -> None:
    now = [0.0]
    own = OwnWrites(ttl=10, clock=lambda: now[0])
    own.note(Path("/m/a"), True)
    assert own.is_own("/m/a", True)
    assert not own.is_own("/m/a", False)
    now[0] = 11
    assert not own.is_own("/m/a", True)
    for i in range(10_000):
        now[0] = 20 + i  # each entry lives 10 s: the table never holds many
        own.note(Path(f"/m/{i}"), True)
    assert own.size() <= 11


def test_maildir_reports_its_writes_through_the_hook(tmp_path: Path) -> None:
    seen: list[tuple[str, bool]] = []

    class Spy(OwnWrites):
        def note(self, path: Path, appears: bool) -> None:
            seen.append((str(path.relative_to(tmp_path)), appears))

    install_hook(Spy())
    try:
        md = maildirmod.Maildir(tmp_path)
        folder = md.create_folder("A")
        msg = folder.deliver(folder.new_key(), b"Subject: x\n\nbody\n", frozenset())
        msg = folder.set_flags(msg, frozenset({"\\Seen"}))
        folder.remove(msg)
        md.delete_folder("A")
    finally:
        install_hook(None)
    assert maildirmod.on_own_change is None
    key = msg.key
    assert ("A", True) in seen and ("A/cur", True) in seen
    assert (f"A/new/{key}", True) in seen
    assert (f"A/new/{key}", False) in seen and (f"A/cur/{key}:2,S", True) in seen
    assert (f"A/cur/{key}:2,S", False) in seen
    assert ("A/cur", False) in seen and ("A", False) in seen


# -- the queue ------------------------------------------------------------------------


def test_queue_times_out_empty() -> None:
    q = ChangeQueue()
    started = time.monotonic()
    assert not q.take(0.05, debounce=0.01)
    assert time.monotonic() - started >= 0.04


def test_queue_merges_a_burst_into_one_batch() -> None:
    q = ChangeQueue()

    def burst() -> None:
        for i in range(200):
            q.folder("INBOX" if i % 2 else "Work", "local change")
            time.sleep(0.0005)

    t = threading.Thread(target=burst)
    t.start()
    batch = q.take(5, debounce=0.1)
    t.join()
    assert batch.folders == {"INBOX": "local change", "Work": "local change"}
    assert batch.full is None
    assert not q.take(0, debounce=0.1)


def test_queue_debounce_is_capped_by_max_delay() -> None:
    q = ChangeQueue()
    stop = threading.Event()

    def trickle() -> None:  # never quiet for a whole debounce period
        while not stop.is_set():
            q.folder("INBOX", "local change")
            time.sleep(0.01)

    t = threading.Thread(target=trickle)
    t.start()
    started = time.monotonic()
    try:
        batch = q.take(5, debounce=0.05)
    finally:
        stop.set()
        t.join()
    assert batch.folders
    assert time.monotonic() - started < max_delay(0.05) + 0.5


def test_queue_full_and_stop() -> None:
    q = ChangeQueue()
    q.folder("INBOX", "server change")
    q.folder(None, "server folder list changed")
    q.full("SIGUSR1")
    batch = q.take(1, debounce=0)
    assert batch.full == "server folder list changed"
    assert batch.folders == {"INBOX": "server change"}
    q.folder("INBOX", "local change")
    q.stop()
    started = time.monotonic()
    assert q.take(5, debounce=3).stop  # not held back by the debounce
    assert time.monotonic() - started < 1


def test_backoff_doubles_up_to_the_cap_and_resets() -> None:
    b = Backoff(1, 300)
    assert [b.next() for _ in range(11)] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    b.reset()
    assert b.next() == 1


# -- the IMAP push layer --------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "delimiter", "name"),
    [
        (b"INBOX", "/", "INBOX"),
        (b"inbox", "/", "INBOX"),
        (b"Work/Projects", "/", "Work/Projects"),
        (b"Work.Projects", ".", "Work/Projects"),
        (b"W&APY-rk", "/", "Wörk"),  # modified UTF-7, as the standard says
        ("Wörk".encode(), "/", "Wörk"),  # raw UTF-8, as Dovecot's NOTIFY sends it
        (b"007", "/", "007"),  # a numeric atom stays as it is written
        (b"a/b", ".", None),  # no canonical form
        (None, "/", None),
    ],
)
def test_mailbox_name(raw: Any, delimiter: str, name: str | None) -> None:
    assert mailbox_name(raw, delimiter) == name


class FakeServer:
    """The server end of a socketpair, scripted by the test."""

    def __init__(self) -> None:
        self.client_sock, self.sock = socket.socketpair()
        self.conn = ImapConnection(self.client_sock, "fake:143", timeout=2)
        self.conn.capabilities = frozenset({"IDLE"})
        self._buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def expect_line(self, timeout: float = 2) -> bytes:
        self.sock.settimeout(timeout)
        while b"\r\n" not in self._buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise EOFError
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\r\n")
        return line

    def close(self) -> None:
        self.sock.close()
        self.conn.close()


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer()
    yield server
    server.close()


def test_reader_survives_split_packets_and_timeouts(fake: FakeServer) -> None:
    conn = fake.conn
    fake.send(b"* STATUS {5}\r\nW\xc3")
    assert conn.read_response(time.monotonic() + 0.05) is None  # partial: kept
    fake.send(b"\xb6rk (MESSAGES 1)\r\n* 4 EXI")
    r = conn.read_response(time.monotonic() + 1)
    assert r is not None and r.values()[0] == "Wörk".encode()
    assert conn.read_response(time.monotonic() + 0.05) is None
    fake.send(b"STS\r\n")
    r = conn.read_response(time.monotonic() + 1)
    assert r is not None and (r.kind, r.number) == ("EXISTS", 4)


def test_idle_reports_changes_and_ends_with_done(fake: FakeServer) -> None:
    got: list[str] = []
    stop = threading.Event()

    def server() -> None:
        tag = fake.expect_line().split()[0]
        fake.send(b"+ idling\r\n* 2 EXISTS\r\n* 1 FETCH (FLAGS (\\Seen))\r\n")
        assert fake.expect_line() == b"DONE"
        fake.send(b"* 1 EXPUNGE\r\n" + tag + b" OK Idle completed.\r\n")

    t = threading.Thread(target=server)
    t.start()
    fake.conn.idle(0.3, lambda r: got.append(r.kind), stop)
    t.join()
    assert got == ["EXISTS", "FETCH", "EXPUNGE"]


def test_idle_done_without_answer_is_a_lost_connection(fake: FakeServer) -> None:
    """imapclient issue 449: a DONE that is never answered must not block for ever."""
    fake.conn.timeout = 0.3

    def server() -> None:
        fake.expect_line()
        fake.send(b"+ idling\r\n")
        fake.expect_line()  # DONE, then silence: the network is gone

    t = threading.Thread(target=server)
    t.start()
    started = time.monotonic()
    with pytest.raises(ConnectionLost, match="did not answer"):
        fake.conn.idle(0.1, lambda r: None, threading.Event())
    assert time.monotonic() - started < 2
    t.join()


def test_bye_and_eof_are_lost_connections(fake: FakeServer) -> None:
    fake.send(b"* BYE shutting down\r\n")
    with pytest.raises(ConnectionLost, match="shutting down"):
        fake.conn.command(b"NOOP")
    fake.sock.close()
    with pytest.raises(ConnectionLost):
        fake.conn.read_response(time.monotonic() + 1)


def test_interrupt_wakes_a_blocked_read(fake: FakeServer) -> None:
    threading.Timer(0.1, fake.conn.interrupt).start()
    started = time.monotonic()
    with pytest.raises(ConnectionLost):
        fake.conn.read_response(time.monotonic() + 30)
    assert time.monotonic() - started < 5


def test_notify_refused_falls_back_to_fewer_events_then_gives_up(fake: FakeServer) -> None:
    fake.conn.capabilities = frozenset({"NOTIFY", "IDLE"})
    seen: list[bytes] = []

    def server() -> None:
        tag = fake.expect_line().split()[0]  # LIST "" ""
        fake.send(b'* LIST (\\Noselect) "/" ""\r\n' + tag + b" OK done\r\n")
        for _ in range(4):
            line = fake.expect_line()
            seen.append(line.split(b" ", 1)[1])
            fake.send(line.split()[0] + b" NO [BADEVENT] not here\r\n")

    t = threading.Thread(target=server)
    t.start()
    session = NotifySession(Recorder(), lambda _name: True, refresh=60)
    with pytest.raises(NotifyUnavailable, match="BADEVENT"):
        session.run(fake.conn, threading.Event(), lambda: None)
    t.join()
    assert session.delimiter == "/"
    # With the STATUS indicator first (renewals compare with it), then without.
    assert [(b" STATUS " in x, b"FlagChange" in x) for x in seen] == [
        (True, True),
        (True, False),
        (False, True),
        (False, False),
    ]


def test_notify_session_maps_responses_to_folders() -> None:
    rec = Recorder()
    session = NotifySession(rec, lambda name: name != "Junk", refresh=60)
    session.delimiter = "/"
    for line in (
        (b'* STATUS "INBOX" (MESSAGES 2 UIDNEXT 3)',),
        ((b"* STATUS {5}", b"W\xc3\xb6rk"), b" (MESSAGES 1)"),
        (b"* STATUS Junk (MESSAGES 9)",),
        (b'* LIST () "/" Work2 ("OLDNAME" (Work))',),
        (b"* OK [NOTIFICATIONOVERFLOW] lost track",),
        (b"* OK Still here",),
    ):
        session.handle(parse_line(line))
    assert rec.folders == ["INBOX", "Wörk", None, None]


class _SetAgain:
    """A connection that answers NOTIFY SET STATUS with the given STATUS lines."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.commands: list[tuple[bytes, ...]] = []

    def command(self, *args: bytes, on_untagged: Any = None) -> Response:
        self.commands.append(args)
        for line in self.lines:
            on_untagged(parse_line((line,)))
        return parse_line((b"M1 OK NOTIFY completed",))

    def check(self, resp: Response, what: str) -> Response:
        return resp


def test_notify_renewal_announces_only_folders_whose_status_changed_unheard() -> None:
    """While changes flow, NOTIFY is set again (Dovecot's watch goes stale when its
    index log rotates); the status it sends then names what NOTIFY missed, and only
    that, and Dovecot's repeated STATUS for an unchanged folder is no change."""
    rec = Recorder()
    now = [100.0]
    session = NotifySession(rec, lambda name: name != "Junk", refresh=60, clock=lambda: now[0])
    session.delimiter = "/"
    session._events, session._with_status = NOTIFY_EVENTS[0], True
    for line in (
        b"* STATUS INBOX (MESSAGES 2 UIDNEXT 3 UIDVALIDITY 1 UNSEEN 0 HIGHESTMODSEQ 5)",
        b"* STATUS Work (MESSAGES 1 UIDNEXT 2 UIDVALIDITY 1 UNSEEN 0 HIGHESTMODSEQ 2)",
        b"* STATUS Junk (MESSAGES 1 UIDNEXT 2 UIDVALIDITY 1 UNSEEN 0 HIGHESTMODSEQ 2)",
    ):
        session._initial(parse_line((line,)))
    assert session._renew_at == float("inf")  # nothing flows: nothing is renewed
    # A repeat of what is known (Dovecot sends those) is no change; a new value is.
    session.handle(parse_line((b"* STATUS Work (UNSEEN 0 HIGHESTMODSEQ 2)",)))
    assert rec.calls == []
    session.handle(parse_line((b"* STATUS Work (UNSEEN 0 HIGHESTMODSEQ 3)",)))
    assert rec.calls == [("Work", "server change")]
    assert session._renew_at == 100.0 + RENEW_EVERY
    # The renewal: INBOX changed without a word, Work and Junk did not (as far as
    # Junk matters), and a folder appeared.
    conn = _SetAgain()
    conn.lines = [
        b"* STATUS INBOX (MESSAGES 3 UIDNEXT 4 UIDVALIDITY 1 UNSEEN 1 HIGHESTMODSEQ 6)",
        b"* STATUS Work (MESSAGES 1 UIDNEXT 2 UIDVALIDITY 1 UNSEEN 0 HIGHESTMODSEQ 3)",
        b"* STATUS Junk (MESSAGES 2 UIDNEXT 3 UIDVALIDITY 1 UNSEEN 0 HIGHESTMODSEQ 3)",
        b"* STATUS New (MESSAGES 0 UIDNEXT 1 UIDVALIDITY 7 UNSEEN 0 HIGHESTMODSEQ 1)",
    ]
    now[0] = 101.0
    rec.calls.clear()
    session.renew(conn)  # type: ignore[arg-type]
    assert conn.commands == [(b"NOTIFY", b"SET", b"STATUS", NOTIFY_EVENTS[0])]
    assert sorted(rec.folders) == ["INBOX", "New"]
    assert session._renew_at == 101.0 + RENEW_EVERY  # changes flow: again soon
    # Nothing new: nothing announced; after ACTIVE_FOR quiet seconds the renewals stop.
    now[0] = 101.0 + ACTIVE_FOR + 1
    rec.calls.clear()
    session.renew(conn)  # type: ignore[arg-type]
    assert rec.calls == []
    assert session._renew_at == float("inf")


def test_idle_session_maps_responses_to_its_folder() -> None:
    rec = Recorder()
    session = IdleSession("Work", rec, refresh=60)
    for line in (b"* 3 EXISTS", b"* 3 RECENT", b"* 1 EXPUNGE", b"* 2 FETCH (FLAGS ())", b"* OK x"):
        session.handle(parse_line((line,)))
    assert rec.folders == ["Work", "Work", "Work"]


@pytest.mark.parametrize("tls", ["imaps", "starttls"])
def test_push_connection_over_tls(account: Any, tls: str) -> None:
    server = account.server
    remote = configmod.RemoteConfig(
        host=server.host,
        username=account.user,
        port=server.imaps_port if tls == "imaps" else server.port,
        tls=tls,
        ca_file=server.cert,
        timeout=10,
    )
    conn = ImapConnection.open(remote, account.password)
    try:
        assert {"IDLE", "NOTIFY"} <= conn.capabilities
        assert conn.delimiter() == "/"
    finally:
        conn.close()


def test_push_connection_login_refused(account: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # From 127.0.0.2, so that Dovecot's penalty for a failed login (a delay on every
    # later login from the same address) does not slow the other tests down.
    real = socket.create_connection

    def from_other_ip(address: Any, timeout: Any = None, *args: Any, **kw: Any) -> Any:
        return real(address, timeout, source_address=("127.0.0.2", 0))

    monkeypatch.setattr(socket, "create_connection", from_other_ip)
    remote = configmod.RemoteConfig(
        host=account.host, username=account.user, port=account.port, tls="none", timeout=10
    )
    with pytest.raises(AuthenticationFailed, match="login refused"):
        ImapConnection.open(remote, "wrong")


# -- configuration --------------------------------------------------------------------


def _load(tmp_path: Path, daemon: Any) -> configmod.AccountConfig:
    account: dict[str, Any] = {
        "remote": {"host": "h", "username": "u", "password": "p"},
        "local": {"path": str(tmp_path / "Mail")},
    }
    if daemon is not None:
        account["daemon"] = daemon
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"accounts": {"a": account}}))
    return configmod.load(path, {"HOME": str(tmp_path)}).accounts["a"]


def test_daemon_config_defaults(tmp_path: Path) -> None:
    d = _load(tmp_path, None).daemon
    assert d == configmod.DaemonConfig()
    assert (d.idle_folders, d.full_check_interval, d.debounce) == (("INBOX",), 300, 0.3)
    assert d.idle_refresh < 30 * 60


def test_daemon_config_values(tmp_path: Path) -> None:
    d = _load(
        tmp_path,
        {
            "idle_folders": ["inbox", "Work/Projects/"],
            "full_check_interval": 60,
            "debounce": 0,
            "idle_refresh": 600,
        },
    ).daemon
    assert d.idle_folders == ("INBOX", "Work/Projects")
    assert (d.full_check_interval, d.debounce, d.idle_refresh) == (60, 0, 600)


@pytest.mark.parametrize(
    ("daemon", "key", "words"),
    [
        ({"idle_folder": ["INBOX"]}, "daemon.idle_folder", "did you mean idle_folders"),
        ({"idle_folders": "INBOX"}, "daemon.idle_folders", "write it as a list"),
        ({"idle_folders": ["Work/*"]}, "daemon.idle_folders[0]", "not a pattern"),
        ({"idle_folders": [""]}, "daemon.idle_folders[0]", "must not be empty"),
        ({"full_check_interval": 0}, "daemon.full_check_interval", "> 0"),
        ({"full_check_interval": "5m"}, "daemon.full_check_interval", "number of seconds"),
        ({"debounce": -1}, "daemon.debounce", ">= 0"),
        ({"debounce": True}, "daemon.debounce", "boolean"),
        ({"idle_refresh": 1800}, "daemon.idle_refresh", "<= 1740"),
        ([], "daemon", "expected a mapping"),
    ],
)
def test_daemon_config_errors(tmp_path: Path, daemon: Any, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, daemon)
    assert f"accounts.a.{key}:" in str(e.value)
    assert words in str(e.value)


# -- end to end -------------------------------------------------------------------------

FAST = {"debounce": 0.1, "full_check_interval": 60}
SYNC_LINE = re.compile(r"\] sync #\d+ \((.*)\): ")


class DaemonProcess:
    """`python -m mirrorsync -v -c CFG daemon` with its output in files."""

    def __init__(self, mirror: Mirror, tmp: Path, *extra: str) -> None:
        self.mirror = mirror
        self.out_path = tmp / "daemon.out"
        self.err_path = tmp / "daemon.err"
        self._out = self.out_path.open("w")
        self._err = self.err_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mirrorsync", "-v", "-c", str(mirror.config), *extra, "daemon"],
            stdout=self._out,
            stderr=self._err,
            stdin=subprocess.DEVNULL,
        )

    @property
    def out(self) -> str:
        return self.out_path.read_text()

    @property
    def err(self) -> str:
        return self.err_path.read_text()

    def triggers(self) -> list[str]:
        """The reason of every sync so far, from the -v log."""
        return SYNC_LINE.findall(self.err)

    def wait_for(self, what: Callable[[], Any], timeout: float, message: str = "") -> float:
        started = time.monotonic()
        while True:
            if what():
                return time.monotonic() - started
            if self.proc.poll() is not None:
                pytest.fail(f"daemon exited ({self.proc.returncode}) {message}\n{self.dump()}")
            if time.monotonic() - started > timeout:
                pytest.fail(f"timed out after {timeout}s: {message}\n{self.dump()}")
            time.sleep(0.02)

    def wait_log(self, text: str, timeout: float = 10, count: int = 1) -> None:
        self.wait_for(lambda: self.err.count(text) >= count, timeout, f"waiting for {text!r}")

    def ready(self, push: str = "push (NOTIFY): listening") -> None:
        """Both sources are listening and the syncs of the start are done (the first
        one, and the one push asks for once connected, unless it was merged into the
        first), so that what a test counts afterwards is its own doing."""
        self.wait_log("for local changes")
        self.wait_log(push)
        self.wait_for(lambda: self.triggers(), 10, "the first sync")
        self.settle()

    def settle(self, quiet: float = 0.4) -> None:
        """Until no sync started for `quiet` seconds."""
        last, since = len(self.triggers()), time.monotonic()
        while time.monotonic() - since < quiet:
            time.sleep(0.05)
            n = len(self.triggers())
            if n != last:
                last, since = n, time.monotonic()

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._out.close()
            self._err.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._out.close()
        self._err.close()

    def dump(self) -> str:
        return f"--- stdout\n{self.out}--- stderr\n{self.err}"


@pytest.fixture
def run_daemon(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []

    def start(mirror: Mirror, *extra: str) -> DaemonProcess:
        d = DaemonProcess(mirror, tmp_path, *extra)
        started.append(d)
        return d

    yield start
    for d in started:
        d.kill()
        d.mirror.close()


def _files(folder: Path) -> list[Path]:
    return [
        p for sub in ("cur", "new") if (folder / sub).is_dir() for p in (folder / sub).iterdir()
    ]


def _server_flags(mirror: Mirror, folder: str = "INBOX") -> dict[int, frozenset[str]]:
    c = mirror.client
    c.noop()
    return mirror.server_uids(folder)


def test_notify_push_and_local_changes_within_two_seconds(
    account: Any, tmp_path: Path, run_daemon: Callable[..., DaemonProcess]
) -> None:
    m = Mirror(account, tmp_path, daemon=FAST)
    d = run_daemon(m)
    d.ready()
    inbox = m.root / "INBOX"

    # A message delivered on the server arrives as a file (NOTIFY STATUS).
    m.client.append("INBOX", message(1))
    took = d.wait_for(lambda: len(_files(inbox)) == 1, 2, "server APPEND -> Maildir")
    print(f"server APPEND -> file: {took:.2f}s")
    # A new server folder arrives too (NOTIFY LIST: a full sync).
    m.client.create_folder("Projects")
    m.client.append("Projects", message(2))
    d.wait_for(lambda: len(_files(m.root / "Projects")) == 1, 3, "new server folder")
    d.settle()
    assert not [t for t in d.triggers() if t.startswith("local")], "our own writes echoed"

    # A reader marks the message seen: the flag reaches the server.
    (f,) = _files(inbox)
    os.rename(f, inbox / "cur" / (f.name.split(":2,")[0] + ":2,S"))
    took = d.wait_for(
        lambda: any("\\Seen" in fl for fl in _server_flags(m).values()), 2, "flag -> server"
    )
    print(f"local flag rename -> server: {took:.2f}s")

    # A reader deletes it: it is expunged on the server.
    (f,) = _files(inbox)
    f.unlink()
    took = d.wait_for(lambda: not _server_flags(m), 2, "unlink -> server expunge")
    print(f"local unlink -> server expunge: {took:.2f}s")

    # SIGUSR1: a full sync now.
    n = len(d.triggers())
    d.signal(signal.SIGUSR1)
    d.wait_for(lambda: "SIGUSR1" in d.triggers()[n:], 3, "SIGUSR1 sync")
    assert d.stop() == 0
    assert "test: INBOX: 1 downloaded" in d.out
    assert "Traceback" not in d.err


def test_idle_push_when_the_server_has_no_notify(
    basic_account: Any, tmp_path: Path, run_daemon: Callable[..., DaemonProcess]
) -> None:
    """dovecot_basic advertises IMAP4rev1 LITERAL+ SASL-IR LOGIN-REFERRALS IDLE: no
    NOTIFY, so INBOX is watched with IDLE, re-issued every 0.5 s here."""
    m = Mirror(basic_account, tmp_path, daemon={**FAST, "idle_refresh": 0.5})
    d = run_daemon(m)
    d.ready(push="push (IDLE INBOX): listening")
    assert "does not offer NOTIFY" in d.err
    time.sleep(1.2)  # a few IDLE refreshes go by
    m.client.append("INBOX", message(1))
    inbox = m.root / "INBOX"
    took = d.wait_for(lambda: len(_files(inbox)) == 1, 2, "server APPEND -> Maildir (IDLE)")
    print(f"server APPEND -> file (IDLE): {took:.2f}s")
    (f,) = _files(inbox)
    os.rename(f, inbox / "cur" / (f.name.split(":2,")[0] + ":2,F"))
    d.wait_for(
        lambda: any("\\Flagged" in fl for fl in _server_flags(m).values()), 2, "flag -> server"
    )
    assert d.stop() == 0


class OwnServerAccount:
    """A user on a Dovecot of the test's own, for tests that would disturb the
    session's: stopping it, or failing a login (Dovecot then delays every later login
    from 127.0.0.1, anvil's auth penalty)."""

    def __init__(self, server: Dovecot, user: str = "r1", password: str = "pw") -> None:
        server.add_user(user, password)
        self.server, self.user, self.password = server, user, password
        self.host, self.port = server.host, server.port

    def client(self) -> Any:
        import imapclient

        c = imapclient.IMAPClient(self.host, self.port, ssl=False, timeout=10)
        c.login(self.user, self.password)
        return c


@pytest.fixture
def own_server() -> Iterator[Dovecot]:
    server = Dovecot().start()
    yield server
    server.cleanup()


def test_server_restart_is_survived(
    own_server: Dovecot, tmp_path: Path, run_daemon: Callable[..., DaemonProcess]
) -> None:
    m = Mirror(OwnServerAccount(own_server), tmp_path, daemon=FAST)
    d = run_daemon(m)
    d.ready()
    own_server.stop()
    d.wait_log("retrying with backoff")
    own_server.start()
    m.close()
    m.client.append("INBOX", message(1))
    took = d.wait_for(lambda: len(_files(m.root / "INBOX")) == 1, 15, "message after restart")
    print(f"message after a server restart: {took:.2f}s")
    d.wait_log("connected again")
    assert d.err.count("retrying with backoff") == 1, "one warning per outage"
    assert d.stop() == 0
    m.close()


def test_sigterm_saves_state(
    account: Any, tmp_path: Path, run_daemon: Callable[..., DaemonProcess]
) -> None:
    m = Mirror(account, tmp_path, daemon=FAST)
    d = run_daemon(m)
    d.ready()
    folder = maildirmod.Maildir(m.root).folder("INBOX")
    folder.deliver(folder.new_key(), message(7).replace(b"\r\n", b"\n"), frozenset())
    m.client.append("INBOX", message(8))
    d.wait_for(lambda: len(_server_flags(m)) == 2 and len(_files(m.root / "INBOX")) == 2, 3)
    assert d.stop() == 0
    again = m.sync()
    assert "no changes" in again.out
    m.assert_mirrored()


def test_sighup_reload_keeps_running_on_a_broken_config(
    account: Any, tmp_path: Path, run_daemon: Callable[..., DaemonProcess]
) -> None:
    m = Mirror(account, tmp_path, daemon=FAST)
    good = m.config.read_text()
    d = run_daemon(m)
    d.ready()
    m.config.write_text(good.replace("remote:", "remote:\n    hots: typo", 1))
    d.signal(signal.SIGHUP)
    d.wait_log("configuration not reloaded")
    (line,) = [ln for ln in d.err.splitlines() if "configuration not reloaded" in ln]
    assert str(m.config) in line
    m.client.append("INBOX", message(1))
    d.wait_for(lambda: len(_files(m.root / "INBOX")) == 1, 3, "still syncing after SIGHUP")
    # A valid, changed config: the watcher and push are started again.
    changed = yaml.safe_load(good)
    changed["accounts"]["test"]["daemon"]["debounce"] = 0.05
    m.config.write_text(yaml.safe_dump(changed))
    d.signal(signal.SIGHUP)
    d.wait_log("configuration changed")
    d.wait_log("for local changes", count=2)
    m.client.append("INBOX", message(2))
    d.wait_for(lambda: len(_files(m.root / "INBOX")) == 2, 3, "syncing after reload")
    assert d.stop() == 0


BURST = 500  # a mail reader marking a whole folder read


def test_a_burst_of_renames_is_a_few_syncs(
    account: Any, tmp_path: Path, run_daemon: Callable[..., DaemonProcess]
) -> None:
    m = Mirror(account, tmp_path, daemon=FAST)
    folder = maildirmod.Maildir(m.root).create_folder("INBOX")
    folder.deliver_many(
        [
            (folder.new_key(), message(i).replace(b"\r\n", b"\n"), frozenset(), None)
            for i in range(BURST)
        ]
    )
    # Files that match nothing on the server: a first sync uploads them only when told
    # (the first-sync guard), which the daemon never is.
    m.sync("--force")
    d = run_daemon(m)
    d.ready()
    assert len(_server_flags(m)) == BURST
    before = len(d.triggers())
    for f in _files(m.root / "INBOX"):
        os.rename(f, m.root / "INBOX" / "cur" / (f.name.split(":2,")[0] + ":2,S"))
    d.wait_for(
        lambda: all("\\Seen" in fl for fl in _server_flags(m).values()), 10, "flags -> server"
    )
    d.settle()
    local = [t for t in d.triggers()[before:] if t.startswith("local")]
    # A few syncs, not BURST: the debounce (0.1 s here, at most 1 s per batch) may
    # split a burst that takes a loaded machine longer than that to make.
    assert 1 <= len(local) <= 5, d.triggers()[before:]
    assert len(d.triggers()) - before <= 8  # with the server's echo of our changes
    assert d.stop() == 0


def test_wrong_password_at_start_exits_3(own_server: Dovecot, tmp_path: Path) -> None:
    m = Mirror(OwnServerAccount(own_server), tmp_path)
    m.config.write_text(m.config.read_text().replace("password: pw", "password: wrong"))
    r = m.run_process("daemon")
    assert r.status == 3
    assert r.err.count("\n") == 1 and "login refused" in r.err


def test_daemon_refuses_a_second_instance(
    account: Any, tmp_path: Path, run_daemon: Callable[..., DaemonProcess]
) -> None:
    m = Mirror(account, tmp_path, daemon=FAST)
    d = run_daemon(m)
    d.ready()
    r = m.run_process("daemon")
    assert r.status == 5 and "already has a mirrorsync daemon" in r.err
    assert d.stop() == 0


def test_config_errors_exit_2_before_anything_starts(account: Any, tmp_path: Path) -> None:
    m = Mirror(account, tmp_path, daemon={"debounce": -1})
    r = m.run("daemon")
    assert r.status == 2 and "accounts.test.daemon.debounce" in r.err
    m = Mirror(account, tmp_path / "other")
    r = m.run("daemon", "nosuchaccount")
    assert r.status == 2 and "no account named nosuchaccount" in r.err


def test_the_daemon_applies_the_archive_rules_once_a_day(
    account: Any, tmp_path: Path, run_daemon: Callable[..., DaemonProcess]
) -> None:
    old = datetime(2020, 1, 2, tzinfo=timezone.utc)
    m = Mirror(
        account,
        tmp_path,
        daemon=FAST,
        archive=[{"folder": "INBOX", "older_than": "1y", "keep_unread": False}],
    )
    doc = yaml.safe_load(m.config.read_text())
    doc["accounts"]["test"]["local"]["local_only"] = ["Archive", "Archive/*"]
    m.config.write_text(yaml.safe_dump(doc, allow_unicode=True))
    m.client.append("INBOX", message("old"), msg_time=old)
    m.client.append("INBOX", message("new"))
    d = run_daemon(m)
    d.ready()
    d.wait_for(lambda: len(_server_flags(m)) == 1, 10, "the old message archived")
    assert len(_files(m.root / "Archive" / "INBOX")) == 1
    assert "archived 1 message," in d.out
    m.client.append("INBOX", message("older"), msg_time=old)
    d.signal(signal.SIGUSR1)  # a full sync now, but the day is not over: no archive
    d.wait_for(lambda: len(_files(m.root / "INBOX")) == 2, 10, "the new old one synced")
    d.settle()
    assert len(_server_flags(m)) == 2
    assert d.stop() == 0


def test_watcher_is_quiet_when_many_folders_appear(tmp_path: Path) -> None:
    """Folders appearing under a running watcher (new server folders the daemon
    creates, a reader's new mailboxes) give no watchdog warning on stderr: its
    'Callback with id ... already exists' came once per quickly made subtree."""
    import warnings

    got: list[str | None] = []
    router = EventRouter(tmp_path, "nested", lambda f, _why: got.append(f), OwnWrites())
    watcher = LocalWatcher(router)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert watcher.start()
        try:
            # What watchdog says when it watches a new directory a second time: the
            # filter must drop exactly that, whatever the race does this time.
            warnings.warn(
                "Callback with id 'x' already exists for watch <W wd=3>. It will be Overwritten.",
                RuntimeWarning,
                stacklevel=1,
            )
            for i in range(25):
                for sub in ("tmp", "cur", "new"):
                    os.makedirs(tmp_path / f"F{i}" / "A" / sub)
                (tmp_path / f"F{i}" / "A" / "new" / "m").write_bytes(b"x")
            deadline = time.monotonic() + 10
            while None not in got and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            watcher.stop()
        warnings.warn("another warning", RuntimeWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["another warning"]
    assert None in got  # new folders: the daemon syncs everything
