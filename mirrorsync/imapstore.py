"""`RemoteStore` against a real IMAP server, on top of imapclient.

imapclient does the connection, TLS, login, quoting and modified UTF-7; this module adds
what the engine needs on top and papers over what imapclient 4.1.0 lacks:

* ``UID FETCH`` with a UID *set* ("1:*", "3:9,12"). imapclient's `fetch` int()s the ids
  it was given to drop unsolicited responses, so it rejects sets; `_uid_fetch` sends the
  command through the client's imaplib object instead (see its docstring).
* APPENDUID, read from the tagged APPEND response text; without UIDPLUS the new UID is
  found by UIDNEXT, Message-ID and size.
* Exact expunge without UIDPLUS (only when no other client's \\Deleted messages would go).
* One error vocabulary: every imapclient, imaplib, socket and ssl exception leaves this
  module as a `mirrorsync.errors` type with a one-line message naming host:port, the
  operation and the folder. After a `ConnectionFailed` the store is unusable: close it.

The connection is not thread-safe (imapclient is not); use one store per thread.
"""

from __future__ import annotations

import imaplib
import logging
import re
import socket
import ssl
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import imapclient
from imapclient.datetime_util import parse_to_datetime
from imapclient.response_parser import parse_response

from mirrorsync.config import RemoteConfig
from mirrorsync.content import message_id
from mirrorsync.errors import (
    AuthenticationFailed,
    ConfigError,
    ConnectionFailed,
    FolderNameError,
    MirrorsyncError,
    ServerError,
)
from mirrorsync.model import (
    SEP,
    Flags,
    FolderStatus,
    RemoteFolder,
    RemoteIdentity,
    RemoteMessage,
    canonical_folder,
)

log = logging.getLogger(__name__)

# A UID set longer than this is split over several commands. RFC 7162 (section 4) asks
# clients to keep command lines under 8192 octets; staying far below also suits servers
# with smaller limits, and compact ranges make long sets rare anyway.
UID_SET_MAX_LEN = 1000

# \Recent is a session flag that only the server sets; APPEND/STORE with it are errors.
_RECENT = "\\recent"
# A flag is an atom, optionally preceded by a backslash (RFC 3501 flag / flag-keyword);
# checked here so that a bad name becomes a ServerError instead of a broken command line.
_FLAG_RE = re.compile(r'^\\?[^\x00-\x20\x7f-\U0010ffff(){%*"\\\]]+$')
_APPENDUID_RE = re.compile(rb"\[APPENDUID\s+(\d+)\s+(\d+)\]", re.IGNORECASE)
# imaplib turns bare CR or LF in an APPEND literal into CRLF; the size the server will
# report is that of the converted message.
_LINE_END_RE = re.compile(rb"\r\n|\r(?!\n)|\n")
# Dovecot appends "(0.001 + 0.000 secs)." to its responses: noise in an error message.
_TIMING_RE = re.compile(r"\s*\([0-9.+ ]+secs\)\.?")
_ERROR_PREFIX_RE = re.compile(r"^(?:[A-Za-z]+ failed|[A-Za-z ]+ command error): (?:BAD )?")
# What a connection attempt can raise besides our own errors: socket and ssl errors are
# OSErrors, imaplib's error/abort cover IMAP-level trouble, EOFError a vanished peer.
_TRANSPORT_ERRORS = (OSError, EOFError, imaplib.IMAP4.error)
_RESPONSE_CODE_HINTS = {
    "NONEXISTENT": "the folder does not exist on the server",
    "TRYCREATE": "the folder does not exist on the server",
    "OVERQUOTA": "the mailbox is over quota; free space on the server",
    "NOPERM": "the server does not allow this for this user",
    "LIMIT": "the server refused because of one of its limits",
    "INUSE": "the folder is in use; try again later",
    "CANNOT": "the server cannot do this for this folder",
}


# -- pure helpers (tested from tables) -----------------------------------------------


def uid_set(uids: Iterable[int]) -> str:
    """Compact IMAP sequence-set for UIDs: [1, 2, 3, 5, 7, 8] -> "1:3,5,7:8"."""
    return ",".join(_ranges(sorted(set(uids))))


def uid_set_chunks(uids: Iterable[int], max_len: int = UID_SET_MAX_LEN) -> list[str]:
    """Compact UID sets, each at most `max_len` characters (a single range may exceed
    it only if one range alone does, which cannot happen for sane limits)."""
    chunks: list[str] = []
    current: list[str] = []
    length = 0
    for part in _ranges(sorted(set(uids))):
        extra = len(part) + (1 if current else 0)
        if current and length + extra > max_len:
            chunks.append(",".join(current))
            current, length = [], 0
            extra = len(part)
        current.append(part)
        length += extra
    if current:
        chunks.append(",".join(current))
    return chunks


def _ranges(sorted_uids: list[int]) -> Iterator[str]:
    if not sorted_uids:
        return
    start = prev = sorted_uids[0]
    for uid in sorted_uids[1:]:
        if uid == prev + 1:
            prev = uid
            continue
        yield str(start) if start == prev else f"{start}:{prev}"
        start = prev = uid
    yield str(start) if start == prev else f"{start}:{prev}"


def canonical_to_server(name: str, delimiter: str | None) -> str:
    """The server's spelling (still Unicode; imapclient does modified UTF-7) of a
    canonical name, or FolderNameError when the server's hierarchy cannot hold it."""
    name = canonical_folder(name)
    parts = name.split(SEP)
    if any(not p for p in parts):
        raise FolderNameError(
            f"folder name {name!r} has an empty component", hint="rename the folder"
        )
    if len(parts) == 1:
        return name
    if delimiter is None:
        raise FolderNameError(
            f"folder {name!r} is nested, but the server has no folder hierarchy",
            hint="rename the folder or exclude it in the configuration",
        )
    bad = [p for p in parts if delimiter in p]
    if bad:
        raise FolderNameError(
            f"folder {name!r}: component {bad[0]!r} contains the server's hierarchy "
            f"delimiter {delimiter!r}",
            hint="rename the folder or exclude it in the configuration",
        )
    return delimiter.join(parts)


def server_to_canonical(name: str, delimiter: str | None) -> str | None:
    """The canonical name of a server folder, or None when it has no canonical form
    (a component holding "/" while the delimiter is something else, or an empty
    component), since such a name could not be mapped back."""
    parts = [name] if delimiter is None else name.split(delimiter)
    if any(not p or SEP in p for p in parts):
        return None
    return canonical_folder(SEP.join(parts))


def _text(value: object) -> str:
    """Atoms come back as bytes, but the parser turns numeric-looking ones into ints."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _flags_of(value: object) -> Flags:
    if not isinstance(value, tuple):
        return frozenset()
    return frozenset(_text(f) for f in value)


def _aware(value: object) -> datetime | None:
    """INTERNALDATE as an aware datetime with a plain `timezone` (not imapclient's
    FixedOffset), so it compares and pickles like any other."""
    if not isinstance(value, bytes):
        return None
    dt = parse_to_datetime(value, normalise=False)
    offset = dt.utcoffset()
    return dt.replace(tzinfo=timezone(offset)) if offset is not None else dt


def _server_text(exc: BaseException) -> str:
    """The server's words, one line: without imapclient's "select failed: " prefix
    (our message names the operation already) and Dovecot's timings."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    text = _ERROR_PREFIX_RE.sub("", text)
    return _TIMING_RE.sub("", text).strip()


def _code_hint(text: str) -> str:
    m = re.search(r"\[([A-Z-]+)", text)
    if m and m.group(1) in _RESPONSE_CODE_HINTS:
        return _RESPONSE_CODE_HINTS[m.group(1)]
    if re.search(r"(doesn't|does not|not) exist", text, re.IGNORECASE):
        return _RESPONSE_CODE_HINTS["NONEXISTENT"]
    return ""


# -- the store --------------------------------------------------------------------------


class ImapStore:
    """One logged-in IMAP connection. Create with `ImapStore.connect`."""

    # Bounds for one FETCH of bodies: messages per command and their summed
    # RFC822.SIZE. They bound memory (imaplib holds a whole response) and keep one
    # command short enough to survive a read timeout on slow links.
    fetch_batch_count: int = 50
    fetch_batch_bytes: int = 8 * 1024 * 1024

    def __init__(
        self, client: Any, address: str, capabilities: frozenset[str], timeout: float
    ) -> None:
        self._client = client
        self._address = address
        self._capabilities = capabilities
        self._timeout = timeout
        self._delimiter: str | None = None
        self._delimiter_known = False
        self._selected: str | None = None
        # Bumped on every change of selection, so a lazy `fetch` notices that its
        # UIDs would now be read from another folder.
        self._generation = 0
        self._closed = False

    # -- connecting ---------------------------------------------------------------

    @classmethod
    def connect(cls, remote: RemoteConfig, password: str) -> ImapStore:
        """Connect, secure, log in and ENABLE QRESYNC (or CONDSTORE) when offered."""
        if remote.tls not in ("imaps", "starttls", "none"):
            raise ConfigError(
                f"unknown tls setting {remote.tls!r}",
                key="tls",
                hint="use imaps, starttls or none",
            )
        context = _tls_context(remote) if remote.tls != "none" else None
        timeout = imapclient.SocketTimeout(connect=remote.timeout, read=remote.timeout)
        try:
            client = imapclient.IMAPClient(
                remote.host,
                remote.port,
                ssl=remote.tls == "imaps",
                ssl_context=context,
                timeout=timeout,
            )
        except _TRANSPORT_ERRORS as exc:
            raise _connect_error(exc, remote) from exc
        try:
            return cls._login(client, remote, password, context)
        except BaseException:
            _shutdown(client)
            raise

    @classmethod
    def _login(
        cls,
        client: Any,
        remote: RemoteConfig,
        password: str,
        context: ssl.SSLContext | None,
    ) -> ImapStore:
        address = f"{remote.host}:{remote.port}"
        try:
            if remote.tls == "starttls":
                if not client.has_capability("STARTTLS"):
                    raise ConnectionFailed(
                        f"{address} does not offer STARTTLS",
                        hint="use tls: imaps (usually port 993), or tls: none only on a "
                        "trusted network",
                    )
                client.starttls(context)
            if client.has_capability("LOGINDISABLED"):
                raise ConnectionFailed(
                    f"{address} refuses to log in without TLS",
                    hint="set tls: imaps or tls: starttls",
                )
            try:
                client.login(remote.username, password)
            except imapclient.exceptions.LoginError as exc:
                # imapclient wraps every IMAP4.error, a dropped connection included
                if isinstance(exc.__context__, imaplib.IMAP4.abort):
                    raise ConnectionFailed(
                        f"connection to {address} lost during login "
                        f"({_server_text(exc.__context__)})",
                        hint="check the network and the tls setting, and run again",
                    ) from exc
                text = _server_text(exc)
                if "[UNAVAILABLE]" in text.upper():
                    raise ConnectionFailed(
                        f"{address} cannot log in {remote.username} right now ({text})",
                        hint="try again later",
                    ) from exc
                raise AuthenticationFailed(
                    f"login refused for {remote.username} at {address}",
                    hint="check username and password",
                ) from exc
            caps = _enable(client, frozenset(_text(c).upper() for c in client.capabilities()))
        except _TRANSPORT_ERRORS as exc:
            raise _connect_error(exc, remote) from exc
        return cls(client, address, caps, remote.timeout)

    # -- protocol: folders --------------------------------------------------------

    @property
    def capabilities(self) -> frozenset[str]:
        return self._capabilities

    def list_folders(self) -> list[RemoteFolder]:
        with self._translate("list folders"):
            rows = self._client.list_folders()
        folders: list[RemoteFolder] = []
        for attrs, delim, name in rows:
            delimiter = _text(delim) if delim is not None else None
            if not self._delimiter_known and delimiter:
                self._delimiter, self._delimiter_known = delimiter, True
            server_name = _text(name)
            canonical = server_to_canonical(server_name, delimiter)
            if canonical is None:
                log.warning(
                    "skipping server folder %r on %s: its name has no canonical form "
                    "(a component contains %r or is empty)",
                    server_name,
                    self._address,
                    SEP,
                )
                continue
            folders.append(RemoteFolder(canonical, frozenset(_text(a) for a in attrs)))
        return folders

    def create_folder(self, name: str) -> None:
        """Creates missing parents only when the server refuses the folder itself:
        most servers (Dovecot too) create them implicitly, and each extra CREATE
        would make a real folder where the server would have kept a mere parent."""
        server = self._server_name(name)
        with self._translate("create folder", name):
            try:
                self._client.create_folder(server)
                return
            except imaplib.IMAP4.abort:
                raise
            except imaplib.IMAP4.error as exc:
                if "ALREADYEXISTS" in str(exc).upper() or self._exists(server):
                    return
                parents = name.split(SEP)[:-1]
                if not parents:
                    raise
            for i in range(1, len(parents) + 1):
                parent = self._server_name(SEP.join(parents[:i]))
                if self._exists(parent):
                    continue
                try:
                    self._client.create_folder(parent)
                except imaplib.IMAP4.abort:
                    raise
                except imaplib.IMAP4.error:
                    if not self._exists(parent):
                        raise
            self._client.create_folder(server)

    def delete_folder(self, name: str) -> None:
        """Leaves the folder first if it is selected: Dovecot answers a DELETE of the
        selected folder with BYE and drops the connection."""
        server = self._server_name(name)
        with self._translate("delete folder", name):
            if self._selected is not None and canonical_folder(name) == self._selected:
                self._unselect(server)
            self._client.delete_folder(server)

    def status(self, name: str) -> FolderStatus:
        server = self._server_name(name)
        items = ["MESSAGES", "UIDNEXT", "UIDVALIDITY"]
        if "CONDSTORE" in self._capabilities:
            items.append("HIGHESTMODSEQ")
        with self._translate("status", name):
            data = self._client.folder_status(server, items)
            return FolderStatus(
                uidvalidity=int(data[b"UIDVALIDITY"]),
                uidnext=int(data[b"UIDNEXT"]),
                messages=int(data[b"MESSAGES"]),
                highestmodseq=int(data.get(b"HIGHESTMODSEQ", 0)),
            )

    def select(self, name: str) -> FolderStatus:
        server = self._server_name(name)
        with self._translate("select", name):
            # A failed SELECT leaves no folder selected (RFC 3501 6.3.1).
            self._selected = None
            self._generation += 1
            data = self._client.select_folder(server)
            uidnext = data.get(b"UIDNEXT")
            if uidnext is None:  # optional before IMAP4rev2; ask for it
                uidnext = self._client.folder_status(server, ["UIDNEXT"])[b"UIDNEXT"]
            result = FolderStatus(
                uidvalidity=int(data[b"UIDVALIDITY"]),
                uidnext=int(uidnext),
                messages=int(data[b"EXISTS"]),
                highestmodseq=int(data.get(b"HIGHESTMODSEQ", 0)),
            )
        self._selected = canonical_folder(name)
        return result

    # -- protocol: messages -------------------------------------------------------

    def list_messages(self) -> dict[int, RemoteMessage]:
        """One ``UID FETCH 1:* (UID FLAGS RFC822.SIZE)``: a single round trip whatever
        the folder's size (imapclient's `fetch` cannot send "1:*", see `_uid_fetch`).
        Flags are all the server's, \\Recent included: the engine normalizes."""
        folder = self._require_selected("list messages")
        with self._translate("list messages", folder):
            rows = self._uid_fetch("1:*", "(UID FLAGS RFC822.SIZE)")
        return {
            uid: RemoteMessage(uid, _flags_of(row.get(b"FLAGS")), int(row[b"RFC822.SIZE"]))
            for uid, row in sorted(rows.items())
            if b"RFC822.SIZE" in row
        }

    def identities(self, uids: Sequence[int]) -> dict[int, RemoteIdentity]:
        folder = self._require_selected("read message identities")
        wanted = set(uids)
        out: dict[int, RemoteIdentity] = {}
        with self._translate("read message identities", folder):
            for chunk in uid_set_chunks(wanted):
                rows = self._uid_fetch(chunk, _IDENTITY_ITEMS)
                out.update(_identities(rows, wanted))
        return out

    def fetch(self, uids: Sequence[int]) -> Iterator[tuple[int, bytes, Flags, datetime | None]]:
        """Sizes first (cheap), then bodies in batches bounded by `fetch_batch_count`
        and `fetch_batch_bytes`, so that one huge message travels alone and many small
        ones share a round trip. Bodies are BODY.PEEK[], which leaves \\Seen alone.
        Raises ServerError if the selection changes while the iterator is consumed."""
        folder = self._require_selected("fetch")
        generation = self._generation
        wanted = set(uids)
        sizes: dict[int, int] = {}
        with self._translate("fetch", folder):
            for chunk in uid_set_chunks(wanted):
                for uid, row in self._uid_fetch(chunk, "(UID RFC822.SIZE)").items():
                    if uid in wanted and b"RFC822.SIZE" in row:
                        sizes[uid] = int(row[b"RFC822.SIZE"])
        for batch in _batches(sorted(sizes), sizes, self.fetch_batch_count, self.fetch_batch_bytes):
            if self._generation != generation:
                raise ServerError(
                    f"fetch from folder {folder!r} on {self._address} was interrupted by "
                    "selecting another folder",
                    hint="this is a bug in mirrorsync; please report it",
                )
            with self._translate("fetch", folder):
                rows = self._uid_fetch(uid_set(batch), "(UID FLAGS INTERNALDATE BODY.PEEK[])")
            for uid in batch:
                row = rows.get(uid, {})
                body = row.get(b"BODY[]")
                if not isinstance(body, bytes):
                    continue  # expunged meanwhile
                yield uid, body, _flags_of(row.get(b"FLAGS")), _aware(row.get(b"INTERNALDATE"))

    def append(
        self, name: str, data: bytes, flags: Flags, date: datetime | None = None
    ) -> int | None:
        """With UIDPLUS the UID comes from ``[APPENDUID v uid]``. Without it: UIDNEXT
        is read (STATUS) before the APPEND, and afterwards the messages with UIDs from
        that UIDNEXT on are examined; the one whose Message-ID and RFC822.SIZE match
        `data` is ours (the highest such UID if another client appended the same
        message meanwhile). If none matches, None. Looking costs an EXAMINE of the
        folder and a re-SELECT of the previously selected one, unless it is the
        selected folder."""
        server = self._server_name(name)
        flag_list = _flag_args(flags, "append to", name, self._address)
        with self._translate("append to", name):
            if "UIDPLUS" in self._capabilities:
                response = self._client.append(server, data, flag_list, date)
                m = _APPENDUID_RE.search(_as_bytes(response))
                return int(m.group(2)) if m else None
            before = int(self._client.folder_status(server, ["UIDNEXT"])[b"UIDNEXT"])
            self._client.append(server, data, flag_list, date)
            return self._find_appended(name, server, before, data)

    def add_flags(self, uids: Iterable[int], flags: Flags) -> None:
        self._store(uids, flags, add=True)

    def remove_flags(self, uids: Iterable[int], flags: Flags) -> None:
        self._store(uids, flags, add=False)

    def expunge(self, uids: Iterable[int]) -> None:
        """With UIDPLUS: STORE \\Deleted, then UID EXPUNGE of exactly these UIDs.

        Without UIDPLUS only a bare EXPUNGE exists, which would also remove messages
        that another client flagged \\Deleted and meant to keep until *it* expunges.
        So: SEARCH DELETED; if every \\Deleted message is one of ours, EXPUNGE;
        otherwise ours stay flagged \\Deleted (a warning is logged) and go at the next
        run when the other client's are gone. A message flagged by another client
        between the SEARCH and the EXPUNGE would still go: no protocol closes that gap.
        """
        wanted = set(uids)
        if not wanted:
            return
        folder = self._require_selected("expunge")
        chunks = uid_set_chunks(wanted)
        with self._translate("expunge", folder):
            for chunk in chunks:
                self._client.add_flags(chunk, ["\\Deleted"], silent=True)
            if "UIDPLUS" in self._capabilities:
                for chunk in chunks:
                    self._client.uid_expunge(chunk)
                return
            others = set(self._client.search("DELETED")) - wanted
            if others:
                log.warning(
                    "folder %r on %s: left %d message(s) flagged \\Deleted instead of "
                    "expunging them, because the server has no UIDPLUS and %d other "
                    "message(s) there are flagged \\Deleted by another client",
                    folder,
                    self._address,
                    len(wanted),
                    len(others),
                )
                return
            self._client.expunge()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._client.logout()
        except Exception:
            _shutdown(self._client)

    def __enter__(self) -> ImapStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------

    def _uid_fetch(self, uids: str, items: str) -> dict[int, dict[bytes, Any]]:
        """``UID FETCH <set> <items>`` through imapclient's imaplib object.

        Why not `IMAPClient.fetch`: in 4.1.0 it int()s every message id to filter the
        answer, so a set like "1:*" or "3:9" raises ValueError, and a list of plain
        UIDs makes command lines as long as the folder. Sending the command directly
        keeps one round trip with compact sets. Only imaplib's long-stable internals
        (`_command`, `_command_complete`, `_untagged_response`) are used, exactly as
        imapclient itself uses them.

        Rows are keyed by UID and only rows that carry a UID are kept: unsolicited
        FETCH responses (another client changed flags) carry only a sequence number
        unless QRESYNC is enabled, and keying them by that number would attach them to
        the wrong message. Stale FETCH responses from earlier commands are dropped
        first; callers also check that the items they asked for are present.
        """
        imap = self._client._imap
        imap.untagged_responses.pop("FETCH", None)
        tag = imap._command("UID", "FETCH", uids, items)
        typ, data = imap._command_complete("FETCH", tag)
        if typ != "OK":
            raise imaplib.IMAP4.error(_text(data[0]) if data and data[0] else typ)
        _, data = imap._untagged_response(typ, data, "FETCH")
        return _parse_fetch(data)

    def _store(self, uids: Iterable[int], flags: Flags, add: bool) -> None:
        operation = "add flags in" if add else "remove flags in"
        wanted = set(uids)
        if not wanted:
            return
        folder = self._require_selected(operation)
        flag_list = _flag_args(flags, operation, folder, self._address)
        if not flag_list:
            return
        store = self._client.add_flags if add else self._client.remove_flags
        with self._translate(operation, folder):
            for chunk in uid_set_chunks(wanted):
                store(chunk, flag_list, silent=True)

    def _find_appended(self, name: str, server: str, uidnext: int, data: bytes) -> int | None:
        size = len(_LINE_END_RE.sub(b"\r\n", data))
        msgid = message_id(data)
        previous = self._selected
        same = previous == canonical_folder(name)
        if same:
            self._client.noop()  # let the server announce the new message
            rows = self._uid_fetch(f"{uidnext}:*", _IDENTITY_ITEMS)
        else:
            self._selected = None  # until the previous selection is back
            self._client.select_folder(server, readonly=True)
            rows = self._uid_fetch(f"{uidnext}:*", _IDENTITY_ITEMS)
            if previous is None:
                self._client.close_folder()  # read-only: CLOSE expunges nothing
            else:
                self._client.select_folder(self._server_name(previous))
                self._selected = previous
        candidates = sorted(
            uid
            for uid, ident in _identities(rows, None).items()
            if uid >= uidnext and ident.size == size and ident.message_id == msgid
        )
        if len(candidates) > 1:
            log.debug("append to %r: %d candidates for the new UID", name, len(candidates))
        return candidates[-1] if candidates else None

    def _unselect(self, server: str) -> None:
        """Leave the selected folder without expunging anything: UNSELECT, or else
        EXAMINE it and CLOSE (CLOSE on a read-only folder expunges nothing)."""
        if "UNSELECT" in self._capabilities:
            self._client.unselect_folder()
        else:
            self._client.select_folder(server, readonly=True)
            self._client.close_folder()
        self._selected = None
        self._generation += 1

    def _exists(self, server: str) -> bool:
        """True if `server` is listed as a selectable folder."""
        for attrs, _delim, name in self._client.list_folders("", server):
            if _text(name) == server:
                return RemoteFolder(server, frozenset(_text(a) for a in attrs)).selectable
        return False

    def _server_name(self, name: str) -> str:
        if SEP in name and not self._delimiter_known:
            with self._translate("list folders"):
                rows = self._client.list_folders("", "")  # LIST "" "": the delimiter
            for _attrs, delim, _name in rows:
                self._delimiter = _text(delim) if delim is not None else None
            self._delimiter_known = True
        return canonical_to_server(name, self._delimiter)

    def _require_selected(self, operation: str) -> str:
        if self._selected is None:
            raise ServerError(
                f"cannot {operation} on {self._address}: no folder is selected",
                hint="this is a bug in mirrorsync; please report it",
            )
        return self._selected

    @contextmanager
    def _translate(self, operation: str, folder: str | None = None) -> Iterator[None]:
        """Turn whatever imapclient, imaplib, socket or ssl raise into our errors."""
        where = f"{operation} {folder!r}" if folder is not None else operation
        try:
            yield
        except MirrorsyncError:
            raise
        except imaplib.IMAP4.readonly as exc:
            raise ServerError(
                f"{where} on {self._address}: the folder is read-only",
                hint="mirrorsync needs write access; check the folder's permissions",
            ) from exc
        except imaplib.IMAP4.abort as exc:
            raise ConnectionFailed(
                f"connection to {self._address} lost during {where} ({_server_text(exc)})",
                hint="check the network and run mirrorsync again",
            ) from exc
        except imaplib.IMAP4.error as exc:
            text = _server_text(exc)
            raise ServerError(
                f"{where} failed on {self._address}: {text}", hint=_code_hint(text)
            ) from exc
        except TimeoutError as exc:
            raise ConnectionFailed(
                f"{self._address} did not answer within {self._timeout:g}s during {where}",
                hint="the server or the network is slow or down; run again or raise timeout",
            ) from exc
        except (OSError, EOFError) as exc:  # ssl.SSLError is an OSError
            raise ConnectionFailed(
                f"connection to {self._address} lost during {where} ({_server_text(exc)})",
                hint="check the network and run mirrorsync again",
            ) from exc
        except ValueError as exc:  # imapclient's parsers raise it on odd responses
            raise ServerError(
                f"{where}: unexpected response from {self._address} ({_server_text(exc)})"
            ) from exc
        except KeyError as exc:
            raise ServerError(
                f"{where}: response from {self._address} lacks {_server_text(exc)}"
            ) from exc


_IDENTITY_ITEMS = "(UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"


def _identities(
    rows: dict[int, dict[bytes, Any]], wanted: set[int] | None
) -> dict[int, RemoteIdentity]:
    out: dict[int, RemoteIdentity] = {}
    for uid, row in rows.items():
        if (wanted is not None and uid not in wanted) or b"RFC822.SIZE" not in row:
            continue
        header = next((v for k, v in row.items() if k.startswith(b"BODY[HEADER.FIELDS")), None)
        mid = message_id(header) if isinstance(header, bytes) else None
        out[uid] = RemoteIdentity(uid, int(row[b"RFC822.SIZE"]), mid)
    return out


def _parse_fetch(data: list[Any]) -> dict[int, dict[bytes, Any]]:
    items = [d for d in data if d is not None]
    if not items:
        return {}
    parsed = parse_response(items)
    if len(parsed) % 2:
        raise ValueError("odd FETCH response")
    rows: dict[int, dict[bytes, Any]] = {}
    for i in range(0, len(parsed), 2):
        attrs = parsed[i + 1]
        if not isinstance(attrs, tuple) or len(attrs) % 2:
            raise ValueError(f"malformed FETCH response for message {parsed[i]!r}")
        row = {_text(attrs[j]).upper().encode(): attrs[j + 1] for j in range(0, len(attrs), 2)}
        uid = row.get(b"UID")
        if isinstance(uid, int):
            rows.setdefault(uid, {}).update(row)
    return rows


def _batches(
    uids: list[int], sizes: dict[int, int], max_count: int, max_bytes: int
) -> Iterator[list[int]]:
    batch: list[int] = []
    total = 0
    for uid in uids:
        size = sizes[uid]
        if batch and (len(batch) >= max_count or total + size > max_bytes):
            yield batch
            batch, total = [], 0
        batch.append(uid)
        total += size
    if batch:
        yield batch


def _flag_args(flags: Flags, operation: str, folder: str, address: str) -> list[str]:
    """Flags to send: \\Recent dropped (servers refuse it), the rest checked to be
    valid IMAP atoms so a bad name cannot corrupt the command line."""
    out = []
    for flag in sorted(flags):
        if flag.lower() == _RECENT:
            continue
        if not _FLAG_RE.match(flag):
            raise ServerError(
                f"cannot {operation} {folder!r} on {address}: {flag!r} is not a valid "
                "IMAP flag name"
            )
        out.append(flag)
    return out


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", "replace")


def _tls_context(remote: RemoteConfig) -> ssl.SSLContext:
    address = f"{remote.host}:{remote.port}"
    try:
        return ssl.create_default_context(
            cafile=str(remote.ca_file) if remote.ca_file is not None else None
        )
    except (OSError, ValueError) as exc:  # missing file, or not PEM (ssl.SSLError)
        raise ConnectionFailed(
            f"cannot use ca_file {remote.ca_file} for {address} ({_server_text(exc)})",
            hint="point ca_file at a readable PEM certificate",
        ) from exc


def _connect_error(exc: BaseException, remote: RemoteConfig) -> ConnectionFailed:
    """Words for a failure before or during login, when the cause is most often
    configuration: host, port, the tls setting or the CA."""
    address = f"{remote.host}:{remote.port}"
    if isinstance(exc, socket.gaierror):
        return ConnectionFailed(
            f"cannot resolve host {remote.host} ({exc.strerror or exc})",
            hint="check the host name and the network",
        )
    if isinstance(exc, ConnectionRefusedError):
        return ConnectionFailed(
            f"connection to {address} refused",
            hint="check host and port, and that the IMAP server is running",
        )
    if isinstance(exc, TimeoutError):
        return ConnectionFailed(
            f"no answer from {address} within {remote.timeout:g}s",
            hint="check host, port, firewall and the tls setting (an imaps port "
            "stays silent to a plain-text client)",
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = exc.verify_message or exc.reason or str(exc)
        ca = f"ca_file {remote.ca_file}" if remote.ca_file else "the system CA store"
        return ConnectionFailed(
            f"TLS certificate of {address} not trusted by {ca} ({reason})",
            hint="set ca_file to the certificate (or CA) the server uses, or fix the "
            "server's certificate",
        )
    if isinstance(exc, ssl.SSLError):
        return ConnectionFailed(
            f"TLS handshake with {address} failed ({exc.reason or exc})",
            hint="check the tls setting: imaps needs an implicit-TLS port (993), "
            "starttls a plain one (143)",
        )
    if isinstance(exc, imaplib.IMAP4.error):
        return ConnectionFailed(
            f"{address} did not behave as an IMAP server ({_server_text(exc)})",
            hint="check host, port and the tls setting",
        )
    if isinstance(exc, OSError):
        return ConnectionFailed(
            f"cannot connect to {address} ({exc.strerror or exc})",
            hint="check host, port and the network",
        )
    return ConnectionFailed(
        f"cannot connect to {address} ({type(exc).__name__}: {_server_text(exc)})",
        hint="check host, port and the tls setting",
    )


def _enable(client: Any, caps: frozenset[str]) -> frozenset[str]:
    """ENABLE QRESYNC (which implies CONDSTORE), else CONDSTORE, and return the
    capabilities the engine may rely on: QRESYNC only counts once it is enabled, since
    it changes how the server reports expunges. CONDSTORE stays usable without ENABLE
    (a STATUS HIGHESTMODSEQ or FETCH MODSEQ turns it on), so a refusal only costs the
    HIGHESTMODSEQ in SELECT."""
    if "ENABLE" not in caps:
        return caps - {"QRESYNC"}
    wanted = "QRESYNC" if "QRESYNC" in caps else "CONDSTORE" if "CONDSTORE" in caps else None
    if wanted is None:
        return caps
    try:
        enabled = {_text(c).upper() for c in client.enable(wanted)}
    except imaplib.IMAP4.abort:
        raise
    except imaplib.IMAP4.error as exc:
        log.warning("the server refused ENABLE %s: %s", wanted, _server_text(exc))
        enabled = set()
    if "QRESYNC" not in enabled:
        caps = caps - {"QRESYNC"}
    return caps


def _shutdown(client: Any) -> None:
    try:
        client.shutdown()
    except Exception:
        log.debug("closing the connection failed", exc_info=True)
