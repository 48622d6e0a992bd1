"""What every part of `ImapStore` shares: its state, the error vocabulary (every
imapclient, imaplib, socket and ssl exception leaves the store as a
`mirrorsync.errors` type with a one-line message naming host:port, the operation and
the folder) and the spelling of folder names on the server.

The store is built in layers, each a module of one concern and a class that
extends the one below: `StoreBase` here, then `folders.Folders` (listing, numbers,
creating), `selection.Selection` (SELECT, changes, SEARCH, the listing of a folder),
`messages.Messages` (bodies, flags, expunge, move), `appending.Appending` (APPEND),
and `store.ImapStore` (connecting and closing).
"""

from __future__ import annotations

import imaplib
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from mirrorsync import throttle
from mirrorsync.errors import (
    ConnectionFailed,
    FolderNameError,
    MirrorsyncError,
    ServerError,
)
from mirrorsync.imap.client import Client
from mirrorsync.imap.connection import server_text
from mirrorsync.imap.parse import (
    parse_fetch,
    text_of,
)
from mirrorsync.imap.wire import (
    LiteralRefused,
    Overdue,
)
from mirrorsync.model import (
    Flags,
    RemoteFolder,
    canonical_folder,
)
from mirrorsync.names import server_spelling

log = logging.getLogger(__name__)

# \Recent is a session flag that only the server sets; APPEND/STORE with it are errors.
RECENT = "\\recent"
# A flag is an atom, optionally preceded by a backslash (RFC 3501 flag / flag-keyword);
# checked here so that a bad name becomes a ServerError instead of a broken command line.
FLAG_RE = re.compile(r'^\\?[^\x00-\x20\x7f-\U0010ffff(){%*"\\\]]+$')
# One search key or argument: an atom, a number, a date or a sequence set ("1:*").
# Anything else (spaces, quotes, parentheses, literals) would change the command line.
SEARCH_TOKEN_RE = re.compile(r'[^\x00-\x20\x7f()"{\\]+')
# What a connection attempt can raise besides our own errors: socket and ssl errors are
# OSErrors, imaplib's error/abort cover IMAP-level trouble, EOFError a vanished peer.
TRANSPORT_ERRORS = (OSError, EOFError, imaplib.IMAP4.error)
RESPONSE_CODE_HINTS = {
    "NONEXISTENT": "the folder does not exist on the server",
    "TRYCREATE": "the folder does not exist on the server",
    "OVERQUOTA": "the mailbox is over quota; free space on the server",
    "NOPERM": "the server does not allow this for this user",
    "LIMIT": "the server refused because of one of its limits",
    "INUSE": "the folder is in use; try again later",
    "CANNOT": "the server cannot do this for this folder",
}


REFUSED_HINT = "the server misbehaves; report it to its administrator"
# The operations that only read one folder (as `_translate` names them): after an
# answer of theirs was refused unread, the run can go on over a new connection.
READS = frozenset(
    {"fetch", "list messages", "read message identities", "read message sizes", "select", "status"}
)


def canonical_to_server(name: str, delimiter: str | None, prefix: str = "") -> str:
    """The server's spelling of a canonical name (see `names.server_spelling`), or
    FolderNameError when the server cannot hold it."""
    try:
        return server_spelling(name, delimiter, prefix)
    except ValueError as e:
        raise FolderNameError(
            f"folder {canonical_folder(name)!r} cannot be created on the server: {e}",
            hint="rename it, or list it in local.local_only",
        ) from None


def code_hint(text: str) -> str:
    m = re.search(r"\[([A-Z-]+)", text)
    if m and m.group(1) in RESPONSE_CODE_HINTS:
        return RESPONSE_CODE_HINTS[m.group(1)]
    if re.search(r"(doesn't|does not|not) exist", text, re.IGNORECASE):
        return RESPONSE_CODE_HINTS["NONEXISTENT"]
    return ""


def flag_args(flags: Flags, operation: str, folder: str, address: str) -> list[str]:
    """Flags to send: \\Recent dropped (servers refuse it), the rest checked to be
    valid IMAP atoms so a bad name cannot corrupt the command line."""
    out = []
    for flag in sorted(flags):
        if flag.lower() == RECENT:
            continue
        if not FLAG_RE.match(flag):
            raise ServerError(
                f"cannot {operation} {folder!r} on {address}: {flag!r} is not a valid "
                "IMAP flag name"
            )
        out.append(flag)
    return out


class StoreBase:
    """The state of one logged-in connection, and the helpers every layer uses."""

    # Bounds for one FETCH of bodies: messages per command and their summed
    # RFC822.SIZE. The bytes bound memory (a whole answer is held); the count keeps
    # the UID set of one command line short (500 scattered UIDs: about 5 KB, under
    # RFC 7162's 8 KB advice). 50 cost a round trip per 50 small messages, which on a
    # 30 ms link caps small-message throughput near 3 MB/s; 500 makes that 30 MB/s.
    fetch_batch_count: int = 500
    fetch_batch_bytes: int = 8 * 1024 * 1024
    # Bounds for one MULTIAPPEND command. RFC 3502 makes it atomic, so the server
    # stages every message of it before committing any; the bytes bound that (and
    # what a refused command costs to send again one by one), the count what one
    # refused message takes down with it.
    append_batch_count: int = 50
    append_batch_bytes: int = 8 * 1024 * 1024

    def __init__(
        self, client: Client, address: str, capabilities: frozenset[str], timeout: float
    ) -> None:
        self._client = client
        self._address = address
        self._capabilities = capabilities
        self._timeout = timeout
        self._delimiter: str | None = None
        self._delimiter_known = False
        # The personal namespace's prefix that canonical names leave out (Courier's
        # "INBOX."); "" until the sync sets it (`use_namespace_prefix`).
        self._prefix = ""
        self._personal: str | None = None  # the NAMESPACE answer, asked once
        self._selected: str | None = None
        # UIDNEXT as of the last SELECT: where `search` ends its UID windows.
        self._selected_uidnext = 1
        # Bumped on every change of selection, so a lazy `fetch` notices that its
        # UIDs would now be read from another folder.
        self._generation = 0
        self._closed = False
        # The folder listing `statuses()` got along with the numbers, kept for the one
        # `list_folders()` that usually follows, to save it a round trip.
        self._listing: list[RemoteFolder] | None = None
        # The folders the last `statuses()` listed but got no numbers for: name -> why.
        self._status_failures: dict[str, str] = {}
        # How to log in again on a new connection (set by `ImapStore.connect`);
        # None: cannot.
        self._reconnect: Callable[[], StoreBase] | None = None
        self._special: dict[str, str] = {}  # canonical name -> "\\Junk", see special_use()

    def _uid_fetch(
        self, uids: str, items: str, modifiers: str | None = None
    ) -> dict[int, dict[bytes, Any]]:
        """``UID FETCH <set> <items>`` (`Client.uid_fetch_data`), parsed.

        Rows are keyed by UID and only rows that carry a UID are kept: unsolicited
        FETCH responses (another client changed flags) carry only a sequence number
        unless QRESYNC is enabled, and keying them by that number would attach them to
        the wrong message. Stale FETCH responses from earlier commands are dropped
        first; callers also check that the items they asked for are present.
        """
        return parse_fetch(self._client.uid_fetch_data(uids, items, modifiers))

    def _server_name(self, name: str) -> str:
        # Nested names are joined with the delimiter, and no component may hold it:
        # learn it unless the name is one plain word, which no delimiter is part of.
        if not all(c.isalnum() or c in " -_" for c in name):
            self._learn_delimiter()
        return canonical_to_server(name, self._delimiter, self._prefix)

    def _learn_delimiter(self) -> None:
        if not self._delimiter_known:
            with self._translate("list folders"):
                rows = self._client.list_folders("", "")  # LIST "" "": the delimiter
            for _attrs, delim, _name in rows:
                self._delimiter = text_of(delim) if delim is not None else None
            self._delimiter_known = True

    def _require_selected(self, operation: str) -> str:
        if self._selected is None:
            raise ServerError(
                f"cannot {operation} on {self._address}: no folder is selected",
                hint="this is a bug in mirrorsync; please report it",
            )
        return self._selected

    def _refused(self, operation: str, folder: str | None, what: str) -> MirrorsyncError:
        """The error for an answer refused unread (`ReadGuard`), whose connection is
        gone: the run ends (exit 3). `selection.Selection` lets a read of one folder
        fail that folder alone."""
        return ConnectionFailed(what, hint=REFUSED_HINT)

    @contextmanager
    def _translate(self, operation: str, folder: str | None = None) -> Iterator[None]:
        """Turn whatever imapclient, imaplib, socket or ssl raise into our errors."""
        where = f"{operation} {folder!r}" if folder is not None else operation
        try:
            yield
        except MirrorsyncError:
            raise
        except LiteralRefused as exc:
            raise self._refused(operation, folder, f"{where} on {self._address}: {exc}") from exc
        except Overdue as exc:
            raise ConnectionFailed(
                f"{self._address} did not finish {where} in time: {exc}",
                hint="the server or the network is too slow; run again or raise timeout",
            ) from exc
        except imaplib.IMAP4.readonly as exc:
            raise ServerError(
                f"{where} on {self._address}: the folder is read-only",
                hint="mirrorsync needs write access; check the folder's permissions",
            ) from exc
        except imaplib.IMAP4.abort as exc:
            if throttle.is_throttled(server_text(exc)):
                raise throttle.Throttled(self._address, server_text(exc)) from exc
            raise ConnectionFailed(
                f"connection to {self._address} lost during {where} ({server_text(exc)})",
                hint="check the network and run mirrorsync again",
            ) from exc
        except imaplib.IMAP4.error as exc:
            text = server_text(exc)
            if throttle.is_throttled(text):  # NO or BAD "Request is throttled" (Outlook)
                raise throttle.Throttled(self._address, text) from exc
            raise ServerError(
                f"{where} failed on {self._address}: {text}", hint=code_hint(text)
            ) from exc
        except TimeoutError as exc:
            raise ConnectionFailed(
                f"{self._address} did not answer within {self._timeout:g}s during {where}",
                hint="the server or the network is slow or down; run again or raise timeout",
            ) from exc
        except (OSError, EOFError) as exc:  # ssl.SSLError is an OSError
            raise ConnectionFailed(
                f"connection to {self._address} lost during {where} ({server_text(exc)})",
                hint="check the network and run mirrorsync again",
            ) from exc
        except ValueError as exc:  # imapclient's parsers raise it on odd responses
            raise ServerError(
                f"{where}: unexpected response from {self._address} ({server_text(exc)})"
            ) from exc
        except KeyError as exc:
            raise ServerError(
                f"{where}: response from {self._address} lacks {server_text(exc)}"
            ) from exc
