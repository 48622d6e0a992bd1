"""Just enough IMAP for `mirrorsync.quick`: log in, one LIST-STATUS, log out.

imapclient and imaplib take longer to import than the whole exchange takes on a
local network, so the quick check speaks the few commands it needs over a plain
socket. It sends what `ImapStore` sends for the same steps (LOGIN as imaplib words
it, ENABLE as `imap.connection.sync_extension` chooses it, the LIST of `ImapStore.statuses` with
the same options and items) and reads the answers strictly: anything it does not
fully understand (a literal, an unknown response, a NO or BAD, a name that is not in
canonical modified UTF-7, a folder without its STATUS) raises `Unsure`, and the
caller leaves the run to the full path, which knows how to handle or word it.
"""

from __future__ import annotations

from mirrorsync.imap import connection
from mirrorsync.imap.wire import (
    LINE_MAX,
    LineTooLong,
    LiteralRefused,
    capability_set,
    decode_mutf7_strict,
    is_atom,
    parse_parts,
    quoted,
    response_code_capabilities,
    split_response,
)
from mirrorsync.names import server_to_canonical

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy knows this name
if TYPE_CHECKING:
    import _socket
    import ssl

# (UIDVALIDITY, UIDNEXT, MESSAGES, HIGHESTMODSEQ) of a selectable folder
Numbers = tuple[int, int, int, int]


class Unsure(Exception):
    """Something the quick check does not handle: leave the run to the full path."""


# -- reading responses -------------------------------------------------------------------


def _tokens(data: bytes, what: str) -> list[object]:
    """The tokens of one response (see `wire.parse_parts`); Unsure if unreadable."""
    try:
        return parse_parts((data,))
    except ValueError as e:
        raise Unsure(f"unexpected {what} response {data[:80]!r}") from e


def _atoms(value: object) -> list[bytes] | None:
    """A flat list of atoms (the attributes of a LIST, the items of a STATUS)."""
    if not isinstance(value, tuple) or not all(isinstance(v, bytes) and v.isascii() for v in value):
        return None
    return list(value)


def parse_list(data: bytes) -> tuple[frozenset[str], str | None, bytes]:
    """``(attributes) delimiter name`` of one ``* LIST`` response, the name still
    in modified UTF-7."""
    tokens = _tokens(data, "LIST")
    attributes = _atoms(tokens[0]) if len(tokens) == 3 else None
    delimiter, name = tokens[1:] if attributes is not None else (None, None)
    if attributes is None or not isinstance(name, bytes):
        raise Unsure(f"unexpected LIST response {data[:80]!r}")
    if delimiter is not None and (
        not isinstance(delimiter, bytes) or len(delimiter) != 1 or not delimiter.isascii()
    ):
        raise Unsure(f"odd hierarchy delimiter in {data[:80]!r}")
    return (
        frozenset(a.decode("ascii") for a in attributes),
        None if delimiter is None else delimiter.decode("ascii"),
        name,
    )


def parse_status(data: bytes) -> tuple[bytes, dict[bytes, int]]:
    """``name (ITEM n ...)`` of one ``* STATUS`` response, as `imap.parse.parse_status`
    reads it: items upper-cased, values as integers."""
    tokens = _tokens(data, "STATUS")
    name, items = (tokens[0], _atoms(tokens[1])) if len(tokens) == 2 else (None, None)
    if not isinstance(name, bytes) or items is None or len(items) % 2:
        raise Unsure(f"unexpected STATUS response {data[:80]!r}")
    numbers: dict[bytes, int] = {}
    for k in range(0, len(items), 2):
        if not items[k + 1].isdigit():
            raise Unsure(f"unexpected STATUS response {data[:80]!r}")
        numbers[items[k].upper()] = int(items[k + 1])
    return name, numbers


def folder_numbers(
    list_lines: list[bytes],
    status_lines: list[bytes],
    items: list[str],
    naming: tuple[str | None, str] | None = None,
) -> dict[str, Numbers]:
    """Canonical name -> numbers of every selectable folder, read as
    `ImapStore.statuses` reads the same answer. Unsure where that would warn (a name
    without canonical form) or ask again (a folder without all its STATUS items), and
    for names it cannot read with certainty. `naming` is the (delimiter, namespace
    prefix) the last full sync recorded: Unsure when a listed delimiter is another."""
    prefix = naming[1] if naming else ""
    statuses: dict[bytes, dict[bytes, int]] = {}
    for line in status_lines:
        raw, numbers = parse_status(line)
        if raw in statuses:
            raise Unsure(f"two STATUS responses for {raw!r}")
        statuses[raw] = numbers
    out: dict[str, Numbers] = {}
    seen: set[str] = set()
    for line in list_lines:
        attributes, delimiter, raw = parse_list(line)
        text = decode_mutf7_strict(raw)
        if text is None:
            raise Unsure(f"folder name {raw!r} is not plain modified UTF-7")
        if naming is not None and delimiter != naming[0]:
            raise Unsure(f"the delimiter of {raw!r} is not the one recorded")
        canonical = server_to_canonical(text, delimiter, prefix)
        if canonical is None or canonical in seen:
            raise Unsure(f"folder name {raw!r} has no canonical form of its own")
        seen.add(canonical)
        lowered = {a.lower() for a in attributes}
        if "\\noselect" in lowered or "\\nonexistent" in lowered:
            continue
        numbers = statuses.get(raw, {})
        if not all(item.encode() in numbers for item in items):
            raise Unsure(f"no complete STATUS for {raw!r}")
        out[canonical] = (
            numbers[b"UIDVALIDITY"],
            numbers[b"UIDNEXT"],
            numbers[b"MESSAGES"],
            numbers.get(b"HIGHESTMODSEQ", 0),
        )
    return out


# -- the connection ----------------------------------------------------------------------


class _Connection:
    """Lines in and commands out over a plain `_socket.socket` (the `socket` module
    costs milliseconds to import, for nothing used here) or an SSL socket."""

    def __init__(self, sock: _socket.socket | ssl.SSLSocket) -> None:
        self._sock = sock
        self._buffer = bytearray()
        self._tags = 0

    def close(self) -> None:
        self._sock.close()

    def line(self) -> bytes:
        """The next response line; Unsure for one that announces a literal."""
        buffer = self._buffer
        while True:
            try:
                found = split_response(buffer, LINE_MAX, max_literal=-1)
            except (LineTooLong, LiteralRefused) as e:
                raise Unsure(f"a response the quick check does not read: {e}") from e
            if found is not None:
                del buffer[: found[1]]
                data = found[0][0]
                break
            chunk = self._sock.recv(65536)
            if not chunk:
                raise Unsure("the connection closed")
            buffer += chunk
        if not isinstance(data, bytes) or b"\n" in data or b"\r" in data:
            raise Unsure("a response line holds a bare CR or LF")
        return data

    def command(self, text: bytes) -> tuple[list[bytes], bytes]:
        """Send one command; (untagged responses without "* ", the tagged OK's text)."""
        return self.answer(self.send(text), text)

    def send(self, text: bytes) -> bytes:
        """Send one command without waiting for its answer; its tag."""
        self._tags += 1
        tag = b"Q%d" % self._tags
        self._sock.sendall(tag + b" " + text + b"\r\n")
        return tag

    def answer(self, tag: bytes, text: bytes) -> tuple[list[bytes], bytes]:
        """The answer to the command `text` sent as `tag`, as `command` returns it."""
        untagged: list[bytes] = []
        while True:
            data = self.line()
            if data.startswith(b"* "):
                untagged.append(data[2:])
            elif data.startswith(tag + b" "):
                result = data[len(tag) + 1 :]
                if result != b"OK" and not result.startswith(b"OK "):
                    raise Answered(text.split(b" ", 1)[0], result)
                return untagged, result[3:]
            else:
                raise Unsure(f"unexpected line {data[:80]!r}")


class Learned:
    """What a quick look learned the hard way, handed to the full path that runs next
    (`ImapStore.connect`) so that it does not pay twice: the logins a server refused
    (a second failed LOGIN per run would double the server's failure count, and its
    delay), and the connection attempts that timed out (a second one would wait as
    long again)."""

    __slots__ = ("refused", "timed_out")

    def __init__(self) -> None:
        self.refused: set[tuple[str, int, str]] = set()  # (host, port, username)
        self.timed_out: dict[tuple[str, int], OSError] = {}  # (host, port)


class Answered(Unsure):
    """A command was answered with something else than OK."""

    def __init__(self, command: bytes, result: bytes) -> None:
        super().__init__(f"{command!r} answered {result[:80]!r}")
        self.result = result


class LoginRefused(Unsure):
    """The server answered LOGIN with NO (not [UNAVAILABLE])."""


class Session:
    """One quick look at the server, in three steps, so that the server works while
    the caller does: the connection is made first (as `ImapStore.connect` does, tls
    "none" or "imaps"), and the server's greeting (a few milliseconds of its login
    process) is on its way while the caller finds the password and opens its state;
    `begin_login` reads the greeting and sends LOGIN without waiting, and the server
    logs in while the caller checks the local side; `list_status` then reads the
    answer and returns what `ImapStore.statuses` would: canonical name -> numbers of
    every selectable folder. Unsure (or OSError) whenever the full path would do more
    than this (STARTTLS, a STATUS per folder, a warning) or fail; `refused` tells,
    once the session is closed, whether the server refused the LOGIN."""

    def __init__(
        self, host: str, port: int, tls: str, ca_file: str | None, timeout: float, username: str
    ) -> None:
        if tls not in ("none", "imaps") or not is_atom(username):
            raise Unsure("a connection or login the quick check does not make")
        if tls == "none" and not connection.is_loopback(host):
            # the full path warns of the clear-text password on every such run
            raise Unsure("a connection or login the quick check does not make")
        self._username = username
        self.refused = False
        # An ASCII host name goes to getaddrinfo as bytes: the same lookup, without the
        # IDNA codec (and the unicodedata it imports) that a str costs.
        address = host.encode("ascii") if host.isascii() else host
        if tls == "imaps":
            import socket
            import ssl

            plain = socket.create_connection((address, port), timeout=timeout)  # type: ignore[arg-type]
            try:
                context = ssl.create_default_context(cafile=ca_file)
                self._conn = _Connection(context.wrap_socket(plain, server_hostname=host))
            except BaseException:
                plain.close()
                raise
        else:
            self._conn = _Connection(_connect(address, port, timeout))
        self._login: bytes | None = None  # the LOGIN's tag while its answer is unread

    def begin_login(self, password: str) -> None:
        literal = quoted(password)
        if literal is None:
            raise Unsure("a login the quick check does not make")
        self._login = _greet_and_login(self._conn, self._username, literal)

    def list_status(self, naming: tuple[str | None, str] | None = None) -> dict[str, Numbers]:
        """See `folder_numbers` for `naming`."""
        if self._login is None:
            raise Unsure("not logged in")
        tag, self._login = self._login, None
        try:
            after = _logged_in(self._conn, tag)
        except LoginRefused:
            self.refused = True
            raise
        return _list_status(self._conn, after, naming)

    def close(self) -> None:
        """Close; a LOGIN still unanswered is read first, so that the full path
        knows of a refusal and does not try the password a second time."""
        try:
            if self._login is not None:
                tag, self._login = self._login, None
                _logged_in(self._conn, tag)
        except LoginRefused:
            self.refused = True
        except (Unsure, OSError):
            pass  # the full path finds out for itself
        finally:
            self._conn.close()


def _connect(address: str | bytes, port: int, timeout: float) -> _socket.socket:
    """socket.create_connection, on `_socket`: each address in turn, the last error
    if none answers."""
    import _socket

    error: OSError = OSError(f"no address for {address!r}")
    for family, kind, proto, _name, where in _socket.getaddrinfo(
        address, port, 0, _socket.SOCK_STREAM
    ):
        sock = _socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(where)
            return sock
        except OSError as e:
            sock.close()
            error = e
    raise error


def _greet_and_login(conn: _Connection, username: str, quoted_password: bytes) -> bytes:
    """Read the greeting and send LOGIN; its tag."""
    greeting = conn.line()
    if greeting != b"* OK" and not greeting.startswith(b"* OK "):
        raise Unsure(f"greeting {greeting[:80]!r}")  # PREAUTH, BYE
    caps = response_code_capabilities(greeting[5:])
    if caps is None:
        untagged, _ = conn.command(b"CAPABILITY")
        found = [u[len(b"CAPABILITY ") :] for u in untagged if u.startswith(b"CAPABILITY ")]
        if not found:
            raise Unsure("no CAPABILITY response")
        caps = capability_set(found[-1])
    # imaplib refuses a server that is not IMAP4rev1 (or IMAP4); LOGINDISABLED makes
    # the full path stop with its own message
    if not caps & {"IMAP4REV1", "IMAP4"} or "LOGINDISABLED" in caps:
        raise Unsure("the server's pre-login capabilities")
    return conn.send(b"LOGIN " + username.encode("ascii") + b" " + quoted_password)


def _logged_in(conn: _Connection, tag: bytes) -> frozenset[str]:
    """The answer to the LOGIN sent as `tag`: the capabilities after login."""
    try:
        untagged, result = conn.answer(tag, b"LOGIN")
    except Answered as e:
        if e.result.startswith(b"NO") and b"[UNAVAILABLE]" not in e.result.upper():
            raise LoginRefused("LOGIN refused") from e
        raise
    # after login imapclient takes the first CAPABILITY the server sent (an untagged
    # response or a response code), else asks
    after: frozenset[str] | None = None
    for u in untagged:
        if u.startswith(b"CAPABILITY "):
            after = after or capability_set(u[len(b"CAPABILITY ") :])
        elif u.startswith(b"OK "):
            after = after or response_code_capabilities(u[3:])
        else:
            raise Unsure(f"unexpected response to LOGIN {u[:80]!r}")
    after = after or response_code_capabilities(result)
    if after is None:
        untagged, _ = conn.command(b"CAPABILITY")
        found = [u[len(b"CAPABILITY ") :] for u in untagged if u.startswith(b"CAPABILITY ")]
        if not found:
            raise Unsure("no CAPABILITY response after login")
        after = capability_set(found[0])
    return after


def _list_status(
    conn: _Connection, after: frozenset[str], naming: tuple[str | None, str] | None
) -> dict[str, Numbers]:
    # HIGHESTMODSEQ is asked for only with CONDSTORE, and the state records a folder
    # as unchanged only with a non-zero one: without it nothing can be skipped
    if "LIST-STATUS" not in after or "CONDSTORE" not in after:
        raise Unsure("the server has no LIST-STATUS or CONDSTORE")
    wanted = connection.sync_extension(after)
    if "ENABLE" in after and wanted is not None:
        # as `connection.enable` does; a refusal is a warning on the full path
        untagged, _ = conn.command(b"ENABLE " + wanted.encode("ascii"))
        if any(not u.startswith(b"ENABLED") for u in untagged):
            raise Unsure("unexpected response to ENABLE")
    items = connection.status_items(after)
    arguments = connection.list_status_arguments(after, items)
    untagged, _ = conn.command(b"LIST " + arguments.encode("ascii"))
    lists = [u[5:] for u in untagged if u.startswith(b"LIST ")]
    statuses = [u[7:] for u in untagged if u.startswith(b"STATUS ")]
    if len(lists) + len(statuses) != len(untagged):
        raise Unsure("unexpected response to LIST")
    found_numbers = folder_numbers(lists, statuses, items, naming)
    try:  # noqa: SIM105 (contextlib.suppress would cost an import)
        conn.command(b"LOGOUT")
    except (Unsure, OSError):
        pass  # as `ImapStore.close`: what the server says to LOGOUT does not matter
    return found_numbers
