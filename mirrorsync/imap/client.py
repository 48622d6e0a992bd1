"""imapclient's client, with what mirrorsync needs and imapclient cannot send.

`Client` is the one place in mirrorsync that uses imaplib's private parts (and
imapclient's `_imap` and `_normalise_folder`): `_command`, `_command_complete`,
`_get_response`, `_check_bye`, `_new_tag`, `tagged_commands`, `untagged_responses`
and imaplib's state. imapclient 4.1 has no way to send the commands below, and no way
to read the answers they get; imapclient itself drives imaplib through the same
long-stable internals. What mirrorsync works around here (see also the README):

* ``UID FETCH`` with a UID *set* ("1:*", "3:9,12"): `IMAPClient.fetch` int()s the ids
  it was given to drop unsolicited responses, so it rejects sets (`uid_fetch_data`).
* SELECT with parameters (QRESYNC, CONDSTORE): `select_folder` cannot send them, and
  imaplib loses the order of the responses, which QRESYNC's ``[CLOSED]`` needs
  (`select_with`).
* LIST-STATUS, STORE with UNCHANGEDSINCE, pipelined STATUS and SEARCH: no method at
  all (`run`, `pipeline`, `conditional_store`); VANISHED, MODIFIED, COPYUID stay in
  imaplib's untagged responses (`take`, `response_codes`).
* MULTIAPPEND: imaplib sends one literal per command, and imapclient's `multiappend`
  takes a refused literal for a lost connection (`send_append`).
* Bounded reads (`ReadGuard`): imaplib reads a literal as large as the server
  announces and times out per socket read only.
* Speed: imaplib's response reader formats a log line and tries four regular
  expressions per FETCH response (`_complete_fetch` reads them itself), and at
  imapclient's debug level it formats every line it reads (`Client` turns it off).
"""

from __future__ import annotations

import imaplib
import logging
import re
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from typing import Any

import imapclient
from imapclient.datetime_util import datetime_to_INTERNALDATE

from mirrorsync.imap.wire import LINE_MAX, LITERAL_MAX, MIN_RATE, Overdue, literal_refused

# Commands in flight at once when pipelining (STATUS per folder, SEARCH windows).
PIPELINE_DEPTH = 64

# A MULTIAPPEND with LITERAL+ goes out in writes of about this size: small messages
# share one, so that a command is a few writes, not two per message.
_SEND_CHUNK = 256 * 1024

_FETCH_START_RE = re.compile(rb"\* (\d+) FETCH ")
_LITERAL_END_RE = re.compile(rb"\{(\d+)\}\Z")


class ReadGuard:
    """Every read of one imaplib connection, bounded in size and in time.

    imaplib reads a literal whole (``read(size)`` with the size the server announced)
    and applies the timeout to each socket read, so memory followed the announced
    size (2 GiB for a 140-byte message) and a trickling server kept a run busy
    indefinitely. imaplib documents `send`, `read` and `readline` as meant to be
    overridden; they are replaced on the instance here, the one place this module
    changes imaplib's behaviour (it still reads ``imap.file``/``imap.sock``, as
    imaplib and imapclient's STARTTLS set them).

    * Each command gets a deadline when it is sent: the timeout, plus one second per
      `MIN_RATE` bytes received for it, checked between socket reads.
    * A literal larger than `limit` (set by the caller for what it asked: bodies of
      known RFC822.SIZE, a piece of a given size; else `LITERAL_MAX`) is refused
      before any of it is read: the connection is shut, since the answer cannot be
      skipped, and the store fails with a clear line."""

    def __init__(self, imap: Any, timeout: float) -> None:
        self.imap = imap
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.limit = LITERAL_MAX
        self.expected = ""  # words for the error: what the limit comes from
        self._short = False  # the socket's timeout is below `timeout` (near the deadline)
        if imap is not None:  # None: a stand-in client of a test, with no connection
            self._send = imap.send
            imap.send, imap.read, imap.readline = self.send, self.read, self.readline

    @contextmanager
    def expecting(self, limit: int, expected: str) -> Iterator[None]:
        """Accept literals up to `limit` bytes in the commands run inside."""
        self.limit, self.expected = limit, expected
        try:
            yield
        finally:
            self.limit, self.expected = LITERAL_MAX, ""

    def send(self, data: bytes) -> None:
        self.deadline = time.monotonic() + self.timeout  # a command goes out
        self._send(data)

    def _overdue(self) -> Overdue:
        return Overdue(
            f"the answer came slower than {MIN_RATE // 1024} KiB/s after {self.timeout:g}s"
        )

    def _arm(self) -> None:
        """Check the deadline and, once it is near, let the next socket read wait no
        longer than it. (Only then: a settimeout per read cost a system call each,
        which made fetching small bodies half again as slow.)"""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self._overdue()
        if left < self.timeout / 2:
            self.imap.sock.settimeout(left)
            self._short = True
        elif self._short:
            self.imap.sock.settimeout(self.timeout)
            self._short = False

    def _piece(self, read: Callable[[int], bytes], n: int) -> bytes:
        """One buffered read; a socket timeout cut short by `_arm` is the deadline's."""
        try:
            return read(n)
        except TimeoutError as e:
            if self._short:
                raise self._overdue() from e
            raise

    def readline(self) -> bytes:
        f = self.imap.file
        self._arm()
        pieces: list[bytes] = []
        size = 0
        while True:
            buffered = self._piece(f.peek, 1)  # what is buffered, or one socket read
            if not buffered:
                break  # EOF: the caller sees a line without CRLF
            end = buffered.find(b"\n")
            piece = f.read(end + 1 if end >= 0 else len(buffered))
            pieces.append(piece)
            size += len(piece)
            self.deadline += len(piece) / MIN_RATE
            if end >= 0:
                break
            if size > LINE_MAX:
                raise imaplib.IMAP4.error(f"got more than {LINE_MAX} bytes")
            self._arm()
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def read(self, size: int) -> bytes:
        if size > self.limit:
            with suppress(OSError):
                self.imap.sock.shutdown(socket.SHUT_RDWR)
            raise literal_refused(size, self.limit, self.expected)
        f = self.imap.file
        pieces: list[bytes] = []
        got = 0
        while got < size:
            self._arm()
            piece = self._piece(f.read1, min(size - got, 1 << 20))
            if not piece:
                break  # EOF: the caller sees a short literal
            pieces.append(piece)
            got += len(piece)
            self.deadline += len(piece) / MIN_RATE
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)


class Client(imapclient.IMAPClient):
    """An `imapclient.IMAPClient` with the raw commands mirrorsync needs (see above).
    Not thread-safe, as imapclient is not."""

    def __init__(
        self, host: str, port: int, *, ssl: bool, ssl_context: Any, timeout: float
    ) -> None:
        super().__init__(
            host,
            port,
            ssl=ssl,
            ssl_context=ssl_context,
            timeout=imapclient.SocketTimeout(connect=timeout, read=timeout),
        )
        if not logging.getLogger("imapclient.imaplib").isEnabledFor(logging.DEBUG):
            # imapclient sets imaplib's debug level to 5 so that its logger sees the
            # traffic; at that level imaplib formats a repr of every line, match and
            # literal whether or not anything is logged, which halved FETCH throughput
            # and made a transient copy of every message body.
            self._imap.debug = 0
        self.guard = ReadGuard(self._imap, timeout)

    def wire_name(self, server: str) -> bytes:
        """A folder name as imapclient sends it (modified UTF-7, quoted)."""
        name = self._normalise_folder(server)
        return name if isinstance(name, bytes) else str(name).encode("utf-8")

    def take(self, kind: str) -> list[Any]:
        """The untagged responses of `kind` read since the last take (imaplib keeps
        them by type), removed from imaplib's table."""
        return self._imap.untagged_responses.pop(kind, [])

    def drop(self, *kinds: str) -> None:
        """Forget stale untagged responses before a command whose answer is read."""
        for kind in kinds:
            self._imap.untagged_responses.pop(kind, None)

    def response_codes(self, code: str) -> list[bytes]:
        """Take the data of every ``[CODE ...]`` response code read since the last
        call. imaplib files a response code's data under ``untagged_responses[CODE]``
        whether it came in an untagged OK (MOVE's COPYUID, RFC 6851) or in the tagged
        answer (COPY's COPYUID, RFC 4315); imapclient returns neither."""
        return [d if isinstance(d, bytes) else str(d).encode() for d in self.take(code) if d]

    def uid_fetch_data(self, uids: str, items: str, modifiers: str | None = None) -> list[Any]:
        """``UID FETCH <set> <items> [modifiers]``: the FETCH data as imaplib would
        file it (see `mirrorsync.imap.parse`), stale FETCH responses dropped first.

        Why not `IMAPClient.fetch`: in 4.1.0 it int()s every message id to filter the
        answer, so a set like "1:*" or "3:9" raises ValueError, and a list of plain
        UIDs makes command lines as long as the folder."""
        imap = self._imap
        imap.untagged_responses.pop("FETCH", None)
        tag = imap._command("UID", "FETCH", uids, items, modifiers)  # None: left out
        typ, data, fetched = self._complete_fetch(tag)
        if typ != "OK":
            raise refusal(typ, data)
        return fetched

    def _complete_fetch(self, tag: bytes) -> tuple[str, list[Any], list[Any]]:
        """imaplib's `_command_complete` for a FETCH, but reading the ``* n FETCH``
        responses itself: returns (typ, data, the FETCH data as imaplib would file it).

        Why: per response imaplib formats a log line and tries four regular
        expressions before filing it, which was half the time of a 20 000-message
        `list_messages()`. Here a FETCH line costs a readline and one match; its
        literals are read with imaplib's own `read`. Every other line (the tagged
        answer, EXISTS, VANISHED, BYE, ...) is handed back to imaplib's
        `_get_response` by lending it the line through a one-shot `_get_line`, so
        imaplib's bookkeeping stays exactly its own."""
        imap = self._imap
        fetched: list[Any] = []
        readline, read, match = imap.readline, imap.read, _FETCH_START_RE.match
        try:
            while imap.tagged_commands[tag] is None:
                line = readline()
                if not line.endswith(b"\r\n"):
                    raise imaplib.IMAP4.abort(
                        "socket error: EOF" if not line else f"unterminated line: {line!r:.60}"
                    )
                m = match(line) if line.startswith(b"* ") else None
                if m is None:
                    self._lend_line(line[:-2])
                    imap._get_response()
                    imap._check_bye()
                    continue
                data = m.group(1) + b" " + line[m.end() : -2]
                while data.endswith(b"}"):
                    literal = _LITERAL_END_RE.search(data)
                    if literal is None:
                        break
                    fetched.append((data, read(int(literal.group(1)))))
                    data = readline()
                    if not data.endswith(b"\r\n"):
                        raise imaplib.IMAP4.abort("socket error: EOF in a FETCH response")
                    data = data[:-2]
                fetched.append(data)
        except imaplib.IMAP4.abort as exc:
            raise imaplib.IMAP4.abort(f"command: FETCH => {exc}") from exc
        typ, data = imap.tagged_commands.pop(tag)
        imap._check_bye()
        if typ == "BAD":
            raise imaplib.IMAP4.error(f"FETCH command error: {typ} {data}")
        return str(typ), data, fetched

    def run(
        self, name: str, *args: str | bytes, watch: Callable[[], None] | None = None
    ) -> tuple[str, list[Any]]:
        """Send a command imapclient has no method for (or none that keeps what we
        need) and read up to its tagged response, leaving the untagged ones in
        imaplib's `untagged_responses` for the caller. Returns imaplib's (typ, data);
        BAD raises as in imaplib, NO is the caller's to judge.

        `watch` is called after each response read: imaplib files responses by type
        and so loses their order, which the SELECT with QRESYNC needs (see
        `select_with`). The loop is imaplib's own `_get_tagged_response`."""
        imap = self._imap
        tag = imap._command(name, *args)
        if watch is None:
            typ, data = imap._command_complete(name, tag)
            return str(typ), data
        try:
            while True:
                result = imap.tagged_commands[tag]
                if result is not None:
                    del imap.tagged_commands[tag]
                    break
                imap._check_bye()
                imap._get_response()
                watch()
        except imaplib.IMAP4.abort as exc:
            raise imaplib.IMAP4.abort(f"command: {name} => {exc}") from exc
        imap._check_bye()
        typ, data = result
        if typ == "BAD":
            raise imaplib.IMAP4.error(f"{name} command error: {typ} {data}")
        return str(typ), data

    def pipeline(self, commands: Sequence[tuple[str | bytes, ...]]) -> list[tuple[str, list[Any]]]:
        """Send commands without waiting for each answer, at most `PIPELINE_DEPTH`
        in flight (so neither side's socket buffer can fill up and stall both), and
        return each one's (typ, data) in order; a BAD comes back as ("BAD", [text])
        instead of raising, so that every answer is read and the connection stays in
        step. Only for commands whose untagged answers say what they belong to, or
        merge anyway (STATUS, SEARCH): imaplib files them all in one list per type."""
        imap = self._imap
        results: list[tuple[str, list[Any]]] = []
        for start in range(0, len(commands), PIPELINE_DEPTH):
            window = commands[start : start + PIPELINE_DEPTH]
            tags = [(str(command[0]), imap._command(*command)) for command in window]
            for name, tag in tags:
                try:
                    typ, data = imap._command_complete(name, tag)
                except imaplib.IMAP4.abort:
                    raise
                except imaplib.IMAP4.error as exc:
                    typ, data = "BAD", [str(exc).encode()]
                results.append((str(typ), data))
        return results

    def select_with(self, server: str, params: str) -> dict[str, list[Any]]:
        """``SELECT server params``, keeping imaplib's idea of the state right; the
        untagged responses about the selected folder.

        When a folder was selected already, a QRESYNC server closes it with
        ``* OK [CLOSED]`` first, and anything before that (a late VANISHED or FETCH)
        concerns the old folder. imaplib files responses by type and loses that order,
        so every response is looked at as it comes and all before [CLOSED] dropped."""
        imap = self._imap
        imap.untagged_responses = {}  # as imaplib's own select() does

        def closed() -> None:
            if "CLOSED" in imap.untagged_responses:
                imap.untagged_responses = {}

        typ, data = self.run("SELECT", self._normalise_folder(server), params, watch=closed)
        if typ != "OK":
            imap.state = "AUTH"
            raise refusal(typ, data)
        imap.state = "SELECTED"
        imap.is_readonly = False
        untagged, imap.untagged_responses = imap.untagged_responses, {}
        return untagged

    def conditional_store(
        self, uids: str, since: int, operation: str, flags: Sequence[str]
    ) -> tuple[str, list[Any], list[bytes]]:
        """``UID STORE uids (UNCHANGEDSINCE since) operation (flags)``: imaplib's
        (typ, data) and the data of the ``[MODIFIED set]`` codes, which imaplib files
        with the untagged responses whether tagged or not."""
        self.drop("MODIFIED")
        typ, data = self.run(
            "UID", "STORE", uids, f"(UNCHANGEDSINCE {since})", operation, f"({' '.join(flags)})"
        )
        codes = [c for c in self.take("MODIFIED") if c]
        self.drop("FETCH")  # our own silent responses (UID and MODSEQ) say nothing needed
        return typ, data, codes

    def send_append(
        self, server: str, batch: list[tuple[bytes, list[str], datetime | None]], plus: bool
    ) -> tuple[str, list[Any]]:
        """Send ``APPEND`` with every message of `batch` and read its answer: imaplib
        sends one literal per command, and imapclient's `multiappend` takes a NO
        that comes instead of a literal's continuation for a lost connection.

        With LITERAL+ (`plus`) the command goes out without waiting, in writes of about
        `_SEND_CHUNK` bytes (small messages share one, a big one is sent as it is).
        Without it each literal waits for the server's "+"; a tagged answer instead
        (a refusal) ends the command there. Returns imaplib's (typ, data); BAD
        raises as in imaplib."""
        imap = self._imap
        tag = imap._new_tag()
        out = bytearray(tag + b" APPEND " + self.wire_name(server))
        refused = False
        for data, flags, date in batch:
            if flags:
                out += b" (" + " ".join(flags).encode("ascii") + b")"
            if date is not None:
                out += b' "' + datetime_to_INTERNALDATE(date).encode("ascii") + b'"'
            out += b" {%d%s}\r\n" % (len(data), b"+" if plus else b"")
            if not plus:
                imap.send(bytes(out))
                out.clear()
                if not self._continued(tag):
                    refused = True
                    break
            if len(data) >= _SEND_CHUNK:
                if out:
                    imap.send(bytes(out))
                    out.clear()
                imap.send(data)
            else:
                out += data
                if len(out) >= _SEND_CHUNK:
                    imap.send(bytes(out))
                    out.clear()
        if not refused:
            out += b"\r\n"
            imap.send(bytes(out))
        typ, data = imap._command_complete("APPEND", tag)
        return str(typ), data

    def _continued(self, tag: bytes) -> bool:
        """Wait for the server's "+" before a synchronizing literal: True when it came,
        False when the tagged answer to `tag` came instead (the command is over)."""
        imap = self._imap
        while imap._get_response() is not None:  # None: the continuation request
            if imap.tagged_commands.get(tag) is not None:
                return False
        return True

    def _lend_line(self, line: bytes) -> None:
        """Make imaplib's next `_get_line()` return `line` (read already) instead of
        reading one; the instance attribute removes itself, so later calls (the lines
        after a literal) read from the connection as usual."""
        imap = self._imap

        def once() -> bytes:
            del imap._get_line
            return line

        imap._get_line = once


def refusal(typ: str, data: list[Any]) -> imaplib.IMAP4.error:
    """The error for a command answered `typ` (NO), with the server's words."""
    text = data[0] if data and data[0] else typ
    return imaplib.IMAP4.error(
        text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    )
