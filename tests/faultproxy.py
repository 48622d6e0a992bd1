"""A fault-injecting TCP proxy for IMAP, between mirrorsync and a test server.

It understands just enough IMAP to count the client's commands (a tagged line and
its literals, ``{n}`` or ``{n+}``) and to cut the server's answers into whole
responses, so that a test can say *where* the network fails:

* ``Fault("before", k)``: the k-th client command never reaches the server; both
  connections are cut the moment it is complete.
* ``Fault("after", k)``: the k-th command reaches the server and is carried out, but
  its tagged answer is dropped and both connections cut: the client cannot know
  whether it happened (the hardest case for a sync tool).
* ``Fault("up", n)`` / ``Fault("down", n)``: cut after n bytes client->server /
  server->client (counted over every connection since `arm`).
* ``Fault("stall", k)``: the k-th command is held forever, the connection left open,
  so only the client's own timeout can end the wait.

A `rewrite` callback sees every whole server response (first line, literals and
continuation lines, as sent) and returns what the client gets instead: the way a
test plays a hostile or buggy server on top of a real one.

Commands are counted over every connection made since the last `arm`, in the order
they reach the proxy; `commands` lists them ("3 UID FETCH") for reports.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.harness import Mirror

# A line that ends in a literal announcement: "{123}" or "{123+}" (LITERAL+).
_LITERAL_RE = re.compile(rb"\{(\d+)\+?\}\r\n$")

Rewrite = Callable[[bytes], bytes]


@dataclass(frozen=True)
class Fault:
    kind: str  # "before" | "after" | "up" | "down" | "stall"
    at: int  # the command's number (from 1), or a byte count

    def __post_init__(self) -> None:
        assert self.kind in ("before", "after", "up", "down", "stall"), self.kind

    def __str__(self) -> str:
        unit = "bytes" if self.kind in ("up", "down") else "command"
        return f"{self.kind} {unit} {self.at}"


class _Reader:
    """Buffered reads of lines and exact byte counts from one socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _more(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except OSError:
            return False
        self.buf += data
        return bool(data)

    def line(self) -> bytes | None:
        while True:
            end = self.buf.find(b"\r\n")
            if end >= 0:
                out, self.buf = self.buf[: end + 2], self.buf[end + 2 :]
                return out
            if not self._more():
                return None

    def exactly(self, n: int) -> bytes | None:
        while len(self.buf) < n:
            if not self._more():
                return None
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


class FaultProxy:
    """Listens on 127.0.0.1 (an ephemeral port) and forwards to `target`."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.host = "127.0.0.1"
        self._lock = threading.Lock()
        self._conns: list[tuple[socket.socket, socket.socket]] = []
        self.rewrite: Rewrite | None = None
        self.arm(None)
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    # -- control

    def arm(
        self, fault: Fault | None, rewrite: Rewrite | None = None, trickle: bytes | None = None
    ) -> None:
        """Start counting afresh, with this fault (None: pass everything). With
        `trickle`, once a client command containing those bytes is seen on a
        connection, the server's bytes reach the client 5 at a time every 50 ms
        (100 bytes/s), as from a server that answers slowly on purpose."""
        with self._lock:
            self.fault = fault
            self.rewrite = rewrite
            self.trickle = trickle
            self.commands: list[str] = []
            # tag -> the command's first line, for a rewrite that answers a command
            self.tagged: dict[bytes, bytes] = {}
            self.up = 0
            self.down = 0
            self.fired = False
            self.connections = 0  # made since `arm`, numbered from 1
            self.fired_in = 0  # the connection the fault hit (0: none yet)
            self.command_conn: list[int] = []  # the connection of each of `commands`

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for pair in conns:
            _cut(*pair)

    # -- plumbing

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns.append((client, server))
            with self._lock:
                self.connections += 1
                number = self.connections
            conn = _Connection(self, client, server, number)
            threading.Thread(target=conn.upstream, daemon=True).start()
            threading.Thread(target=conn.downstream, daemon=True).start()


class _Connection:
    def __init__(
        self, proxy: FaultProxy, client: socket.socket, server: socket.socket, number: int
    ) -> None:
        self.proxy = proxy
        self.number = number
        self.client = client
        self.server = server
        self.cut_after_tag: bytes | None = None
        self.stalled = False
        self.trickling = False

    def cut(self, fired: bool = True) -> None:
        """Close both sides; `fired`: because of the fault (not a peer's close)."""
        if fired:
            self.proxy.fired = True
            self.proxy.fired_in = self.proxy.fired_in or self.number
        _cut(self.client, self.server)

    def _send(self, sock: socket.socket, data: bytes, direction: str) -> bool:
        """Forward `data`, or the part of it before a byte fault, then cut."""
        p = self.proxy
        with p._lock:
            fault = p.fault
            before = p.up if direction == "up" else p.down
            if direction == "up":
                p.up += len(data)
            else:
                p.down += len(data)
        if fault is not None and fault.kind == direction and before + len(data) > fault.at:
            keep = max(0, fault.at - before)
            with contextlib.suppress(OSError):
                sock.sendall(data[:keep])
            self.cut()
            return False
        try:
            if direction == "down" and self.trickling:
                for i in range(0, len(data), 5):
                    sock.sendall(data[i : i + 5])
                    time.sleep(0.05)
            else:
                sock.sendall(data)
        except OSError:
            self.cut(fired=False)
            return False
        return True

    def upstream(self) -> None:
        """Client -> server, one command (line by line, literals whole) at a time."""
        reader = _Reader(self.client)
        p = self.proxy
        start = True
        while True:
            line = reader.line()
            if line is None:
                self.cut(fired=False)
                return
            if start and not self.stalled:
                tag, _, rest = line.partition(b" ")
                words = rest.split(b" ", 2)
                is_command = bool(rest) and line.strip().upper() != b"DONE"
                if is_command:
                    name = words[0].strip().upper()
                    if name == b"UID" and len(words) > 1:
                        name += b" " + words[1].strip().upper()
                    with p._lock:
                        p.commands.append(name.decode("ascii", "replace"))
                        p.command_conn.append(self.number)
                        p.tagged[tag] = line
                        if p.trickle is not None and p.trickle in line:
                            self.trickling = True
                        k = len(p.commands)
                        fault = p.fault
                    if fault is not None and fault.at == k:
                        if fault.kind == "before":
                            self.cut()
                            return
                        if fault.kind == "stall":
                            p.fired = True
                            p.fired_in = p.fired_in or self.number
                            self.stalled = True
                        if fault.kind == "after":
                            self.cut_after_tag = tag
            if self.stalled:
                continue  # swallow everything: the client waits for its timeout
            if not self._send(self.server, line, "up"):
                return
            literal = _LITERAL_RE.search(line)
            if literal:
                data = reader.exactly(int(literal.group(1)))
                if data is None:
                    self.cut(fired=False)
                    return
                if not self._send(self.server, data, "up"):
                    return
                start = False
            else:
                start = True

    def downstream(self) -> None:
        """Server -> client, one whole response (with its literals) at a time."""
        reader = _Reader(self.server)
        while True:
            response = b""
            while True:
                line = reader.line()
                if line is None:
                    if response:
                        self._send(self.client, response, "down")
                    self.cut(fired=False)
                    return
                response += line
                literal = _LITERAL_RE.search(line)
                if not literal:
                    break
                data = reader.exactly(int(literal.group(1)))
                if data is None:
                    self.cut(fired=False)
                    return
                response += data
            tag = self.cut_after_tag
            if tag is not None and response.startswith(tag + b" "):
                self.cut()  # carried out, but the client never hears so
                return
            rewrite = self.proxy.rewrite
            if rewrite is not None:
                response = rewrite(response)
            if response and not self._send(self.client, response, "down"):
                return


def _cut(*socks: socket.socket) -> None:
    for s in socks:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            s.close()


# -- for the tests: a Mirror whose mirrorsync goes through a proxy ---------------------

TIMEOUT = 3  # seconds: the runs' timeout, what a stalled command costs


@dataclass(frozen=True)
class Proxied:
    """An account whose mirrorsync goes through the proxy; the test's own client
    (`client()`) goes straight to the server."""

    account: Any
    proxy: FaultProxy

    @property
    def server(self) -> Any:
        """The real server (its folder naming, for the harness)."""
        return self.account.server

    @property
    def host(self) -> str:
        return self.proxy.host

    @property
    def port(self) -> int:
        return self.proxy.port

    @property
    def user(self) -> str:
        return str(self.account.user)

    @property
    def password(self) -> str:
        return str(self.account.password)

    def client(self) -> Any:
        return self.account.client()


def proxied_mirror(account: Any, proxy: FaultProxy, tmp: Path, timeout: int = TIMEOUT) -> Mirror:
    m = Mirror(Proxied(account, proxy), tmp)
    cfg = yaml.safe_load(m.config.read_text())
    cfg["accounts"]["test"]["remote"]["timeout"] = timeout
    m.config.write_text(yaml.safe_dump(cfg))
    return m
